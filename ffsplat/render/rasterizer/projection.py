"""EWA projection of 3D Gaussians to screen space, in pure torch, with gsplat 1.5's semantics.

Mirrors ``gsplat/cuda/csrc/ProjectionEWA3DGS*.cu`` (pinhole camera): covariance from scale and
quaternion, world -> camera, Jacobian with gsplat's frustum clamping, ``eps2d`` low-pass, the
opacity-aware radius ``min(3.33, sqrt(2 ln(255 o)))`` sigma, and the same culling rules (near/far
on the mean's z, degenerate covariance, opacity below 1/255, radius clip, off-image bounding box).
Because the opacity-aware radius bounds exactly the region where ``alpha >= 1/255``, tile culling
never changes which (pixel, Gaussian) pairs contribute: any tile scheme gives gsplat's image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ffsplat.core.geometry import quat_to_rotmat

ALPHA_THRESHOLD = 1.0 / 255.0


@dataclass
class Projected:
    """Screen-space Gaussians for a batch of images (``I`` images flattened, ``N`` Gaussians each).

    Attributes:
        means2d: ``[I, N, 2]`` pixel coordinates of the projected centres.
        means2d_grid: the same as ``[B, V, N, 2]``: the tensor ``means2d`` is a view of, so its
            ``.grad`` (after ``retain_grad()``) holds the screen-space gradients used by
            densification strategies.
        conics: ``[I, N, 3]`` upper triangle ``(a, b, c)`` of the inverse 2D covariance.
        depths: ``[I, N]`` camera z of the centres (the sort key).
        opacities: ``[I, N]`` opacities, times the anti-aliasing compensation when enabled.
        radii: ``[I, N, 2]`` integer pixel half-extents (x, y) of the bounding box; 0 when culled.
        valid: ``[I, N]`` bool, False for culled Gaussians.
    """

    means2d: Tensor
    means2d_grid: Tensor
    conics: Tensor
    depths: Tensor
    opacities: Tensor
    radii: Tensor
    valid: Tensor


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """``R diag(s^2) R^T`` from ``[..., 4]`` wxyz quaternions and ``[..., 3]`` scales -> ``[..., 3, 3]``."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    intrinsics: Tensor,
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    antialiased: bool = False,
) -> Projected:
    """Project ``B`` scenes of ``N`` Gaussians into ``V`` cameras each.

    Args:
        means, quats, scales: ``[B, N, 3]``, ``[B, N, 4]``, ``[B, N, 3]``.
        opacities: ``[B, N]``.
        viewmats: ``[B, V, 4, 4]`` world-to-camera.
        intrinsics: ``[B, V, 3, 3]`` pixel intrinsics.
        width, height: image size in pixels.
        antialiased: multiply opacities by ``sqrt(det(cov) / det(cov + eps2d I))`` (gsplat's
            "antialiased" rasterize mode).
    Returns:
        :class:`Projected` with ``I = B * V`` images.
    """
    b, v = viewmats.shape[:2]
    n = means.shape[1]
    rot = viewmats[..., :3, :3]  # [B, V, 3, 3]
    trans = viewmats[..., :3, 3]
    means_c = torch.einsum("bvij,bnj->bvni", rot, means) + trans[:, :, None, :]  # [B, V, N, 3]
    cov_c = rot[:, :, None] @ covariance_3d(quats, scales)[:, None] @ rot.transpose(-1, -2)[:, :, None]

    x, y, z = means_c.unbind(-1)
    in_depth = (z >= near_plane) & (z <= far_plane)
    # Culled Gaussians still flow through autograd: keep their arithmetic finite.
    z = torch.where(in_depth, z, torch.ones_like(z))
    fx, fy = intrinsics[..., 0, 0, None], intrinsics[..., 1, 1, None]  # [B, V, 1]
    cx, cy = intrinsics[..., 0, 2, None], intrinsics[..., 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x / z))
    ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y / z))
    zeros = torch.zeros_like(z)
    jac = torch.stack([fx / z, zeros, -fx * tx / (z * z), zeros, fy / z, -fy * ty / (z * z)], dim=-1).reshape(
        b, v, n, 2, 3
    )
    cov2d = jac @ cov_c @ jac.transpose(-1, -2)  # [B, V, N, 2, 2]
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)

    a, bb, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det_orig = a * c - bb * bb
    a, c = a + eps2d, c + eps2d
    det = a * c - bb * bb
    valid = in_depth & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det, -bb / det, a / det], dim=-1)

    opac = opacities[:, None, :].expand(b, v, n)
    if antialiased:
        opac = opac * torch.sqrt(torch.clamp(det_orig / det, min=0.0))

    with torch.no_grad():
        valid = valid & (opac >= ALPHA_THRESHOLD)
        extend = torch.clamp(torch.sqrt(2.0 * torch.log(opac.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)), max=3.33)
        radius_x = torch.ceil(extend * torch.sqrt(a.clamp_min(0)))
        radius_y = torch.ceil(extend * torch.sqrt(c.clamp_min(0)))
        valid = valid & ~((radius_x <= radius_clip) & (radius_y <= radius_clip))
        mx, my = means2d[..., 0], means2d[..., 1]
        on_screen = (mx + radius_x > 0) & (mx - radius_x < width) & (my + radius_y > 0) & (my - radius_y < height)
        valid = valid & on_screen
        radii = torch.stack([radius_x, radius_y], dim=-1).where(valid[..., None], 0.0).to(torch.int32)

    return Projected(
        means2d=means2d.reshape(b * v, n, 2),
        means2d_grid=means2d,
        conics=conics.reshape(b * v, n, 3),
        depths=means_c[..., 2].reshape(b * v, n),
        opacities=opac.reshape(b * v, n),
        radii=radii.reshape(b * v, n, 2),
        valid=valid.reshape(b * v, n),
    )
