"""Cameras JSON for ``infer.py`` (``--cameras``): per-view pixel intrinsics and camera-to-world poses.

Schema (see ``examples/demo/cameras.json``)::

    {
      "convention": "opencv_c2w",          # required: OpenCV axes (x right, y down, z forward),
                                           # extrinsics camera-to-world, intrinsics in pixels with
                                           # the centre of the top-left pixel at (0.5, 0.5)
      "views": [
        {
          "image": "a.png",                # optional: checked against the --views file name
          "width": 640, "height": 480,     # the size K refers to (the image's own size)
          "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
          "c2w": [[r00, r01, r02, tx], [r10, r11, r12, ty], [r20, r21, r22, tz], [0, 0, 0, 1]]
        },
        ...
      ],
      "near": 0.5, "far": 10.0             # optional depth range (metres)
    }

Views are matched to images by order. Coming from COLMAP or other w2c tools, invert the pose; from
OpenGL/Blender axes (y up, z backward), flip the camera's y and z axes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ffsplat.core.atomic import atomic_open

CONVENTION = "opencv_c2w"


class CameraFileError(ValueError):
    """A cameras JSON that does not follow the schema; the message names the file and field."""


@dataclass
class CameraView:
    """One view: pixel intrinsics ``[3, 3]`` for ``(height, width)`` and camera-to-world ``[4, 4]``."""

    k: np.ndarray
    c2w: np.ndarray
    height: int
    width: int
    image: str | None = None


@dataclass
class CameraFile:
    views: list[CameraView]
    near: float | None = None
    far: float | None = None


def _matrix(value, shape: tuple[int, int], where: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CameraFileError(f"{where}: expected a {shape[0]}x{shape[1]} matrix of numbers") from exc
    if array.shape != shape:
        raise CameraFileError(f"{where}: expected shape {shape}, got {array.shape}")
    if not np.isfinite(array).all():
        raise CameraFileError(f"{where}: contains NaN or inf")
    return array


def read_cameras(path: str | os.PathLike) -> CameraFile:
    """Parse and validate a cameras JSON (finite values, positive focal lengths, proper rotations)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CameraFileError(f"cameras file not found: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CameraFileError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("convention") != CONVENTION:
        raise CameraFileError(f'{path}: "convention" must be "{CONVENTION}" (OpenCV axes, camera-to-world, pixel intrinsics)')
    views = data.get("views")
    if not isinstance(views, list) or not views:
        raise CameraFileError(f'{path}: "views" must be a non-empty list')
    parsed = []
    for i, view in enumerate(views):
        where = f"{path}: views[{i}]"
        if not isinstance(view, dict):
            raise CameraFileError(f"{where}: expected an object")
        for key in ("K", "c2w", "width", "height"):
            if key not in view:
                raise CameraFileError(f'{where}: missing "{key}"')
        k = _matrix(view["K"], (3, 3), f"{where}.K")
        c2w = _matrix(view["c2w"], (4, 4), f"{where}.c2w")
        if k[0, 0] <= 0 or k[1, 1] <= 0:
            raise CameraFileError(f"{where}.K: focal lengths must be positive")
        rot = c2w[:3, :3]
        if np.abs(rot.T @ rot - np.eye(3)).max() > 1e-3 or np.linalg.det(rot) <= 0:
            raise CameraFileError(f"{where}.c2w: the rotation part is not a proper rotation (singular, scaled or reflected)")
        if not np.allclose(c2w[3], [0, 0, 0, 1]):
            raise CameraFileError(f"{where}.c2w: last row must be [0, 0, 0, 1]")
        width, height = view["width"], view["height"]
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            raise CameraFileError(f"{where}: width and height must be positive integers")
        parsed.append(CameraView(k, c2w, height, width, view.get("image")))
    near, far = data.get("near"), data.get("far")
    if (near is None) != (far is None) or (near is not None and not 0 < near < far):
        raise CameraFileError(f'{path}: "near" and "far" must be given together with 0 < near < far')
    return CameraFile(parsed, near, far)


def write_cameras(path: str | os.PathLike, cameras: CameraFile) -> None:
    """Write a cameras JSON (atomically) that :func:`read_cameras` reads back."""
    data = {
        "convention": CONVENTION,
        "views": [
            {**({"image": v.image} if v.image else {}), "width": v.width, "height": v.height,
             "K": np.asarray(v.k).tolist(), "c2w": np.asarray(v.c2w).tolist()}  # fmt: skip
            for v in cameras.views
        ],
    }
    if cameras.near is not None:
        data.update(near=cameras.near, far=cameras.far)
    with atomic_open(path, "w") as f:
        json.dump(data, f, indent=2)
