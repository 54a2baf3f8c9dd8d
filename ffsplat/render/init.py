"""Per-pixel Gaussians from posed RGB-D views (initialisation for baselines, demos, benchmarks)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from ffsplat.core.geometry import unproject_depth
from ffsplat.core.sh import num_sh_bases, rgb_to_sh_dc
from ffsplat.core.types import Cameras, Gaussians


def gaussians_from_rgbd(
    images: Tensor,
    depths: Tensor,
    cameras: Cameras,
    *,
    footprint: float = 1.0,
    opacity: float = 0.9,
    sh_degree: int = 0,
    features: dict[str, Tensor] | None = None,
) -> Gaussians:
    """One isotropic Gaussian per pixel with valid depth, coloured by the pixel.

    The scale is the pixel's footprint at its depth (``footprint * z / f``), which is how MVSplat
    ties scale to depth and focal length.

    Args:
        images: ``[B, V, 3, H, W]`` in ``[0, 1]``.
        depths: ``[B, V, H, W]`` z-depth; pixels with ``depth <= 0`` get opacity 0.
        cameras: batch shape ``[B, V]`` at ``(H, W)``.
        footprint: scale in pixels.
        opacity: initial opacity.
        sh_degree: SH degree; higher bands start at zero.
        features: optional per-pixel feature maps ``[B, V, C, H, W]`` per name.
    Returns:
        Gaussians of batch shape ``[B]`` with ``N = V * H * W``.
    """
    b, v, _, h, w = images.shape
    if cameras.image_size != (h, w):
        raise ValueError(f"images are {(h, w)} but cameras.image_size is {cameras.image_size}")
    means = rearrange(unproject_depth(depths, cameras.intrinsics, cameras.extrinsics), "b v h w c -> b (v h w) c")
    focal = 0.5 * (cameras.intrinsics[..., 0, 0] + cameras.intrinsics[..., 1, 1])  # [B, V]
    scale = rearrange(depths.clamp_min(0) * footprint / focal[..., None, None], "b v h w -> b (v h w)")
    n = v * h * w
    rgb = rearrange(images, "b v c h w -> b (v h w) c")
    sh = images.new_zeros(b, n, num_sh_bases(sh_degree), 3)
    sh[..., 0, :] = rgb_to_sh_dc(rgb)
    valid = rearrange(depths > 0, "b v h w -> b (v h w)")
    quats = images.new_zeros(b, n, 4)
    quats[..., 0] = 1.0
    return Gaussians(
        means=means,
        scales=scale[..., None].expand(b, n, 3).clone(),
        rotations=quats,
        opacities=torch.where(valid, torch.full_like(scale, opacity), torch.zeros_like(scale)),
        sh=sh,
        features={k: rearrange(f, "b v c h w -> b (v h w) c") for k, f in (features or {}).items()},
    )
