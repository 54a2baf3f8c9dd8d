"""Exact rendering of a room by ray casting (slab test per box) and Lambertian shading."""

from __future__ import annotations

import numpy as np

from ffsplat.synthetic.layout import Room
from ffsplat.synthetic.materials import albedo


def cast_rays(room: Room, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact first hit of rays ``origin + t * dirs`` with the room's boxes (slab test).

    The origin must lie outside every box (any camera inside the room and off the furniture).

    Args:
        origin: ``[3]`` ray origin (world). dirs: ``[P, 3]`` directions, any length (``t`` is in
            units of ``|dirs|``; with camera-z component 1 it is the z-depth).
    Returns:
        ``t`` ``[P]`` (``inf`` without a hit), ``box`` ``[P]`` index of the hit box (-1 without),
        ``axis`` ``[P]`` world axis of the hit face's normal, which is ``-sign(dirs[axis])`` along it.
    """
    origin = np.asarray(origin, dtype=np.float64)
    dirs = np.asarray(dirs, dtype=np.float64)
    safe = np.where(np.abs(dirs) < 1e-12, np.where(dirs < 0, -1e-12, 1e-12), dirs)
    inv = np.ascontiguousarray((1.0 / safe).T)  # [3, P]; per-axis rows are much faster than [P, 3] reductions
    best_t = np.full(len(dirs), np.inf)
    best_box = np.full(len(dirs), -1, dtype=np.int64)
    best_axis = np.zeros(len(dirs), dtype=np.int64)
    for i in range(len(room.lo)):
        t1 = (room.lo[i, :, None] - origin[:, None]) * inv
        t2 = (room.hi[i, :, None] - origin[:, None]) * inv
        tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
        near = np.maximum(np.maximum(tmin[0], tmin[1]), tmin[2])
        far = np.minimum(np.minimum(tmax[0], tmax[1]), tmax[2])
        hit = (near <= far) & (near > 0) & (near < best_t)
        if not hit.any():
            continue
        best_t = np.where(hit, near, best_t)
        best_box[hit] = i
        best_axis[hit] = np.where(tmin[0] == near, 0, np.where(tmin[1] == near, 1, 2))[hit]
    return best_t, best_box, best_axis


def shade(room: Room, points: np.ndarray, box: np.ndarray, axis: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """View-independent colour ``[P, 3]`` in ``[0, 1]`` of hit points (albedo x Lambertian light).

    ``box``, ``axis``: from :func:`cast_rays`; ``dirs`` only fixes which side of the face was hit.
    """
    rows = np.arange(len(points))
    normal = np.zeros_like(points)
    normal[rows, axis] = -np.sign(dirs[rows, axis])
    to_lamp = room.lamp_pos - points
    dist = np.linalg.norm(to_lamp, axis=-1)
    light = (
        room.ambient
        + room.sun * np.maximum(normal @ room.sun_dir, 0)
        + room.lamp * np.maximum((normal * to_lamp).sum(-1) / np.maximum(dist, 1e-9), 0) / (1 + (dist / 2.0) ** 2)
    )
    return np.clip(albedo(room.materials[room.box_material[box]], points, axis) * light[:, None], 0.0, 1.0)


def render_frame(
    room: Room, c2w: np.ndarray, K: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ray cast one view through every pixel centre.

    Args:
        c2w: ``[4, 4]`` camera-to-world (OpenCV axes). K: ``[3, 3]`` pixel intrinsics for
            ``(height, width)`` (pixel centres at +0.5).
    Returns:
        ``rgb`` ``[H, W, 3]`` uint8, ``depth`` ``[H, W]`` float32 z-depth in metres, ``labels``
        ``[H, W]`` int32 8-class labels, ``instances`` ``[H, W]`` int32 instance ids.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    dirs = cam @ c2w[:3, :3].T
    origin = c2w[:3, 3]
    t, box, axis = cast_rays(room, origin, dirs)
    if (box < 0).any():
        raise ValueError("render_frame: some rays leave the room; is the camera outside it or inside furniture?")
    rgb = shade(room, origin + t[:, None] * dirs, box, axis, dirs)
    rgb8 = np.round(rgb * 255).astype(np.uint8).reshape(height, width, 3)
    shape = (height, width)
    depth = t.astype(np.float32).reshape(shape)
    return rgb8, depth, room.box_class[box].reshape(shape), room.box_instance[box].reshape(shape)
