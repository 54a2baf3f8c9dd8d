"""FHGS baseline (seed 002): loss identities, frozen features, densification, a short fit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from gsplat.strategy.ops import duplicate, split

from ffsplat.baselines.fhgs import (
    FHGS,
    clustering_sigma,
    external_potential,
    internal_clustering,
    ordered_contributions,
    sample_source_features,
    unit_teacher,
)
from ffsplat.baselines.trainer import SceneConfig, SceneTrainer
from ffsplat.render.renderer import RasterSettings, render
from ffsplat.core.types import Views

S, C = 32, 8


def tiny_views() -> Views:
    """3 views (32x32) of a synthetic room; the "SAM" teacher is a noisy unit vector per instance at 16x16."""
    from tests.synthetic_fixtures import synthetic_views

    views = synthetic_views(3, [0, 3, 6], S)
    img, depth, inst, cams = views.images, views.depths, views.instances, views.cameras
    g = torch.Generator().manual_seed(0)
    proto = F.normalize(torch.randn(int(inst.max()) + 1, C, generator=g), dim=-1)
    teacher = F.interpolate(proto[inst[0]].permute(0, 3, 1, 2), size=(16, 16), mode="bilinear", align_corners=False)
    teacher = (teacher + 0.05 * torch.randn(teacher.shape, generator=g))[None]
    near, far = torch.tensor([0.3]), torch.tensor([8.0])
    return Views(img, cams, near, far, depths=depth, instances=inst, teacher={"sam": teacher})


def config(iterations: int) -> SceneConfig:
    return SceneConfig(
        iterations=iterations, refine_start=40, refine_every=40, reset_every=10_000, init_stride=2, sh_degree=1
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fitted(_one_thread):
    torch.manual_seed(0)
    data = tiny_views()
    trainer = SceneTrainer(config(120), data, FHGS())
    before = {k: v.detach().clone() for k, v in trainer.params.items()}
    metrics_before = trainer.method.feature_metrics(trainer)
    trainer.fit(progress=False)
    return trainer, before, metrics_before


def test_sigma_formula():
    cos = torch.tensor([-1.0, 0.0, 0.5, 0.6, 1.0])
    expected = 1.0 / (1.0 + torch.exp(20.0 * (cos - 0.5)))
    assert torch.allclose(clustering_sigma(cos), expected)
    assert clustering_sigma(torch.tensor(0.5)).item() == pytest.approx(0.5)


def test_identities_against_ordered_contributions():
    """L_gt = A - f_gt.F equals sum_i w_i (1 - f_gt.f_i); without sigma L_cf = (A^2 - |F|^2)/2 (float64)."""
    torch.manual_seed(0)
    data = tiny_views()
    trainer = SceneTrainer(config(10), data, FHGS())
    g = trainer.gaussians(detach_geometry=True).to(torch.float64)
    feats = F.normalize(trainer.params["sam"].detach().double(), dim=-1)
    g.features = {"sam": feats[None]}
    cams = data.cameras.to(torch.float64)  # all 3 views at once
    settings = RasterSettings(backend="torch")
    out = render(g, cams, features=["sam"], settings=settings)
    w, ids, valid = ordered_contributions(g, cams, settings)
    assert w.shape[0] == 3 * S * S and ids.shape == w.shape and bool((w[~valid] == 0).all())
    alpha = out.alpha.reshape(-1)
    rendered = out.features["sam"][0].permute(0, 2, 3, 1).reshape(-1, C)
    assert torch.allclose(w.sum(-1), alpha, atol=1e-12)
    assert torch.allclose((w[..., None] * feats[ids]).sum(1), rendered, atol=1e-12)

    target = unit_teacher(data.teacher["sam"].double(), (S, S))  # [1, V, C, H, W]
    fgt = target[0].permute(0, 2, 3, 1).reshape(-1, C)
    l_identity = external_potential(out.alpha, out.features["sam"], target).reshape(-1)
    l_explicit = (w * (1 - (feats[ids] * fgt[:, None]).sum(-1))).sum(-1)
    assert l_identity.abs().max() > 1e-3
    assert torch.allclose(l_identity, l_explicit, atol=1e-12)

    l_cf = internal_clustering(w, ids, feats, None)
    assert torch.allclose(l_cf, (alpha**2 - (rendered**2).sum(-1)) / 2, atol=1e-12)
    # With sigma: the explicit double sum over ordered pairs i in front of j.
    p = int(alpha.argmax())
    k = int(valid[p].sum())
    wp, fp = w[p, :k], feats[ids[p, :k]]
    sig = clustering_sigma(fp @ fgt[p])
    explicit = sum(sig[i] * wp[i] * wp[j] * (1 - fp[i] @ fp[j]) for i in range(k) for j in range(i + 1, k))
    l_cf_sigma = internal_clustering(w[p : p + 1], ids[p : p + 1], feats, fgt[p : p + 1])[0]
    assert float(explicit) > 0 and l_cf_sigma.item() == pytest.approx(float(explicit), abs=1e-12)


def test_source_features_are_source_pixels():
    """Each Gaussian takes the teacher feature of the first view where it is visible (z-buffer of the
    initial centres): for the Gaussians unprojected from view 0 that is their source pixel."""
    data = tiny_views()
    trainer = SceneTrainer(config(1), data, FHGS())
    target = unit_teacher(data.teacher["sam"], (S, S))[0]  # [V, C, H, W]
    # init_stride=2 keeps every other pixel of view-major, row-major order (all depths valid).
    source = target.permute(0, 2, 3, 1).reshape(-1, C)[::2]
    first = S * S // 2  # the Gaussians of view 0
    same = (trainer.params["sam"].detach() - source).abs().amax(1) < 1e-5
    assert same[:first].float().mean() > 0.99  # the rest: a centre hidden by a nearer one at its pixel
    assert not same[first:].all()  # later views' Gaussians visible in view 0 take view 0's feature
    # Without depth, the first in-image view is used: still the source pixel for view-0 Gaussians.
    f = sample_source_features(trainer.params["means"].detach()[: S * S // 2], data.cameras[0], data.teacher["sam"][0])
    assert torch.allclose(f, source[: S * S // 2], atol=1e-5)


def test_feature_losses_move_geometry_only():
    torch.manual_seed(0)
    trainer = SceneTrainer(config(10), tiny_views(), FHGS())
    out = trainer.method.render(trainer, trainer.view(1))
    loss, logs = trainer.method.loss(trainer, out, 1, 0)
    assert {"gt", "cf"} <= set(logs) and logs["cf"] > 0
    loss.backward()
    assert trainer.params["sam"].grad is None
    for name in ("means", "scales", "opacities"):  # (quats: zero gradient for isotropic Gaussians)
        assert trainer.params[name].grad.abs().sum() > 0, name
    before = {k: v.detach().clone() for k, v in trainer.params.items()}
    for step in range(3):  # full training steps (before any densification)
        trainer.train_step(step % 3)
    assert torch.equal(trainer.params["sam"], before["sam"])
    assert not torch.equal(trainer.params["means"], before["means"])
    assert not torch.equal(trainer.params["opacities"], before["opacities"])


@pytest.mark.slow
def test_fit_keeps_features_frozen_and_aligned(fitted):
    trainer, before, _ = fitted
    n = trainer.num_gaussians
    assert n != len(before["means"])  # densification happened
    assert all(len(v) == n for v in trainer.params.values())
    sam = trainer.params["sam"].detach()
    # Every feature is one of the initial features, exactly (clones / splits inherit them).
    nearest = torch.cdist(sam, before["sam"], compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    assert nearest.max().item() < 1e-6


def test_densification_ops_copy_frozen_features():
    trainer = SceneTrainer(config(1), tiny_views(), FHGS())
    params, opts, state = trainer.params, trainer.optimizers, {"grad2d": torch.zeros(trainer.num_gaussians)}
    n0 = trainer.num_gaussians
    sam0 = params["sam"].detach().clone()
    sel = torch.zeros(n0, dtype=torch.bool)
    sel[[3, 10, 50]] = True
    duplicate(params, opts, state, sel)
    assert torch.equal(params["sam"][n0:], sam0[sel])
    n1 = len(params["means"])
    sel2 = torch.zeros(n1, dtype=torch.bool)
    sel2[[0, n1 - 1]] = True
    parents = params["sam"].detach()[sel2].clone()
    split(params, opts, state, sel2)
    assert all(len(v) == n1 + 2 for v in params.values())
    assert torch.equal(params["sam"][-4:], parents.repeat(2, 1))


@pytest.mark.slow
def test_short_fit_lowers_external_potential(fitted):
    trainer, _, metrics_before = fitted
    hist = trainer.history
    first = sum(h["gt"] for h in hist[:10]) / 10
    last = sum(h["gt"] for h in hist[-10:]) / 10
    assert last < first
    after = trainer.method.feature_metrics(trainer)
    assert after["FE"] < metrics_before["FE"]
    assert 0 <= after["FL1"] < metrics_before["FL1"]
    feats = trainer.method.features(trainer, trainer.data.cameras)
    assert feats.shape == (1, 3, C, S, S)


def test_features_are_assigned_without_sensor_depth():
    """FHGS picks each Gaussian's view by the *rendered* depth of the initial Gaussians (issue 30):
    the sensor depth maps can be scrambled or absent and the features do not change."""
    from ffsplat.render.init import gaussians_from_rgbd

    data = tiny_views()
    g = gaussians_from_rgbd(data.images, data.depths, data.cameras, opacity=0.1, sh_degree=0)[0]
    method = FHGS()
    a = method.per_gaussian(g, data)["sam"][0]
    scrambled = Views(data.images, data.cameras, data.near, data.far, depths=data.depths.flip(-1) * 3.0 + 1.0,
                      instances=data.instances, teacher=data.teacher)  # fmt: skip
    without = Views(
        data.images, data.cameras, data.near, data.far, depths=None, instances=data.instances, teacher=data.teacher
    )
    assert torch.equal(a, method.per_gaussian(g, scrambled)["sam"][0])
    assert torch.equal(a, method.per_gaussian(g, without)["sam"][0])
