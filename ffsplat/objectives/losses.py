"""Training losses of SemanticSplat (sec. 3.4-3.6): photometric, feature distillation, mask
consistency and hierarchical-context-aware (HCAM) pooling.

All functions are pure and differentiable w.r.t. their first argument; teacher inputs are treated
as constants (detached). Shapes use ``N`` images, ``C`` channels, ``P`` prompts, ``M`` masks per
prompt, ``H x W`` image / feature grids; ``...`` is any number of leading dimensions.

* :func:`photometric_loss` -- ``L1 + 0.05 LPIPS(VGG)`` (eq. 8); LPIPS only when local VGG16 weights exist.
* :func:`cosine_distillation` -- ``1 - cos`` between an expanded rendered feature map and a teacher
  map (eqs. 2 and 6).
* :func:`mask_consistency_loss` -- focal + dice / 20 between mask logits decoded from rendered
  embeddings and from teacher embeddings (eqs. 3-5).
* :func:`class_balance_weights` -- per-pixel weights evening out a closed-vocabulary teacher's
  classes (``loss.class_balance``).
* :func:`class_cross_entropy` -- cross-entropy over a closed-vocabulary teacher's class rows
  (``loss.class_ce``).
* :func:`hcam_pool` / :func:`language_loss` -- mask-average pooling at three scales (eq. 7) before
  the language distillation loss.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffsplat.core.errors import InputError
from ffsplat.core.weights import mismatch, read_weights, state_dict_of
from ffsplat.teachers.base import require_file

SCALES = ("small", "medium", "large")
"""Mask scales of hierarchical pooling, in SAM's multimask-output order (as in ``teachers.sam``)."""

LPIPS_VGG_KEY = "loss.lpips_vgg_path"
"""Config key of the local torchvision VGG16 ImageNet state dict (``vgg16-397923af.pth``)."""


# ------------------------------------------------------------------------------------------ LPIPS
def _lpips_vgg_state(vgg_state: dict[str, Tensor], trunk: nn.Module, path: object = "") -> dict[str, Tensor]:
    """Map torchvision VGG16 keys (``features.<i>.<param>``) onto lpips' trunk (``slice<k>.<i>.<param>``).

    lpips' ``pretrained_networks.vgg16`` copies ``torchvision.models.vgg16().features[i]`` into
    ``slice1`` (i = 0..3), ``slice2`` (4..8), ``slice3`` (9..15), ``slice4`` (16..22) and ``slice5``
    (23..29) under the module name ``str(i)``, so every trunk parameter ``slice<k>.<i>.<p>`` is
    ``features.<i>.<p>`` of the torchvision state dict (the 13 conv layers; ``classifier.*`` unused).
    """
    mapped = {}
    for name in trunk.state_dict():
        _, index, param = name.split(".", 2)  # "slice3.10.weight" -> ("slice3", "10", "weight")
        key = f"features.{index}.{param}"
        if key not in vgg_state:
            raise InputError(f"{LPIPS_VGG_KEY}: {path}: {key} missing; expected torchvision's vgg16 state dict")
        mapped[name] = vgg_state[key]
    return mapped


class LPIPSLoss(nn.Module):
    """LPIPS (VGG trunk, v0.1 linear layers) without any download; frozen.

    The linear calibration layers ship inside the ``lpips`` package (``lpips/weights/v0.1/vgg.pth``);
    the VGG16 trunk is torchvision's ImageNet model, read from the local state dict ``vgg_path``
    (``vgg16-397923af.pth``, config ``loss.lpips_vgg_path``). Gradients flow to the inputs only.

    Args:
        vgg_path: torchvision VGG16 state dict file. A missing file raises FileNotFoundError naming
            the config key (use :func:`make_lpips` for the optional, warn-and-skip behaviour).
    """

    def __init__(self, vgg_path: str | Path) -> None:
        super().__init__()
        import lpips  # imports torchvision: ``import ffsplat`` has installed the CPU shim

        path = require_file(vgg_path, LPIPS_VGG_KEY)
        what = "torchvision VGG16 state dict"  # read (weights_only) and checked before the network is built
        state = state_dict_of(read_weights(path, LPIPS_VGG_KEY, what), LPIPS_VGG_KEY, path, what)
        with warnings.catch_warnings():  # torchvision's "pretrained is deprecated" from lpips' trunk
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        mapped = _lpips_vgg_state(state, self.model.net, path)
        ours = self.model.net.state_dict()
        shapes = [k for k, v in mapped.items() if tuple(v.shape) != tuple(ours[k].shape)]
        if shapes:
            raise mismatch(LPIPS_VGG_KEY, path, what, [], [], shapes)
        self.model.net.load_state_dict(mapped, strict=True)
        self.model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPSLoss:
        """Stays in eval mode (no dropout) whatever its parent does."""
        return super().train(False)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """LPIPS distance per image.

        Args:
            pred: ``[..., 3, H, W]`` RGB in ``[0, 1]``.
            target: ``[..., 3, H, W]`` RGB in ``[0, 1]``.

        Returns:
            ``[...]`` distances (0 for identical images).
        """
        if pred.shape != target.shape or pred.shape[-3] != 3:
            raise ValueError(f"expected matching [..., 3, H, W] images, got {tuple(pred.shape)}, {tuple(target.shape)}")
        lead = pred.shape[:-3]
        x = pred.reshape(-1, *pred.shape[-3:]).float() * 2 - 1  # lpips expects [-1, 1]
        y = target.reshape(-1, *target.shape[-3:]).float().detach() * 2 - 1
        return self.model(x, y).reshape(lead)


