"""render(): the torch tile rasterizer against a per-pixel reference, gsplat's own pure-torch
pieces, analytic cases and gradients; gsplat CUDA parity where a GPU exists."""

from __future__ import annotations

import math

import pytest
import torch

from ffsplat import Cameras, Gaussians
from ffsplat.render import RasterSettings, render
from ffsplat.core.geometry import invert_rigid
from ffsplat.render.rasterizer.projection import project_gaussians
from ffsplat.render.rasterizer.tiles import rasterize_tiles
from ffsplat.core.sh import sh_to_rgb
from tests.reference_raster import reference_rasterize


def look_at_cameras(batch: int, views: int, height: int, width: int, dtype=torch.float64, device="cpu") -> Cameras:
    """Cameras on a small arc around the origin looking at it, batch shape [batch, views]."""
    c2ws = []
    for i in range(batch * views):
        angle = 0.3 * (i - (batch * views - 1) / 2)
        eye = torch.tensor([3.0 * math.sin(angle), 0.2 * i - 0.3, -3.0 * math.cos(angle)], dtype=dtype)
        forward = -eye / eye.norm()
        right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=dtype), forward)
        right = right / right.norm()
        down = torch.linalg.cross(forward, right)
        c2w = torch.eye(4, dtype=dtype)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
        c2ws.append(c2w)
    k = torch.tensor([[1.1 * width, 0, width / 2 + 0.3], [0, 1.1 * width, height / 2 - 0.2], [0, 0, 1]], dtype=dtype)
    return Cameras(
        k.expand(batch, views, 3, 3).clone().to(device),
        torch.stack(c2ws).reshape(batch, views, 4, 4).to(device),
        (height, width),
    )


def random_gaussians(batch: int, n: int, channels: int, sh_degree: int = 1, dtype=torch.float64, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=dtype)

    features = {"feat": torch.randn(batch, n, channels, generator=gen, dtype=dtype)} if channels else {}
    g = Gaussians(
        means=(rand(batch, n, 3) - 0.5) * 1.6,
        scales=0.04 + 0.12 * rand(batch, n, 3),
        rotations=torch.nn.functional.normalize(torch.randn(batch, n, 4, generator=gen, dtype=dtype), dim=-1),
        opacities=0.2 + 0.75 * rand(batch, n),
        sh=torch.randn(batch, n, (sh_degree + 1) ** 2, 3, generator=gen, dtype=dtype) * 0.4,
        features=features,
    )
    return g.to(device)


def render_reference(g: Gaussians, cams: Cameras, names, background=None):
    """render() with the tile rasterizer swapped for the per-pixel reference."""
    b, v = cams.batch_shape
    h, w = cams.image_size
    n = g.num_gaussians
    proj = project_gaussians(g.means, g.rotations, g.scales, g.opacities, cams.w2c, cams.intrinsics, w, h)
    rgb = sh_to_rgb(g.sh[:, None], g.means[:, None] - cams.centers[:, :, None])
    cols = [rgb] + [g.features[k][:, None].expand(b, v, n, -1) for k in names] + [proj.depths.reshape(b, v, n, 1)]
    colors = torch.cat(cols, -1).reshape(b * v, n, -1)
    bg = torch.zeros(b * v, colors.shape[-1], dtype=colors.dtype)
    if background is not None:
        bg[:, :3] = torch.as_tensor(background, dtype=colors.dtype)
    img, alpha = reference_rasterize(proj, colors, w, h, bg)
    return img.reshape(b, v, h, w, -1), alpha.reshape(b, v, h, w)


