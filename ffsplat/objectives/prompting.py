"""Point prompts and point-prompt mask decoders.

A *prompt decoder* turns an embedding map and point prompts into mask logits, with the interface of
:meth:`ffsplat.teachers.sam.SAMTeacher.decode` (the real one: SAM's prompt encoder + mask decoder)::

    masks, scores, low_res = decoder.decode(embeddings, points, point_labels=None, multimask=True,
                                            image_size=(H, W))

* ``embeddings [N, C, h, w]``; ``points [N, P, 2]`` (or ``[N, P, K, 2]``, ``K`` points per prompt),
  continuous ``(x, y)`` pixel coordinates of the ``H x W`` image, pixel centres at ``+0.5``
  (docs/conventions.md); ``point_labels [N, P(, K)]`` 1 foreground / 0 background;
* ``masks [N, P, M, H, W]`` logits (mask = logits > 0), ``scores [N, P, M]``,
  ``low_res [N, P, M, h_lr, w_lr]`` logits on the decoder's own grid; ``M = 3`` (small, medium,
  large) with ``multimask`` else 1.

:class:`SimilarityPromptDecoder` is a parameter-free **stand-in** for benchmarks whose segmentation
teacher is label-derived (``teachers.label_teachers.LabelSegmentationTeacher``): masks are regions
whose embedding is cosine-similar to the prompt's. It is never SAM and its masks are not SAM masks.
:func:`label_hierarchy_masks` is likewise a ground-truth stand-in for SAM's automatic three-scale masks.
"""

from __future__ import annotations

from typing import Protocol

import torch
from scipy import ndimage
import torch.nn.functional as F
from torch import Tensor, nn


