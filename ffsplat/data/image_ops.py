"""Resize/crop images together with their intrinsics, and resample depth/labels between cameras.

All functions use the pixel-centre-at-+0.5 convention of :mod:`ffsplat.core.geometry`, and the
colour path rounds exactly as :meth:`ffsplat.core.types.Cameras.resize_and_center_crop`, so pixels and
intrinsics stay consistent.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ffsplat.core.types import Cameras, center_crop_offsets, cover_size


def target_intrinsics(k: np.ndarray, size: tuple[int, int], out: tuple[int, int]) -> np.ndarray:
    """Intrinsics ``[3, 3]`` after scaling an image of ``size`` to cover ``out`` and centre-cropping."""
    cams = Cameras(torch.as_tensor(k, dtype=torch.float64), torch.eye(4, dtype=torch.float64), size)
    return cams.resize_and_center_crop(*out).intrinsics.numpy()


def resize_and_center_crop(rgb: np.ndarray, k: np.ndarray, out: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Area-filtered resize of an ``[H, W, 3]`` uint8 image so it covers ``out``, then centre crop.

    Returns:
        the ``[out_h, out_w, 3]`` image and its ``[3, 3]`` intrinsics.
    """
    size = rgb.shape[:2]
    cover = cover_size(size, out)
    image = Image.fromarray(rgb)
    if cover != size:
        image = image.resize(
            (cover[1], cover[0]), Image.Resampling.BOX if cover[0] < size[0] else Image.Resampling.BICUBIC
        )
    top, left = center_crop_offsets(cover, out)
    cropped = np.asarray(image)[top : top + out[0], left : left + out[1]]
    return np.ascontiguousarray(cropped), target_intrinsics(k, size, out)


def resample_nearest(src: np.ndarray, k_src: np.ndarray, k_dst: np.ndarray, out: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a map seen by a camera with ``k_src`` into one with ``k_dst``.

    Both cameras share the optical centre and orientation (ScanNet's registered colour/depth), so
    a target pixel centre maps to ``K_src K_dst^-1 (u, v, 1)``. Target pixels that fall outside
    the source get 0 (no depth / unlabelled). Used for depth, labels and instance ids, which must
    not be interpolated.

    Args:
        src: ``[Hs, Ws]`` map.
        k_src, k_dst: ``[3, 3]`` pixel intrinsics.
        out: ``(H, W)`` of the target.
    Returns:
        ``[H, W]`` with ``src``'s dtype.
    """
    h, w = out
    v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    x = (u - k_dst[0, 2]) / k_dst[0, 0]
    y = (v - k_dst[1, 2]) / k_dst[1, 1]
    us = np.floor(k_src[0, 0] * x + k_src[0, 2]).astype(np.int64)
    vs = np.floor(k_src[1, 1] * y + k_src[1, 2]).astype(np.int64)
    inside = (us >= 0) & (us < src.shape[1]) & (vs >= 0) & (vs < src.shape[0])
    result = np.zeros(out, dtype=src.dtype)
    result[inside] = src[vs[inside], us[inside]]
    return result


def scaled_intrinsics(k: np.ndarray, size: tuple[int, int], new_size: tuple[int, int]) -> np.ndarray:
    """Intrinsics of the same camera for an image stretched from ``size`` to ``new_size``."""
    out = np.array(k, dtype=np.float64)
    out[0] *= new_size[1] / size[1]
    out[1] *= new_size[0] / size[0]
    out[2] = [0.0, 0.0, 1.0]
    return out
