"""The SemanticSplat network: shapes, view-permutation equivariance, gradients, the plane-sweep cost
volume on a textured plane, the Gaussian adapter's geometry, SH rotation, configs, pretrained loading."""

from __future__ import annotations


import math

import pytest
import torch

from ffsplat.core.config import group_file, to_dataclass
from ffsplat.core.geometry import inverse_depth_candidates, plane_sweep_grid, quat_to_rotmat, unproject_depth
from ffsplat.model.cost_volume import correlation_cost_volume
from ffsplat.model.gaussians import GaussianConfig, GaussianHead
from ffsplat.model.network import LANG, SEG, ModelConfig, PretrainedConfig, build_model, load_pretrained
from ffsplat.core.sh import rotate_sh, sh_bases
from ffsplat.core.types import Cameras, Views
from tests.conftest import requires_cuda


def small_config(**conditioning) -> ModelConfig:
    cfg = to_dataclass(ModelConfig, group_file("model", "small"))
    for key, value in conditioning.items():
        setattr(cfg.conditioning, key, value)
    return cfg


def make_views(b: int, v: int, h: int, w: int, seed: int = 0) -> Views:
    gen = torch.Generator().manual_seed(seed)
    k = torch.tensor([[0.9 * w, 0, w / 2], [0, 0.9 * w, h / 2], [0, 0, 1.0]]).expand(b, v, 3, 3).clone()
    c2w = torch.eye(4).repeat(b, v, 1, 1)
    c2w[..., 0, 3] = torch.linspace(-0.3, 0.3, v)
    c2w[..., 2, 3] = torch.linspace(0.0, 0.1, v)
    return Views(
        torch.rand(b, v, 3, h, w, generator=gen), Cameras(k, c2w, (h, w)), torch.full((b,), 0.5), torch.full((b,), 8.0)
    )


def conditions_for(views: Views, names=("sam", "lseg")) -> dict[str, torch.Tensor]:
    b, v = views.images.shape[:2]
    gen = torch.Generator().manual_seed(1)
    sizes = {"sam": (256, 8, 8), "lseg": (512, 16, 16)}
    return {n: torch.randn(b, v, *sizes[n], generator=gen) for n in names}


