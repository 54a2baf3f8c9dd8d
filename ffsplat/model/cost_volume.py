"""Plane-sweep correlation cost volume over any number of views (MVSplat sec. 3.1)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ffsplat.core.geometry import float32_geometry, invert_rigid, plane_sweep_grid


def correlation_cost_volume(features: Tensor, intrinsics: Tensor, extrinsics: Tensor, depths: Tensor) -> Tensor:
    """Per-view cost volume: correlation of each view's features with every other view's features
    warped to it at each candidate depth, averaged over the other views where the sample is valid.

    Args:
        features: ``[B, V, C, h, w]`` matching features.
        intrinsics: ``[B, V, 3, 3]`` pixel intrinsics *for the feature resolution* ``(h, w)``.
        extrinsics: ``[B, V, 4, 4]`` camera-to-world.
        depths: ``[B, V, D]`` candidate depths of each reference view.
    Returns:
        ``[B, V, D, h, w]`` float32: ``mean_j (f_i . f_{j->i}(d)) / sqrt(C)``; 0 where no other view
        sees the sample (behind that camera or outside its image).

    Precision: poses, the plane-sweep grid, the warp and the correlation run in float32 with
    autocast disabled (features from bf16 layers are upcast), so sample positions never carry
    bf16 rounding.
    """
    with float32_geometry(features.device):
        return _cost_volume(features.float(), intrinsics.float(), extrinsics.float(), depths.float())


def _cost_volume(features: Tensor, intrinsics: Tensor, extrinsics: Tensor, depths: Tensor) -> Tensor:
    b, v, c, h, w = features.shape
    d = depths.shape[-1]
    total = features.new_zeros(b, v, d, h, w)
    count = features.new_zeros(b, v, d, h, w)
    w2c = invert_rigid(extrinsics)
    # Offset k pairs every reference view i with source view (i + k) mod V: V-1 passes cover all
    # ordered pairs while holding one [B, V, C, D, h, w] warp at a time.
    for k in range(1, v):
        src = torch.roll(torch.arange(v, device=features.device), -k)
        grid, valid = plane_sweep_grid(intrinsics, extrinsics, intrinsics[:, src], w2c[:, src], depths, h, w)
        warped = F.grid_sample(
            features[:, src].reshape(b * v, c, h, w),
            grid.reshape(b * v, d * h, w, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        ).reshape(b, v, c, d, h, w)
        valid = valid.to(features.dtype)
        total = total + torch.einsum("bvchw,bvcdhw->bvdhw", features, warped) * valid
        count = count + valid
    return total / math.sqrt(c) / count.clamp_min(1.0)
