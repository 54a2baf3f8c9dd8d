"""Pose and projection maths shared by data, model, renderer and baselines.

Conventions (the same everywhere in ffsplat, see docs/conventions.md):

* Camera axes are OpenCV's: x right, y down, z forward (into the scene).
* Extrinsics are camera-to-world (c2w) 4x4 matrices; ``invert_rigid`` gives world-to-camera.
* Intrinsics are in pixels. Pixel ``(u, v)`` covers ``[u, u+1) x [v, v+1)``, so the centre of the
  top-left pixel is ``(0.5, 0.5)``. This is gsplat's, nerfstudio's and MVSplat's convention and the
  reason resizing an image by ``s`` simply scales ``fx, fy, cx, cy`` by ``s``.
* Quaternions are ``(w, x, y, z)`` (gsplat and the Inria .ply layout).
"""

from __future__ import annotations

import torch
from torch import Tensor


def float32_geometry(device: torch.device | str):
    """Context in which pose maths runs in float32 whatever the surrounding autocast says.

    Under ``torch.autocast`` matmuls and einsums run in bf16/fp16 even on float32 inputs; at
    room-scale world coordinates (0-10 m) bf16's 8-bit mantissa moves plane-sweep samples by
    pixels. Model code wraps relative poses, plane-sweep grids, unprojection and SH rotation in
    this (and passes float32 tensors); only the learned layers run in reduced precision.
    """
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, enabled=False)


def invert_rigid(transform: Tensor) -> Tensor:
    """Invert rigid transforms exactly (R^T, -R^T t) instead of a general matrix inverse.

    Args:
        transform: ``[..., 4, 4]`` rigid transforms (c2w or w2c).
    Returns:
        ``[..., 4, 4]`` inverses.
    """
    rot = transform[..., :3, :3]
    trans = transform[..., :3, 3:]
    rot_t = rot.transpose(-1, -2)
    out = torch.zeros_like(transform)
    out[..., :3, :3] = rot_t
    out[..., :3, 3:] = -rot_t @ trans
    out[..., 3, 3] = 1.0
    return out


def transform_points(transform: Tensor, points: Tensor) -> Tensor:
    """Apply ``[..., 4, 4]`` transforms to ``[..., N, 3]`` points (broadcast over leading dims)."""
    return points @ transform[..., :3, :3].transpose(-1, -2) + transform[..., None, :3, 3]


def normalize_quat(quats: Tensor, eps: float = 1e-12) -> Tensor:
    """``[..., 4]`` -> unit quaternions."""
    return quats / quats.norm(dim=-1, keepdim=True).clamp_min(eps)


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices from (not necessarily unit) wxyz quaternions.

    Args:
        quats: ``[..., 4]`` as (w, x, y, z).
    Returns:
        ``[..., 3, 3]`` rotation matrices.
    """
    w, x, y, z = normalize_quat(quats).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product ``a * b`` of wxyz quaternions ``[..., 4]`` (rotation ``b`` first, then ``a``)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def rotmat_to_quat(rot: Tensor) -> Tensor:
    """Unit wxyz quaternions (with w >= 0) from rotation matrices ``[..., 3, 3]`` -> ``[..., 4]``.

    Uses the numerically stable branch per element (largest diagonal term), so it is accurate for
    rotations near 180 degrees as well.
    """
    m = rot
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    trace = m00 + m11 + m22
    candidates = torch.stack(
        [
            torch.stack(
                [1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1
            ),
            torch.stack(
                [
                    m[..., 2, 1] - m[..., 1, 2],
                    1 + m00 - m11 - m22,
                    m[..., 0, 1] + m[..., 1, 0],
                    m[..., 0, 2] + m[..., 2, 0],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 0, 1] + m[..., 1, 0],
                    1 - m00 + m11 - m22,
                    m[..., 1, 2] + m[..., 2, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 1, 0] - m[..., 0, 1],
                    m[..., 0, 2] + m[..., 2, 0],
                    m[..., 1, 2] + m[..., 2, 1],
                    1 - m00 - m11 + m22,
                ],
                -1,
            ),
        ],
        dim=-2,
    )  # [..., 4 branches, 4]
    pick = torch.stack([trace, m00, m11, m22], dim=-1).argmax(dim=-1)
    quat = torch.gather(candidates, -2, pick[..., None, None].expand(pick.shape + (1, 4))).squeeze(-2)
    quat = normalize_quat(quat)
    return torch.where(quat[..., :1] < 0, -quat, quat)


def pixel_centers(height: int, width: int, device=None, dtype=torch.float32) -> Tensor:
    """``[H, W, 2]`` pixel-centre coordinates ``(u, v) = (x + 0.5, y + 0.5)``."""
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype) + 0.5,
        torch.arange(width, device=device, dtype=dtype) + 0.5,
        indexing="ij",
    )
    return torch.stack([u, v], dim=-1)


def unproject_depth(depth: Tensor, intrinsics: Tensor, c2w: Tensor) -> Tensor:
    """Lift a z-depth map to world points through pixel centres.

    Args:
        depth: ``[..., H, W]`` z-depth (distance along the optical axis, not along the ray).
        intrinsics: ``[..., 3, 3]`` pixel intrinsics for this (H, W).
        c2w: ``[..., 4, 4]`` camera-to-world.
    Returns:
        ``[..., H, W, 3]`` world points.
    """
    height, width = depth.shape[-2:]
    uv = pixel_centers(height, width, depth.device, depth.dtype)
    fx, fy = intrinsics[..., 0, 0, None, None], intrinsics[..., 1, 1, None, None]
    cx, cy = intrinsics[..., 0, 2, None, None], intrinsics[..., 1, 2, None, None]
    x = (uv[..., 0] - cx) / fx * depth
    y = (uv[..., 1] - cy) / fy * depth
    cam = torch.stack([x, y, depth], dim=-1)  # [..., H, W, 3]
    flat = cam.reshape(cam.shape[:-3] + (height * width, 3))
    world = transform_points(c2w, flat)
    return world.reshape(cam.shape)


def project_points(points: Tensor, intrinsics: Tensor, w2c: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points into cameras.

    Args:
        points: ``[..., N, 3]`` world points.
        intrinsics: ``[..., 3, 3]``.
        w2c: ``[..., 4, 4]`` world-to-camera.
    Returns:
        ``uv``: ``[..., N, 2]`` continuous pixel coordinates (pixel centres at +0.5);
        ``z``: ``[..., N]`` camera z-depth (points with ``z <= 0`` are behind the camera and
        their ``uv`` is meaningless).
    """
    cam = transform_points(w2c, points)
    z = cam[..., 2]
    safe_z = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    u = intrinsics[..., 0, 0, None] * cam[..., 0] / safe_z + intrinsics[..., 0, 2, None]
    v = intrinsics[..., 1, 1, None] * cam[..., 1] / safe_z + intrinsics[..., 1, 2, None]
    return torch.stack([u, v], dim=-1), z


