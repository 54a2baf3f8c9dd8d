"""Semantic-logits baseline (seed 001): normalised rendering, CE / NLL, entropy warm-up, a short fit."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ffsplat  # noqa: F401
from ffsplat.baselines.trainer import SceneConfig, SceneTrainer
from ffsplat.baselines.semlogits import SEMANTICS, SemanticLogits, entropy, normalised, warmup_weight
from tests.synthetic_fixtures import synthetic_views
from ffsplat.core.types import Cameras, Gaussians, Views

S = 32
C = 8


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------- two Gaussians on one pixel
def _two_gaussian_trainer(method: SemanticLogits) -> SceneTrainer:
    """Two Gaussians on the optical axis of a camera whose principal point is the centre of pixel
    (15, 15): there the Gaussian kernel is 1, so their alphas are their opacities 0.5 (front, z=2)
    and 0.3 (back, z=3) and the blend weights are w1 = 0.5, w2 = 0.3 * (1 - 0.5) = 0.15."""
    k = torch.tensor([[32.0, 0, 15.5], [0, 32.0, 15.5], [0, 0, 1]])
    cams = Cameras(k[None, None], torch.eye(4)[None, None], (S, S))
    data = Views(torch.zeros(1, 1, 3, S, S), cams, torch.tensor([0.1]), torch.tensor([10.0]),
                 labels=torch.zeros(1, 1, S, S, dtype=torch.long))  # fmt: skip
    init = Gaussians(torch.tensor([[0.0, 0, 2], [0, 0, 3]]), torch.full((2, 3), 0.05),
                     torch.tensor([[1.0, 0, 0, 0]] * 2), torch.tensor([0.5, 0.3]), torch.zeros(2, 1, 3))  # fmt: skip
    torch.manual_seed(0)
    tr = SceneTrainer(SceneConfig(sh_degree=0), data, method, init=init)
    with torch.no_grad():
        tr.params[SEMANTICS].copy_(torch.randn(2, C) * 2)
    return tr


W1, W2 = 0.5, 0.15


def test_normalised_rendering_is_the_blend_weighted_mean():
    m = SemanticLogits()
    tr = _two_gaussian_trainer(m)
    out = m.render(tr, tr.view(0))
    assert out.alpha[0, 0, 15, 15].item() == pytest.approx(W1 + W2, abs=1e-6)
    s_hat, valid = normalised(out.features[SEMANTICS], out.alpha, m.alpha_eps)
    s1, s2 = tr.params[SEMANTICS].detach()
    torch.testing.assert_close(s_hat[0, 0, :, 15, 15], (W1 * s1 + W2 * s2) / (W1 + W2))
    assert valid[0, 0, 15, 15] and not valid[0, 0, 0, 0]  # a corner pixel is (nearly) empty


def test_ce_on_the_normalised_logits_masks_empty_and_unlabelled_pixels():
    m = SemanticLogits()
    tr = _two_gaussian_trainer(m)
    s1, s2 = tr.params[SEMANTICS].detach()
    labels = torch.zeros(1, 1, S, S, dtype=torch.long)
    labels[0, 0, 15, 15] = 3
    labels[0, 0, 0, 0] = 5  # alpha ~ 0 there: must not count
    out = m.render(tr, tr.view(0))
    loss = m.semantic_loss(out, labels)
    expected = -F.log_softmax((W1 * s1 + W2 * s2) / (W1 + W2), dim=0)[2]
    torch.testing.assert_close(loss, expected)
    # the blend weights carry its gradient to the opacities (means and scales get none here only
    # because the pixel sits exactly on both Gaussians' peaks; see test_semantic_loss_reaches_geometry)
    loss.backward()
    assert torch.all(tr.params["opacities"].grad != 0)
    # no valid pixel at all: zero, not NaN
    assert m.semantic_loss(out, torch.zeros_like(labels)).item() == 0.0


def test_softmax_variant_blends_probabilities_and_uses_nll():
    m = SemanticLogits(softmax=True)
    tr = _two_gaussian_trainer(m)
    s1, s2 = tr.params[SEMANTICS].detach()
    out = m.render(tr, tr.view(0))
    p_hat = (W1 * s1.softmax(0) + W2 * s2.softmax(0)) / (W1 + W2)
    s_hat, _ = normalised(out.features[SEMANTICS], out.alpha, m.alpha_eps)
    torch.testing.assert_close(s_hat[0, 0, :, 15, 15], p_hat)
    assert s_hat[0, 0, :, 15, 15].sum().item() == pytest.approx(1.0, abs=1e-5)
    labels = torch.zeros(1, 1, S, S, dtype=torch.long)
    labels[0, 0, 15, 15] = 6
    torch.testing.assert_close(m.semantic_loss(out, labels), -torch.log(p_hat[5] + m.log_eps))


def test_entropy_term_and_its_linear_warmup():
    # H of softmax([0, log 3]) = (0.25, 0.75), of uniform logits = log C
    two = torch.tensor([[0.0, math.log(3.0)]])
    assert entropy(two).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), rel=1e-5)
    assert entropy(torch.zeros(5, C)).item() == pytest.approx(math.log(C), rel=1e-5)
    confident = torch.tensor([[0.0, 50.0]])  # H ~ 0: the mean over Gaussians halves
    assert entropy(torch.cat([two, confident])).item() == pytest.approx(entropy(two).item() / 2, rel=1e-4)
    weights = [warmup_weight(s, 0.01, 5000) for s in (0, 1000, 2500, 5000, 9000)]
    assert weights == pytest.approx([0, 0.002, 0.005, 0.01, 0.01])
    assert warmup_weight(0, 0.01, 0) == 0.01
    # the method's total extra loss = CE + lambda_H(step) * mean entropy of the per-Gaussian logits
    m = SemanticLogits()
    tr = _two_gaussian_trainer(m)
    tr.data.labels[0, 0, 15, 15] = 2
    out = m.render(tr, tr.view(0))
    total, logs = m.loss(tr, out, 0, 2500)
    assert logs["entropy_weight"] == pytest.approx(0.005)
    assert logs["entropy"] == pytest.approx(entropy(tr.params[SEMANTICS].detach()).item(), rel=1e-6)
    assert total.item() == pytest.approx(logs["sem"] + 0.005 * logs["entropy"], rel=1e-6)
    assert m.loss(tr, out, 0, 0)[0].item() == pytest.approx(logs["sem"], rel=1e-6)  # no entropy at step 0


def test_init_and_learning_rate():
    m = SemanticLogits()
    tr = _two_gaussian_trainer(m)
    n = 4000
    g = Gaussians(torch.zeros(n, 3), torch.ones(n, 3), torch.zeros(n, 4), torch.ones(n), torch.zeros(n, 1, 3))
    init = m.per_gaussian(g, tr.data)
    logits, lr = init[SEMANTICS]
    assert logits.shape == (n, C) and lr == 0.01
    assert logits.std().item() == pytest.approx(0.01, rel=0.05) and abs(logits.mean().item()) < 1e-3
    assert tr.optimizers[SEMANTICS].param_groups[0]["lr"] == 0.01


# ---------------------------------------------------------------------- short fit on a synthetic room
@functools.cache
def _scene() -> Views:
    """3 views (32x32) of synthetic room 3 with depth and 8-class labels."""
    views = synthetic_views(3, [0, 4, 8], S)
    images, depths, labels, cams = views.images, views.depths, views.labels, views.cameras
    return Views(images, cams, torch.tensor([0.3]), torch.tensor([8.0]), depths=depths, labels=labels)


def _fit(method: SemanticLogits, iterations: int) -> tuple[SceneTrainer, int]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = SceneConfig(iterations=iterations, init_stride=4, sh_degree=1, refine_start=20, refine_every=25,
                      refine_stop=60, grow_grad2d=5e-5, reset_every=10_000)  # fmt: skip
    tr = SceneTrainer(cfg, _scene(), method)
    n0 = tr.num_gaussians
    tr.fit(progress=False)
    torch.set_num_threads(threads)
    return tr, n0


@pytest.fixture(scope="module")
def fitted() -> tuple[SceneTrainer, int]:
    """150 steps, densification at steps 25 and 50, entropy warm-up over 100 steps."""
    return _fit(SemanticLogits(entropy_warmup=100), 150)


def test_semantic_loss_reaches_geometry():
    """Unlike Feature 3DGS, the semantic loss alone moves means, scales, rotations and opacities."""
    torch.manual_seed(0)
    m = SemanticLogits()
    tr = SceneTrainer(SceneConfig(init_stride=4, sh_degree=0), _scene(), m)
    with torch.no_grad():  # anisotropic, rotated Gaussians (else rotations get no gradient)
        tr.params["scales"].add_(0.3 * torch.randn_like(tr.params["scales"]))
        tr.params["quats"].add_(0.2 * torch.randn_like(tr.params["quats"]))
        tr.params[SEMANTICS].normal_()
    m.semantic_loss(m.render(tr, tr.view(0)), tr.data.labels[:, :1]).backward()
    for name in ("means", "scales", "quats", "opacities", SEMANTICS):
        assert tr.params[name].grad.abs().sum() > 0, name
    assert tr.params["sh0"].grad is None or torch.count_nonzero(tr.params["sh0"].grad) == 0


def _agreement(tr: SceneTrainer) -> float:
    pred = tr.method.predict(tr, tr.data.cameras)
    labels = tr.data.labels
    assert pred.shape == labels.shape and pred.min() >= 1 and pred.max() <= C
    return (pred == labels)[labels > 0].float().mean().item()


@pytest.mark.slow
def test_short_fit_lowers_ce_and_predicts_the_labels(fitted):
    tr, _ = fitted
    ce = [h["sem"] for h in tr.history]
    first, last = np.mean(ce[:10]), np.mean(ce[-10:])
    assert first == pytest.approx(math.log(C), rel=0.05)  # ~uniform at init
    assert last < 0.3 * first, (first, last)
    assert tr.history[-1]["entropy_weight"] == pytest.approx(0.01)
    assert _agreement(tr) > 0.8


@pytest.mark.slow
def test_densification_keeps_logits_aligned(fitted):
    tr, n0 = fitted
    assert tr.num_gaussians != n0
    assert {len(v) for v in tr.params.values()} == {tr.num_gaussians}
    assert tr.params[SEMANTICS].shape == (tr.num_gaussians, C)
    for name, opt in tr.optimizers.items():
        assert opt.param_groups[0]["params"][0] is tr.params[name]
        assert opt.state[tr.params[name]]["exp_avg"].shape == tr.params[name].shape


@pytest.mark.slow
def test_softmax_variant_fits_too():
    tr, _ = _fit(SemanticLogits(softmax=True, entropy_warmup=100), 100)
    nll = [h["sem"] for h in tr.history]
    assert np.mean(nll[-10:]) < 0.5 * np.mean(nll[:10])
    assert _agreement(tr) > 0.8
