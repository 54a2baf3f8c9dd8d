"""Training losses: focal / dice / mask consistency, cosine distillation, HCAM pooling, LPIPS."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import ffsplat  # noqa: F401  (torchvision CPU shim before torchvision / lpips)
from ffsplat.objectives.losses import (
    LPIPSLoss,
    cosine_distillation,
    dice_loss,
    hcam_pool,
    hcam_pool_single,
    language_loss,
    make_lpips,
    mask_consistency_loss,
    photometric_loss,
    sigmoid_focal_loss,
)

LN2 = math.log(2.0)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# ------------------------------------------------------------------------------ focal / dice
def test_focal_hand_computed() -> None:
    # p = 0.5 everywhere: CE = ln 2, (1 - p_t)^2 = 1/4; alpha_t = 0.25 (positive) / 0.75 (negative)
    loss = sigmoid_focal_loss(torch.zeros(2), torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx((0.25 * 0.25 + 0.75 * 0.25) * LN2 / 2)
    # confident and right: ~0; confident and wrong: alpha * CE ~ 0.25 * 10
    assert sigmoid_focal_loss(torch.tensor([20.0]), torch.tensor([1.0])).item() < 1e-12
    assert sigmoid_focal_loss(torch.tensor([-10.0]), torch.tensor([1.0])).item() == pytest.approx(
        0.25 * (1 - 1 / (1 + math.exp(10))) ** 2 * (10 + math.log1p(math.exp(-10))), rel=1e-5
    )


def test_focal_matches_torchvision() -> None:
    from torchvision.ops import sigmoid_focal_loss as tv_focal

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6, generator=g) * 3
    targets = (torch.rand(2, 3, 4, 5, 6, generator=g) > 0.6).float()
    for alpha, gamma in [(0.25, 2.0), (0.5, 0.0), (-1.0, 1.5)]:
        ours = sigmoid_focal_loss(logits, targets, alpha, gamma)
        ref = tv_focal(logits, targets, alpha=alpha, gamma=gamma, reduction="mean")
        torch.testing.assert_close(ours, ref)


def test_dice_perfect_disjoint_and_soft() -> None:
    target = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert dice_loss(100 * (2 * target - 1), target).item() == pytest.approx(0.0, abs=1e-6)
    # disjoint hard masks of areas 2 and 2: 1 - eps / (2 + 2 + eps)
    disjoint = 100 * (1 - 2 * target)
    assert dice_loss(disjoint, target).item() == pytest.approx(1 - 1 / 5, abs=1e-6)
    assert dice_loss(disjoint, target, eps=1e-6).item() == pytest.approx(1.0, abs=1e-6)
    # p = 0.5: (2 * 1 + 1) / (2 + 2 + 1) -> 0.4; two masks (0.4 and 0) average to 0.2
    assert dice_loss(torch.zeros(2, 2), target).item() == pytest.approx(0.4)
    logits = torch.stack([torch.zeros(2, 2), 100 * (2 * target - 1)])
    assert dice_loss(logits, torch.stack([target, target])).item() == pytest.approx(0.2)


def test_mask_consistency_is_focal_plus_dice_over_20() -> None:
    teacher = torch.tensor([[5.0, 3.0], [-1.0, -2.0]]).reshape(1, 1, 1, 2, 2)  # targets: top row
    pred = torch.zeros(1, 1, 1, 2, 2, requires_grad=True)
    loss = mask_consistency_loss(pred, teacher)
    focal = (2 * 0.25 * 0.25 + 2 * 0.75 * 0.25) * LN2 / 4  # = 0.125 ln 2
    dice = 0.4
    assert loss.item() == pytest.approx(focal + dice / 20)
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0

    g = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 3, 3, 8, 8, generator=g)
    teacher = torch.randn(2, 3, 3, 8, 8, generator=g, requires_grad=True)
    loss = mask_consistency_loss(pred, teacher)
    t = (teacher > 0).float()
    assert loss.item() == pytest.approx((sigmoid_focal_loss(pred, t) + dice_loss(pred, t) / 20).item())
    assert not loss.requires_grad  # the teacher side is a constant target
    with pytest.raises(ValueError):
        mask_consistency_loss(pred, teacher[:, :2])


# ------------------------------------------------------------------------------ distillation
def test_cosine_distillation_values() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 5, 4, 6, generator=g)
    assert cosine_distillation(3.0 * target, target).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_distillation(-target, target).item() == pytest.approx(2.0, abs=1e-6)
    e0 = torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand(3, 4, 4)
    e1 = torch.tensor([0, 2.0, 0]).view(3, 1, 1).expand(3, 4, 4)
    assert cosine_distillation(e0, e1).item() == pytest.approx(1.0)
    # mask: left half identical, right half opposite
    pred = target.clone()
    pred[..., 3:] *= -1
    left = torch.zeros(2, 4, 6, dtype=torch.bool)
    left[..., :3] = True
    assert cosine_distillation(pred, target).item() == pytest.approx(1.0, abs=1e-6)
    assert cosine_distillation(pred, target, left).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_distillation(pred, target, ~left).item() == pytest.approx(2.0, abs=1e-6)


def test_cosine_distillation_resizes_pred_to_target_grid() -> None:
    v = torch.tensor([0.3, -1.0, 2.0, 0.5])
    pred = (2 * v).view(1, 4, 1, 1).expand(1, 4, 16, 12).clone().requires_grad_(True)
    target = v.view(1, 4, 1, 1).expand(1, 4, 4, 3)
    loss = cosine_distillation(pred, target)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_distillation(pred, -target).item() == pytest.approx(2.0, abs=1e-5)
    # upsampling direction too (coarse pred, fine target), and gradients reach pred
    coarse = torch.randn(1, 4, 2, 2, requires_grad=True)
    cosine_distillation(coarse, torch.randn(1, 4, 8, 8)).backward()
    assert coarse.grad is not None and torch.isfinite(coarse.grad).all() and coarse.grad.abs().sum() > 0


# -------------------------------------------------------------------------------------- HCAM
def _two_masks() -> torch.Tensor:
    a = torch.tensor([[True, True, False, False]])
    b = torch.tensor([[False, True, True, False]])
    return torch.stack([a, b])  # [2, 1, 4]: overlapping at pixel 1, pixel 3 uncovered


def test_hcam_pool_hand_case() -> None:
    feats = torch.tensor([[[1.0, 2.0, 3.0, 10.0]], [[0.0, 4.0, 8.0, -1.0]]])  # [C=2, H=1, W=4]
    out = hcam_pool_single(feats, _two_masks())
    # mask means: A = (1.5, 2), B = (2.5, 6); pixel 1 averages them; pixel 3 keeps its feature
    expected = torch.tensor([[[1.5, 2.0, 2.5, 10.0]], [[2.0, 4.0, 6.0, -1.0]]])
    torch.testing.assert_close(out, expected)
    # one mask only: its pixels take its mean
    only_a = torch.tensor([[[1.5, 1.5, 3.0, 10.0]], [[2.0, 2.0, 8.0, -1.0]]])
    torch.testing.assert_close(hcam_pool_single(feats, _two_masks()[:1]), only_a)
    # no masks / empty masks: unchanged
    torch.testing.assert_close(hcam_pool_single(feats, torch.zeros(2, 1, 4, dtype=torch.bool)), feats)


def test_hcam_pool_scales_resize_and_gradients() -> None:
    feats = torch.tensor([[[[1.0, 2.0, 3.0, 10.0]]]]).requires_grad_(True)  # [N=1, C=1, 1, 4]
    masks_2x = _two_masks().repeat_interleave(2, 1).repeat_interleave(2, 2)  # [2, 2, 8]: nearest-resized back
    masks = [{"small": _two_masks()[:1], "medium": masks_2x}]  # "large" missing: no masks
    out = hcam_pool(feats, masks)
    assert set(out) == {"small", "medium", "large"}
    torch.testing.assert_close(out["small"], torch.tensor([[[[1.5, 1.5, 3.0, 10.0]]]]))
    torch.testing.assert_close(out["medium"], torch.tensor([[[[1.5, 2.0, 2.5, 10.0]]]]))
    torch.testing.assert_close(out["large"], feats)
    out["medium"].sum().backward()
    # d(sum)/dx: x0 -> 0.5 (px0) + 0.25 (px1); x1 (in both masks) -> 0.5 + 0.5 + 0.5; x3 -> 1
    torch.testing.assert_close(feats.grad, torch.tensor([[[[0.75, 1.5, 0.75, 1.0]]]]))
    with pytest.raises(ValueError):
        hcam_pool(feats.detach(), masks * 2)


def test_language_loss_combination() -> None:
    g = torch.Generator().manual_seed(0)
    expanded = torch.randn(2, 6, 8, 8, generator=g)
    target = torch.randn(2, 6, 4, 4, generator=g)
    plain = language_loss(expanded, target)
    assert set(plain) == {"plain", "total"} and plain["total"] == plain["plain"]
    m = torch.zeros(8, 8, dtype=torch.bool)
    m[:4] = True
    masks = [{"small": m[None], "medium": torch.stack([m, ~m]), "large": torch.ones(1, 8, 8, dtype=torch.bool)}] * 2
    out = language_loss(expanded, target, masks)
    pooled = hcam_pool(expanded, masks)
    for s in ("small", "medium", "large"):
        assert out[f"hcam_{s}"].item() == pytest.approx(cosine_distillation(pooled[s], target).item())
    assert out["hcam"].item() == pytest.approx((out["hcam_small"] + out["hcam_medium"] + out["hcam_large"]).item() / 3)
    assert out["total"].item() == pytest.approx((out["plain"] + 3 * out["hcam"]).item() / 4)
    # a feature field constant per mask that equals a teacher constant per mask: every term is 0
    v = torch.randn(2, 6, generator=g)
    field = torch.where(m, v[0].view(6, 1, 1), v[1].view(6, 1, 1))[None].expand(2, 6, 8, 8)
    zero = language_loss(field, field, [{"small": m[None], "medium": torch.stack([m, ~m])}] * 2)
    assert zero["total"].item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------- photometric
def test_photometric_without_lpips_is_l1() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 3, 3, 8, 8, generator=g), torch.rand(2, 3, 3, 8, 8, generator=g)
    out = photometric_loss(pred, target, None)
    l1 = (pred - target).abs().mean()
    assert out["l1"].item() == pytest.approx(l1.item())
    assert out["lpips"].item() == 0.0
    assert out["total"].item() == pytest.approx(l1.item())


@pytest.mark.parametrize("path", [None, "", "/nonexistent/vgg16-397923af.pth"])
def test_make_lpips_without_weights_warns_once(path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert make_lpips(path) is None
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("LPIPS disabled: no local VGG16 weights at") and "L1 only" in message


def test_lpips_loss_missing_file_names_config_key(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="loss.lpips_vgg_path"):
        LPIPSLoss(tmp_path / "missing.pth")


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A randomly initialised VGG16 trunk in torchvision's state-dict layout (``features.<i>.*``).

    ``make_layers(cfgs["D"])`` is exactly ``vgg16().features`` (without the 100M-parameter
    classifier, whose keys LPIPS does not use)."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}
    path = tmp_path_factory.mktemp("vgg") / "vgg16-random.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.slow
def test_lpips_loss_loads_local_vgg(vgg_file) -> None:
    import os

    import lpips as lpips_pkg

    path, state = vgg_file
    loss = make_lpips(str(path))
    assert isinstance(loss, LPIPSLoss)
    # trunk = our file, linear layers = the ones shipped in the lpips package
    torch.testing.assert_close(getattr(loss.model.net.slice1, "0").weight, state["features.0.weight"])
    torch.testing.assert_close(getattr(loss.model.net.slice3, "14").bias, state["features.14.bias"])
    torch.testing.assert_close(getattr(loss.model.net.slice5, "28").weight, state["features.28.weight"])
    lin_file = os.path.join(os.path.dirname(lpips_pkg.__file__), "weights/v0.1/vgg.pth")
    shipped = torch.load(lin_file, map_location="cpu", weights_only=True)
    torch.testing.assert_close(loss.model.lin2.model[1].weight, shipped["lin2.model.1.weight"])
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.model.training

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    assert loss(a, a).abs().max().item() < 1e-6
    d = loss(a, b)
    assert d.shape == (2,) and (d > 0).all()
    assert loss(a[None], b[None]).shape == (1, 2)  # leading dims kept

    pred = a.clone().requires_grad_(True)
    out = photometric_loss(pred, b, loss)
    assert out["lpips"].item() == pytest.approx(d.mean().item(), rel=1e-5)
    assert out["total"].item() == pytest.approx((out["l1"] + 0.05 * out["lpips"]).item())
    out["total"].backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


@pytest.mark.slow
def test_lpips_loss_rejects_incomplete_state(tmp_path, vgg_file) -> None:
    _, state = vgg_file
    partial = {k: v for k, v in state.items() if not k.startswith("features.28.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="features.28"):
        LPIPSLoss(tmp_path / "partial.pth")


def test_depth_loss_mask_leaves_out_empty_render_pixels():
    from ffsplat.objectives.losses import depth_loss

    rendered = torch.full((2, 4, 4), 2.0, requires_grad=True)
    alpha = torch.ones(2, 4, 4)
    sensor = torch.full((2, 4, 4), 2.0)
    sensor[0, 0, 0] = 0.0  # no measurement: ignored
    alpha[1, 1, 1] = 0.1  # nothing rendered: ignored
    sensor[0, 0, 0], sensor[1, 1, 1] = 0.0, 50.0
    assert float(depth_loss(rendered, sensor, mask=alpha > 0.5)) == 0.0
    sensor[1, 2, 2] = 2.0 * math.e  # one valid pixel off by a factor e: |log| = 1
    loss = depth_loss(rendered, sensor, mask=alpha > 0.5)
    assert float(loss) == pytest.approx(1 / 30, rel=1e-5)
    loss.backward()
    assert rendered.grad[1, 2, 2] < 0 and rendered.grad[0, 0, 0] == 0
    assert float(depth_loss(rendered, torch.zeros(2, 4, 4), mask=alpha > 0.5)) == 0.0