def inverse_depth_candidates(near: Tensor, far: Tensor, count: int) -> Tensor:
    """``count`` depths uniform in inverse depth from ``near`` to ``far``.

    Args:
        near, far: ``[...]``.
    Returns:
        ``[..., count]`` depths, nearest first.
    """
    t = torch.linspace(0.0, 1.0, count, device=near.device, dtype=near.dtype)
    inv = 1.0 / near[..., None] + t * (1.0 / far[..., None] - 1.0 / near[..., None])
    return 1.0 / inv


def plane_sweep_grid(
    ref_intrinsics: Tensor,
    ref_c2w: Tensor,
    src_intrinsics: Tensor,
    src_w2c: Tensor,
    depths: Tensor,
    height: int,
    width: int,
) -> tuple[Tensor, Tensor]:
    """Where each reference pixel lands in a source view if it lies at each candidate depth.

    This is the plane-sweep homography of fronto-parallel planes ``z_ref = d``, evaluated per pixel
    by unprojecting the reference pixel centre to depth ``d`` and projecting into the source.

    Args:
        ref_intrinsics, src_intrinsics: ``[..., 3, 3]`` for an image of ``(height, width)``.
        ref_c2w: ``[..., 4, 4]``; src_w2c: ``[..., 4, 4]``.
        depths: ``[..., D]`` candidate z-depths in the reference camera.
    Returns:
        ``grid``: ``[..., D, H, W, 2]`` source coordinates normalised for
        ``F.grid_sample(..., align_corners=False)``; ``valid``: ``[..., D, H, W]`` bool, False
        behind the source camera or outside its image.
    """
    uv = pixel_centers(height, width, depths.device, depths.dtype)  # [H, W, 2]
    fx, fy = ref_intrinsics[..., 0, 0], ref_intrinsics[..., 1, 1]
    cx, cy = ref_intrinsics[..., 0, 2], ref_intrinsics[..., 1, 2]
    lead = depths.shape[:-1]
    rx = (uv[..., 0] - cx[..., None, None]) / fx[..., None, None]  # [..., H, W]
    ry = (uv[..., 1] - cy[..., None, None]) / fy[..., None, None]
    rays = torch.stack([rx, ry, torch.ones_like(rx)], dim=-1)  # [..., H, W, 3]
    ref_to_src = src_w2c @ ref_c2w  # [..., 4, 4]
    rot, trans = ref_to_src[..., :3, :3], ref_to_src[..., :3, 3]
    # p_src(d) = d * (R ray) + t
    dirs = torch.einsum("...ij,...hwj->...hwi", rot, rays)  # [..., H, W, 3]
    d = depths.reshape(lead + (depths.shape[-1], 1, 1, 1))
    pts = d * dirs[..., None, :, :, :] + trans.reshape(lead + (1, 1, 1, 3))  # [..., D, H, W, 3]
    z = pts[..., 2]
    safe_z = torch.where(z > 1e-6, z, torch.ones_like(z))
    k = src_intrinsics.reshape(lead + (1, 1, 1, 3, 3))
    u = k[..., 0, 0] * pts[..., 0] / safe_z + k[..., 0, 2]
    v = k[..., 1, 1] * pts[..., 1] / safe_z + k[..., 1, 2]
    valid = (z > 1e-6) & (u >= 0) & (u <= width) & (v >= 0) & (v <= height)
    grid = torch.stack([2 * u / width - 1, 2 * v / height - 1], dim=-1)
    grid = torch.where(valid[..., None], grid, torch.full_like(grid, -2.0))  # off-image -> zero padding
    return grid, valid