class PromptDecoder(Protocol):
    """What the training loop and the promptable evaluation need from a mask decoder."""

    def decode(
        self,
        embeddings: Tensor,
        points: Tensor,
        point_labels: Tensor | None = None,
        multimask: bool = True,
        *,
        image_size: tuple[int, int],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``embeddings [N, C, h, w]``, ``points [N, P(, K), 2]`` -> ``(masks [N, P, M, H, W],
        scores [N, P, M], low_res [N, P, M, h', w'])`` (see the module docstring)."""
        ...


# ----------------------------------------------------------------------------------- points
def pixel_to_grid(points: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Continuous pixel coords ``[..., 2]`` (x, y) -> ``grid_sample`` coords in ``[-1, 1]``
    (``align_corners=False``: pixel ``u`` covers ``[u, u + 1)``, so ``x = 0`` maps to ``-1``)."""
    height, width = image_size
    return points.float() / points.new_tensor([width, height]).float() * 2 - 1


def sample_prompt_points(
    n: int,
    p: int,
    image_size: tuple[int, int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``[n, p, 2]`` uniformly random pixel-centre points ``(u + 0.5, v + 0.5)`` (x, y) of an ``H x W`` image."""
    height, width = image_size
    gen_device = generator.device if generator is not None else "cpu"
    u = torch.randint(0, width, (n, p), generator=generator, device=gen_device)
    v = torch.randint(0, height, (n, p), generator=generator, device=gen_device)
    return (torch.stack([u, v], -1).float() + 0.5).to(device if device is not None else gen_device)


def grid_prompt_points(per_side: int, image_size: tuple[int, int], device: torch.device | str | None = None) -> Tensor:
    """``[per_side**2, 2]`` (x, y) points at the centres of a ``per_side x per_side`` cell grid.

    ``x = (i + 0.5) / per_side * W``, ``y = (j + 0.5) / per_side * H``, row-major (x fastest), the
    same grid as SAM's automatic mask generator (``build_point_grid``) and
    ``SAMTeacher.automatic_masks``; ``per_side = 32`` is the promptable-segmentation protocol.
    """
    height, width = image_size
    t = (torch.arange(per_side, dtype=torch.float32, device=device) + 0.5) / per_side
    gy, gx = torch.meshgrid(t * height, t * width, indexing="ij")
    return torch.stack([gx, gy], -1).reshape(-1, 2)


# ------------------------------------------------------------------------------ stand-in decoder
class SimilarityPromptDecoder(nn.Module):
    """Stand-in point-prompt decoder for label-derived embeddings (**not SAM**; no parameters).

    Embeddings are upsampled bilinearly to ``H x W``; the prompt's embedding is the bilinear sample
    at its point (for ``K`` points per prompt: the normalised mean of the unit embeddings of its
    foreground points). With ``cos`` the cosine-similarity map to it, mask ``k`` has logits
    ``(cos - thresholds[k]) / temperature``: decreasing thresholds give nested small / medium /
    large masks. Background points (label 0) cut away pixels more similar to them than to the
    prompt: ``logits = min(logits, (cos - max_bg cos_bg) / temperature)``. Scores are the mean
    ``cos`` inside each mask (0 for an empty mask). ``multimask=False`` returns the medium mask only.
    Differentiable w.r.t. the embeddings (both the map and the prompt embedding).

    Args:
        thresholds: cosine thresholds of the (small, medium, large) masks.
        temperature: logit scale (cosine units per logit).
    """

    def __init__(self, thresholds: tuple[float, float, float] = (0.9, 0.75, 0.5), temperature: float = 0.05) -> None:
        super().__init__()
        if len(thresholds) != 3 or temperature <= 0:
            raise ValueError(f"need three thresholds and temperature > 0, got {thresholds}, {temperature}")
        self.thresholds = tuple(float(t) for t in thresholds)
        self.temperature = float(temperature)

    def _logits(
        self, unit_map: Tensor, query: Tensor, point_emb: Tensor, is_neg: Tensor, multimask: bool
    ) -> tuple[Tensor, Tensor]:
        """``unit_map [N, C, h, w]``, ``query [N, P, C]``, point embeddings ``point_emb [N, P, K, C]``
        of which ``is_neg [N, P, K]`` are background points -> ``(logits [N, P, M, h, w], cos [N, P, h, w])``."""
        cos = torch.einsum("nchw,npc->nphw", unit_map, query)
        thr = cos.new_tensor(self.thresholds if multimask else self.thresholds[1:2])
        logits = (cos[:, :, None] - thr[:, None, None]) / self.temperature
        if bool(is_neg.any()):
            neg = torch.einsum("nchw,npkc->npkhw", unit_map, point_emb)
            neg = neg.masked_fill(~is_neg[..., None, None], float("-inf")).amax(2)
            logits = torch.minimum(logits, ((cos - neg) / self.temperature)[:, :, None])
        return logits, cos

    def decode(
        self,
        embeddings: Tensor,
        points: Tensor,
        point_labels: Tensor | None = None,
        multimask: bool = True,
        *,
        image_size: tuple[int, int],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Point prompts -> mask logits, with :meth:`SAMTeacher.decode`'s interface.

        Args:
            embeddings: ``[N, C, h, w]`` (any grid covering the image).
            points: ``[N, P, 2]`` or ``[N, P, K, 2]`` continuous (x, y) pixel coords of the image.
            point_labels: ``[N, P]`` / ``[N, P, K]``, 1 foreground, 0 background; default all 1.
                Every prompt needs a foreground point.
            multimask: three masks per prompt (small, medium, large) or the medium one only.
            image_size: ``(H, W)``.

        Returns:
            masks ``[N, P, M, H, W]`` logits, scores ``[N, P, M]`` (mean cos inside each mask),
            low_res ``[N, P, M, h, w]`` logits computed on the embedding grid itself.
        """
        height, width = image_size
        if embeddings.dim() != 4:
            raise ValueError(f"expected embeddings [N, C, h, w], got {tuple(embeddings.shape)}")
        if points.dim() == 3:
            points = points[:, :, None]
        n, p, k = points.shape[:3]
        if point_labels is None:
            point_labels = torch.ones(n, p, k, device=points.device)
        point_labels = point_labels.reshape(n, p, k).to(embeddings.device)

        emb = embeddings.float()
        full = F.interpolate(emb, size=(height, width), mode="bilinear", align_corners=False)  # [N, C, H, W]
        grid = pixel_to_grid(points.to(emb.device), image_size).reshape(n, p * k, 1, 2)
        sampled = F.grid_sample(full, grid, mode="bilinear", padding_mode="border", align_corners=False)
        sampled = F.normalize(sampled[..., 0].transpose(1, 2).reshape(n, p, k, -1), dim=-1)  # [N, P, K, C]

        fg = (point_labels == 1).to(sampled.dtype)[..., None]
        if bool((fg.sum(2) == 0).any()):
            raise ValueError("every prompt needs at least one foreground point (label 1)")
        query = F.normalize((sampled * fg).sum(2), dim=-1)  # [N, P, C]
        is_neg = point_labels == 0

        logits, cos = self._logits(F.normalize(full, dim=1), query, sampled, is_neg, multimask)
        inside = (logits > 0).to(cos.dtype)
        scores = (inside * cos[:, :, None]).flatten(3).sum(-1) / inside.flatten(3).sum(-1).clamp_min(1)
        low_res, _ = self._logits(F.normalize(emb, dim=1), query, sampled, is_neg, multimask)
        return logits, scores, low_res

    def forward(self, embeddings: Tensor, points: Tensor, **kw) -> tuple[Tensor, Tensor, Tensor]:
        return self.decode(embeddings, points, **kw)


# ------------------------------------------------------------------------- stand-in automatic masks
def label_hierarchy_masks(labels: Tensor, instances: Tensor) -> dict[str, Tensor]:
    """Three-scale masks from ground truth: a **stand-in** for SAM's automatic masks (HCAM pooling).

    Pixels with label 0 (unlabelled) are in no mask; instance id 0 means "no instance".

    * ``small``: one mask per instance id (``instances > 0``): objects, walls;
    * ``medium``: one mask per 4-connected region of one class: touching objects of the same class
      (a group of chairs, two adjoining walls) merge, separate ones stay apart;
    * ``large``: one mask per class (all pixels of a label, connected or not).

    Args:
        labels: ``[H, W]`` int class ids (0 = ignored).
        instances: ``[H, W]`` int instance ids (0 = none).

    Returns:
        ``{"small": [Ks, H, W], "medium": [Km, H, W], "large": [Kl, H, W]}`` bool, ordered by id.
    """
    if labels.shape != instances.shape or labels.dim() != 2:
        raise ValueError(f"expected labels and instances [H, W], got {tuple(labels.shape)}, {tuple(instances.shape)}")
    labels, instances = labels.long(), instances.long()
    valid = labels > 0
    has_inst = valid & (instances > 0)

    def split(ids_map: Tensor, where: Tensor) -> Tensor:
        ids = torch.unique(ids_map[where])
        return (ids_map[None] == ids[:, None, None]) & where[None]

    components = torch.zeros_like(labels)
    offset = 0
    for cls in torch.unique(labels[valid]).tolist():
        comp, count = ndimage.label((labels == cls).cpu().numpy())
        comp_t = torch.from_numpy(comp).to(labels.device)
        components = torch.where(comp_t > 0, comp_t + offset, components)
        offset += count
    return {"small": split(instances, has_inst), "medium": split(components, valid), "large": split(labels, valid)}
