"""Geometry glue and the bf16 path, checked on CPU against explicit constructions:

* the Gaussian adapter's unprojection (``fx != fy``), world rotation (camera rotation composed after
  the predicted camera-frame rotation) and SH rotation (by c2w, not w2c);
* soft-argmax in disparity (a two-hot cost volume);
* the network under ``torch.autocast("cpu", torch.bfloat16)`` hands ``render()`` a backend input
  that is entirely float32 (a recording stand-in for gsplat), and its plane-sweep grids equal the
  float32 ones exactly.
"""

from __future__ import annotations

import pytest
import torch

from ffsplat.core.geometry import inverse_depth_candidates, normalize_quat, plane_sweep_grid, quat_to_rotmat
from ffsplat.core.sh import num_sh_bases, sh_to_rgb
from ffsplat.core.types import Cameras
from ffsplat.model.depth import DepthConfig, DepthHead
from ffsplat.model.gaussians import GaussianConfig, GaussianHead
from ffsplat.model.network import build_model
from tests.test_model import conditions_for, make_views, small_config


def test_gaussian_adapter_matches_explicit_world_frame_construction():
    degree, h, w = 3, 6, 10
    head = GaussianHead(GaussianConfig(sh_degree=degree, pixel_offset=False), in_ch=4)
    k = num_sh_bases(degree)
    gen = torch.Generator().manual_seed(0)
    rot_raw = torch.tensor([0.2, 0.5, -0.4, 0.3])  # camera-frame rotation: far from identity
    sh_raw = torch.randn(k * 3, generator=gen)
    bias = torch.cat([torch.zeros(1 + 3), rot_raw, sh_raw, torch.zeros(2)])
    torch.nn.init.zeros_(head.net[-1].weight)
    with torch.no_grad():
        head.net[-1].bias.copy_(bias)  # every pixel gets these raw outputs

    intr = torch.tensor([[11.0, 0.0, 4.7], [0.0, 7.0, 3.2], [0.0, 0.0, 1.0]])  # fx != fy, cx != cy
    rot_c2w = quat_to_rotmat(torch.tensor([0.8, -0.3, 0.4, 0.2]))
    c2w = torch.eye(4)
    c2w[:3, :3], c2w[:3, 3] = rot_c2w, torch.tensor([0.5, -1.0, 2.0])
    cams = Cameras(intr.expand(1, 1, 3, 3).clone(), c2w.expand(1, 1, 4, 4).clone(), (h, w))
    images = torch.rand(1, 1, 3, h, w, generator=gen)
    depth = 1.0 + torch.rand(1, 1, h, w, generator=gen)
    g = head(torch.randn(1, 1, 4, h, w, generator=gen), images, depth, cams)

    # Means: pixel centres through (fx, cx) and (fy, cy) to z, then camera -> world.
    vv, uu = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    z = depth[0, 0]
    cam = torch.stack([(uu - 4.7) / 11.0 * z, (vv - 3.2) / 7.0 * z, z], dim=-1).reshape(-1, 3)
    torch.testing.assert_close(g.means[0], cam @ rot_c2w.T + c2w[:3, 3])

    # Rotation: local -> camera (predicted) then camera -> world.
    rot_cam = quat_to_rotmat(normalize_quat(rot_raw + torch.tensor([1.0, 0, 0, 0])))
    torch.testing.assert_close(
        quat_to_rotmat(g.rotations[0]), (rot_c2w @ rot_cam).expand(h * w, 3, 3), atol=1e-5, rtol=0
    )

    # SH: colour seen along world direction d == camera-frame SH evaluated at R_c2w^T d.
    sh_cam = (sh_raw.reshape(k, 3) * 0.1).expand(h * w, k, 3).clone()
    sh_cam[:, 0] += (images[0, 0].permute(1, 2, 0).reshape(-1, 3) - 0.5) / 0.28209479177387814
    dirs = torch.nn.functional.normalize(torch.randn(h * w, 3, generator=gen), dim=-1)
    world = sh_to_rgb(g.sh[0], dirs)
    explicit = sh_to_rgb(sh_cam, dirs @ rot_c2w)  # row-wise R^T d
    torch.testing.assert_close(world, explicit, atol=1e-4, rtol=0)


