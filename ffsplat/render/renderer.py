"""``render()``: Gaussians + cameras -> RGB, feature channels, expected depth and alpha.

Two backends with the same semantics (gsplat 1.5, "classic" or "antialiased" 3DGS rasterization):

* ``"gsplat"``: ``gsplat.rasterization`` (CUDA only).
* ``"torch"``: ffsplat's pure-torch tile rasterizer (:mod:`ffsplat.render.rasterizer`); runs on CPU and on
  any device, differentiable through autograd.

``backend="auto"`` picks gsplat for CUDA tensors and torch otherwise. Rendering always runs
with autocast disabled, and every backend receives float32 Gaussians and cameras whatever mix of
dtypes it was given (:func:`render_dtype`; float64 stays float64 on the torch backend): gsplat's kernels dispatch on ``means``' dtype and read
every other input as float, and compositing in bf16 loses the transmittance test. Colour is evaluated from SH
by :func:`ffsplat.core.sh.sh_to_rgb` for both backends, so the only difference is the rasterizer.
Expected depth is ``sum(w_i z_i) / max(alpha, 1e-10)`` (gsplat's "ED"); the background is added to
RGB as ``C + T * bg`` and is zero for features and depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from ffsplat.render.rasterizer.projection import project_gaussians
from ffsplat.render.rasterizer.tiles import rasterize_tiles
from ffsplat.core.sh import sh_to_rgb
from ffsplat.core.types import Cameras, Gaussians


@dataclass
class RasterSettings:
    """Rasterization options (gsplat's names and defaults).

    Attributes:
        backend: "auto" (gsplat on CUDA, torch elsewhere), "gsplat" or "torch".
        near_plane: Gaussians whose centre has camera z below this are culled.
        far_plane: Gaussians whose centre has camera z above this are culled.
        eps2d: added to the 2D covariance diagonal (low-pass filter, ~0.3 px^2).
        radius_clip: Gaussians with both pixel radii <= this are skipped.
        tile_size: gsplat's tile edge in pixels.
        torch_tile_size: tile edge of the torch backend. Its images do not depend on it (see
            :mod:`ffsplat.render.rasterizer.projection`); 4 is fastest on CPU for per-pixel scenes.
        rasterize_mode: "classic" or "antialiased" (opacity compensation for eps2d, Mip-Splatting style).
    """

    backend: str = "auto"  # "auto" | "gsplat" | "torch" (str, not Literal: OmegaConf configs hold it)
    near_plane: float = 0.01
    far_plane: float = 1e10
    eps2d: float = 0.3
    radius_clip: float = 0.0
    tile_size: int = 16
    torch_tile_size: int = 4
    rasterize_mode: str = "classic"  # "classic" | "antialiased"


@dataclass
class RenderOutput:
    """Rendered images for cameras of batch shape ``[..., V]``.

    Attributes:
        rgb: ``[..., V, 3, H, W]``.
        features: name -> ``[..., V, C, H, W]`` for each rendered feature field.
        depth: ``[..., V, H, W]`` expected z-depth (0 where nothing was hit).
        alpha: ``[..., V, H, W]`` accumulated opacity.
        meta: backend intermediates: ``means2d`` ``[..., V, N, 2]`` and ``radii``
            ``[..., V, N, 2]``. For Gaussians with one batch dimension, ``means2d`` is the very
            tensor the rasterizer used, so ``means2d.retain_grad()`` before ``backward()`` gives
            the screen-space gradients that densification strategies need.
    """

    rgb: Tensor
    depth: Tensor
    alpha: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Tensor] = field(default_factory=dict)


# A backend takes flattened inputs: means/quats/scales [B, N, *], opacities [B, N],
# colors [B, V, N, D], viewmats/Ks [B, V, 4|3, 4|3], backgrounds [B, V, D] and returns
# (colors+expected depth [B, V, H, W, D+1], alphas [B, V, H, W], meta).
Backend = Callable[..., tuple[Tensor, Tensor, dict[str, Tensor]]]


def _rasterize_torch(
    means, quats, scales, opacities, colors, viewmats, ks, width, height, backgrounds, s: RasterSettings
):
    b, v, n, d = colors.shape
    proj = project_gaussians(
        means, quats, scales, opacities, viewmats, ks, width, height,
        near_plane=s.near_plane, far_plane=s.far_plane, eps2d=s.eps2d,
        radius_clip=s.radius_clip, antialiased=s.rasterize_mode == "antialiased",
    )  # fmt: skip
    with_depth = torch.cat([colors.reshape(b * v, n, d), proj.depths[..., None]], dim=-1)
    bg = torch.cat([backgrounds.reshape(b * v, d), backgrounds.new_zeros(b * v, 1)], dim=-1)
    img, alpha = rasterize_tiles(proj, with_depth, width, height, tile_size=s.torch_tile_size, backgrounds=bg)
    img = torch.cat([img[..., :-1], img[..., -1:] / alpha[..., None].clamp_min(1e-10)], dim=-1)
    meta = {"means2d": proj.means2d_grid, "radii": proj.radii.reshape(b, v, n, 2)}
    return img.reshape(b, v, height, width, d + 1), alpha.reshape(b, v, height, width), meta


def _require_cuda(means: Tensor) -> None:
    if not means.is_cuda:
        raise RuntimeError(
            "render backend 'gsplat' needs CUDA tensors (gsplat has no CPU kernels); "
            "use backend='torch' or 'auto' for CPU tensors"
        )


def _rasterize_gsplat(
    means, quats, scales, opacities, colors, viewmats, ks, width, height, backgrounds, s: RasterSettings
):
    _require_cuda(means)
    from gsplat import rasterization

    img, alpha, meta = rasterization(
        means, quats, scales, opacities, colors, viewmats, ks, width, height,
        near_plane=s.near_plane, far_plane=s.far_plane, radius_clip=s.radius_clip, eps2d=s.eps2d,
        sh_degree=None, packed=False, tile_size=s.tile_size, backgrounds=backgrounds,
        render_mode="RGB+ED", rasterize_mode=s.rasterize_mode,
    )  # fmt: skip
    return img, alpha[..., 0], {"means2d": meta["means2d"], "radii": meta["radii"]}


BACKENDS: dict[str, Backend] = {"torch": _rasterize_torch, "gsplat": _rasterize_gsplat}


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    if name == "auto":  # float64 stays on the torch backend; half precision is upcast for gsplat
        return "gsplat" if device.type == "cuda" and dtype != torch.float64 else "torch"
    if name not in BACKENDS:
        raise ValueError(f"unknown render backend {name!r}; expected 'auto' or one of {sorted(BACKENDS)}")
    return name


def render(
    gaussians: Gaussians,
    cameras: Cameras,
    *,
    features: Sequence[str] | None = None,
    background: Tensor | Sequence[float] | None = None,
    settings: RasterSettings | None = None,
) -> RenderOutput:
    """Render Gaussians into cameras.

    Args:
        gaussians: batch shape ``[...]`` (e.g. ``[B]`` or unbatched).
        cameras: batch shape ``[..., V]`` matching the Gaussians' batch shape plus a view axis;
            all cameras share ``cameras.image_size``.
        features: names of feature fields to render (default: all of ``gaussians.features``).
        background: RGB background, ``[3]`` or ``[..., V, 3]``; default black.
        settings: :class:`RasterSettings` (backend, near/far, eps2d, ...).
    Returns:
        :class:`RenderOutput` with channel-first images.
    """
    s = settings or RasterSettings()
    if s.rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"RasterSettings.rasterize_mode={s.rasterize_mode!r}; expected 'classic' or 'antialiased'")
    batch = gaussians.batch_shape
    if cameras.batch_shape[:-1] != batch or len(cameras.batch_shape) != len(batch) + 1:
        raise ValueError(
            f"render: cameras batch shape {tuple(cameras.batch_shape)} must be the Gaussians' batch "
            f"shape {tuple(batch)} plus a view axis"
        )
    names = list(gaussians.features) if features is None else list(features)
    for name in names:
        if name not in gaussians.features:
            raise KeyError(f"render: feature field {name!r} not in Gaussians (have {list(gaussians.features)})")
    backend = resolve_backend(s.backend, gaussians.device, gaussians.means.dtype)
    gaussians, cameras = render_dtype(gaussians, cameras, backend)
    with torch.autocast(device_type=gaussians.device.type, enabled=False):
        return _render(gaussians, cameras, names, background, s, backend)


def render_dtype(gaussians: Gaussians, cameras: Cameras, backend: str) -> tuple[Gaussians, Cameras]:
    """The render dtype contract: every Gaussian field (means, scales, rotations, opacities, SH and
    each feature) and both camera matrices in one dtype, whatever mix of dtypes the network
    produced under autocast (bf16 opacities next to float32 means, say). That dtype is float32,
    except that the torch backend keeps all-float64 input in float64 (gradient checks); gsplat
    always gets float32 (its kernels dispatch on ``means`` and read every other input as float).
    Tensors already in that dtype pass through without a copy."""
    dtype = torch.float64 if backend == "torch" and gaussians.means.dtype == torch.float64 else torch.float32
    return gaussians.to(dtype), cameras.to(dtype)


def _render(g: Gaussians, cameras: Cameras, names: list[str], background, s: RasterSettings, backend: str):
    batch = g.batch_shape
    height, width = cameras.image_size
    v = cameras.batch_shape[-1]
    n = g.num_gaussians
    flat_b = int(torch.Size(batch).numel())
    means = g.means.reshape(flat_b, n, 3)
    c2w = cameras.extrinsics.reshape(flat_b, v, 4, 4)
    ks = cameras.intrinsics.reshape(flat_b, v, 3, 3).to(means.dtype)

    dirs = means[:, None] - c2w[:, :, None, :3, 3]  # [B, V, N, 3]
    rgb = sh_to_rgb(g.sh.reshape(flat_b, 1, n, -1, 3), dirs)  # [B, V, N, 3]
    channels = [rgb] + [g.features[k].reshape(flat_b, 1, n, -1).expand(flat_b, v, n, -1) for k in names]
    colors = torch.cat(channels, dim=-1)
    d = colors.shape[-1]

    bg = torch.zeros(flat_b, v, d, device=means.device, dtype=means.dtype)
    if background is not None:
        bg_rgb = torch.as_tensor(background, device=means.device, dtype=means.dtype)
        bg[..., :3] = bg_rgb.reshape(flat_b, v, 3) if bg_rgb.dim() > 1 else bg_rgb

    img, alpha, meta = BACKENDS[backend](
        means, g.rotations.reshape(flat_b, n, 4), g.scales.reshape(flat_b, n, 3),
        g.opacities.reshape(flat_b, n), colors, cameras.w2c.reshape(flat_b, v, 4, 4).to(means.dtype),
        ks, width, height, bg, s,
    )  # fmt: skip

    img = img.permute(0, 1, 4, 2, 3)  # [B, V, D+1, H, W]
    out_shape = tuple(batch) + (v,)
    split = torch.split(img, [3] + [g.features[k].shape[-1] for k in names] + [1], dim=2)
    return RenderOutput(
        rgb=split[0].reshape(out_shape + (3, height, width)),
        features={k: t.reshape(out_shape + t.shape[2:]) for k, t in zip(names, split[1:-1])},
        depth=split[-1].reshape(out_shape + (height, width)),
        alpha=alpha.reshape(out_shape + (height, width)),
        meta={k: t if t.shape[:2] == out_shape else t.reshape(out_shape + t.shape[2:]) for k, t in meta.items()},
    )
