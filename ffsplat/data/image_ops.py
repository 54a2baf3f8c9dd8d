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


EXIF_ORIENTATION = 0x0112
"""EXIF tag of the orientation a photo viewer applies (1: as stored; 2-8: mirrored and/or rotated)."""


def read_photo(path) -> tuple[np.ndarray, bool]:
    """A photo as ``[H, W, 3]`` uint8 RGB *as a photo viewer displays it*, and whether its EXIF
    orientation was applied.

    - the EXIF orientation (tag 274, values 2-8) is applied, so width, height, intrinsics and a
      cameras file all refer to the displayed image;
    - grayscale (8- and 16-bit), gray+alpha, 1-bit, palette (with or without transparency) and
      16-bit images become RGB; 16-bit values are scaled to 8 bits (``round(v / 257)``: 65535 -> 255);
      alpha is dropped (as for RGBA);
    - other modes (CMYK, YCbCr, LAB, floating point, ...) raise ValueError naming the mode.

    Raises ``PIL.UnidentifiedImageError`` / ``OSError`` for a file that is not a readable image.
    """
    from PIL import ImageOps

    with Image.open(path) as im:
        im.load()
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
        rotated = orientation in range(2, 9)
        if rotated:
            im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit grayscale (PNG opens as I;16 or I)
            values = np.asarray(im).astype(np.float64)
            if values.max(initial=0) > 65535 or values.min(initial=0) < 0:
                raise ValueError(
                    f"{path}: 32-bit integer image (mode I) with values outside 0..65535; expected a photo"
                )
            gray = np.round(values / 257.0).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=-1), rotated
        if im.mode in ("P", "PA"):
            im = im.convert("RGBA")
        if im.mode not in ("RGB", "RGBA", "L", "LA", "1"):
            raise ValueError(
                f"{path} has {len(im.getbands())} channels (mode {im.mode}); expected RGB, RGBA, grayscale "
                "(8/16-bit, with or without alpha), 1-bit or palette"
            )
        return np.asarray(im.convert("RGB")).copy(), rotated
