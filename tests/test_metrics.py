"""Evaluation metrics and point prompting (stand-in decoder, prompt grids, label mask hierarchy)."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ffsplat  # noqa: F401  (torchvision CPU shim)
from ffsplat.objectives.metrics import (
    PromptableMeter,
    SegmentationMeter,
    classify_by_embeddings,
    depth_metrics,
    instance_matching_miou,
    lpips_distance,
    promptable_iou,
    promptable_scores,
    psnr,
    ssim,
)
from ffsplat.objectives.prompting import (
    SimilarityPromptDecoder,
    grid_prompt_points,
    label_hierarchy_masks,
    sample_prompt_points,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# ------------------------------------------------------------------------------------ images
def test_psnr_of_known_mse() -> None:
    target = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    pred = target.clone()
    pred[0] += 0.1  # MSE 0.01 -> 20 dB
    pred[1, :, :4] += 0.2  # MSE 0.04 / 2 = 0.02 -> 10 log10(50)
    out = psnr(pred, target)
    assert out.shape == (2,)
    assert out[0].item() == pytest.approx(20.0, abs=1e-4)
    assert out[1].item() == pytest.approx(10 * math.log10(50), abs=1e-4)
    assert psnr(pred * 255, target * 255, max_val=255.0)[0].item() == pytest.approx(20.0, abs=1e-3)


def _smooth_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    img = F.interpolate(low, (size, size), mode="bilinear", align_corners=False)
    return (img + 0.05 * torch.randn(img.shape, generator=g)).clamp(0, 1)


def _ssim_reference(x: np.ndarray, y: np.ndarray, sample_covariance: bool) -> float:
    """skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5, channel_axis=0,
    data_range=1, use_sample_covariance=...) re-implemented with scipy.ndimage (skimage is absent)."""
    from scipy.ndimage import gaussian_filter

    pad, n = 5, 11 * 11
    norm = n / (n - 1) if sample_covariance else 1.0
    vals = []
    for a, b in zip(x.astype(np.float64), y.astype(np.float64)):
        f = lambda z: gaussian_filter(z, sigma=1.5, truncate=3.5, mode="reflect")  # noqa: E731
        ux, uy = f(a), f(b)
        vx, vy, vxy = norm * (f(a * a) - ux * ux), norm * (f(b * b) - uy * uy), norm * (f(a * b) - ux * uy)
        c1, c2 = 0.01**2, 0.03**2
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        vals.append(s[pad:-pad, pad:-pad].mean())
    return float(np.mean(vals))


def test_ssim_identical_and_reference() -> None:
    a, b = _smooth_images(2, 0), _smooth_images(2, 1)
    torch.testing.assert_close(ssim(a, a), torch.ones(2))
    out = ssim(a, b)
    assert out.shape == (2,) and (out < 0.99).all()
    for i in range(2):
        for cov in (False, True):
            ref = _ssim_reference(a[i].numpy(), b[i].numpy(), cov)
            assert ssim(a[i], b[i], sample_covariance=cov).item() == pytest.approx(ref, abs=2e-5)


def test_ssim_matches_torchmetrics() -> None:
    tm = pytest.importorskip("torchmetrics.functional.image")
    a, b = _smooth_images(3, 2), _smooth_images(3, 3)
    ref = tm.structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    torch.testing.assert_close(ssim(a, b, padding="reflect"), ref, atol=2e-5, rtol=0)
    assert (ssim(a, b) - ref).abs().max() > 1e-3  # torchmetrics >= 1 also averages the padded border


def test_lpips_distance_none_without_weights() -> None:
    x = torch.rand(1, 3, 16, 16)
    assert lpips_distance(x, x, None) is None


# ------------------------------------------------------------------------------------- depth
def test_depth_metrics_hand_case() -> None:
    gt = torch.tensor([1.0, 2.0, 4.0, 0.0, 3.0])
    pred = torch.tensor([1.1, 2.0, 2.0, 5.0, 3.0])
    valid = torch.tensor([True, True, True, True, False])
    out = depth_metrics(pred, gt, valid)  # pixels 0..2 (3 has gt 0, 4 masked out)
    assert out["abs_rel"].item() == pytest.approx((0.1 + 0 + 0.5) / 3)
    assert out["delta_1.25"].item() == pytest.approx(2 / 3)
    assert out["rmse"].item() == pytest.approx(math.sqrt((0.01 + 0 + 4) / 3))
    assert depth_metrics(torch.tensor([-1.0]), torch.tensor([1.0]))["delta_1.25"].item() == 0.0
    assert math.isnan(depth_metrics(pred, torch.zeros(5))["rmse"].item())


# ---------------------------------------------------------------------------- segmentation
TARGET_A = torch.tensor([[[1, 1, 2, 0], [2, 3, 3, 0]]])
PRED_A = torch.tensor([[[1, 2, 2, 5], [2, 3, 1, 1]]])  # 5 and 1 at ignored pixels do not count
TARGET_B = torch.tensor([[[2, 2, 0, 0], [1, 1, 0, 0]]])
PRED_B = torch.tensor([[[4, 2, 1, 1], [1, 0, 3, 3]]])  # 4: predicted but never in targets; 0: invalid


def test_segmentation_meter_hand_case() -> None:
    meter = SegmentationMeter(num_classes=4)
    meter.update(PRED_A, TARGET_A)
    out = meter.compute()
    # class 1: TP 1, FN 1 (1->2), FP 1 (3->1) -> 1/3; class 2: TP 2, FP 1 -> 2/3; class 3: TP 1, FN 1 -> 1/2
    torch.testing.assert_close(out["iou_per_class"][:3], torch.tensor([1 / 3, 2 / 3, 1 / 2], dtype=torch.float64))
    assert math.isnan(out["iou_per_class"][3].item())  # class 4 absent: not averaged
    assert out["miou"].item() == pytest.approx(0.5)
    assert out["acc"].item() == pytest.approx(4 / 6)

    meter.update(PRED_B, TARGET_B)
    out = meter.compute()
    # totals: class 1: TP 2, FN 2, FP 1 -> 2/5; class 2: TP 3, FN 1, FP 1 -> 3/5;
    # class 3: 1/2; class 4: TP 0, FP 1 -> 0 (predicted only, still averaged)
    torch.testing.assert_close(out["iou_per_class"], torch.tensor([2 / 5, 3 / 5, 1 / 2, 0.0], dtype=torch.float64))
    assert out["miou"].item() == pytest.approx((0.4 + 0.6 + 0.5 + 0.0) / 4)
    assert out["acc"].item() == pytest.approx(6 / 10)
    # per image (Uni3R's test script), image B: class 1 1/2, class 2 1/2, class 4 0 -> averaged per class
    assert out["miou_per_image"].item() == pytest.approx(((1 / 3 + 1 / 2) / 2 + (2 / 3 + 1 / 2) / 2 + 1 / 2 + 0) / 4)

    one = SegmentationMeter(num_classes=4)
    one.update(torch.cat([PRED_A, PRED_B]), torch.cat([TARGET_A, TARGET_B]))
    assert torch.equal(one.confusion, meter.confusion)
    for key in ("miou", "acc", "miou_per_image"):
        assert one.compute()[key].item() == pytest.approx(out[key].item())
    meter.reset()
    assert meter.confusion.sum() == 0 and math.isnan(meter.compute()["miou"].item())


def test_segmentation_meter_matches_torchmetrics() -> None:
    tm = pytest.importorskip("torchmetrics")
    from torchmetrics.segmentation import MeanIoU

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 6, (4, 16, 16), generator=g)
    target[target == 5] = 0  # class 5 never in targets
    pred = torch.randint(1, 6, (4, 16, 16), generator=g)
    meter = SegmentationMeter(num_classes=5)
    jac = tm.JaccardIndex(task="multiclass", num_classes=6, ignore_index=0, average="macro")
    acc = tm.Accuracy(task="multiclass", num_classes=6, ignore_index=0)
    uni3r = MeanIoU(num_classes=6, include_background=False, per_class=True, input_format="index")
    for p, t in zip(pred.split(2), target.split(2)):
        meter.update(p, t)
        jac.update(p, t)
        acc.update(p, t)
        uni3r.update(torch.where(t != 0, p, 0), t)
    out = meter.compute()
    assert out["miou"].item() == pytest.approx(jac.compute().item(), abs=1e-6)
    assert out["acc"].item() == pytest.approx(acc.compute().item(), abs=1e-6)
    assert out["miou_per_image"].item() == pytest.approx(uni3r.compute().mean().item(), abs=1e-6)


def test_classify_by_embeddings() -> None:
    classes = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    feats = torch.tensor([[0.1, 5.0, 0.0], [-1.0, -1.0, 0.2], [3.0, 1.0, 1.0], [0.0, 0.1, 0.0]])  # 4 pixels
    out = classify_by_embeddings(feats.T.reshape(1, 3, 2, 2), classes)
    assert out.dtype == torch.int64 and out.shape == (1, 2, 2)
    assert out.flatten().tolist() == [2, 3, 1, 2]


# ------------------------------------------------------------------------------- promptable
def _instances() -> torch.Tensor:
    inst = torch.zeros(4, 4, dtype=torch.long)
    inst[1:, :2] = 1  # 6 pixels
    inst[1:, 2:] = 2  # 6 pixels
    return inst  # row 0: no instance


def test_promptable_iou_hand_case() -> None:
    inst = _instances()
    logits = torch.full((3, 3, 4, 4), -1.0)
    logits[0, 0][1:, :2] = 1  # exact instance 1
    logits[0, 1][:] = 1  # whole image: IoU 6/16
    logits[1, 0][1, 2] = 1  # one pixel of instance 2: 1/6
    logits[1, 1][:, 2:] = 1  # column pair incl. row 0: 6/8
    logits[1, 2][2:, :] = 1  # rows 2-3: 4/(6+8-4) = 0.4
    points = torch.tensor([[0.5, 1.5], [3.9, 3.2], [2.5, 0.5]])  # on 1, on 2, on 0 (skipped)
    iou = promptable_iou(logits, inst, points)
    assert iou[0].item() == pytest.approx(1.0)
    assert iou[1].item() == pytest.approx(0.75)
    assert math.isnan(iou[2].item())
    acc = promptable_scores(logits, inst, points)["acc"]
    assert acc[0].item() == 1.0 and acc[1].item() == pytest.approx(14 / 16)

    meter = PromptableMeter()
    meter.update(logits[None], inst[None], points[None])  # batched form
    meter.update(logits, inst, points)
    out = meter.compute()
    assert out["points"] == 4 and out["skipped"] == 2
    assert out["iou"] == pytest.approx(0.875) and out["acc"] == pytest.approx((1 + 14 / 16) / 2)


def test_instance_matching_miou() -> None:
    gt = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 3, 3]])
    perm = torch.tensor([[7, 7, 4, 4], [7, 7, 4, 4], [9, 9, 5, 5]])  # permuted ids (+ anything on gt 0)
    out = instance_matching_miou(perm, gt)
    assert out["miou"] == pytest.approx(1.0) and out["miou_gt"] == pytest.approx(1.0)
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["num_pred"] == 3

    gt = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2]])
    pred = torch.tensor([[7, 7, 3, 3], [7, 7, 3, 5]])  # instance 2 split 3:1
    out = instance_matching_miou(pred, gt)
    assert out["miou"] == pytest.approx((1 + 0.75) / 2)
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == pytest.approx(1.0)
    assert out["num_matched"] == 2
    merged = instance_matching_miou(torch.zeros(2, 4, dtype=torch.long), gt)  # one segment for both
    assert merged["miou"] == pytest.approx(0.5) and merged["miou_gt"] == pytest.approx(0.25)
    assert merged["precision"] == pytest.approx(1.0) and merged["recall"] == pytest.approx(0.5)
    ignored = instance_matching_miou(torch.zeros(2, 4, dtype=torch.long), gt, pred_ignore_id=0)
    assert ignored["num_pred"] == 0 and ignored["recall"] == 0.0 and ignored["miou_gt"] == 0.0


# -------------------------------------------------------------------------------- prompting
def test_decoder_interface_matches_sam_teacher() -> None:
    from ffsplat.teachers.sam import SAMTeacher

    ours = inspect.signature(SimilarityPromptDecoder.decode).parameters
    sam = inspect.signature(SAMTeacher.decode).parameters
    assert [(n, p.kind, p.default) for n, p in ours.items()] == [(n, p.kind, p.default) for n, p in sam.items()]


def _two_regions(c: int = 4, other: torch.Tensor | None = None) -> torch.Tensor:
    """``[1, C, 8, 8]``: left half e0, right half ``other`` (default e1)."""
    e0 = torch.zeros(c)
    e0[0] = 1
    e1 = torch.zeros(c)
    e1[1] = 1
    right = e1 if other is None else other
    emb = torch.empty(1, c, 8, 8)
    emb[..., :4] = e0.view(c, 1, 1)
    emb[..., 4:] = right.view(c, 1, 1)
    return emb


def test_similarity_decoder_region_masks_and_gradients() -> None:
    dec = SimilarityPromptDecoder()
    emb = _two_regions().requires_grad_(True)
    points = torch.tensor([[[4.5, 8.5], [13.5, 2.5]]])  # left region, right region of a 16 x 16 image
    masks, scores, low = dec.decode(emb, points, image_size=(16, 16))
    assert masks.shape == (1, 2, 3, 16, 16) and scores.shape == (1, 2, 3) and low.shape == (1, 2, 3, 8, 8)
    left = torch.zeros(16, 16, dtype=torch.bool)
    left[:, :8] = True
    for k in range(3):
        assert torch.equal(masks[0, 0, k] > 0, left)
        assert torch.equal(masks[0, 1, k] > 0, ~left)
        assert torch.equal(low[0, 0, k] > 0, left[::2, ::2])
    assert (scores > 0.95).all() and (scores <= 1 + 1e-6).all()
    single, s1, _ = dec.decode(emb, points, multimask=False, image_size=(16, 16))
    assert single.shape == (1, 2, 1, 16, 16) and s1.shape == (1, 2, 1)
    torch.testing.assert_close(single[:, :, 0], masks[:, :, 1])
    (masks.sigmoid().sum() + scores.sum()).backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


def test_similarity_decoder_nested_scales_and_background_points() -> None:
    e0, e2 = torch.eye(4)[0], torch.eye(4)[2]
    emb = _two_regions(other=0.8 * e0 + 0.6 * e2)  # right half: cos 0.8 to the left half
    dec = SimilarityPromptDecoder()
    masks, _, _ = dec.decode(emb, torch.tensor([[[2.5, 2.5]]]), image_size=(8, 8))
    small, medium, large = (masks[0, 0] > 0).unbind(0)
    assert small.sum() < large.sum() and (small <= medium).all() and (medium <= large).all()
    assert large.all()  # cos 0.8 > 0.5: the large mask spans both regions
    # a background point on the right half removes it
    pts = torch.tensor([[[[2.5, 2.5], [6.5, 2.5]]]])
    masks, _, _ = dec.decode(emb, pts, point_labels=torch.tensor([[[1, 0]]]), image_size=(8, 8))
    left = torch.zeros(8, 8, dtype=torch.bool)
    left[:, :4] = True
    assert torch.equal(masks[0, 0, 2] > 0, left)
    with pytest.raises(ValueError, match="foreground"):
        dec.decode(emb, pts, point_labels=torch.zeros(1, 1, 2), image_size=(8, 8))


def test_grid_and_random_prompt_points() -> None:
    grid = grid_prompt_points(32, (256, 320))
    assert grid.shape == (1024, 2)
    torch.testing.assert_close(grid[0], torch.tensor([5.0, 4.0]))  # (0.5 * 320 / 32, 0.5 * 256 / 32)
    torch.testing.assert_close(grid[1], torch.tensor([15.0, 4.0]))  # x varies fastest
    torch.testing.assert_close(grid[-1], torch.tensor([315.0, 252.0]))
    small = grid_prompt_points(2, (4, 4))
    torch.testing.assert_close(small, torch.tensor([[1.0, 1.0], [3.0, 1.0], [1.0, 3.0], [3.0, 3.0]]))

    pts = sample_prompt_points(3, 50, (6, 10), torch.Generator().manual_seed(0))
    assert pts.shape == (3, 50, 2)
    assert torch.equal(pts - pts.floor(), torch.full_like(pts, 0.5))  # pixel centres
    assert (pts[..., 0] < 10).all() and (pts[..., 1] < 6).all() and (pts >= 0.5).all()
    again = sample_prompt_points(3, 50, (6, 10), torch.Generator().manual_seed(0))
    assert torch.equal(pts, again)


def test_label_hierarchy_masks() -> None:
    # Class 1 appears in two separate places; instances 5 and 6 are two touching class-1 objects.
    labels = torch.tensor([[1, 1, 2, 1], [1, 1, 2, 0], [3, 3, 2, 0]])
    instances = torch.tensor([[5, 5, 7, 4], [6, 6, 7, 9], [0, 0, 8, 9]])
    out = label_hierarchy_masks(labels, instances)
    assert all(out[s].dtype == torch.bool for s in out)
    # small: instances 4, 5, 6, 7, 8 (9 lies on label 0 only)
    torch.testing.assert_close(out["small"].sum((1, 2)), torch.tensor([1, 2, 2, 2, 1]))
    # medium: connected regions of one class: {5, 6} merge, the lone class-1 pixel stays apart
    assert out["medium"].shape[0] == 4
    block = torch.zeros(3, 4, dtype=torch.bool)
    block[:2, :2] = True
    assert any(torch.equal(m, block) for m in out["medium"])
    # large: one mask per class, connected or not
    assert out["large"].shape[0] == 3 and torch.equal(out["large"][0], labels == 1)
    assert not out["small"].any(0)[2, :2].any()  # label 3 without instance: in medium/large only
    assert out["medium"].any(0)[2, :2].all()