@pytest.mark.parametrize("v,h,w", [(2, 32, 32), (3, 32, 48), (4, 24, 40)])
def test_output_shapes_for_several_views_and_non_square(v, h, w):
    torch.manual_seed(0)
    model = build_model(small_config()).eval()
    views = make_views(2, v, h, w)
    with torch.no_grad():
        out = model(views, conditions_for(views))
    n = v * h * w
    g = out.gaussians
    assert g.means.shape == (2, n, 3) and g.scales.shape == (2, n, 3) and g.rotations.shape == (2, n, 4)
    assert g.sh.shape == (2, n, 4, 3) and g.opacities.shape == (2, n)
    assert g.features[SEG].shape == (2, n, 8) and g.features[LANG].shape == (2, n, 16)
    assert out.depth.depth.shape == (2, v, h, w) and out.depth.probabilities.shape == (2, v, 32, h // 4, w // 4)
    assert ((out.depth.depth >= 0.5 - 1e-4) & (out.depth.depth <= 8.0 + 1e-3)).all()
    torch.testing.assert_close(g.rotations.norm(dim=-1), torch.ones(2, n))
    for t in (g.means, g.scales, g.opacities, g.sh, g.features[SEG]):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize(
    "use_seg_teacher,use_lang_teacher", [(False, False), (True, False), (False, True), (True, True)]
)
def test_every_conditioning_choice_works_and_requires_its_inputs(use_seg_teacher, use_lang_teacher):
    model = build_model(small_config(use_seg_teacher=use_seg_teacher, use_lang_teacher=use_lang_teacher)).eval()
    views = make_views(1, 2, 32, 32)
    names = [n for n, used in (("sam", use_seg_teacher), ("lseg", use_lang_teacher)) if used]
    with torch.no_grad():
        out = model(views, conditions_for(views, names))
        assert torch.isfinite(out.gaussians.means).all()
        if names:
            key = {"sam": "use_seg_teacher", "lseg": "use_lang_teacher"}[names[0]]
            with pytest.raises(KeyError, match=f"conditioning.{key}=true"):
                model(views, {})
            wrong = conditions_for(views, names)
            wrong[names[0]] = wrong[names[0]][:, :, :7]
            with pytest.raises(ValueError, match=names[0]):
                model(views, wrong)


def test_permuting_views_permutes_outputs():
    torch.manual_seed(0)
    model = build_model(small_config()).eval()
    views = make_views(1, 3, 32, 32)
    cond = conditions_for(views)
    perm = torch.tensor([2, 0, 1])
    permuted = Views(
        views.images[:, perm], Cameras(views.cameras.intrinsics[:, perm], views.cameras.extrinsics[:, perm], (32, 32)),
        views.near, views.far,
    )  # fmt: skip
    with torch.no_grad():
        a = model(views, cond)
        b = model(permuted, {k: t[:, perm] for k, t in cond.items()})
    torch.testing.assert_close(b.depth.depth, a.depth.depth[:, perm], atol=1e-4, rtol=1e-4)
    per_view = lambda t: t.reshape(1, 3, 32 * 32, *t.shape[2:])  # noqa: E731
    for name in ("means", "opacities", "sh"):
        torch.testing.assert_close(
            per_view(getattr(b.gaussians, name)), per_view(getattr(a.gaussians, name))[:, perm], atol=1e-4, rtol=1e-4
        )
    torch.testing.assert_close(
        per_view(b.gaussians.features[LANG]), per_view(a.gaussians.features[LANG])[:, perm], atol=1e-4, rtol=1e-4
    )


def test_gradients_reach_every_parameter_group():
    from ffsplat.render import render

    torch.manual_seed(0)
    model = build_model(small_config())
    views = make_views(1, 2, 32, 32)
    out = model(views, conditions_for(views))
    rendered = render(out.gaussians, views.cameras)
    decoded = model.decode_fields(rendered.features, {"sam": (8, 8), "lseg": (16, 16)})
    loss = (
        rendered.rgb.mean() + rendered.depth.mean() + decoded["sam"].square().mean() + decoded["lseg"].square().mean()
    )
    loss.backward()
    for group, params in model.parameter_groups().items():
        assert params, group
        assert all(p.grad is not None for p in params), group
        assert sum(float(p.grad.abs().sum()) for p in params) > 0, group
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == [], silent
    grouped = {id(p) for ps in model.parameter_groups().values() for p in ps}
    assert grouped == {id(p) for p in model.parameters()}  # every parameter is in exactly one group


def textured_plane_views(depth: float, size: int = 64, channels: int = 32, baseline: float = 0.5):
    """Feature maps of a fronto-parallel plane z = depth with a sinusoidal texture, seen by two
    cameras ``baseline`` apart along x, computed analytically (the texture is a function of the
    world point). Features are unit vectors per pixel, so correlation peaks where they match."""
    gen = torch.Generator().manual_seed(0)
    freqs = torch.randn(channels, 2, generator=gen) * 30
    phase = torch.rand(channels, generator=gen) * 6.28
    f = 0.9 * size
    k = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    c2w[1, 0, 3] = baseline
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    feats = []
    for cam in range(2):
        x = c2w[cam, 0, 3] + (u - size / 2) / f * depth
        y = (v - size / 2) / f * depth
        feats.append(torch.sin(freqs[:, 0, None, None] * x + freqs[:, 1, None, None] * y + phase[:, None, None]))
    feats = torch.nn.functional.normalize(torch.stack(feats), dim=1)
    return feats[None].float(), Cameras(k.expand(1, 2, 3, 3).float(), c2w[None].float(), (size, size))


@pytest.mark.parametrize("depth", [1.3, 2.7])
def test_cost_volume_peaks_at_the_plane_depth(depth):
    feats, cams = textured_plane_views(depth)
    # 32 candidates: neighbouring candidates shift the other view by ~1.8 px (uniform in inverse depth).
    candidates = inverse_depth_candidates(torch.tensor([0.5]), torch.tensor([10.0]), 32)[:, None].expand(1, 2, 32)
    cost = correlation_cost_volume(feats, cams.intrinsics, cams.extrinsics, candidates)
    assert cost.shape == (1, 2, 32, 64, 64)
    best = candidates[0, 0][cost.argmax(dim=2)]  # [1, 2, h, w] depth of the peak
    nearest = candidates[0, 0][(1 / candidates[0, 0] - 1 / depth).abs().argmin()]
    # Pixels of view 0 that view 1 also sees (shift f b / d <= 22 px), and vice versa.
    assert (best[0, 0, 8:56, 24:60] == nearest).float().mean() > 0.95, (best[0, 0, 32, 40], nearest)
    assert (best[0, 1, 8:56, 4:40] == nearest).float().mean() > 0.95


def _einsum_cost_volume(features, intrinsics, extrinsics, depths, pairs=None):
    """The cost volume as it was before chunking (one full warp per offset, ``einsum``), optionally
    restricted to given source views ``pairs[b][i]`` per reference view."""
    import torch.nn.functional as F

    from ffsplat.core.geometry import invert_rigid

    b, v, c, h, w = features.shape
    d = depths.shape[-1]
    w2c = invert_rigid(extrinsics)
    total = features.new_zeros(b, v, d, h, w)
    count = features.new_zeros(b, v, d, h, w)
    for bi in range(b):
        for i in range(v):
            for j in pairs[bi][i] if pairs is not None else [j for j in range(v) if j != i]:
                grid, valid = plane_sweep_grid(
                    intrinsics[bi, i], extrinsics[bi, i], intrinsics[bi, j], w2c[bi, j], depths[bi, i], h, w
                )
                warped = F.grid_sample(features[bi, j][None], grid.reshape(1, d * h, w, 2), align_corners=False)
                warped = warped.reshape(c, d, h, w)
                total[bi, i] += torch.einsum("chw,cdhw->dhw", features[bi, i], warped) * valid
                count[bi, i] += valid
    return total / math.sqrt(c) / count.clamp_min(1.0)


@pytest.mark.parametrize("views,neighbors,chunk", [(2, 0, 16), (3, 0, 5), (4, 0, 1), (4, 3, 7), (5, 2, 16), (4, 1, 3)])
def test_chunked_cost_volume_equals_einsum_reference(views, neighbors, chunk):
    """Chunked multiply-sum over candidates (and k-nearest source views) equals the full-warp
    einsum cost volume, values and gradients (float64)."""
    from ffsplat.model.cost_volume import nearest_views

    gen = torch.Generator().manual_seed(views)
    cams = make_views(2, views, 12, 16).cameras
    c2w = cams.extrinsics.double().clone()
    # Irregular camera positions so "nearest" is not the index order.
    c2w[..., :3, 3] += 0.3 * torch.randn(2, views, 3, generator=gen, dtype=torch.float64)
    feats = torch.randn(2, views, 6, 12, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    k = cams.intrinsics.double()
    depths = torch.linspace(1.0, 4.0, 19, dtype=torch.float64).expand(2, views, 19)
    ours = correlation_cost_volume(feats, k, c2w, depths, num_neighbors=neighbors, depth_chunk=chunk)
    pairs = None
    if 0 < neighbors < views - 1:
        centres = c2w[..., :3, 3]
        pairs = [[sorted((j for j in range(views) if j != i), key=lambda j: float((centres[bi, i] - centres[bi, j]).norm()))[:neighbors]
                  for i in range(views)] for bi in range(2)]  # fmt: skip
        assert nearest_views(c2w, neighbors).tolist() == pairs
    ref = _einsum_cost_volume(feats, k, c2w, depths, pairs)
    assert (ref != 0).float().mean() > 0.3
    torch.testing.assert_close(ours, ref)
    up = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        torch.autograd.grad((ours * up).sum(), feats)[0], torch.autograd.grad((ref * up).sum(), feats)[0]
    )


def test_cost_volume_neighbours_reach_the_network_config():
    from ffsplat.model.depth import DepthConfig

    with pytest.raises(ValueError, match="cost_volume_neighbors"):
        DepthConfig(cost_volume_neighbors=-1)
    with pytest.raises(ValueError, match="cost_volume_depth_chunk"):
        DepthConfig(cost_volume_depth_chunk=0)
    torch.manual_seed(0)
    cfg = small_config()
    model = build_model(cfg).eval()
    views = make_views(1, 4, 32, 32)
    cond = conditions_for(views)
    with torch.no_grad():
        full = model(views, cond).depth.probabilities
        cfg.depth.cost_volume_neighbors = 1
        near = model(views, cond).depth.probabilities
        cfg.depth.cost_volume_neighbors = 3
        all3 = model(views, cond).depth.probabilities
    assert not torch.allclose(full, near)
    torch.testing.assert_close(full, all3)


def test_plane_sweep_grid_is_identity_for_the_same_camera():
    cams = make_views(1, 1, 16, 24).cameras
    depths = torch.tensor([[[1.0, 2.0, 5.0]]])
    grid, valid = plane_sweep_grid(cams.intrinsics, cams.extrinsics, cams.intrinsics, cams.w2c, depths, 16, 24)
    v, u = torch.meshgrid(torch.arange(16) + 0.5, torch.arange(24) + 0.5, indexing="ij")
    expected = torch.stack([2 * u / 24 - 1, 2 * v / 16 - 1], dim=-1)
    torch.testing.assert_close(grid[0, 0], expected.expand(3, 16, 24, 2))
    assert valid.all()


def test_gaussian_adapter_unprojects_known_depth_in_world_space():
    torch.manual_seed(0)
    head = GaussianHead(GaussianConfig(sh_degree=2, pixel_offset=False), in_ch=5)
    torch.nn.init.zeros_(head.net[-1].weight)  # raw outputs exactly 0
    views = make_views(1, 2, 8, 12)
    rot = quat_to_rotmat(torch.tensor([0.9, 0.1, -0.3, 0.2]))
    views.cameras.extrinsics[0, 1, :3, :3] = rot
    depth = 1.0 + torch.rand(1, 2, 8, 12)
    g = head(torch.randn(1, 2, 5, 8, 12), views.images, depth, views.cameras)
    expected = unproject_depth(depth, views.cameras.intrinsics, views.cameras.extrinsics).reshape(1, -1, 3)
    torch.testing.assert_close(g.means, expected)
    # Identity camera-frame rotation -> the camera's own rotation in world space.
    torch.testing.assert_close(quat_to_rotmat(g.rotations[0, 8 * 12 :]), rot.expand(96, 3, 3), atol=1e-5, rtol=0)
    # Scale starts at init_scale pixel footprints; colour reproduces the image for every direction.
    focal = 0.9 * 12
    torch.testing.assert_close(g.scales[0, :96, 0], depth[0, 0].reshape(-1) / focal * GaussianConfig().init_scale)
    assert GaussianConfig().init_scale == 1.0
    from ffsplat.core.sh import sh_to_rgb

    rgb = sh_to_rgb(g.sh, torch.randn(1, 192, 3))
    torch.testing.assert_close(rgb, views.images.permute(0, 1, 3, 4, 2).reshape(1, 192, 3), atol=1e-5, rtol=0)
    assert torch.allclose(g.opacities, torch.tensor(0.5))


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_sh_rotation_matches_rotating_the_directions(degree):
    gen = torch.Generator().manual_seed(degree)
    coeffs = torch.randn(20, (degree + 1) ** 2, 3, generator=gen, dtype=torch.float64)
    rot = quat_to_rotmat(torch.randn(20, 4, generator=gen, dtype=torch.float64))
    dirs = torch.nn.functional.normalize(torch.randn(20, 3, generator=gen, dtype=torch.float64), dim=-1)
    rotated = (sh_bases(degree, dirs)[..., None] * rotate_sh(coeffs, rot)).sum(-2)
    original = (sh_bases(degree, (rot.transpose(-1, -2) @ dirs[..., None])[..., 0])[..., None] * coeffs).sum(-2)
    torch.testing.assert_close(rotated, original)


@pytest.mark.parametrize("degree", [1, 3])
@pytest.mark.parametrize("coeff_shape,rot_shape", [((2, 3, 17), (2, 3, 1)), ((5,), (5,)), ((2, 4), (1, 4)), ((6,), ())])
def test_rotate_sh_equals_broadcast_matmul(degree, coeff_shape, rot_shape):
    """rotate_sh (einsum, no per-Gaussian copy of the rotation) equals ``A^T @ coeffs`` with the
    rotation broadcast over the Gaussians, values and gradients."""
    from ffsplat.core.sh import sh_rotation

    gen = torch.Generator().manual_seed(degree)
    coeffs = torch.randn(*coeff_shape, (degree + 1) ** 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    rot = quat_to_rotmat(torch.randn(*rot_shape, 4, generator=gen, dtype=torch.float64)).requires_grad_(True)
    ours = rotate_sh(coeffs, rot)
    ref = sh_rotation(degree, rot).transpose(-1, -2) @ coeffs
    torch.testing.assert_close(ours, ref)
    up = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        torch.autograd.grad((ours * up).sum(), coeffs), torch.autograd.grad((ref * up).sum(), coeffs)
    )


def test_configs_document_and_build(tmp_path):
    paper = to_dataclass(ModelConfig, group_file("model", "paper"))
    assert paper.name == "mvsplat"  # MVSplat's geometry: 6-layer d=128 transformer, 128 candidates
    assert (
        paper.mvsplat.num_transformer_layers == 6
        and paper.mvsplat.d_feature == 128
        and paper.mvsplat.num_depth_candidates == 128
    )
    assert 5e6 < sum(p.numel() for p in build_model(paper).parameters()) < 15e6  # MVSplat: 12M
    with pytest.raises(FileNotFoundError, match="choose one of"):
        group_file("model", "enormous")
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone:\n  dmodel: 3\n")
    with pytest.raises(Exception, match="backbone.dmodel"):
        to_dataclass(ModelConfig, bad)


def test_pretrained_loading_with_key_map_and_report(tmp_path):
    torch.manual_seed(0)
    source = build_model(small_config())
    state = {f"encoder.{k}": v for k, v in source.backbone.state_dict().items()}
    state["encoder.extra.weight"] = torch.zeros(3)
    torch.save({"state_dict": state}, tmp_path / "ckpt.pth")
    torch.manual_seed(1)
    target = build_model(small_config())
    report = load_pretrained(target, PretrainedConfig(str(tmp_path / "ckpt.pth"), {"encoder.": "backbone."}))
    assert report["loaded"] == len(source.backbone.state_dict())
    assert report["unexpected"] == ["backbone.extra.weight"]
    assert report["missing"] and all(not k.startswith("backbone.") for k in report["missing"])
    for k, v in source.backbone.state_dict().items():
        torch.testing.assert_close(target.backbone.state_dict()[k], v)
    with pytest.raises(RuntimeError, match="strict"):
        load_pretrained(target, PretrainedConfig(str(tmp_path / "ckpt.pth"), {"encoder.": "backbone."}, strict=True))
    with pytest.raises(FileNotFoundError, match="model.pretrained.path"):
        load_pretrained(target, PretrainedConfig(str(tmp_path / "missing.pth")))


def test_bf16_autocast_on_cpu():
    model = build_model(small_config()).eval()
    views = make_views(1, 2, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(views, conditions_for(views))
    assert torch.isfinite(out.gaussians.means.float()).all() and torch.isfinite(out.depth.depth.float()).all()


@requires_cuda
def test_bf16_autocast_on_cuda_and_render():
    from ffsplat.render import render

    model = build_model(small_config()).cuda()
    views = make_views(1, 2, 64, 64).to("cuda")
    cond = {k: v.cuda() for k, v in conditions_for(views).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(views, cond)
        rendered = render(out.gaussians, views.cameras)
    assert rendered.rgb.dtype == torch.float32 and torch.isfinite(rendered.rgb).all()
    rendered.rgb.mean().backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
