"""Plane-sweep correlation cost volume over any number of views (MVSplat sec. 3.1).

The correlation of one (reference, source) pair is computed over chunks of depth candidates
(:func:`plane_sweep_correlation`): the source features are warped for ``depth_chunk`` candidates
at a time and reduced with a broadcast multiply-sum, so peak memory is one chunk's warp instead of
the full ``[C, D, h, w]`` warp plus the permuted copy ``einsum`` made of it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ffsplat.core.geometry import float32_geometry, invert_rigid, plane_sweep_grid

DEPTH_CHUNK = 16


def plane_sweep_correlation(
    ref_features: Tensor,
    src_features: Tensor,
    ref_intrinsics: Tensor,
    ref_c2w: Tensor,
    src_intrinsics: Tensor,
    src_w2c: Tensor,
    depths: Tensor,
    *,
    depth_chunk: int = DEPTH_CHUNK,
) -> tuple[Tensor, Tensor]:
    """Un-normalised correlation ``f_ref . f_{src->ref}(d)`` of one source view per reference view.

    Args:
        ref_features, src_features: ``[N, C, h, w]`` (``N`` = flattened batch of pairs).
        ref_intrinsics, src_intrinsics: ``[N, 3, 3]`` for the feature resolution ``(h, w)``.
        ref_c2w: ``[N, 4, 4]`` reference camera-to-world; src_w2c: ``[N, 4, 4]`` source world-to-camera.
        depths: ``[N, D]`` candidate z-depths of the reference view.
        depth_chunk: candidates warped at once (memory bound; results do not depend on it).
    Returns:
        ``corr`` ``[N, D, h, w]`` (0 where invalid) and ``valid`` ``[N, D, h, w]`` in the features' dtype.
    """
    n, c, h, w = ref_features.shape
    if depth_chunk < 1:
        raise ValueError(f"depth_chunk must be >= 1, got {depth_chunk}")
    corrs, valids = [], []
    for start in range(0, depths.shape[-1], depth_chunk):
        dep = depths[:, start : start + depth_chunk]
        grid, valid = plane_sweep_grid(ref_intrinsics, ref_c2w, src_intrinsics, src_w2c, dep, h, w)
        dc = dep.shape[-1]
        warped = F.grid_sample(
            src_features,
            grid.reshape(n, dc * h, w, 2).to(src_features.dtype),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        ).reshape(n, c, dc, h, w)
        valid = valid.to(ref_features.dtype)
        corrs.append((ref_features[:, :, None] * warped).sum(1) * valid)
        valids.append(valid)
    return torch.cat(corrs, 1), torch.cat(valids, 1)


def nearest_views(extrinsics: Tensor, k: int) -> Tensor:
    """Indices of each view's ``k`` nearest other views by camera-centre distance (ties by index).

    Args:
        extrinsics: ``[B, V, 4, 4]`` camera-to-world.
    Returns:
        ``[B, V, k]`` long, nearest first.
    """
    v = extrinsics.shape[1]
    if not 1 <= k <= v - 1:
        raise ValueError(f"cost volume neighbours must be in 1..V-1 = 1..{v - 1}, got {k}")
    centres = extrinsics[..., :3, 3].detach().double()
    dist = torch.cdist(centres, centres)  # [B, V, V]
    dist = dist.masked_fill(torch.eye(v, dtype=torch.bool, device=dist.device), float("inf"))
    return torch.sort(dist, dim=-1, stable=True).indices[..., :k]


def correlation_cost_volume(
    features: Tensor,
    intrinsics: Tensor,
    extrinsics: Tensor,
    depths: Tensor,
    *,
    num_neighbors: int = 0,
    depth_chunk: int = DEPTH_CHUNK,
) -> Tensor:
    """Per-view cost volume: correlation of each view's features with other views' features
    warped to it at each candidate depth, averaged over those views where the sample is valid.

    Args:
        features: ``[B, V, C, h, w]`` matching features.
        intrinsics: ``[B, V, 3, 3]`` pixel intrinsics *for the feature resolution* ``(h, w)``.
        extrinsics: ``[B, V, 4, 4]`` camera-to-world.
        depths: ``[B, V, D]`` candidate depths of each reference view.
        num_neighbors: match each view against its this many nearest views (camera-centre
            distance); 0 or >= V-1 matches against all V-1 others.
        depth_chunk: candidates warped at once (see :func:`plane_sweep_correlation`).
    Returns:
        ``[B, V, D, h, w]`` float32 (float64 for float64 inputs): ``mean_j (f_i . f_{j->i}(d)) / sqrt(C)``; 0 where no matched view
        sees the sample (behind that camera or outside its image).

    Precision: poses, the plane-sweep grid, the warp and the correlation run in float32 with
    autocast disabled (features from bf16 layers are upcast), so sample positions never carry
    bf16 rounding.
    """
    with float32_geometry(features.device):
        dtype = torch.float64 if features.dtype == torch.float64 else torch.float32  # never below float32
        cast = lambda t: t.to(dtype)  # noqa: E731
        return _cost_volume(
            cast(features), cast(intrinsics), cast(extrinsics), cast(depths), num_neighbors, depth_chunk
        )


def _cost_volume(
    features: Tensor, intrinsics: Tensor, extrinsics: Tensor, depths: Tensor, num_neighbors: int, depth_chunk: int
) -> Tensor:
    b, v, c, h, w = features.shape
    d = depths.shape[-1]
    if num_neighbors < 0:
        raise ValueError(f"num_neighbors must be >= 0, got {num_neighbors}")
    total = features.new_zeros(b, v, d, h, w)
    count = features.new_zeros(b, v, d, h, w)
    w2c = invert_rigid(extrinsics)
    if num_neighbors == 0 or num_neighbors >= v - 1:
        # Offset k pairs every reference view i with source view (i + k) mod V: V-1 passes cover
        # all ordered pairs while holding one chunk of warps at a time.
        arange = torch.arange(v, device=features.device)
        sources = [torch.roll(arange, -k).expand(b, v) for k in range(1, v)]
    else:
        nearest = nearest_views(extrinsics, num_neighbors)  # [B, V, k]
        sources = list(nearest.unbind(-1))
    batch = torch.arange(b, device=features.device)[:, None]

    def flat(t: Tensor) -> Tensor:
        return t.reshape(b * v, *t.shape[2:])

    for src in sources:  # [B, V] source view of each reference view
        corr, valid = plane_sweep_correlation(
            flat(features), flat(features[batch, src]), flat(intrinsics), flat(extrinsics),
            flat(intrinsics[batch, src]), flat(w2c[batch, src]), flat(depths), depth_chunk=depth_chunk,
        )  # fmt: skip
        total = total + corr.reshape(b, v, d, h, w)
        count = count + valid.reshape(b, v, d, h, w)
    return total / math.sqrt(c) / count.clamp_min(1.0)
