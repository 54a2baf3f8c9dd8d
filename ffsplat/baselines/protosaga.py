"""Proto-SaGa (seed 004; ``../shared/BASELINES.md``), built on Gaga's mask association.

Training (Proto-SaGa Sec. 3.1): every Gaussian carries a 16-d embedding ``f_i`` (Adam lr 2.5e-3),
rendered like a colour with live geometry (the CE gradient reaches geometry: all attributes are
trained jointly). Each training view ``k`` has its own cosine classifier ``w_k`` with one row per
raw (view-inconsistent) SAM mask of that view; ``logits = tau cos(w_k, F_hat)``, ``tau = 10``;
``L = L_rgb + 0.05 CE`` (classifier lr 5e-4).

Association (Gaga + Proto-SaGa Sec. 3.2, :func:`associate_masks`): Gaussian centres are projected
into each view (pixel = the one containing the projection). For each raw mask and each patch of
the image (Gaga's code splits the image into a ``num_patches x num_patches`` = 32 x 32 *grid* of
patches; that is what "per 32x32 patch" refers to), keep the front ``delta_d = 0.2`` fraction by
depth (at least one; Eq. 10), united (Eq. 16) with the top ``delta_s = 0.2`` fraction by the view
classifier's softmax probability of that mask evaluated on the Gaussian's own embedding (Eqs. 14,
15; ranked within the same mask x patch groups). The first view seeds the memory bank; each later
mask joins the best entry when ``|B cap G| / |G| > delta = 0.1`` (Proto-SaGa Eq. 12; Gaga's code
uses ``|B cap G| / (|G| + |B cap G|)``: ``overlap="gaga"``), else opens a new entry. As in
Gaga's code, masks of a view are processed in id order against the bank updated so far, and a
merge adds only Gaussians not yet assigned to any entry (a new entry takes all of its Gaussians).

Inference (Sec. 3.3): prototype of consistent id ``t`` = mean rendered embedding over its pixels
in each training view, averaged over the views containing it; a pixel's label is the id of the
prototype with the highest cosine similarity. No classifier is trained for it.

Choices of this re-implementation:

* Raw masks: per-view integer maps (0 = no mask), given to the constructor or taken from
  ``data.instances`` (the stand-in for SAM's automatic masks on synthetic data; their ids need not
  agree across views). SAM's overlapping multi-granularity masks are not modelled.
* Embedding initialisation ``N(0, 0.1^2)`` and classifier rows ``N(0, 1)``: unpublished.
* The probability criterion is skipped with ``use_probs=False`` (Gaga's depth-only association).
* Evaluation (:func:`instance_metrics`): Gaga's protocol, :func:`ffsplat.objectives.metrics.gaga_instance_miou`
  (per-view IoU, Hungarian matching, unmatched ground truth scored 0, precision / recall at IoU > 0.5).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffsplat.baselines.trainer import SceneMethod, SceneTrainer
from ffsplat.core.geometry import project_points
from ffsplat.objectives.metrics import gaga_instance_miou
from ffsplat.render.renderer import RenderOutput, render
from ffsplat.core.types import Cameras, Gaussians, Views

IGNORE = -1


class CosineClassifier(nn.Module):
    """``logits = tau * cos(w_m, x)`` for ``M`` rows ``w_m`` of dimension ``D``."""

    def __init__(self, num_classes: int, dim: int, tau: float = 10.0):
        super().__init__()
        self.tau = tau
        self.weight = nn.Parameter(torch.randn(num_classes, dim))

    def forward(self, x: Tensor) -> Tensor:
        """``[..., D]`` -> ``[..., M]``."""
        return self.tau * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T


def raw_mask_rows(masks: Tensor) -> tuple[list[Tensor], Tensor]:
    """Per view: the sorted nonzero mask ids, and the map of row indices (``IGNORE`` where id 0).

    Args: ``masks`` ``[V, H, W]`` int. Returns: ``ids`` (V tensors), ``rows`` ``[V, H, W]`` int64.
    """
    ids, rows = [], torch.full_like(masks, IGNORE, dtype=torch.long)
    for v in range(len(masks)):
        u = torch.unique(masks[v])
        u = u[u != 0]
        ids.append(u)
        nz = masks[v] != 0
        rows[v][nz] = torch.searchsorted(u, masks[v][nz])
    return ids, rows


def _front_fraction(gauss: Tensor, group: Tensor, key: Tensor, fraction: float) -> Tensor:
    """Bool per entry: among entries of the same ``group``, the first ``max(int(fraction n), 1)``
    by ascending ``key`` (Gaga: ``max(int(p * len), 1)``)."""
    order = torch.argsort(key, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    g = group[order]
    counts = torch.bincount(g)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=group.device) - starts[g]
    keep_n = (counts.double() * fraction).floor().long().clamp_min(1)
    out = torch.zeros_like(group, dtype=torch.bool)
    out[order] = rank < keep_n[g]
    return out


@torch.no_grad()
def associate_masks(
    means: Tensor,
    cameras: Cameras,
    masks: Tensor,
    probs: list[Tensor] | None = None,
    *,
    delta_d: float = 0.2,
    delta_s: float = 0.2,
    delta: float = 0.1,
    num_patches: int = 32,
    overlap: Literal["protosaga", "gaga"] = "protosaga",
) -> tuple[Tensor, list[Tensor]]:
    """Gaga / Proto-SaGa memory-bank association of per-view raw masks (see the module doc).

    Args:
        means: ``[N, 3]`` Gaussian centres.
        cameras: ``[V]`` (or ``[1, V]``) cameras at the masks' size ``(H, W)``.
        masks: ``[V, H, W]`` int raw mask ids per view (0 = no mask; ids need not agree across views).
        probs: per view ``[N, M_v]`` softmax probabilities of each Gaussian for the view's masks, in
            the order of the view's sorted nonzero ids; None for depth-only (Gaga).
        delta_d, delta_s: front fractions by depth / by probability per mask x patch.
        delta: overlap threshold to join a memory-bank entry.
        num_patches: the image is split into ``num_patches x num_patches`` patches.
        overlap: "protosaga" ``|B cap G| / |G|`` or "gaga" ``|B cap G| / (|G| + |B cap G|)``.
    Returns:
        ``consistent`` ``[V, H, W]`` int64 ids (0 = none, 1..E = memory-bank entry) and the bank
        (E index tensors of Gaussians).
    """
    cams = cameras.reshape(-1)
    v_count, height, width = masks.shape
    n = len(means)
    device = means.device
    uv, z = project_points(means[None].to(cams.extrinsics.dtype).expand(v_count, -1, -1), cams.intrinsics, cams.w2c)
    px, py = uv[..., 0].floor().long(), uv[..., 1].floor().long()
    inside = (z > 0) & (px >= 0) & (px < width) & (py >= 0) & (py < height)
    ph, pw = math.ceil(height / num_patches), math.ceil(width / num_patches)
    mask_ids, rows = raw_mask_rows(masks)

    bank: list[Tensor] = []
    bank_cat = torch.zeros(0, dtype=torch.long, device=device)  # Gaussian ids of all entries
    bank_owner = torch.zeros(0, dtype=torch.long, device=device)  # their entry
    assigned = torch.zeros(n, dtype=torch.bool, device=device)
    consistent = torch.zeros(v_count, height, width, dtype=torch.long, device=device)
    for v in range(v_count):
        gauss = torch.nonzero(inside[v]).squeeze(1)
        row = rows[v][py[v, gauss], px[v, gauss]]
        hit = row != IGNORE
        gauss, row = gauss[hit], row[hit]
        patch = (py[v, gauss] // ph) * num_patches + px[v, gauss] // pw
        group = row * (num_patches * num_patches) + patch
        keep = _front_fraction(gauss, group, z[v, gauss], delta_d)
        if probs is not None:
            keep |= _front_fraction(gauss, group, -probs[v][gauss, row], delta_s)
        gauss, row = gauss[keep], row[keep]
        labels = torch.zeros(len(mask_ids[v]), dtype=torch.long, device=device)
        for r in range(len(mask_ids[v])):
            members = torch.unique(gauss[row == r])
            entry = len(bank)
            if bank and len(members):
                in_g = torch.zeros(n, dtype=torch.bool, device=device)
                in_g[members] = True
                inter = torch.bincount(bank_owner[in_g[bank_cat]], minlength=len(bank)).double()
                score = inter / len(members) if overlap == "protosaga" else inter / (len(members) + inter)
                best = int(score.argmax())
                if score[best] > delta:
                    entry = best
            if entry == len(bank):
                added = members
                bank.append(members)
            else:
                added = members[~assigned[members]]
                bank[entry] = torch.unique(torch.cat([bank[entry], added]))
            bank_cat = torch.cat([bank_cat, added])
            bank_owner = torch.cat([bank_owner, torch.full_like(added, entry)])
            assigned[added] = True
            labels[r] = entry + 1
        nz = rows[v] != IGNORE
        consistent[v][nz] = labels[rows[v][nz]]
    return consistent, bank


def instance_metrics(pred_ids: Tensor, gt_ids: Tensor, iou_threshold: float = 0.5) -> dict[str, float]:
    """Class-agnostic instance metrics (Gaga's protocol) of ``[..., V, H, W]`` id maps of one scene:
    :func:`ffsplat.objectives.metrics.gaga_instance_miou` (per-view IoU averaged over the views holding
    an instance, unmatched instances scored 0, GT 0 an instance, hits at IoU > ``iou_threshold``)."""
    pred = pred_ids.reshape(-1, *pred_ids.shape[-2:])
    gt = gt_ids.reshape(-1, *gt_ids.shape[-2:])
    return gaga_instance_miou(pred, gt, iou_threshold)


class ProtoSaGa(SceneMethod):
    """Proto-SaGa on the shared 3DGS trainer (see the module docstring).

    Args:
        dim: embedding size (16). tau: classifier temperature (10). ce_weight: lambda_CE (0.05).
        lr_embed, lr_classifier: 2.5e-3 and 5e-4.
        masks: raw per-view mask-id maps ``[1, V, H, W]`` (default: ``data.instances``).
        init_std: std of the initial embeddings (our choice).
        delta_d, delta_s, delta, num_patches, overlap: association settings (0.2, 0.2, 0.1, 32).

    After training, :meth:`associate` builds the consistent masks (``self.consistent``),
    :meth:`build_prototypes` the prototype classifier, and :meth:`predict_ids` labels views
    (both are run on first use).
    """

    name = "protosaga"
    KEY = "embed"

    def __init__(
        self,
        dim: int = 16,
        tau: float = 10.0,
        ce_weight: float = 0.05,
        lr_embed: float = 2.5e-3,
        lr_classifier: float = 5e-4,
        masks: Tensor | None = None,
        init_std: float = 0.1,
        delta_d: float = 0.2,
        delta_s: float = 0.2,
        delta: float = 0.1,
        num_patches: int = 32,
        overlap: Literal["protosaga", "gaga"] = "protosaga",
    ):
        super().__init__()
        self.dim, self.tau, self.ce_weight = dim, tau, ce_weight
        self.lr_embed, self.lr_classifier, self.init_std = lr_embed, lr_classifier, init_std
        self.raw_masks = masks
        self.assoc = dict(delta_d=delta_d, delta_s=delta_s, delta=delta, num_patches=num_patches, overlap=overlap)
        self.classifiers = nn.ModuleList()
        self.mask_ids: list[Tensor] = []  # per view: sorted raw ids (classifier row order)
        self.rows: Tensor | None = None  # [V, H, W] classifier row per pixel (IGNORE: no mask)
        self.consistent: Tensor | None = None  # [V, H, W] associated ids (0: none)
        self.prototypes: Tensor | None = None  # [T, D]
        self.prototype_ids: Tensor | None = None  # [T] consistent id of each prototype

    # ------------------------------------------------------------------ training
    def per_gaussian(self, init: Gaussians, data: Views) -> dict[str, tuple[Tensor, float]]:
        masks = self.raw_masks if self.raw_masks is not None else data.instances
        if masks is None:
            raise ValueError("ProtoSaGa: no raw masks (pass masks=... or give the views instances)")
        masks = masks.reshape(-1, *masks.shape[-2:]).to(data.images.device)
        if masks.shape != (data.images.shape[1], *data.images.shape[-2:]):
            raise ValueError(f"ProtoSaGa: raw masks {tuple(masks.shape)} must be one map per view at the image size")
        self.raw_masks = masks
        self.mask_ids, self.rows = raw_mask_rows(masks)
        device = data.images.device
        self.classifiers = nn.ModuleList(
            CosineClassifier(max(len(i), 1), self.dim, self.tau) for i in self.mask_ids
        ).to(device)
        embed = torch.randn(init.num_gaussians, self.dim, device=device) * self.init_std
        return {self.KEY: (embed, self.lr_embed)}

    def modules(self) -> list[tuple[nn.Module, float]]:
        return [(self.classifiers, self.lr_classifier)]

    def render(self, trainer: SceneTrainer, cameras: Cameras) -> RenderOutput:
        g = trainer.gaussians(features={self.KEY: trainer.params[self.KEY]})
        bg = list(trainer.cfg.background)
        return render(g, cameras, features=[self.KEY], background=bg, settings=trainer.cfg.render)

    def ce(self, out: RenderOutput, view: int) -> Tensor:
        """Cross-entropy of the view's cosine classifier on the rendered embeddings."""
        feat = out.features[self.KEY][0, 0]  # [D, H, W]
        target = self.rows[view]
        if target.shape != feat.shape[-2:]:
            target = F.interpolate(target[None, None].float(), size=feat.shape[-2:], mode="nearest")[0, 0].long()
        logits = self.classifiers[view](feat.permute(1, 2, 0))
        if not (target != IGNORE).any():
            return logits.sum() * 0
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)

    def loss(self, trainer: SceneTrainer, out: RenderOutput, view: int, step: int) -> tuple[Tensor, dict[str, float]]:
        ce = self.ce(out, view)
        return self.ce_weight * ce, {"ce": ce.item()}

    # ------------------------------------------------------------------ association and inference
    @torch.no_grad()
    def associate(self, trainer: SceneTrainer, use_probs: bool = True) -> Tensor:
        """Consistent masks ``[V, H, W]`` of the training views (stored in ``self.consistent``)."""
        embed = trainer.params[self.KEY].detach()
        probs = [torch.softmax(c(embed), dim=-1) for c in self.classifiers] if use_probs else None
        means = trainer.params["means"].detach()
        self.consistent, _ = associate_masks(means, trainer.data.cameras, self.raw_masks, probs, **self.assoc)
        self.prototypes = None
        return self.consistent

    @torch.no_grad()
    def build_prototypes(self, trainer: SceneTrainer) -> Tensor:
        """Ensemble of per-view prototypes (Eqs. 17, 18) -> ``self.prototypes`` ``[T, D]``."""
        if self.consistent is None:
            self.associate(trainer)
        sums: dict[int, Tensor] = {}
        counts: dict[int, int] = {}
        for v in range(self.consistent.shape[0]):
            feat = self.render(trainer, trainer.view(v)).features[self.KEY][0, 0]  # [D, H, W]
            ids = self.consistent[v]
            if ids.shape != feat.shape[-2:]:
                ids = F.interpolate(ids[None, None].float(), size=feat.shape[-2:], mode="nearest")[0, 0].long()
            flat, lab = feat.flatten(1).T, ids.flatten()
            for t in torch.unique(lab[lab > 0]).tolist():
                sums[t] = sums.get(t, 0) + flat[lab == t].mean(0)
                counts[t] = counts.get(t, 0) + 1
        keys = sorted(sums)
        self.prototype_ids = torch.tensor(keys, dtype=torch.long, device=trainer.params["means"].device)
        self.prototypes = torch.stack([sums[t] / counts[t] for t in keys]) if keys else torch.zeros(0, self.dim)
        return self.prototypes

    @torch.no_grad()
    def predict_ids(self, trainer: SceneTrainer, cameras: Cameras) -> Tensor:
        """Consistent instance ids ``[1, V, H, W]`` (Eq. 19: argmax cosine to the prototypes)."""
        if self.prototypes is None:
            self.build_prototypes(trainer)
        preds = []
        for v in range(cameras.batch_shape[-1]):
            feat = self.render(trainer, cameras[:, v : v + 1]).features[self.KEY][0, 0]  # [D, H, W]
            cos = F.normalize(feat.permute(1, 2, 0), dim=-1) @ F.normalize(self.prototypes, dim=-1).T
            preds.append(self.prototype_ids[cos.argmax(-1)])
        return torch.stack(preds)[None]