@pytest.mark.parametrize("channels", [0, 5, 130])
@pytest.mark.parametrize("tile", [4, 16])
def test_tile_rasterizer_matches_per_pixel_reference(channels, tile):
    g = random_gaussians(2, 40, channels, sh_degree=2)
    cams = look_at_cameras(2, 3, 20, 28)
    names = list(g.features)
    out = render(g, cams, background=[0.1, 0.2, 0.3], settings=RasterSettings(torch_tile_size=tile))
    ref_img, ref_alpha = render_reference(g, cams, names, background=[0.1, 0.2, 0.3])
    assert out.rgb.shape == (2, 3, 3, 20, 28)
    assert (out.alpha > 0.5).float().mean() > 0.1  # the scene is actually visible
    torch.testing.assert_close(out.rgb, ref_img[..., :3].permute(0, 1, 4, 2, 3), rtol=0, atol=1e-10)
    torch.testing.assert_close(out.alpha, ref_alpha, rtol=0, atol=1e-10)
    ref_depth = ref_img[..., -1] / ref_alpha.clamp_min(1e-10)
    torch.testing.assert_close(out.depth, ref_depth, rtol=0, atol=1e-9)
    if channels:
        torch.testing.assert_close(out.features["feat"], ref_img[..., 3:-1].permute(0, 1, 4, 2, 3), rtol=0, atol=1e-10)
    else:
        assert out.features == {}