def make_lpips(vgg_path: str | Path | None) -> LPIPSLoss | None:
    """:class:`LPIPSLoss` from local VGG16 weights, or ``None`` (with one warning) when they are absent.

    The photometric loss then falls back to L1 only, as DESIGN.md allows ("LPIPS only when its
    weights are available locally").
    """
    if not vgg_path or not Path(vgg_path).expanduser().is_file():
        warnings.warn(
            f"LPIPS disabled: no local VGG16 weights at {vgg_path!s} ({LPIPS_VGG_KEY}); photometric loss is L1 only",
            stacklevel=2,
        )
        return None
    return LPIPSLoss(vgg_path)


def photometric_loss(
    pred: Tensor, target: Tensor, lpips: LPIPSLoss | None = None, lpips_weight: float = 0.05
) -> dict[str, Tensor]:
    """SemanticSplat eq. 8: ``L1 + lpips_weight * LPIPS``, both means over images.

    Args:
        pred: rendered ``[..., 3, H, W]`` RGB in ``[0, 1]``.
        target: ground truth ``[..., 3, H, W]``.
        lpips: an :class:`LPIPSLoss`, or ``None`` (then ``"lpips"`` is 0 and ``"total" = "l1"``).

    Returns:
        ``{"l1", "lpips", "total"}`` scalars.
    """
    target = target.detach()
    l1 = (pred - target).abs().mean()
    lp = lpips(pred, target).mean() if lpips is not None else l1.new_zeros(())
    return {"l1": l1, "lpips": lp, "total": l1 + lpips_weight * lp}