def test_soft_argmax_is_taken_in_disparity():
    cfg = DepthConfig(num_candidates=8, unet_channels=(8, 8), refine_channels=(4, 8), feature_proj=4)
    head = DepthHead(cfg, feature_ch=4, latent_ch=0)
    torch.nn.init.zeros_(head.cost_unet.out.weight)  # logits = the cost volume
    torch.nn.init.zeros_(head.cost_unet.out.bias)
    near, far = torch.tensor([0.5]), torch.tensor([10.0])
    cand = inverse_depth_candidates(near, far, 8)[:, None].expand(1, 2, 8)
    cost = torch.full((1, 2, 8, 4, 4), -1e4)
    cost[:, :, 1] = cost[:, :, 6] = 50.0  # two-hot: half the mass on candidates 1 and 6
    out = head(torch.rand(1, 2, 3, 16, 16), cost, torch.randn(1, 2, 4, 4, 4), None, cand, near, far)
    d1, d6 = cand[0, 0, 1], cand[0, 0, 6]
    expected = 1.0 / (0.5 / d1 + 0.5 / d6)  # mean disparity, not mean depth (0.5 d1 + 0.5 d6)
    torch.testing.assert_close(out.coarse_depth, torch.full_like(out.coarse_depth, float(expected)))
    torch.testing.assert_close(out.depth, torch.full_like(out.depth, float(expected)))  # zero-initialised residual
    # one-hot: exactly the candidate
    cost[:, :, 6] = -1e4
    out = head(torch.rand(1, 2, 3, 16, 16), cost, torch.randn(1, 2, 4, 4, 4), None, cand, near, far)
    torch.testing.assert_close(out.coarse_depth, torch.full_like(out.coarse_depth, float(d1)))


def test_bf16_autocast_network_hands_render_float32_and_exact_plane_sweep(monkeypatch):
    from ffsplat.model import cost_volume
    from ffsplat.render import RasterSettings, render, renderer

    received: list[tuple[str, torch.Tensor]] = []

    def recording_gsplat(means, quats, scales, opacities, colors, viewmats, ks, width, height, backgrounds, s):
        named = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors,
                 "viewmats": viewmats, "ks": ks, "backgrounds": backgrounds}  # fmt: skip
        received.extend(named.items())
        assert not torch.is_autocast_enabled("cpu")
        return renderer._rasterize_torch(
            means, quats, scales, opacities, colors, viewmats, ks, width, height, backgrounds, s
        )

    grids: list[tuple[tuple, torch.Tensor]] = []
    original_grid = cost_volume.plane_sweep_grid

    def recording_grid(*args):
        grid, valid = original_grid(*args)
        grids.append((args, grid))
        return grid, valid

    monkeypatch.setitem(renderer.BACKENDS, "gsplat", recording_gsplat)
    monkeypatch.setattr(cost_volume, "plane_sweep_grid", recording_grid)
    torch.manual_seed(0)
    model = build_model(small_config()).eval()
    views = make_views(1, 2, 32, 32)
    # ScanNet-like world coordinates: several metres from the origin, where bf16 steps are ~2-3 cm.
    views.cameras.extrinsics[..., :3, 3] += torch.tensor([4.3, 2.9, 1.7])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(views, conditions_for(views))
        assert out.gaussians.features["seg"].dtype == torch.bfloat16  # learned layers did run in bf16
        rendered = render(out.gaussians, views.cameras, settings=RasterSettings(backend="gsplat"))
    assert {name for name, _ in received} >= {"means", "quats", "scales", "opacities", "colors", "viewmats", "ks"}
    bad = {name: t.dtype for name, t in received if t.dtype != torch.float32}
    assert not bad, f"gsplat would read these as float: {bad}"
    assert rendered.rgb.dtype == torch.float32 and torch.isfinite(rendered.rgb).all()
    for name in ("means", "scales", "rotations", "opacities", "sh"):
        assert getattr(out.gaussians, name).dtype == torch.float32, name  # geometry left the network in float32

    # Plane-sweep grids: float32 inputs, and bit-identical to a float32 computation outside autocast.
    assert grids  # one call per chunk of depth candidates
    for args, _ in grids:
        assert all(a.dtype == torch.float32 for a in args if torch.is_tensor(a))
    feat_h, feat_w = grids[0][0][-2], grids[0][0][-1]
    grid = torch.cat([g for _, g in grids], dim=1)  # [B*V, D, h, w, 2]
    cams = views.cameras.resize(feat_h, feat_w)
    cand = inverse_depth_candidates(views.near, views.far, model.cfg.depth.num_candidates)[:, None].expand(1, 2, -1)
    src = torch.tensor([1, 0])
    expected, _ = plane_sweep_grid(
        cams.intrinsics, cams.extrinsics, cams.intrinsics[:, src], cams.w2c[:, src], cand, feat_h, feat_w
    )
    torch.testing.assert_close(grid, expected.flatten(0, 1), rtol=0, atol=0)