def test_gradients_match_reference():
    g = random_gaussians(1, 25, 4, sh_degree=1)
    cams = look_at_cameras(1, 2, 12, 14)
    params = [g.means, g.scales, g.rotations, g.opacities, g.sh, g.features["feat"]]
    for p in params:
        p.requires_grad_(True)
    weights = torch.randn(1, 2, 12, 14, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    out = render(g, cams)
    ours = torch.cat([out.rgb, out.features["feat"], out.depth[:, :, None]], 2).permute(0, 1, 3, 4, 2)
    grads = torch.autograd.grad((ours * weights).sum(), params)
    ref_img, ref_alpha = render_reference(g, cams, ["feat"])
    ref = torch.cat([ref_img[..., :-1], (ref_img[..., -1:] / ref_alpha[..., None].clamp_min(1e-10))], -1)
    ref_grads = torch.autograd.grad((ref * weights).sum(), params)
    for name, a, b in zip(["means", "scales", "rotations", "opacities", "sh", "feat"], grads, ref_grads):
        assert a.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.slow
def test_gradcheck_tiny_scene():
    g = random_gaussians(1, 4, 2, sh_degree=1, seed=5)
    cams = look_at_cameras(1, 1, 8, 8)

    def fn(means, scales, quats, opac, sh, feat):
        out = render(Gaussians(means, scales, quats, opac, sh, {"f": feat}), cams, background=[0.2, 0.1, 0.0])
        return out.rgb, out.features["f"], out.depth, out.alpha

    inputs = [
        t.clone().requires_grad_(True) for t in (g.means, g.scales, g.rotations, g.opacities, g.sh, g.features["feat"])
    ]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def single_camera(height=32, width=32, focal=40.0, principal=None, dtype=torch.float64) -> Cameras:
    cx, cy = principal or (width / 2, height / 2)
    k = torch.tensor([[focal, 0, cx], [0, focal, cy], [0, 0, 1]], dtype=dtype)
    return Cameras(k[None], torch.eye(4, dtype=dtype)[None], (height, width))


def isotropic(means, scale, opacity, rgb, dtype=torch.float64) -> Gaussians:
    means = torch.as_tensor(means, dtype=dtype).reshape(-1, 3)
    n = means.shape[0]
    sh = torch.zeros(n, 1, 3, dtype=dtype)
    sh[:, 0] = (torch.as_tensor(rgb, dtype=dtype).reshape(n, 3) - 0.5) / 0.28209479177387814
    return Gaussians(
        means=means,
        scales=torch.full((n, 3), scale, dtype=dtype),
        rotations=torch.tensor([[1.0, 0, 0, 0]], dtype=dtype).expand(n, 4),
        opacities=torch.as_tensor(opacity, dtype=dtype).reshape(n),
        sh=sh,
    )


def test_isotropic_gaussian_lands_on_its_pixel():
    # Principal point at the centre of pixel (u, v) = (20, 9), i.e. (20.5, 9.5): a Gaussian on the
    # optical axis projects there with 2D variance exactly (f s / z)^2 + eps2d.
    cams = single_camera(principal=(20.5, 9.5))
    z = 2.0
    g = isotropic([0.0, 0.0, z], 0.05, 0.8, [1.0, 0.5, 0.25])
    out = render(g, cams)
    assert out.alpha[0].argmax().item() == 9 * 32 + 20
    assert out.alpha[0, 9, 20].item() == pytest.approx(0.8, abs=1e-12)
    torch.testing.assert_close(out.rgb[0, :, 9, 20], torch.tensor([0.8, 0.4, 0.2], dtype=torch.float64))
    # One pixel to the right: 2D variance (f s / z)^2 + eps2d.
    var = (40 * 0.05 / z) ** 2 + 0.3
    assert out.alpha[0, 9, 21].item() == pytest.approx(0.8 * math.exp(-0.5 / var), rel=1e-9)
    assert out.depth[0, 9, 20].item() == pytest.approx(z, rel=1e-12)


def test_front_gaussian_occludes_back_one():
    cams = single_camera()
    red, green = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    front_red = isotropic([[0, 0, 2.0], [0, 0, 3.0]], 0.3, [0.7, 0.6], [red, green])
    front_green = isotropic([[0, 0, 3.0], [0, 0, 2.0]], 0.3, [0.7, 0.6], [red, green])
    a = render(front_red, cams).rgb[0, :, 16, 16]
    b = render(front_green, cams).rgb[0, :, 16, 16]

    # Pixel (16, 16) is 0.5 px from the centre in x and y: compute alphas there.
    def alpha_at(opacity, z):
        var = (40 * 0.3 / z) ** 2 + 0.3
        return opacity * math.exp(-0.5 * 0.5 / var)

    ar, ag = alpha_at(0.7, 2.0), alpha_at(0.6, 3.0)
    torch.testing.assert_close(a, torch.tensor([ar, (1 - ar) * ag, 0], dtype=torch.float64))
    ag2, ar2 = alpha_at(0.6, 2.0), alpha_at(0.7, 3.0)
    torch.testing.assert_close(b, torch.tensor([(1 - ag2) * ar2, ag2, 0], dtype=torch.float64))


def test_compositing_stops_before_transmittance_falls_below_1e4():
    cams = single_camera(principal=(16.5, 16.5))  # pixel (16, 16) sees the centres exactly
    g = isotropic([[0, 0, 2.0], [0, 0, 2.5], [0, 0, 3.0]], 0.5, [1.0, 1.0, 1.0], [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    out = render(g, cams)
    # alpha capped at 0.999: after the first T = 1e-3; the second would leave 1e-6 <= 1e-4, so
    # compositing stops there and neither the second nor the third contributes.
    torch.testing.assert_close(
        out.rgb[0, :, 16, 16], torch.tensor([0.999, 0, 0], dtype=torch.float64), atol=1e-12, rtol=0
    )
    assert out.alpha[0, 16, 16].item() == pytest.approx(0.999, abs=1e-12)


@pytest.mark.parametrize("z", [-2.0, 0.005])
def test_gaussian_behind_camera_or_before_near_plane_is_invisible(z):
    cams = single_camera()
    g = isotropic([0.0, 0.0, z], 0.5, 0.9, [1.0, 1.0, 1.0])
    out = render(g, cams, background=[0.25, 0.5, 0.75])
    assert out.alpha.abs().max().item() == 0.0
    torch.testing.assert_close(out.rgb[0, :, 10, 10], torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    g.means.requires_grad_(True)
    render(g, cams).rgb.sum().backward()
    assert torch.isfinite(g.means.grad).all()


def test_batch_of_cameras_equals_cameras_one_by_one():
    g = random_gaussians(2, 30, 3)
    cams = look_at_cameras(2, 3, 16, 16)
    out = render(g, cams)
    for b in range(2):
        for v in range(3):
            single = render(g[b], cams[b, v : v + 1])
            torch.testing.assert_close(out.rgb[b, v], single.rgb[0], rtol=0, atol=1e-12)
            torch.testing.assert_close(out.features["feat"][b, v], single.features["feat"][0], rtol=0, atol=1e-12)
            torch.testing.assert_close(out.depth[b, v], single.depth[0], rtol=0, atol=1e-12)


def test_feature_selection_and_errors():
    g = random_gaussians(1, 10, 3)
    cams = look_at_cameras(1, 1, 8, 8)
    assert render(g, cams, features=[]).features == {}
    with pytest.raises(KeyError, match="lang"):
        render(g, cams, features=["lang"])
    with pytest.raises(ValueError, match="view axis"):
        render(g, cams[0])
    with pytest.raises(ValueError, match="unknown render backend"):
        render(g, cams, settings=RasterSettings(backend="vulkan"))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs CUDA tensors"):
            render(g, cams, settings=RasterSettings(backend="gsplat"))


def test_projection_matches_gsplat_pure_torch_reference():
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    g = random_gaussians(1, 50, 0)
    cams = look_at_cameras(1, 3, 24, 30)
    ours = project_gaussians(g.means, g.rotations, g.scales, g.opacities, cams.w2c, cams.intrinsics, 30, 24)
    covars, _ = _quat_scale_to_covar_preci(g.rotations, g.scales, True, False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(g.means, covars, cams.w2c, cams.intrinsics, 30, 24)
    valid = ours.valid.reshape(1, 3, 50)
    assert valid.float().mean() > 0.5
    torch.testing.assert_close(ours.means2d.reshape(1, 3, 50, 2)[valid], means2d[valid])
    torch.testing.assert_close(ours.conics.reshape(1, 3, 50, 3)[valid], conics[valid])
    torch.testing.assert_close(ours.depths.reshape(1, 3, 50), depths)
    # Our radii are opacity-aware (as gsplat's CUDA kernel), hence never larger than 3.33 sigma.
    assert (ours.radii.reshape(1, 3, 50, 2)[valid] <= radii[valid]).all()


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_sh_matches_gsplat(degree):
    from gsplat.cuda._torch_impl import _spherical_harmonics

    coeffs = torch.randn(100, (degree + 1) ** 2, 3, dtype=torch.float64)
    dirs = torch.randn(100, 3, dtype=torch.float64)
    expected = torch.clamp_min(_spherical_harmonics(degree, dirs, coeffs) + 0.5, 0)
    torch.testing.assert_close(sh_to_rgb(coeffs, dirs), expected)


def test_rasterize_tiles_chunking_does_not_change_result():
    g = random_gaussians(1, 60, 6)
    cams = look_at_cameras(1, 2, 20, 20)
    proj = project_gaussians(g.means, g.rotations, g.scales, g.opacities, cams.w2c, cams.intrinsics, 20, 20)
    colors = g.features["feat"].expand(2, 60, 6)
    big, _ = rasterize_tiles(proj, colors, 20, 20, tile_size=4)
    small, _ = rasterize_tiles(proj, colors, 20, 20, tile_size=4, max_chunk_elements=1)
    torch.testing.assert_close(big, small, rtol=0, atol=1e-12)  # float64; summation order may differ by ~1e-16


@pytest.mark.cuda
@pytest.mark.parametrize("channels", [0, 3, 64, 130])
@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_gsplat_cuda_matches_torch_backend(channels, mode):
    g = random_gaussians(2, 500, channels, sh_degree=3, dtype=torch.float32, device="cuda")
    cams = look_at_cameras(2, 3, 48, 64, dtype=torch.float32, device="cuda")
    results = {}
    for backend in ("gsplat", "torch"):
        gg = g.to("cuda")
        params = [gg.means, gg.scales, gg.rotations, gg.opacities, gg.sh] + list(gg.features.values())
        for p in params:
            p.requires_grad_(True)
        out = render(
            gg, cams, background=[0.3, 0.2, 0.1], settings=RasterSettings(backend=backend, rasterize_mode=mode)
        )
        torch.manual_seed(0)
        stack = [out.rgb, out.alpha[:, :, None], out.depth[:, :, None] / 4] + list(out.features.values())
        loss = sum((t * torch.randn_like(t)).sum() for t in stack)
        results[backend] = ([t.detach() for t in stack], torch.autograd.grad(loss, params))
    (fa, ga), (fb, gb) = results["gsplat"], results["torch"]
    for a, b in zip(fa, fb):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-4)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * b.abs().max().item())


def test_w2c_c2w_round_trip_used_by_render():
    cams = look_at_cameras(1, 2, 8, 8)
    torch.testing.assert_close(invert_rigid(cams.w2c), cams.extrinsics)


def test_render_of_gaussians_loaded_from_ply_equals_in_memory(tmp_path):
    from ffsplat.render.ply import read_ply, write_ply

    g = random_gaussians(1, 60, 16, sh_degree=3, dtype=torch.float32)[0]
    cams = look_at_cameras(1, 2, 24, 24, dtype=torch.float32)[0]
    loaded, _ = read_ply(write_ply(tmp_path / "scene.ply", g))
    a, b = render(g, cams), render(loaded, cams)
    # Opacity and scale pass through logit/log in float32 (about 1e-7 relative); all else exact.
    for x, y in [(a.rgb, b.rgb), (a.features["feat"], b.features["feat"]), (a.alpha, b.alpha)]:
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)
    assert (a.alpha > 0.5).any()


def test_half_precision_and_autocast_render_in_float32():
    g = random_gaussians(1, 30, 4, dtype=torch.float32)
    cams = look_at_cameras(1, 2, 16, 16, dtype=torch.float32)
    g_bf16 = g.to(torch.bfloat16)
    expected = render(g_bf16.to(torch.float32), cams)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = render(g_bf16, cams)
    assert out.rgb.dtype == torch.float32
    torch.testing.assert_close(out.rgb, expected.rgb, rtol=0, atol=0)
    torch.testing.assert_close(out.features["feat"], expected.features["feat"], rtol=0, atol=0)


def test_meta_means2d_carries_screen_space_gradients():
    g = random_gaussians(1, 30, 0, dtype=torch.float32)
    cams = look_at_cameras(1, 2, 16, 16, dtype=torch.float32)
    g.means.requires_grad_(True)
    out = render(g, cams)
    means2d = out.meta["means2d"]
    assert means2d.shape == (1, 2, 30, 2)
    means2d.retain_grad()
    out.rgb.sum().backward()
    assert means2d.grad is not None and means2d.grad.abs().sum() > 0
    # it is the projection of the means (pixel coordinates)
    from ffsplat.core.geometry import project_points

    uv, _ = project_points(g.means.detach()[:, None], cams.intrinsics, cams.w2c)
    visible = out.meta["radii"][0].gt(0).all(-1)
    torch.testing.assert_close(means2d.detach()[0][visible], uv[0][visible], atol=1e-3, rtol=0)


def _opaque_stack_scene(dtype):
    """Random Gaussians plus a stack of near-opaque ones, so the T <= 1e-4 stop rule and the
    0.999 alpha clamp are both exercised."""
    g = random_gaussians(1, 50, 0, dtype=dtype, seed=3)
    extra = 12
    means = torch.cat(
        [g.means, torch.zeros(1, extra, 3, dtype=dtype) + torch.linspace(-0.3, 0.3, extra, dtype=dtype)[None, :, None]],
        1,
    )
    scales = torch.cat([g.scales, torch.full((1, extra, 3), 0.3, dtype=dtype)], 1)
    rotations = torch.cat([g.rotations, torch.tensor([1.0, 0, 0, 0], dtype=dtype).expand(1, extra, 4)], 1)
    opacities = torch.cat([g.opacities, torch.full((1, extra), 0.99, dtype=dtype)], 1)
    return means, rotations, scales, opacities


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("tile,chunk,channels", [(4, 1 << 20, 67), (16, 1 << 24, 1), (4, 1 << 12, 7), (16, 1, 3)])
@pytest.mark.parametrize("slab", [3, 32])
def test_custom_backward_compositor_equals_autograd_compositor(dtype, tile, chunk, channels, slab, monkeypatch):
    """rasterize_tiles (hand-written backward, chunk recompute, slabs with early termination)
    equals the previous dense autograd compositor in values and in gradients w.r.t. every input,
    incl. upstream alpha gradients. ``slab=3`` splits every list into many slabs, so the carried
    transmittance, stops inside later slabs and dropped tiles are all exercised."""
    from ffsplat.render.rasterizer import tiles
    from tests.reference_raster import autograd_rasterize_tiles

    monkeypatch.setattr(tiles, "SLAB", slab)

    means, rotations, scales, opacities = _opaque_stack_scene(dtype)
    n = means.shape[1]
    cams = look_at_cameras(1, 2, 22, 26, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    colors = torch.randn(2, n, channels, generator=gen, dtype=dtype)
    bg = torch.rand(2, channels, generator=gen, dtype=dtype)
    results = []
    for fn in (rasterize_tiles, autograd_rasterize_tiles):
        leaves = [t.clone().requires_grad_(True) for t in (means, rotations, scales, opacities, colors, bg)]
        proj = project_gaussians(*leaves[:4], cams.w2c, cams.intrinsics, 26, 22)
        img, alpha = fn(proj, leaves[4], 26, 22, tile_size=tile, backgrounds=leaves[5], max_chunk_elements=chunk)
        gi = torch.randn(img.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
        ga = torch.randn(alpha.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
        grads = torch.autograd.grad((img * gi).sum() + (alpha * ga).sum(), leaves)
        results.append((img.detach(), alpha.detach(), grads))
    (img_a, al_a, gr_a), (img_b, al_b, gr_b) = results
    assert (al_b > 1 - 2e-4).any(), "the scene must reach the transmittance stop"
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(img_a, img_b, **tol)
    torch.testing.assert_close(al_a, al_b, **tol)
    for name, a, b in zip(["means", "rotations", "scales", "opacities", "colors", "bg"], gr_a, gr_b):
        scale = b.abs().max().item()
        gtol = {"rtol": 1e-8, "atol": 1e-8 * scale} if dtype == torch.float64 else {"rtol": 1e-3, "atol": 1e-4 * scale}
        torch.testing.assert_close(a, b, **gtol, msg=lambda m, name=name: f"grad {name}: {m}")


def test_early_termination_skips_gaussians_behind_an_opaque_wall(monkeypatch):
    """Behind a wall of opaque Gaussians every pixel stops, so the compositor evaluates only the
    first slabs of each tile's list (and still equals the dense compositor)."""
    from ffsplat.render.rasterizer import tiles
    from tests.reference_raster import autograd_rasterize_tiles

    monkeypatch.setattr(tiles, "SLAB", 8)
    evaluated = []
    slab_forward = tiles._slab_forward

    def counting(pixels, means2d, *rest):
        evaluated.append(means2d.shape[0] * means2d.shape[1])
        return slab_forward(pixels, means2d, *rest)

    monkeypatch.setattr(tiles, "_slab_forward", counting)
    gen = torch.Generator().manual_seed(0)
    grid = torch.stack(torch.meshgrid(torch.linspace(-3, 3, 31), torch.linspace(-3, 3, 31), indexing="ij"), -1)
    layer = torch.cat([grid.reshape(-1, 2), torch.zeros(961, 1)], -1)
    wall = torch.cat([layer, layer + torch.tensor([0.1, 0.1, 0.05])])  # two layers at z ~ 0, in front
    behind = torch.cat([torch.rand(3000, 2, generator=gen) * 4 - 2, 1 + torch.rand(3000, 1, generator=gen)], -1)
    means = torch.cat([wall, behind])[None]
    n, w = means.shape[1], wall.shape[0]
    scales = torch.cat([torch.full((w, 3), 0.15), torch.full((3000, 3), 0.1)])[None]
    rotations = torch.tensor([1.0, 0, 0, 0]).expand(1, n, 4)
    opacities = torch.cat([torch.full((w,), 0.99), torch.full((3000,), 0.5)])[None]
    cams = look_at_cameras(1, 1, 32, 32, dtype=torch.float32)
    proj = project_gaussians(means, rotations, scales, opacities, cams.w2c, cams.intrinsics, 32, 32)
    colors = torch.rand(1, n, 3, generator=gen)
    img, alpha = rasterize_tiles(proj, colors, 32, 32, tile_size=8)
    _, _, counts, _, _ = tiles.tile_intersections(proj, 32, 32, 8)
    ref_img, ref_alpha = autograd_rasterize_tiles(proj, colors, 32, 32, tile_size=8)
    torch.testing.assert_close(img, ref_img, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alpha, ref_alpha, rtol=1e-4, atol=1e-5)
    assert alpha.min() > 0.98, "the wall must cover the image"
    assert sum(evaluated) < 0.5 * int(counts.sum()), (sum(evaluated), int(counts.sum()))


def test_compositor_saves_only_o_pixels_for_backward():
    """Autograd holds nothing per (pixel, Gaussian) pair: bytes saved by rasterize_tiles stay
    below the inputs plus outputs, while the dense compositor saves many times more."""
    from tests.reference_raster import autograd_rasterize_tiles

    g = random_gaussians(1, 400, 0, dtype=torch.float32, seed=5)
    cams = look_at_cameras(1, 2, 48, 48, dtype=torch.float32)
    colors = torch.randn(2, 400, 16)
    saved = {}
    for name, fn in (("ours", rasterize_tiles), ("dense", autograd_rasterize_tiles)):
        leaves = [t.clone().requires_grad_(True) for t in (g.means, g.rotations, g.scales, g.opacities, colors)]
        proj = project_gaussians(*leaves[:4], cams.w2c, cams.intrinsics, 48, 48)
        seen: dict[int, int] = {}

        def pack(t, seen=seen):
            seen[id(t)] = t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(proj, leaves[4], 48, 48, tile_size=4)
        saved[name] = sum(seen.values())
    pixels_x_channels = 2 * 48 * 48 * (16 + 1) * 4
    inputs = 2 * 400 * (16 + 2 + 3 + 1) * 4
    assert saved["ours"] <= 2 * (pixels_x_channels + inputs), saved
    assert saved["dense"] > 4 * saved["ours"], saved


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tile_culling_drops_only_pairs_below_the_alpha_threshold(dtype):
    """tile_intersections(cull=True) keeps a subset of the bounding-box pairs; every dropped
    (tile, Gaussian) pair has alpha < 1/255 at all pixel centres of the tile (brute force), a good
    share is dropped for elongated Gaussians, and the images are equal with and without culling."""
    import ffsplat.render.rasterizer.tiles as tiles_mod
    from ffsplat.render.rasterizer.projection import ALPHA_THRESHOLD

    g = random_gaussians(1, 300, 3, dtype=dtype, seed=7)
    g.scales[..., 0] *= 4.0  # elongated: bounding boxes are mostly empty
    cams = look_at_cameras(1, 2, 40, 44, dtype=dtype)
    proj = project_gaussians(g.means, g.rotations, g.scales, g.opacities, cams.w2c, cams.intrinsics, 44, 40)
    ts = 4
    full = tiles_mod.tile_intersections(proj, 44, 40, ts)
    culled = tiles_mod.tile_intersections(proj, 44, 40, ts, cull=True)
    pairs = [set(zip(r[1].tolist(), r[0].tolist())) for r in (full, culled)]
    assert pairs[1] <= pairs[0]
    dropped = sorted(pairs[0] - pairs[1])
    assert len(dropped) > 0.2 * len(pairs[0])
    tiles_x = full[3]
    tile, gid = map(torch.tensor, zip(*dropped))
    local = tile % (tiles_x * full[4])
    ly, lx = torch.meshgrid(torch.arange(ts), torch.arange(ts), indexing="ij")
    px = (local % tiles_x)[:, None] * ts + lx.reshape(-1) + 0.5  # [pairs, P]
    py = (local // tiles_x)[:, None] * ts + ly.reshape(-1) + 0.5
    mean = proj.means2d.reshape(-1, 2)[gid].detach()
    a, b, c = proj.conics.reshape(-1, 3)[gid].detach().unbind(-1)
    dx, dy = px - mean[:, :1], py - mean[:, 1:]
    sigma = 0.5 * (a[:, None] * dx * dx + c[:, None] * dy * dy) + b[:, None] * dx * dy
    alpha = proj.opacities.reshape(-1)[gid].detach()[:, None] * torch.exp(-sigma)
    assert alpha.max() < ALPHA_THRESHOLD
    colors = torch.randn(2, 300, 5, dtype=dtype)
    ours = rasterize_tiles(proj, colors, 44, 40, tile_size=ts)
    real = tiles_mod.tile_intersections
    try:
        tiles_mod.tile_intersections = lambda *a, cull=False: real(*a)
        plain = rasterize_tiles(proj, colors, 44, 40, tile_size=ts)
    finally:
        tiles_mod.tile_intersections = real
    tol = {} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    for x, y in zip(ours, plain):
        torch.testing.assert_close(x, y, **tol)
