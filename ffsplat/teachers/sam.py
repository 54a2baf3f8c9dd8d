"""SAM teacher: frozen Segment Anything image embeddings, prompt decoding and multi-scale masks.

SemanticSplat distils SAM's ``256``-channel image embedding into a rendered Gaussian feature field
and decodes rendered features back into masks with SAM's own prompt encoder + mask decoder. This
module wraps a ``segment_anything`` :class:`Sam` model for the three uses:

* :meth:`SAMTeacher.encode` -- the *valid region* of the image embedding (see below),
* :meth:`SAMTeacher.decode` -- point prompts -> mask logits on *any* embedding in that layout
  (differentiable w.r.t. the embedding, e.g. one rendered from Gaussians),
* :meth:`SAMTeacher.automatic_masks` -- small/medium/large masks for hierarchical pooling.

Geometry (``S = image_encoder.img_size`` = 1024, patch ``p`` = 16, grid ``G = S / p`` = 64 for the
official models): an ``H x W`` image is resized so its longest side is ``S``, to
``(H', W') = ResizeLongestSide.get_preprocess_shape(H, W, S)`` (``int(x * S / max(H, W) + 0.5)``),
padded bottom/right to ``S x S`` and encoded to a ``G x G`` grid. Only the top-left
``ceil(H' / p) x ceil(W' / p)`` cells see image content; that crop is what :meth:`encode` returns
and :meth:`decode` takes (it zero-pads it back to ``G x G``). For a square image it is the full grid.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffsplat.core.weights import mismatch, read_weights, state_dict_of
from ffsplat.teachers.base import register_teacher, require_file

if TYPE_CHECKING:  # segment_anything is imported only when a SAM teacher is used (it is optional on GPU images)
    from segment_anything.modeling import Sam

SCALES = ("small", "medium", "large")


class SAMTeacher(nn.Module):
    """Frozen SAM wrapper (``dim = 256``). Build from a ``Sam`` model or :meth:`from_checkpoint`.

    Args:
        sam: a built :class:`segment_anything.modeling.Sam` (any size; tests use tiny random ones).
        max_batch: images per image-encoder forward in :meth:`encode` (memory bound only).
    """

    name = "sam"
    dim = 256
    needs_labels = False

    def __init__(self, sam: Sam, max_batch: int = 8) -> None:
        super().__init__()
        self.sam = sam.eval().requires_grad_(False)
        self.max_batch = max_batch
        self.img_size: int = sam.image_encoder.img_size
        self.patch: int = sam.image_encoder.patch_embed.proj.kernel_size[0]
        self.grid: tuple[int, int] = tuple(sam.prompt_encoder.image_embedding_size)  # (G, G)
        if self.grid != (self.img_size // self.patch,) * 2 or sam.mask_decoder.transformer_dim != self.dim:
            raise ValueError(f"inconsistent SAM: grid {self.grid}, img_size {self.img_size}, patch {self.patch}")

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | None,
        model_type: str = "vit_b",
        builder: Callable[[], Sam] | None = None,
        device: str | torch.device = "cpu",
        **kw,
    ) -> SAMTeacher:
        """Load an official SAM state dict (``sam_vit_b_01ec64.pth`` ...) from a local path.

        ``builder`` (no arguments -> randomly initialised ``Sam``) overrides
        ``sam_model_registry[model_type]`` for custom architectures (e.g. tiny test models).
        """
        path = require_file(checkpoint, "teachers.segmentation.kwargs.checkpoint")
        if builder is None:
            try:
                from segment_anything import sam_model_registry
            except ImportError as exc:
                raise ImportError(
                    "the SAM teachers need the segment-anything package (pip install segment-anything)"
                ) from exc

            if model_type not in sam_model_registry:
                raise KeyError(
                    f"teachers.segmentation.kwargs.model_type {model_type!r}; choose one of {sorted(sam_model_registry)}"
                )
            builder = lambda: sam_model_registry[model_type](checkpoint=None)  # noqa: E731
        sam = builder()
        state = read_weights(path, "teachers.segmentation.kwargs.checkpoint", "SAM state dict")
        if isinstance(state, dict) and isinstance(state.get("model"), dict):  # tolerate {"model": state_dict} wrappers
            state = state["model"]
        state = state_dict_of(state, "teachers.segmentation.kwargs.checkpoint", path, "SAM state dict")
        ours = sam.state_dict()
        shapes = [k for k, v in state.items() if k in ours and tuple(v.shape) != tuple(ours[k].shape)]
        missing, unexpected = [k for k in ours if k not in state], [k for k in state if k not in ours]
        if missing or unexpected or shapes:
            raise mismatch(
                "teachers.segmentation.kwargs.checkpoint",
                path,
                f"SAM {model_type} state dict",
                missing,
                unexpected,
                shapes,
            )
        sam.load_state_dict(state)
        return cls(sam, **kw).to(device)

    def train(self, mode: bool = True) -> SAMTeacher:
        """The teacher stays in eval mode whatever its parent does."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.sam.device

    # ----------------------------------------------------------------------------------- geometry
    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """``(H', W')``: the image size after SAM's longest-side resize (same rounding as SAM)."""
        from segment_anything.utils.transforms import ResizeLongestSide

        return ResizeLongestSide.get_preprocess_shape(height, width, self.img_size)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Valid embedding cells ``(ceil(H' / p), ceil(W' / p))`` for an ``H x W`` image."""
        rh, rw = self.resized_size(height, width)
        return math.ceil(rh / self.patch), math.ceil(rw / self.patch)

    def to_sam_coords(self, points: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Continuous pixel coords ``[..., 2]`` (x, y; pixel centres at ``+0.5``) -> SAM prompt coords.

        SAM's prompt encoder adds ``0.5`` to its inputs (pixel index -> centre) in the resized frame,
        so the exact map is ``c * (W'/W, H'/H) - 0.5``. ``SamPredictor`` (``transform.apply_coords``)
        maps an original pixel index ``q`` to ``q * (W'/W, H'/H)``, so our ``c`` equals the
        predictor's ``q = c - 0.5 * (W/W', H/H')`` (just ``c - 0.5`` when there is no resize).
        """
        height, width = image_size
        rh, rw = self.resized_size(height, width)
        scale = points.new_tensor([rw / width, rh / height])
        return points.float() * scale - 0.5

    # ------------------------------------------------------------------------------------- encode
    def preprocess(self, images: Tensor) -> Tensor:
        """``[N, 3, H, W]`` RGB in [0, 1] -> SAM input ``[N, 3, S, S]`` (resized, normalised, padded).

        Resizing uses ``F.interpolate(bilinear, antialias=True, align_corners=False)`` on the float
        image (SAM's predictor uses PIL bilinear on uint8; identical when no resize is needed, within
        interpolation/rounding noise otherwise). Channels stay RGB: SAM was trained on RGB
        (``Sam.image_format``); Feature 3DGS fed it OpenCV's BGR by mistake.
        """
        height, width = images.shape[-2:]
        x = images.to(self.device, torch.float32) * 255.0
        size = self.resized_size(height, width)
        if size != (height, width):
            x = F.interpolate(x, size, mode="bilinear", antialias=True, align_corners=False)
        return self.sam.preprocess(x)  # (x - pixel_mean) / pixel_std, zero-pad bottom/right to S x S

    @torch.no_grad()
    def encode(self, images: Tensor, labels: Tensor | None = None, instances: Tensor | None = None) -> Tensor:
        """``images [N, 3, H, W]`` RGB in [0, 1] -> valid embedding ``[N, 256, h, w]`` (:meth:`output_size`)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
        h, w = self.output_size(*images.shape[-2:])
        out = [self.sam.image_encoder(self.preprocess(chunk))[..., :h, :w] for chunk in images.split(self.max_batch)]
        return torch.cat(out)

    def pad_embeddings(self, embeddings: Tensor) -> Tensor:
        """Valid-region ``[N, 256, h, w]`` -> full SAM grid ``[N, 256, G, G]`` (zeros outside; differentiable)."""
        h, w = embeddings.shape[-2:]
        return F.pad(embeddings, (0, self.grid[1] - w, 0, self.grid[0] - h))

    # ------------------------------------------------------------------------------------- decode
    def decode(
        self,
        embeddings: Tensor,
        points: Tensor,
        point_labels: Tensor | None = None,
        multimask: bool = True,
        *,
        image_size: tuple[int, int],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """SAM prompt encoder + mask decoder on any embedding in :meth:`encode`'s layout.

        Args:
            embeddings: ``[N, 256, h, w]`` with ``(h, w) = output_size(*image_size)``; gradients flow
                back into it (SAM's own weights stay frozen).
            points: ``[N, P, 2]`` (one single-point prompt each) or ``[N, P, K, 2]`` (``K`` points per
                prompt), continuous (x, y) pixel coords of the ``H x W`` input image.
            point_labels: ``[N, P]`` / ``[N, P, K]``, 1 foreground, 0 background; default all 1.
            multimask: three masks per prompt (SAM's ambiguity outputs) or one.
            image_size: ``(H, W)`` of the input image.

        Returns:
            masks ``[N, P, M, H, W]`` logits (``M`` = 3 or 1; postprocessed as ``Sam.postprocess_masks``),
            iou ``[N, P, M]`` predicted IoU, low_res ``[N, P, M, 4G, 4G]`` logits (256 x 256 for SAM).
        """
        height, width = image_size
        n, p = points.shape[:2]
        if embeddings.shape[1:] != (self.dim, *self.output_size(height, width)):
            raise ValueError(f"embeddings {tuple(embeddings.shape)} do not fit image {image_size}")
        if points.dim() == 3:
            points = points[:, :, None]
        if point_labels is None:
            point_labels = torch.ones(points.shape[:-1], dtype=torch.int, device=points.device)
        point_labels = point_labels.reshape(points.shape[:-1]).to(self.device, torch.int)
        coords = self.to_sam_coords(points.to(self.device), image_size)
        src = self.pad_embeddings(embeddings.to(self.device, torch.float32))
        dense_pe = self.sam.prompt_encoder.get_dense_pe()
        low, iou = [], []
        for i in range(n):  # the decoder repeats ONE image embedding over a batch of prompts
            sparse, dense = self.sam.prompt_encoder(points=(coords[i], point_labels[i]), boxes=None, masks=None)
            lo, io = self.sam.mask_decoder(src[i : i + 1], dense_pe, sparse, dense, multimask_output=multimask)
            low.append(lo)
            iou.append(io)
        low_res, iou_pred = torch.stack(low), torch.stack(iou)  # [N, P, M, 4G, 4G], [N, P, M]
        masks = self.sam.postprocess_masks(low_res.flatten(0, 1), self.resized_size(height, width), (height, width))
        return masks.unflatten(0, (n, p)), iou_pred, low_res

    # ------------------------------------------------------------------------------ automatic masks
    @torch.no_grad()
    def automatic_masks(
        self,
        images: Tensor,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        min_area: int = 1,
        scale_by: Literal["output", "area"] = "output",
        embeddings: Tensor | None = None,
    ) -> list[dict[str, Tensor]]:
        """Three-scale automatic masks per image, for hierarchical-context-aware pooling.

        ``SamAutomaticMaskGenerator`` (one crop layer) re-implemented on :meth:`decode`, batched and
        without re-encoding: a ``points_per_side^2`` grid of single-point prompts (cell centres),
        three multimask outputs each; keep masks with predicted IoU ``> pred_iou_thresh`` and
        stability ``>= stability_score_thresh`` (each filter off when its threshold is ``<= 0``) and
        area ``>= min_area``; then box NMS (``torchvision.ops.batched_nms``) by predicted IoU.

        ``scale_by="output"`` (LangSplat's convention): multimask output 0/1/2 -> small/medium/large,
        NMS within each scale; order within a scale: predicted IoU, descending.
        ``scale_by="area"``: NMS over all masks, then area terciles (sorted by area, split into three
        near-equal counts), each ascending in area.

        Args:
            images: ``[N, 3, H, W]`` RGB in [0, 1].
            embeddings: optional precomputed :meth:`encode` output ``[N, 256, h, w]``.

        Returns:
            per image ``{"small": [M_s, H, W] bool, "medium": [M_m, H, W] bool, "large": [M_l, H, W] bool}``.
        """
        from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score
        from torchvision.ops import batched_nms

        height, width = images.shape[-2:]
        embeddings = self.encode(images) if embeddings is None else embeddings
        t = (torch.arange(points_per_side, dtype=torch.float32, device=self.device) + 0.5) / points_per_side
        gy, gx = torch.meshgrid(t * height, t * width, indexing="ij")
        grid = torch.stack([gx, gy], -1).reshape(-1, 2)  # [P, 2] continuous (x, y)
        results = []
        for emb in embeddings:
            masks, scores, scale = [], [], []
            for pts in grid.split(points_per_batch):
                logits, iou, _ = self.decode(emb[None], pts[None], image_size=(height, width))
                logits, iou = logits[0].flatten(0, 1), iou[0].flatten()  # [B*3, H, W], [B*3]
                keep = (logits > self.sam.mask_threshold).flatten(1).sum(1) >= max(min_area, 1)
                if pred_iou_thresh > 0:
                    keep &= iou > pred_iou_thresh
                if stability_score_thresh > 0:
                    stab = calculate_stability_score(logits, self.sam.mask_threshold, stability_score_offset)
                    keep &= stab >= stability_score_thresh
                masks.append(logits[keep] > self.sam.mask_threshold)
                scores.append(iou[keep])
                scale.append(torch.arange(iou.numel(), device=iou.device)[keep] % 3)  # multimask index
            masks, scores, scale = torch.cat(masks), torch.cat(scores), torch.cat(scale)
            by_output = scale_by == "output"
            groups = scale if by_output else torch.zeros_like(scale)
            keep = batched_nms(batched_mask_to_box(masks).float(), scores, groups, box_nms_thresh)
            masks, scale = masks[keep], scale[keep]
            if by_output:
                results.append({name: masks[scale == s] for s, name in enumerate(SCALES)})
            else:
                order = masks.flatten(1).sum(1).argsort(stable=True)
                results.append(dict(zip(SCALES, masks[order].tensor_split(3))))
        return results


class SAMMaskTeacher(nn.Module):
    """SAM's three-scale automatic masks as a cacheable teacher (``make_shards --teacher sam_masks:...``).

    Wraps a :class:`SAMTeacher`; :meth:`masks` is :meth:`SAMTeacher.automatic_masks` with the
    options given at construction (the defaults are those the training loop uses online).
    """

    name = "sam_masks"
    produces = "masks"

    def __init__(self, sam: SAMTeacher, **options) -> None:
        super().__init__()
        allowed = set(inspect.signature(SAMTeacher.automatic_masks).parameters) - {"self", "images", "embeddings"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(f"teacher sam_masks: unknown option {unknown[0]!r}; choose from {sorted(allowed)}")
        self.sam, self.options = sam, dict(options)

    def masks(self, images: Tensor) -> list[dict[str, Tensor]]:
        """``images [N, 3, H, W]`` in [0, 1] -> per image ``{"small", "medium", "large": [K, H, W] bool}``."""
        return self.sam.automatic_masks(images, **self.options)


@register_teacher("sam_masks", produces="masks")
def build_sam_mask_teacher(
    checkpoint: str | None = None,
    model_type: str = "vit_b",
    device: str | torch.device = "cpu",
    builder: Callable[[], Sam] | None = None,
    max_batch: int = 8,
    **options,
) -> SAMMaskTeacher:
    """Config factory: ``sam_masks:checkpoint=...,model_type=vit_b[,points_per_side=32,...]``; the
    other keys are :meth:`SAMTeacher.automatic_masks` options."""
    sam = SAMTeacher.from_checkpoint(
        checkpoint, model_type=model_type, builder=builder, device=device, max_batch=max_batch
    )
    return SAMMaskTeacher(sam, **options)


@register_teacher("sam")
def build_sam_teacher(
    checkpoint: str | None = None,
    model_type: str = "vit_b",
    device: str | torch.device = "cpu",
    builder: Callable[[], Sam] | None = None,
    **kw,
) -> SAMTeacher:
    """Config factory: ``teachers.segmentation.kwargs.{checkpoint, model_type}`` (``vit_b``/``vit_l``/``vit_h``/``default``)."""
    return SAMTeacher.from_checkpoint(checkpoint, model_type=model_type, builder=builder, device=device, **kw)
