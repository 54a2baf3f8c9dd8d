"""MVSplat's Gaussian adapter, producing ffsplat :class:`~ffsplat.core.types.Gaussians`.

Per pixel (MVSplat ``EncoderCostVolume.forward`` + ``GaussianAdapter``):

* centre: ``xy = (pixel + 0.5) / (W, H) + (sigmoid(offset) - 0.5) / (W, H)`` (normalised), mean =
  camera origin + *unit* ray direction ``* depth`` (MVSplat's convention: the depth is used as
  distance along the ray);
* opacity: ``0.5 * (1 - (1 - p)^e + p^(1/e))`` with ``e = 2^x`` of the density ``p``;
* scale: ``(s_min + (s_max - s_min) sigmoid(raw)) * depth * 0.1 * sum(K[:2,:2]^-1 (1/W, 1/H))``;
* rotation: raw quaternion ``(x, y, z, w)`` normalised, in the camera frame, composed with the
  camera-to-world rotation (so the world covariance is ``R_c2w R S^2 R^T R_c2w^T``, as MVSplat's);
* SH: raw coefficients times the per-band mask ``0.1 * 0.25^l`` (DC: 1), rotated to the world frame
  with the Wigner-D matrices e3nn computes (MVSplat's ``rotate_sh``), which equal ffsplat's
  :func:`~ffsplat.core.sh.rotate_sh` conjugated by an axis permutation and alternating signs.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from ffsplat.core.geometry import float32_geometry, quat_multiply, rotmat_to_quat
from ffsplat.core.sh import num_sh_bases, rotate_sh
from ffsplat.core.types import Gaussians

_E3NN_AXES = ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
"""e3nn's real SH use the axes (z, x, y) of ours: ``D_e3nn(R) = S A(P R P^T)^T S``."""


def sh_band_mask(degree: int, device=None) -> Tensor:
    """``[K]``: 1 for the DC band, ``0.1 * 0.25 ** l`` for band ``l`` (MVSplat's ``sh_mask``)."""
    mask = torch.ones(num_sh_bases(degree), device=device)
    for l in range(1, degree + 1):
        mask[l * l : (l + 1) ** 2] = 0.1 * 0.25**l
    return mask


def rotate_sh_e3nn(coeffs: Tensor, rot: Tensor) -> Tensor:
    """Rotate ``[..., K, 3]`` SH coefficients as MVSplat's e3nn-based ``rotate_sh`` does."""
    degree = round(coeffs.shape[-2] ** 0.5) - 1
    if degree == 0:
        return coeffs
    p = torch.tensor(_E3NN_AXES, dtype=rot.dtype, device=rot.device)
    signs = torch.cat([torch.tensor([(-1.0) ** m for m in range(2 * l + 1)]) for l in range(degree + 1)])
    s = signs.to(coeffs)[:, None]
    return s * rotate_sh(s * coeffs, p @ rot @ p.T)


def pdf_to_opacity(pdf: Tensor, exponent_log2: float) -> Tensor:
    """MVSplat's ``map_pdf_to_opacity`` at a fixed ``x`` (``2^x`` is the exponent)."""
    e = 2.0**exponent_log2
    return 0.5 * (1 - (1 - pdf) ** e + pdf ** (1 / e))


def adapt_gaussians(
    raw: Tensor, depth: Tensor, density: Tensor, intrinsics: Tensor, extrinsics: Tensor,
    scale_min: float, scale_max: float, sh_degree: int, opacity_exponent_log2: float = 0.0,
) -> tuple[Gaussians, Tensor]:  # fmt: skip
    """
    Args:
        raw: ``[B, V, 2 + 7 + 3K, H, W]`` (offset, scale, quaternion xyzw, SH ``(rgb, K)``).
        depth, density: ``[B, V, H, W]``; intrinsics: ``[B, V, 3, 3]`` normalised; extrinsics c2w.
    Returns:
        Gaussians of batch ``[B]`` with ``N = V * H * W`` (view-major, row-major pixels), and the
        z-depth of their means ``[B, V, H, W]``.
    """
    with float32_geometry(raw.device):  # unprojection, rotations and SH rotation in float32, also under autocast
        return _adapt(raw.float(), depth.float(), density.float(), intrinsics.float(), extrinsics.float(),
                      scale_min, scale_max, sh_degree, opacity_exponent_log2)  # fmt: skip


def _adapt(raw, depth, density, intrinsics, extrinsics, scale_min, scale_max, sh_degree, opacity_exponent_log2):
    b, v, _, h, w = raw.shape
    k = num_sh_bases(sh_degree)
    raw = rearrange(raw, "b v c h w -> b v (h w) c")
    offset, scale_raw, quat_xyzw, sh_raw = raw.split([2, 3, 4, 3 * k], dim=-1)
    d = rearrange(depth, "b v h w -> b v (h w)")
    dtype = raw.dtype

    ys, xs = torch.meshgrid(torch.arange(h, device=raw.device), torch.arange(w, device=raw.device), indexing="ij")
    size = torch.tensor([w, h], dtype=dtype, device=raw.device)
    xy = (torch.stack([xs, ys], -1).reshape(1, 1, h * w, 2).to(dtype) + 0.5) / size
    xy = xy + (torch.sigmoid(offset) - 0.5) / size
    k_inv = torch.inverse(intrinsics.to(dtype))[:, :, None]  # [B, V, 1, 3, 3]
    rays = (k_inv @ torch.cat([xy, torch.ones_like(xy[..., :1])], -1)[..., None])[..., 0]
    unit = rays / rays.norm(dim=-1, keepdim=True)
    c2w = extrinsics.to(dtype)
    rot = c2w[:, :, None, :3, :3]
    means = (rot @ unit[..., None])[..., 0] * d[..., None] + c2w[:, :, None, :3, 3]

    pixel = 1.0 / size
    multiplier = 0.1 * (torch.inverse(intrinsics[..., :2, :2].to(dtype)) @ pixel).sum(-1)  # [B, V]
    scales = (
        (scale_min + (scale_max - scale_min) * torch.sigmoid(scale_raw)) * d[..., None] * multiplier[:, :, None, None]
    )

    q = quat_xyzw / (quat_xyzw.norm(dim=-1, keepdim=True) + 1e-8)
    q_cam = torch.cat([q[..., 3:], q[..., :3]], dim=-1)  # (w, x, y, z)
    q_view = rotmat_to_quat(c2w[..., :3, :3])[:, :, None, :].expand_as(q_cam)
    rotations = torch.nn.functional.normalize(quat_multiply(q_view, q_cam), dim=-1)

    sh = rearrange(sh_raw, "b v n (c k) -> b v n k c", c=3) * sh_band_mask(sh_degree, raw.device).to(dtype)[:, None]
    sh = rotate_sh_e3nn(sh, rot)
    opacity = pdf_to_opacity(rearrange(density, "b v h w -> b v (h w)"), opacity_exponent_log2)
    z = d * unit[..., 2]  # camera-frame z of the means

    def flat(t: Tensor) -> Tensor:
        return t.reshape(b, v * h * w, *t.shape[3:])

    gaussians = Gaussians(
        means=flat(means), scales=flat(scales), rotations=flat(rotations), opacities=flat(opacity), sh=flat(sh)
    )
    return gaussians, rearrange(z, "b v (h w) -> b v h w", h=h)