# ------------------------------------------------------------------------------- distillation
def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``[..., C, h, w]`` to ``[..., C, *size]`` (``align_corners=False``).

    Downsampling (in either axis) uses ``antialias=True``, i.e. an area-like triangle filter, so a
    fine map is averaged over each coarse cell instead of point-sampled (what a patch-grid teacher
    such as SAM's 16-pixel patches sees). Identity when the size already matches.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    # float32: CPU has no bf16 antialiased kernel, and CUDA autocast runs interpolation in float32 too
    out = F.interpolate(flat.float(), size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return out.reshape(*lead, *out.shape[-3:])


def cosine_distillation(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean ``1 - cos(pred, target)`` over pixels (SemanticSplat eqs. 2 and 6).

    If ``pred``'s grid differs from ``target``'s, ``pred`` is first resized to it with
    :func:`resize_to` (bilinear; antialiased when shrinking); the loss lives on the teacher's grid.

    Args:
        pred: ``[..., C, h', w']`` rendered (expanded) features.
        target: ``[..., C, h, w]`` teacher features (detached).
        mask: optional ``[..., h, w]`` validity (bool) or weights (float) on the teacher grid.

    Returns:
        scalar in ``[0, 2]``: 0 for features equal up to a positive scale, 1 for orthogonal, 2 for opposite.
        Zero vectors count as orthogonal. With a mask: ``sum(w * (1 - cos)) / max(sum(w), eps)``.
    """
    if pred.shape[:-2] != target.shape[:-2]:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ beyond the grid")
    pred = resize_to(pred, tuple(target.shape[-2:]))
    dist = 1 - F.cosine_similarity(pred, target.detach().to(pred.dtype), dim=-3, eps=1e-8)  # [..., h, w]
    if mask is None:
        return dist.mean()
    weight = mask.to(dist.dtype).expand_as(dist)
    return (dist * weight).sum() / weight.sum().clamp_min(1e-8)


def class_balance_weights(target: Tensor, class_table: Tensor, power: float) -> Tensor:
    """Per-pixel weights that even out a closed-vocabulary teacher's classes in a batch.

    Each teacher pixel is assigned its nearest class (cosine argmax over ``class_table``, the rows
    the teacher's features are mixtures of); class ``k`` covering a fraction ``f_k`` of the batch's
    pixels gets weight ``f_k ** -power``, and the weights are scaled to mean 1 over the pixels, so
    the loss keeps its scale. ``power`` 0 gives uniform weights (plain distillation), 1 gives every
    class present the same total weight (inverse frequency), 0.5 the inverse square root. Without
    it, a teacher whose maps are ~90 % background (ESPNetv2 on indoor frames) is best matched by a
    field that says "background" everywhere.

    Args:
        target: ``[..., C, h, w]`` teacher features.
        class_table: ``[K, C]`` (``ffsplat.teachers.base.teacher_class_table``).
        power: exponent in ``[0, 1]``.
    Returns:
        ``[..., h, w]`` float weights (no gradient), for ``cosine_distillation(..., mask=weights)``.
    """
    labels = teacher_class_labels(target, class_table)
    freq = torch.bincount(labels.reshape(-1), minlength=len(class_table)).float() / labels.numel()
    weights = freq.pow(-float(power))[labels]  # only classes present are indexed (freq > 0)
    return weights / weights.mean()


def teacher_class_labels(target: Tensor, class_table: Tensor) -> Tensor:
    """``[..., h, w]`` long: the class row of ``class_table [K, C]`` nearest (cosine) to each pixel of
    the closed-vocabulary teacher features ``target [..., C, h, w]`` (the argmax of the teacher's
    class probabilities, as its features are normalised mixtures of nearly orthogonal rows)."""
    t = F.normalize(target.detach().float(), dim=-3)
    table = F.normalize(class_table.to(t), dim=-1)
    return torch.einsum("...chw,kc->...khw", t, table).argmax(dim=-3)


CLASS_CE_TEMPERATURE = 0.1
"""Temperature of :func:`class_cross_entropy`'s cosine logits (LSeg scales them by ~1/0.07)."""


def class_cross_entropy(pred: Tensor, target: Tensor, class_table: Tensor, weights: Tensor | None = None,
                        temperature: float = CLASS_CE_TEMPERATURE) -> Tensor:  # fmt: skip
    """Closed-vocabulary cross-entropy (LSeg's objective): logits ``cos(pred, class_table[k]) /
    temperature``, labels the teacher's classes (:func:`teacher_class_labels` of ``target``).

    The cosine distillation of a pixel the teacher calls 55 % chair and 45 % background is nearly
    as well served by "background" as by "chair"; this term makes the field rank the teacher's class
    first, which is what classification, ``--query`` and per-Gaussian classes read.

    Args:
        pred: ``[..., C, h', w']`` rendered (expanded) features; resized to ``target``'s grid
            as in :func:`cosine_distillation`.
        target: ``[..., C, h, w]`` teacher features (detached).
        class_table: ``[K, C]`` the teacher's class rows (background included where it has one).
        weights: optional ``[..., h, w]`` per-pixel weights (:func:`class_balance_weights`).
    Returns:
        scalar: the (weighted) mean cross-entropy over pixels.
    """
    if pred.shape[:-2] != target.shape[:-2]:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ beyond the grid")
    labels = teacher_class_labels(target, class_table)
    pred = F.normalize(resize_to(pred, tuple(target.shape[-2:])).float(), dim=-3)
    logits = torch.einsum("...chw,kc->...khw", pred, F.normalize(class_table.to(pred), dim=-1)) / temperature
    ce = F.cross_entropy(logits.reshape(-1, *logits.shape[-3:]), labels.reshape(-1, *labels.shape[-2:]),
                         reduction="none").reshape(labels.shape)  # fmt: skip
    if weights is None:
        return ce.mean()
    w = weights.to(ce.dtype).expand_as(ce)
    return (ce * w).sum() / w.sum().clamp_min(1e-8)


# ------------------------------------------------------------------------------------ mask loss
def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Focal loss (Lin et al. 2017, eq. 3) on sigmoid probabilities, mean over all elements.

    ``FL = -alpha_t (1 - p_t)^gamma log(p_t)`` with ``p_t = p`` for positives, ``1 - p`` otherwise and
    ``alpha_t = alpha`` / ``1 - alpha`` (``alpha < 0`` disables the weighting); identical to
    ``torchvision.ops.sigmoid_focal_loss(..., reduction="mean")``, as used by SAM / RetinaNet.

    Args:
        logits: ``[...]`` mask logits.
        targets: ``[...]`` binary targets (bool or float in ``{0, 1}``; soft values are allowed).
    """
    targets = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean()


def dice_loss(logits: Tensor, targets: Tensor, eps: float = 1.0) -> Tensor:
    """Soft Dice loss (Milletari et al. 2016, eq. 4) per mask, mean over masks.

    ``d = 1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps)`` over the last two (spatial) dims, with
    ``p = sigmoid(logits)``; ``eps = 1`` is DETR/Mask2Former's smoothing (so an empty prediction of an
    empty target gives 0). Perfect masks give 0; disjoint hard masks of areas ``a, b`` give
    ``1 - eps / (a + b + eps)`` (-> 1 as ``eps`` -> 0).

    Args:
        logits: ``[..., H, W]``; each leading index is one mask.
        targets: ``[..., H, W]`` binary.
    """
    p = torch.sigmoid(logits).flatten(-2)
    t = targets.to(p.dtype).flatten(-2)
    num = 2 * (p * t).sum(-1) + eps
    den = p.sum(-1) + t.sum(-1) + eps
    return (1 - num / den).mean()


def mask_consistency_loss(pred_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """SemanticSplat eq. 5: ``focal + dice / 20`` (the 20:1 focal:dice ratio of SAM's training).

    Targets are the teacher's hard masks ``teacher_logits > 0`` (detached).

    Args:
        pred_logits: ``[N, P, M, H, W]`` mask logits decoded from the rendered embeddings.
        teacher_logits: ``[N, P, M, H, W]`` mask logits decoded from the teacher embeddings.

    Returns:
        scalar loss.
    """
    if pred_logits.shape != teacher_logits.shape:
        raise ValueError(f"mask logits differ: {tuple(pred_logits.shape)} vs {tuple(teacher_logits.shape)}")
    targets = (teacher_logits.detach() > 0).to(pred_logits.dtype)
    return sigmoid_focal_loss(pred_logits, targets) + dice_loss(pred_logits, targets) / 20


# ------------------------------------------------------------------------------------------ HCAM
def _resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """``[K, h, w]`` bool -> ``[K, *size]`` bool by nearest neighbour."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size))
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks[None].float(), size=size, mode="nearest")[0] > 0.5


def hcam_pool_single(features: Tensor, masks: Tensor) -> Tensor:
    """Mask-average pooling of one image at one scale (SemanticSplat eq. 7).

    Every mask ``k`` gets its mean feature ``mu_k = sum(L * M_k) / sum(M_k)``; a pixel covered by
    masks ``K(x)`` takes ``mean_{k in K(x)} mu_k``; a pixel covered by no mask keeps its feature.
    Empty masks are ignored. Vectorised as two matmuls with the flattened masks.

    Args:
        features: ``[C, H, W]``.
        masks: ``[K, H, W]`` bool (``K`` may be 0) on the same grid.

    Returns:
        ``[C, H, W]``; differentiable w.r.t. ``features``.
    """
    c, h, w = features.shape
    m = masks.reshape(masks.shape[0], h * w).to(features.dtype)  # [K, HW]
    m = m[m.sum(1) > 0]
    if m.shape[0] == 0:
        return features
    flat = features.reshape(c, h * w)  # [C, HW]
    means = (m @ flat.T) / m.sum(1, keepdim=True)  # [K, C]
    count = m.sum(0)  # [HW] masks covering each pixel
    pooled = (m.T @ means).T / count.clamp_min(1)  # [C, HW]
    return torch.where(count > 0, pooled, flat).reshape(c, h, w)


def hcam_pool(features: Tensor, masks: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Hierarchical-context-aware pooling at the three scales (SemanticSplat eq. 7).

    Args:
        features: ``[N, C, H, W]`` expanded language features.
        masks: one dict per image ``{"small", "medium", "large"} -> [K, h, w]`` bool (e.g.
            ``SAMTeacher.automatic_masks`` or ``prompting.label_hierarchy_masks``); resized to
            ``H x W`` by nearest neighbour when their grid differs; a missing scale means no masks.

    Returns:
        ``{scale: [N, C, H, W]}`` pooled features (see :func:`hcam_pool_single`).
    """
    n, _, h, w = features.shape
    if len(masks) != n:
        raise ValueError(f"{len(masks)} mask sets for {n} images")
    out = {}
    for scale in SCALES:
        pooled = []
        for feat, item in zip(features, masks):
            m = item.get(scale)
            m = features.new_zeros((0, h, w), dtype=torch.bool) if m is None else m.to(features.device).bool()
            pooled.append(hcam_pool_single(feat, _resize_masks(m, (h, w))))
        out[scale] = torch.stack(pooled)
    return out


def language_loss(
    expanded: Tensor, target: Tensor, masks: list[dict[str, Tensor]] | None = None, weights: Tensor | None = None
) -> dict[str, Tensor]:
    """Stage-2 language distillation (SemanticSplat eqs. 6, 7, 10).

    ``"plain"`` is ``cosine_distillation(expanded, target)``. With masks, each scale's pooled
    features give ``"hcam_<scale>" = cosine_distillation(hcam_pool(expanded)[scale], target)`` and
    ``"hcam"`` is their mean. The paper pools "for each scale" before the cosine loss but does not
    say how scales (or the unpooled term) combine; we take ``"total"`` = the mean of the four terms
    (plain, small, medium, large), which keeps the per-pixel term (so pixels no mask covers still
    learn) and weighs the scales equally. Without masks ``"total" = "plain"``.

    Args:
        expanded: ``[N, C, H, W]`` rendered language features expanded to the teacher's channels.
        target: ``[N, C, h, w]`` teacher (LSeg) features; ``expanded`` is resized to this grid.
        masks: per-image three-scale masks (see :func:`hcam_pool`) or ``None``.
        weights: ``[N, h, w]`` per-pixel weights on the teacher grid for every term (e.g.
            :func:`class_balance_weights`), or ``None`` (uniform).

    Returns:
        ``{"plain", "total"}`` plus ``{"hcam", "hcam_small", "hcam_medium", "hcam_large"}`` with masks.
    """
    plain = cosine_distillation(expanded, target, weights)
    if masks is None:
        return {"plain": plain, "total": plain}
    pooled = hcam_pool(expanded, masks)
    out = {"plain": plain}
    for scale in SCALES:
        out[f"hcam_{scale}"] = cosine_distillation(pooled[scale], target, weights)
    terms = [out[f"hcam_{s}"] for s in SCALES]
    out["hcam"] = torch.stack(terms).mean()
    out["total"] = torch.stack([plain, *terms]).mean()
    return out


def depth_loss(pred: Tensor, target: Tensor, min_depth: float = 1e-3, mask: Tensor | None = None) -> Tensor:
    """L1 between log depths over pixels with valid sensor depth (no scale/shift alignment: poses
    and sensor depth are metric, so the prediction is supervised in metres).

    Args:
        pred: ``[..., H, W]`` predicted z-depth (context-view depth or rendered target depth).
        target: ``[..., h, w]`` sensor z-depth; ``<= min_depth`` or non-finite = invalid. ``pred``
            is bilinearly resized to ``(h, w)`` when the sizes differ.
        mask: optional ``[..., H, W]`` bool, pixels of ``pred`` to use (e.g. rendered alpha > 0.5, so
            that empty pixels of a render, whose depth is undefined, are left out); same size as ``pred``.
    Returns:
        scalar; 0 (with a gradient path) when no pixel is valid.
    """
    if pred.shape[-2:] != target.shape[-2:]:
        lead = pred.shape[:-2]
        resize = lambda t, mode: F.interpolate(
            t.reshape(-1, 1, *t.shape[-2:]), size=target.shape[-2:], mode=mode
        ).reshape(*lead, *target.shape[-2:])  # noqa: E731
        pred = resize(pred, "bilinear")
        mask = None if mask is None else resize(mask.float(), "nearest") > 0.5
    valid = torch.isfinite(target) & (target > min_depth) & torch.isfinite(pred)
    if mask is not None:
        valid = valid & mask
    if not valid.any():
        return pred.sum() * 0.0
    diff = (pred.clamp_min(min_depth).log() - target.clamp_min(min_depth).log()).abs()
    return diff[valid].mean()
