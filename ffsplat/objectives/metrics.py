"""Evaluation metrics (DESIGN.md "Evaluation", as LSM / Uni3R / SemanticSplat report them).

* Novel views: :func:`psnr`, :func:`ssim` (Wang et al. 2004: Gaussian window 11, sigma 1.5),
  :func:`lpips_distance` (LPIPS-VGG through :class:`ffsplat.objectives.losses.LPIPSLoss`).
* Depth: :func:`depth_metrics` (AbsRel, delta < 1.25, RMSE against sensor depth).
* Open-vocabulary segmentation: :func:`classify_by_embeddings` and :class:`SegmentationMeter`
  (dataset-level confusion matrix, labels ``1..K``, 0 ignored).
* Promptable segmentation: :func:`promptable_iou` / :class:`PromptableMeter` (best of the three
  masks of each point prompt against the ground-truth instance under the point).
* Class-agnostic instances (Proto-SaGa / Gaga): :func:`instance_matching_miou` (Hungarian matching).

Per-image metrics return one value per image (leading dims ``...``); averaging is the caller's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ffsplat.objectives.losses import LPIPSLoss


# ------------------------------------------------------------------------------------ images
def psnr(pred: Tensor, target: Tensor, max_val: float = 1.0) -> Tensor:
    """PSNR per image, ``10 log10(max_val^2 / MSE)``.

    Args:
        pred, target: ``[..., C, H, W]`` in ``[0, max_val]``.

    Returns:
        ``[...]`` in dB (``inf`` for identical images).
    """
    mse = (pred.float() - target.float()).square().mean((-3, -2, -1))
    return 10 * torch.log10(max_val**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5, device: torch.device | str | None = None) -> Tensor:
    """``[size]`` normalised 1D Gaussian taps centred on the middle tap."""
    t = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def ssim(
    pred: Tensor,
    target: Tensor,
    max_val: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    sample_covariance: bool = False,
    padding: Literal["valid", "reflect"] = "valid",
) -> Tensor:
    """Mean SSIM per image (Wang et al. 2004), over channels and window positions.

    Gaussian-weighted local statistics (separable ``window_size`` taps, ``sigma``). Variants:

    * ``padding="valid"`` (default): only positions where the window fits in the image, as the
      original SSIM code and skimage's ``structural_similarity(..., gaussian_weights=True)``
      (reflect-pad, then crop the border);
    * ``padding="reflect"``: reflect-pad by ``window_size // 2`` and average all ``H x W``
      positions, as torchmetrics >= 1.x ``structural_similarity_index_measure`` (Uni3R, nerfstudio);
    * ``sample_covariance=True`` multiplies the (co)variances by ``n / (n - 1)``, ``n = window_size**2``:
      skimage's default ``use_sample_covariance=True``, i.e. MVSplat's ``compute_ssim`` (skimage,
      ``gaussian_weights=True``) is ``ssim(..., sample_covariance=True)``.

    Args:
        pred, target: ``[..., C, H, W]`` in ``[0, max_val]``, ``H, W >= window_size``.

    Returns:
        ``[...]`` SSIM (1 for identical images).
    """
    if pred.shape != target.shape:
        raise ValueError(f"shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    lead, (c, h, w) = pred.shape[:-3], pred.shape[-3:]
    if h < window_size or w < window_size:
        raise ValueError(f"image {h}x{w} smaller than the SSIM window {window_size}")
    x = pred.reshape(-1, c, h, w).float()
    y = target.reshape(-1, c, h, w).float()
    g = gaussian_window(window_size, sigma, x.device)

    def filt(z: Tensor) -> Tensor:  # depthwise separable Gaussian, valid region only
        z = F.conv2d(z, g.view(1, 1, 1, -1).expand(z.shape[1], 1, 1, -1), groups=z.shape[1])
        return F.conv2d(z, g.view(1, 1, -1, 1).expand(z.shape[1], 1, -1, 1), groups=z.shape[1])

    if padding == "reflect":
        pad = window_size // 2
        x, y = F.pad(x, (pad,) * 4, mode="reflect"), F.pad(y, (pad,) * 4, mode="reflect")
    elif padding != "valid":
        raise ValueError(f"padding must be 'valid' or 'reflect', got {padding!r}")
    stats = filt(torch.cat([x, y, x * x, y * y, x * y], 1))  # one conv over the 5 stacked maps
    mx, my, exx, eyy, exy = stats.split(c, 1)
    norm = window_size**2 / (window_size**2 - 1) if sample_covariance else 1.0
    vx, vy = norm * (exx - mx * mx).clamp_min(0), norm * (eyy - my * my).clamp_min(0)
    cxy = norm * (exy - mx * my)
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean((-3, -2, -1)).reshape(lead)


SSIM_VARIANTS: dict[str, dict] = {
    "skimage": {"sample_covariance": True, "padding": "valid"},
    "torchmetrics": {"sample_covariance": False, "padding": "reflect"},
}
"""Named SSIM variants of :func:`ssim`: ``skimage`` is MVSplat's / SemanticSplat's ``compute_ssim``
(``skimage.metrics.structural_similarity(..., gaussian_weights=True)``: sample covariance, border
cropped); ``torchmetrics`` is LSM's / Uni3R's ``structural_similarity_index_measure`` (population
covariance, reflect-padded border averaged). Reports name the variant they use."""


def image_ssim(pred: Tensor, target: Tensor, variant: str = "skimage") -> Tensor:
    """:func:`ssim` with the settings of a named :data:`SSIM_VARIANTS` entry (``[..., C, H, W]`` -> ``[...]``)."""
    if variant not in SSIM_VARIANTS:
        raise ValueError(f"unknown SSIM variant {variant!r}; choose one of {sorted(SSIM_VARIANTS)}")
    return ssim(pred, target, **SSIM_VARIANTS[variant])


VGG16_SHA256_PREFIX = "397923af"
"""torchvision's VGG16 ImageNet weights ``vgg16-397923af.pth``: the file name carries the first 8 hex
digits of the file's SHA-256 (torchvision's ``check_hash`` convention)."""


def check_lpips_weights(path: str | Path, sha256_prefix: str = VGG16_SHA256_PREFIX) -> Path:
    """Refuse a VGG16 file that is not torchvision's ImageNet ``vgg16-397923af.pth``.

    LPIPS numbers are only comparable with the papers' when the trunk is exactly that file, so a
    different (fine-tuned, truncated, other-version) file raises ValueError naming it and the
    expected and actual SHA-256 instead of silently giving other distances.
    """
    import hashlib

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS VGG16 weights not found at {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    if not actual.startswith(sha256_prefix):
        raise ValueError(
            f"{path}: not torchvision's VGG16 ImageNet weights (SHA-256 {actual[:16]}..., expected {sha256_prefix}...); "
            "LPIPS would not be comparable"
        )
    return path


def checked_lpips(path: str | Path, sha256_prefix: str = VGG16_SHA256_PREFIX) -> LPIPSLoss:
    """:class:`LPIPSLoss` after :func:`check_lpips_weights` (the evaluation's LPIPS)."""
    return LPIPSLoss(check_lpips_weights(path, sha256_prefix))


def lpips_distance(pred: Tensor, target: Tensor, lpips: LPIPSLoss | None) -> Tensor | None:
    """LPIPS-VGG per image (``[..., 3, H, W]`` in ``[0, 1]`` -> ``[...]``), or ``None`` without weights."""
    if lpips is None:
        return None
    with torch.no_grad():
        return lpips(pred, target)


# ------------------------------------------------------------------------------------- depth
def depth_metrics(pred: Tensor, gt: Tensor, valid: Tensor | None = None) -> dict[str, Tensor]:
    """Depth errors over valid pixels (``gt > 0``, finite, and ``valid`` if given), pooled.

    ``abs_rel = mean(|d - d*| / d*)``, ``delta_1.25 = mean(max(d / d*, d* / d) < 1.25)``,
    ``rmse = sqrt(mean((d - d*)^2))``, no scale alignment. A prediction that is not a positive
    finite depth (NaN, inf, ``<= 0``) at a valid pixel is a *failure*, never dropped: it fails
    ``delta_1.25`` and counts as ``d = 0`` in ``abs_rel`` (error 1) and ``rmse`` (error ``d*``), so a
    method cannot improve its score by returning NaN where it is unsure. ``invalid_pred`` is the
    fraction of valid pixels with such a prediction. Pass one image to get per-image values.

    Args:
        pred, gt: ``[...]`` z-depth in metres (same shape).
        valid: optional ``[...]`` bool mask.

    Returns:
        ``{"abs_rel", "delta_1.25", "rmse", "invalid_pred"}`` scalars (NaN when no pixel is valid).
    """
    pred, gt = pred.float(), gt.float()
    mask = (gt > 0) & torch.isfinite(gt)
    if valid is not None:
        mask &= valid.bool()
    d, t = pred[mask], gt[mask]
    if d.numel() == 0:
        nan = pred.new_tensor(float("nan"))
        return {"abs_rel": nan, "delta_1.25": nan, "rmse": nan, "invalid_pred": nan}
    bad = ~(torch.isfinite(d) & (d > 0))
    d = torch.where(bad, torch.zeros_like(d), d)
    ratio = torch.maximum(d / t, t / d.clamp_min(1e-12))
    ratio = torch.where(bad, torch.full_like(ratio, float("inf")), ratio)
    return {
        "abs_rel": ((d - t).abs() / t).mean(),
        "delta_1.25": (ratio < 1.25).float().mean(),
        "rmse": (d - t).square().mean().sqrt(),
        "invalid_pred": bad.float().mean(),
    }


# ----------------------------------------------------------------------------- segmentation
def classify_by_embeddings(features: Tensor, class_embeddings: Tensor, background: Tensor | None = None) -> Tensor:
    """Per-pixel class by cosine similarity to class (text) embeddings.

    Args:
        features: ``[N, C, H, W]`` (e.g. expanded language features).
        class_embeddings: ``[K, C]``.
        background: ``[C]`` or None: a closed-vocabulary teacher's "none of the classes" embedding
            (ESPNetv2's PASCAL background). Pixels closer to it than to every class get id 0.

    Returns:
        ``[N, H, W]`` int64 class ids in ``1..K`` (``argmax_k cos + 1``), or 0 where ``background``
        is the closest (0 is "ignored"/"unlabelled" everywhere).
    """
    return label_ids(class_similarity(features, label_rows(class_embeddings, background)), background)


def label_rows(class_embeddings: Tensor, background: Tensor | None) -> Tensor:
    """``[K (+1), C]``: the class embeddings with the background row (if any) appended last."""
    if background is None:
        return class_embeddings
    return torch.cat([class_embeddings, background.reshape(1, -1).to(class_embeddings)])


def label_ids(scores: Tensor, background: Tensor | None) -> Tensor:
    """``[N, K (+1), H, W]`` scores over :func:`label_rows` -> ids ``1..K``, 0 where the appended
    background row wins."""
    idx = scores.argmax(1)
    if background is None:
        return idx + 1
    return torch.where(idx == scores.shape[1] - 1, torch.zeros_like(idx), idx + 1)


def class_similarity(features: Tensor, class_embeddings: Tensor) -> Tensor:
    """Cosine ``[N, K, H, W]`` between per-pixel features ``[N, C, H, W]`` and class embeddings ``[K, C]``."""
    f = F.normalize(features.float(), dim=1)
    e = F.normalize(class_embeddings.to(f), dim=-1)
    return torch.einsum("nchw,kc->nkhw", f, e)


class SegmentationMeter:
    """Semantic segmentation mIoU / pixel accuracy over a whole dataset.

    A confusion matrix ``[K + 1, K + 1]`` (rows target, columns prediction) accumulates every
    update; index 0 collects predictions outside ``1..K``. Target pixels equal to ``ignore_index`` or
    outside ``1..K`` are skipped (DESIGN.md: labels 1..8, 0 ignored).

    ``compute()``:

    * ``iou_per_class [K]``: ``TP / (TP + FP + FN)`` from the accumulated matrix, NaN for a class
      absent from both targets and predictions;
    * ``miou``: mean over classes with nonzero union (present in a target or predicted somewhere)
      -- torchmetrics ``JaccardIndex(task="multiclass", num_classes=K + 1, ignore_index=0,
      average="macro")``, Uni3R's training metric;
    * ``acc``: correct / valid pixels (torchmetrics ``Accuracy(..., ignore_index=0)``, micro);
    * ``miou_per_image``: Uni3R's test script (``torchmetrics.segmentation.MeanIoU(num_classes=K + 1,
      include_background=False, per_class=True)`` on predictions zeroed at ignored pixels): each
      class's IoU averaged over the images where it has nonzero union, then over classes seen.
    """

    def __init__(self, num_classes: int = 8, ignore_index: int = 0) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        k = self.num_classes + 1
        self.confusion = torch.zeros(k, k, dtype=torch.int64)
        self.image_iou_sum = torch.zeros(self.num_classes, dtype=torch.float64)
        self.image_iou_count = torch.zeros(self.num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Accumulate ``pred [..., H, W]`` and ``target [..., H, W]`` int class maps (``...`` = images)."""
        if pred.shape != target.shape:
            raise ValueError(f"shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
        k = self.num_classes + 1
        target = target.long().reshape(-1, *target.shape[-2:]) if target.dim() >= 2 else target.long().reshape(1, 1, -1)
        pred = pred.long().reshape(target.shape)
        valid = (target >= 1) & (target <= self.num_classes) & (target != self.ignore_index)
        pred = torch.where((pred >= 1) & (pred <= self.num_classes), pred, torch.zeros_like(pred))
        image = torch.arange(target.shape[0], device=target.device)[:, None, None].expand_as(target)
        index = (image * k + target) * k + pred
        per_image = torch.bincount(index[valid], minlength=target.shape[0] * k * k).reshape(-1, k, k).cpu()
        self.confusion += per_image.sum(0)
        tp, union = self._tp_union(per_image)
        present = union > 0
        self.image_iou_sum += torch.where(present, tp / union.clamp_min(1), 0.0).sum(0)
        self.image_iou_count += present.sum(0)

    @staticmethod
    def _tp_union(confusion: Tensor) -> tuple[Tensor, Tensor]:
        """``[..., K + 1, K + 1]`` -> ``(TP, union)`` ``[..., K]`` for classes ``1..K`` (float64)."""
        c = confusion.double()
        tp = c.diagonal(dim1=-2, dim2=-1)[..., 1:]
        return tp, c.sum(-1)[..., 1:] + c.sum(-2)[..., 1:] - tp

    def compute(self) -> dict[str, Tensor]:
        """``{"miou", "acc", "iou_per_class" [K], "miou_per_image"}`` (NaN where undefined)."""
        tp, union = self._tp_union(self.confusion)
        iou = torch.where(union > 0, tp / union.clamp_min(1), float("nan"))
        per_image = torch.where(
            self.image_iou_count > 0, self.image_iou_sum / self.image_iou_count.clamp_min(1), float("nan")
        )
        total = self.confusion[1:].sum().double()
        return {
            "miou": iou.nanmean(),
            "acc": tp.sum() / total if total > 0 else torch.tensor(float("nan"), dtype=torch.float64),
            "iou_per_class": iou,
            "miou_per_image": per_image.nanmean(),
        }


# ---------------------------------------------------------------------------------- promptable
def promptable_scores(mask_logits: Tensor, instances: Tensor, points: Tensor, chunk: int = 64) -> dict[str, Tensor]:
    """Best-of-M mask quality of each point prompt against the ground-truth instance under it.

    The instance is read at pixel ``(floor(x), floor(y))`` (points are continuous pixel coords,
    centres at ``+0.5``); points on instance 0 (none / unlabelled) are skipped (NaN). Predicted masks
    are ``logits > 0``; ``iou`` is the best IoU over the ``M`` masks, ``acc`` the pixel accuracy (over
    the whole image) of that best mask.

    Args:
        mask_logits: ``[P, M, H, W]`` (e.g. one image of ``decode(...)[0]``).
        instances: ``[H, W]`` int ground-truth instance ids.
        points: ``[P, 2]`` (x, y) prompts that produced the masks.
        chunk: prompts per vectorised step (memory bound only).

    Returns:
        ``{"iou": [P], "acc": [P]}`` float, NaN for skipped points.
    """
    p, _, h, w = mask_logits.shape
    u = points[:, 0].floor().long().clamp(0, w - 1)
    v = points[:, 1].floor().long().clamp(0, h - 1)
    instances = instances.to(mask_logits.device)
    ids = instances[v.to(instances.device), u.to(instances.device)]  # [P]
    iou, acc = [], []
    for lo in range(0, p, chunk):
        pred = mask_logits[lo : lo + chunk] > 0  # [p, M, H, W]
        gt = (instances[None] == ids[lo : lo + chunk, None, None])[:, None]  # [p, 1, H, W]
        inter = (pred & gt).flatten(2).sum(-1).float()
        union = (pred | gt).flatten(2).sum(-1).float()
        best, idx = (inter / union.clamp_min(1)).max(1)
        chosen = pred[torch.arange(len(idx), device=idx.device), idx]  # [p, H, W]
        iou.append(best)
        acc.append((chosen == gt[:, 0]).flatten(1).float().mean(-1))
    skip = ids == 0
    nan = torch.tensor(float("nan"), device=mask_logits.device)
    return {"iou": torch.where(skip, nan, torch.cat(iou)), "acc": torch.where(skip, nan, torch.cat(acc))}


def promptable_iou(mask_logits: Tensor, instances: Tensor, points: Tensor) -> Tensor:
    """``[P]`` best IoU over the ``M`` masks of each prompt (NaN for points on instance 0);
    see :func:`promptable_scores`."""
    return promptable_scores(mask_logits, instances, points)["iou"]


class PromptableMeter:
    """Mean promptable-segmentation IoU / accuracy over all (non-skipped) point prompts of a dataset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.iou_sum = 0.0
        self.acc_sum = 0.0
        self.count = 0
        self.skipped = 0

    def update(self, mask_logits: Tensor, instances: Tensor, points: Tensor) -> None:
        """One image (``[P, M, H, W]``, ``[H, W]``, ``[P, 2]``) or a batch (``[N, P, M, H, W]``,
        ``[N, H, W]``, ``[N, P, 2]``)."""
        if mask_logits.dim() == 5:
            for logits, inst, pts in zip(mask_logits, instances, points):
                self.update(logits, inst, pts)
            return
        scores = promptable_scores(mask_logits, instances, points)
        keep = ~torch.isnan(scores["iou"])
        self.iou_sum += float(scores["iou"][keep].sum())
        self.acc_sum += float(scores["acc"][keep].sum())
        self.count += int(keep.sum())
        self.skipped += int((~keep).sum())

    def compute(self) -> dict[str, float]:
        """``{"iou", "acc"}`` means over counted prompts (NaN if none), ``"points"``, ``"skipped"``."""
        n = self.count
        return {
            "iou": self.iou_sum / n if n else math.nan,
            "acc": self.acc_sum / n if n else math.nan,
            "points": n,
            "skipped": self.skipped,
        }


# ----------------------------------------------------------------------------- instance matching
def instance_matching_miou(
    pred_ids: Tensor,
    gt_ids: Tensor,
    iou_threshold: float = 0.5,
    ignore_unlabeled: bool = True,
    pred_ignore_id: int | None = None,
) -> dict[str, float]:
    """Class-agnostic instance segmentation quality by Hungarian matching (Proto-SaGa / Gaga style).

    Ground-truth instances are the ids ``!= 0`` of ``gt_ids``; predicted segments are the ids of
    ``pred_ids`` (except ``pred_ignore_id``). With ``ignore_unlabeled``, pixels where ``gt_ids == 0``
    are left out of every mask (they carry no annotation). A one-to-one assignment maximising the
    total IoU (``scipy.optimize.linear_sum_assignment``) matches segments to instances.

    Args:
        pred_ids: ``[H, W]`` int predicted segment ids (any labelling; ids are arbitrary).
        gt_ids: ``[H, W]`` int ground-truth instance ids (0 = none).

    Returns:
        ``miou``: mean IoU over matched pairs (pairs with IoU > 0); ``miou_gt``: total matched IoU
        divided by the number of GT instances (unmatched count as 0); ``precision`` / ``recall``:
        matches with ``IoU >= iou_threshold`` over predicted segments / GT instances; ``num_gt``,
        ``num_pred``, ``num_matched``. Undefined ratios are NaN.
    """
    from scipy.optimize import linear_sum_assignment

    if pred_ids.shape != gt_ids.shape:
        raise ValueError(f"shapes differ: {tuple(pred_ids.shape)} vs {tuple(gt_ids.shape)}")
    pred_ids, gt_ids = pred_ids.long().flatten().cpu(), gt_ids.long().flatten().cpu()
    considered = gt_ids != 0 if ignore_unlabeled else torch.ones_like(gt_ids, dtype=torch.bool)
    if pred_ignore_id is not None:
        pred_pix = considered & (pred_ids != pred_ignore_id)
    else:
        pred_pix = considered
    gt_u, gt_inv = torch.unique(gt_ids[gt_ids != 0], return_inverse=True)
    pr_u, pr_inv = torch.unique(pred_ids[pred_pix], return_inverse=True)
    g, p = len(gt_u), len(pr_u)
    gt_area = torch.bincount(gt_inv, minlength=g).double()
    pr_area = torch.bincount(pr_inv, minlength=p).double()
    both = (gt_ids != 0) & pred_pix
    gi = torch.searchsorted(gt_u, gt_ids[both])
    pi = torch.searchsorted(pr_u, pred_ids[both])
    inter = torch.bincount(gi * p + pi, minlength=g * p).reshape(g, p).double()
    iou = inter / (gt_area[:, None] + pr_area[None] - inter).clamp_min(1)
    rows, cols = linear_sum_assignment(iou.numpy(), maximize=True) if g and p else ([], [])
    matched = iou[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)]
    matched = matched[matched > 0]
    hits = int((matched >= iou_threshold).sum())
    return {
        "miou": float(matched.mean()) if len(matched) else (0.0 if g else math.nan),
        "miou_gt": float(matched.sum() / g) if g else math.nan,
        "precision": hits / p if p else math.nan,
        "recall": hits / g if g else math.nan,
        "num_gt": g,
        "num_pred": p,
        "num_matched": len(matched),
    }


def gaga_instance_miou(pred_ids: Tensor, gt_ids: Tensor, iou_threshold: float = 0.5) -> dict[str, float]:
    """Class-agnostic instance mIoU with Gaga's evaluation protocol (Gaga ``eval.py``).

    * Every distinct ground-truth value is an instance, 0 included (Gaga reads the label images as
      they are: unlabelled pixels form one more instance to be matched); every distinct predicted
      value is a segment.
    * IoU of a (instance, segment) pair: per view, over the whole image, averaged over the views
      where the instance is present (not pooled over views).
    * Hungarian matching (maximising total IoU) on an ``[G, max(G, P)]`` matrix zero-padded with
      dummy segments, so an instance left without a segment is scored 0.
    * ``miou``: mean matched IoU over **all** ground-truth instances; ``precision`` / ``recall``:
      matches with IoU **strictly greater** than ``iou_threshold`` over segments / instances.

    Args:
        pred_ids, gt_ids: ``[V, H, W]`` (or ``[H, W]``) integer id maps of the same views.

    Returns:
        ``{"miou", "precision", "recall", "num_gt", "num_pred"}`` (NaN ratios when undefined).
    """
    from scipy.optimize import linear_sum_assignment

    if pred_ids.shape != gt_ids.shape:
        raise ValueError(f"shapes differ: {tuple(pred_ids.shape)} vs {tuple(gt_ids.shape)}")
    pred = pred_ids.long().reshape(-1, pred_ids.shape[-2] * pred_ids.shape[-1]).cpu()
    gt = gt_ids.long().reshape(-1, gt_ids.shape[-2] * gt_ids.shape[-1]).cpu()
    gt_u, gt_inv = torch.unique(gt, return_inverse=True)
    pr_u, pr_inv = torch.unique(pred, return_inverse=True)
    g, p, v = len(gt_u), len(pr_u), len(gt)
    if g == 0:
        return {"miou": math.nan, "precision": math.nan, "recall": math.nan, "num_gt": 0, "num_pred": p}
    view = torch.arange(v)[:, None].expand_as(gt)
    inter = torch.bincount(((view * g + gt_inv) * p + pr_inv).flatten(), minlength=v * g * p).reshape(v, g, p).double()
    gt_area, pr_area = inter.sum(2), inter.sum(1)  # [V, G], [V, P]
    union = gt_area[:, :, None] + pr_area[:, None, :] - inter
    present = gt_area > 0  # [V, G]
    per_view = torch.where(present[:, :, None], inter / union.clamp_min(1), 0.0)
    iou = per_view.sum(0) / present.sum(0).clamp_min(1)[:, None]  # [G, P]
    matrix = torch.zeros(g, max(g, p), dtype=torch.float64)
    matrix[:, :p] = iou
    rows, cols = linear_sum_assignment(matrix.numpy(), maximize=True)
    paired = matrix[torch.as_tensor(rows), torch.as_tensor(cols)]
    hits = int((paired > iou_threshold).sum())
    return {"miou": float(paired.mean()), "precision": hits / p, "recall": hits / g, "num_gt": g, "num_pred": p}