@pytest.mark.parametrize("field", ["opacities", "sh", "scales", "rotations", "features", "cameras"])
def test_render_gives_backends_float32_for_any_mix_of_dtypes(monkeypatch, field):
    from ffsplat.render import RasterSettings, render, renderer
    from tests.test_render import look_at_cameras, random_gaussians

    seen = []

    def recording(*args):
        seen.extend(a.dtype for a in args if torch.is_tensor(a))
        return renderer._rasterize_torch(*args)

    monkeypatch.setitem(renderer.BACKENDS, "gsplat", recording)
    g = random_gaussians(1, 20, 4, sh_degree=2, dtype=torch.float32)
    cams = look_at_cameras(1, 2, 12, 12, dtype=torch.float32)
    if field == "features":
        g.features["feat"] = g.features["feat"].bfloat16()
    elif field == "cameras":
        cams = cams.to(torch.bfloat16)
    else:
        setattr(g, field, getattr(g, field).bfloat16())
    out = render(g, cams, settings=RasterSettings(backend="gsplat"))
    assert seen and set(seen) == {torch.float32}
    assert out.rgb.dtype == torch.float32


def test_label_teacher_seeds_are_computed_on_the_labels_device():
    from ffsplat.teachers.label_teachers import _label_hash

    labels = torch.randint(0, 9, (40, 50), generator=torch.Generator().manual_seed(0))
    assert _label_hash(labels.to("meta")).device.type == "meta"  # no CPU tensor mixed in (CUDA contract)
    expected = int((labels.flatten().long() * torch.arange(1, labels.numel() + 1)).sum())
    assert int(_label_hash(labels)) == expected


def test_field_decoder_reduction_gives_every_rendered_pixel_gradient():
    from ffsplat.model.semantic_heads import FieldDecoder, resize_field

    x = torch.randn(2, 4, 32, 48, requires_grad=True)
    resize_field(x, (8, 12)).square().sum().backward()
    assert (x.grad != 0).all()  # plain bilinear would leave 75% of pixels without gradient
    # a constant field stays constant; upsampling is plain bilinear
    torch.testing.assert_close(resize_field(torch.ones(1, 1, 32, 48), (8, 12)), torch.ones(1, 1, 8, 12))
    up = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(
        resize_field(up, (8, 8)), torch.nn.functional.interpolate(up, size=(8, 8), mode="bilinear", align_corners=False)
    )
    dec = FieldDecoder(4, 6, 8)
    rendered = torch.randn(1, 2, 4, 32, 48, requires_grad=True)
    dec(rendered, (8, 12)).sum().backward()
    assert (rendered.grad != 0).float().mean() > 0.99
