"""Real spherical harmonics up to degree 4, with gsplat's basis order, signs and constants.

Colour from coefficients follows gsplat and the Inria 3DGS code: ``rgb = max(SH(d) . c + 0.5, 0)``
where ``d`` is the unit direction from the camera centre to the Gaussian.
"""

from __future__ import annotations

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """DC coefficient that reproduces ``rgb`` (view-independent part), ``[..., 3] -> [..., 3]``."""
    return (rgb - 0.5) / SH_C0


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """Evaluate the ``(degree + 1) ** 2`` real SH bases at unit directions.

    Args:
        degree: 0..4.
        dirs: ``[..., 3]`` unit vectors.
    Returns:
        ``[..., (degree + 1) ** 2]``.
    """
    if not 0 <= degree <= 4:
        raise ValueError(f"SH degree must be in 0..4, got {degree}")
    out = [torch.full_like(dirs[..., 0], 0.2820947917738781)]
    if degree == 0:
        return torch.stack(out, dim=-1)
    x, y, z = dirs.unbind(-1)
    out += [-0.48860251190292 * y, 0.48860251190292 * z, -0.48860251190292 * x]
    if degree >= 2:
        z2 = z * z
        c1, s1 = x * x - y * y, 2 * x * y
        out += [
            0.5462742152960395 * s1,
            -1.092548430592079 * z * y,
            0.9461746957575601 * z2 - 0.3153915652525201,
            -1.092548430592079 * z * x,
            0.5462742152960395 * c1,
        ]
    if degree >= 3:
        c2, s2 = x * c1 - y * s1, x * s1 + y * c1
        tmp_c = -2.285228997322329 * z2 + 0.4570457994644658
        tmp_b = 1.445305721320277 * z
        out += [
            -0.5900435899266435 * s2,
            tmp_b * s1,
            tmp_c * y,
            z * (1.865881662950577 * z2 - 1.119528997770346),
            tmp_c * x,
            tmp_b * c1,
            -0.5900435899266435 * c2,
        ]
    if degree >= 4:
        c3, s3 = x * c2 - y * s2, x * s2 + y * c2
        tmp_d = z * (-4.683325804901025 * z2 + 2.007139630671868)
        tmp_c = 3.31161143515146 * z2 - 0.47308734787878
        tmp_b = -1.770130769779931 * z
        out += [
            0.6258357354491763 * s3,
            tmp_b * s2,
            tmp_c * s1,
            tmp_d * y,
            1.984313483298443 * z2 * (1.865881662950577 * z2 - 1.119528997770346)
            - 1.006230589874905 * (0.9461746957575601 * z2 - 0.3153915652525201),
            tmp_d * x,
            tmp_c * c1,
            tmp_b * c2,
            0.6258357354491763 * c3,
        ]
    return torch.stack(out, dim=-1)


def sh_to_rgb(coeffs: Tensor, dirs: Tensor) -> Tensor:
    """View-dependent colour from SH coefficients.

    Args:
        coeffs: ``[..., K, 3]`` with ``K = (degree + 1) ** 2``.
        dirs: ``[..., 3]`` viewing directions (camera centre -> Gaussian); need not be unit.
    Returns:
        ``[..., 3]`` colour, ``max(SH . c + 0.5, 0)``.
    """
    degree = int(round(coeffs.shape[-2] ** 0.5)) - 1
    unit = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    bases = sh_bases(degree, unit)  # [..., K]
    return torch.clamp_min((bases[..., None] * coeffs).sum(dim=-2) + 0.5, 0.0)


def _fibonacci_directions(count: int, dtype=torch.float64) -> Tensor:
    """``[count, 3]`` nearly uniform unit directions (deterministic)."""
    i = torch.arange(count, dtype=dtype) + 0.5
    z = 1 - 2 * i / count
    r = torch.sqrt(1 - z * z)
    phi = i * torch.pi * (3 - 5**0.5)
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)


def sh_rotation(degree: int, rot: Tensor) -> Tensor:
    """Matrices that rotate SH coefficient vectors: ``rotate_sh(c, R) = A^T c``.

    Real SH of each degree span a rotation-invariant space, so ``Y(R^T d) = A Y(d)`` for one
    ``K x K`` (block-diagonal) matrix ``A`` per rotation. It is solved exactly by least squares from
    the bases at ``2K`` fixed directions, avoiding hand-written Wigner-D recursions.

    Args:
        degree: SH degree.
        rot: ``[..., 3, 3]`` rotations.
    Returns:
        ``[..., K, K]`` with ``K = (degree + 1) ** 2``.
    """
    k = num_sh_bases(degree)
    dirs = _fibonacci_directions(2 * k).to(rot.device)
    base = sh_bases(degree, dirs)  # [M, K]
    rotated = sh_bases(degree, dirs @ rot.double())  # Y(R^T d) for row vectors d: d @ R = (R^T d)^T
    pinv = torch.linalg.pinv(base)  # [K, M]
    return (pinv @ rotated).transpose(-1, -2).to(rot.dtype)  # A with Y(R^T d) = A Y(d)


def rotate_sh(coeffs: Tensor, rot: Tensor) -> Tensor:
    """Express SH colour given in one frame in another frame rotated by ``rot``.

    If ``coeffs`` describe colour as a function of directions in camera coordinates and ``rot`` is
    the camera-to-world rotation, the result describes the same colour for world directions:
    ``sh_to_rgb(rotate_sh(c, R), d) == sh_to_rgb(c, R^T d)``.

    Args:
        coeffs: ``[..., K, 3]``.
        rot: ``[..., 3, 3]`` broadcastable to the leading dims of ``coeffs``.
    Returns:
        ``[..., K, 3]``.
    """
    degree = int(round(coeffs.shape[-2] ** 0.5)) - 1
    if degree == 0:
        return coeffs
    a = sh_rotation(degree, rot)  # [..., K, K]
    # einsum contracts without materialising A broadcast to every Gaussian (a per-view rotation
    # against [B, V, N, K, 3] coefficients), which ``A^T @ coeffs`` does.
    return torch.einsum("...ji,...jc->...ic", a, coeffs)
