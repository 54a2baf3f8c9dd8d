"""Feature 3DGS baseline: decoder shapes, loss at teacher resolution, detached geometry, a short fit."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ffsplat  # noqa: F401
from ffsplat.baselines.feature3dgs import FEATURE, Feature3DGS
from ffsplat.baselines.trainer import SceneConfig, SceneTrainer
from tests.synthetic_fixtures import synthetic_views
from ffsplat.teachers.label_teachers import LabelSegmentationTeacher
from ffsplat.core.types import Views

S = 32
GEOMETRY = ("means", "scales", "quats", "opacities")


@functools.cache
def _scene() -> Views:
    """3 views (32x32) of synthetic room 3 with labels, instances and a stand-in SAM teacher
    (256-d unit features per instance on a stride-4 grid: 8x8)."""
    views = synthetic_views(3, [0, 4, 8], S)
    images, depths, labels, instances, cams = views.images, views.depths, views.labels, views.instances, views.cameras
    teacher = LabelSegmentationTeacher().encode(images[0], instances=instances[0])[None]
    return Views(images, cams, torch.tensor([0.3]), torch.tensor([8.0]), depths=depths, labels=labels,
                 instances=instances, teacher={"sam": teacher})  # fmt: skip


def _trainer(method: Feature3DGS, **cfg) -> SceneTrainer:
    torch.manual_seed(0)
    return SceneTrainer(SceneConfig(**{"init_stride": 4, "sh_degree": 1, **cfg}), _scene(), method)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_decoder_is_a_1x1_conv_with_bias_of_the_speedup_shapes():
    for teacher_dim, rendered_dim in ((256, 64), (512, 128)):  # SAM, LSeg
        m = Feature3DGS("t", teacher_dim)
        assert m.rendered_dim == rendered_dim
        assert isinstance(m.decoder, torch.nn.Conv2d) and m.decoder.kernel_size == (1, 1)
        assert m.decoder.weight.shape == (teacher_dim, rendered_dim, 1, 1) and m.decoder.bias.shape == (teacher_dim,)
        [(module, lr)] = m.modules()
        assert module is m.decoder and lr == 1e-4
    plain = Feature3DGS("t", 512, speedup=False)
    assert plain.decoder is None and plain.rendered_dim == 512 and plain.modules() == []
    with pytest.raises(ValueError):
        Feature3DGS("t", 512, rendered_dim=128, speedup=False)


def test_per_gaussian_feature_starts_at_zero_with_lr_1e3():
    tr = _trainer(Feature3DGS("sam", 256))
    f = tr.params[FEATURE]
    assert f.shape == (tr.num_gaussians, 64) and torch.all(f == 0)
    assert tr.optimizers[FEATURE].param_groups[0]["lr"] == 1e-3
    assert tr.module_optimizers[0].param_groups[0]["params"][0] is tr.method.decoder.weight


@pytest.mark.parametrize("speedup", [True, False])
def test_feature_loss_is_l1_to_teacher_after_bilinear_resize_then_decoder(speedup: bool):
    m = Feature3DGS("sam", 256, speedup=speedup)
    tr = _trainer(m)
    with torch.no_grad():
        tr.params[FEATURE].normal_()
    decoder_inputs = []
    if speedup:
        m.decoder.register_forward_hook(lambda mod, inp, out: decoder_inputs.append(inp[0].shape))
    out = m.render(tr, tr.view(1))
    assert out.features[FEATURE].shape == (1, 1, m.rendered_dim, S, S)
    loss, logs = m.loss(tr, out, 1, 0)
    if speedup:  # the decoder ran on the resized (8x8) map, not on the 32x32 render
        assert decoder_inputs == [torch.Size([1, 64, 8, 8])]
    target = _scene().teacher["sam"][:, 1]  # [1, 256, 8, 8]
    x = F.interpolate(out.features[FEATURE][0], size=(8, 8), mode="bilinear", align_corners=True)
    expected = ((m.decoder(x) if speedup else x) - target).abs().mean()
    torch.testing.assert_close(loss, expected)
    assert logs["feature_l1"] == pytest.approx(expected.item(), rel=1e-5)


def test_feature_loss_does_not_move_geometry_but_rgb_loss_does():
    m = Feature3DGS("sam", 256)
    tr = _trainer(m)
    with torch.no_grad():  # random features; anisotropic, rotated Gaussians (else quats get no gradient)
        tr.params[FEATURE].normal_()
        tr.params["scales"].add_(0.3 * torch.randn_like(tr.params["scales"]))
        tr.params["quats"].add_(0.2 * torch.randn_like(tr.params["quats"]))
    out = m.render(tr, tr.view(0))
    feature_loss, _ = m.loss(tr, out, 0, 0)
    feature_loss.backward(retain_graph=True)
    for name in GEOMETRY + ("sh0",):
        g = tr.params[name].grad
        assert g is None or torch.count_nonzero(g) == 0, name
    assert tr.params[FEATURE].grad.abs().sum() > 0 and m.decoder.weight.grad.abs().sum() > 0
    tr.rgb_loss(out.rgb, _scene().images[:, :1]).backward()
    for name in GEOMETRY:
        assert tr.params[name].grad is not None and tr.params[name].grad.abs().sum() > 0, name


def test_decoded_features_at_render_resolution():
    m = Feature3DGS("sam", 256)
    tr = _trainer(m)
    feats = m.decoded_features(tr, tr.data.cameras)
    assert feats.shape == (1, 3, 256, S, S) and not feats.requires_grad
    # zero features: every pixel decodes to the decoder's bias
    torch.testing.assert_close(feats[0, 0, :, 5, 7], m.decoder.bias.detach())


@pytest.fixture(scope="module")
def fitted() -> tuple[SceneTrainer, int]:
    """200 steps with densification at steps 25 and 50 (low gradient threshold: N grows ~4x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    m = Feature3DGS("sam", 256)
    tr = _trainer(m, iterations=200, refine_start=20, refine_every=25, refine_stop=60, grow_grad2d=5e-5,
                  reset_every=10_000)  # fmt: skip
    n0 = tr.num_gaussians
    tr.fit(progress=False)
    torch.set_num_threads(threads)
    return tr, n0


@pytest.mark.slow
def test_short_fit_lowers_feature_l1(fitted):
    tr, _ = fitted
    l1 = [h["feature_l1"] for h in tr.history]
    first, last = np.mean(l1[:10]), np.mean(l1[-10:])
    assert last < 0.6 * first, (first, last)  # ~0.079 -> ~0.033
    # decoded features now point towards the teacher's (instance) embeddings
    teacher = _scene().teacher["sam"][0]
    with torch.no_grad():
        dec = tr.method.decode(tr.method.render_features(tr, tr.data.cameras), teacher.shape[-2:])[0]
    assert F.cosine_similarity(dec, teacher, dim=1).mean() > 0.5  # ~0.68; ~0 at init (decoder bias only)


@pytest.mark.slow
def test_densification_keeps_feature_aligned(fitted):
    tr, n0 = fitted
    assert tr.num_gaussians != n0
    assert {len(v) for v in tr.params.values()} == {tr.num_gaussians}
    assert tr.params[FEATURE].shape == (tr.num_gaussians, 64)
    for name, opt in tr.optimizers.items():  # optimiser state follows the parameter
        assert opt.param_groups[0]["params"][0] is tr.params[name]
        assert opt.state[tr.params[name]]["exp_avg"].shape == tr.params[name].shape
