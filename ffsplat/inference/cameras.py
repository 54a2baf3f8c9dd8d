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

Views are matched to images by order. ``"c2w"`` may be left out of every view (an intrinsics-only
file): the poses are then registered from the photos (``ffsplat.inference.pose``) with these
intrinsics. ``K`` must be a pinhole matrix of that image: positive focal lengths, last row
``[0, 0, 1]``, and a principal point inside the image grown by half its size on every side.

Other formats ``--cameras`` reads (:func:`load_cameras`, converted to the convention above, matched
to the ``--views`` by file name): a COLMAP sparse model folder (``cameras`` + ``images`` as ``.bin``
or ``.txt``; world-to-camera, OpenCV axes, pinhole-type models without distortion), a nerfstudio
``transforms.json`` (camera-to-world in OpenGL axes: x right, y up, z backward) and a ScanNet
exported scene folder (``pose/<frame>.txt`` camera-to-world, ``intrinsic/intrinsic_color.txt``).
"""

from __future__ import annotations

import json
import math
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
    """One view: pixel intrinsics ``[3, 3]`` for ``(height, width)`` and camera-to-world ``[4, 4]``
    (``None`` in an intrinsics-only file)."""

    k: np.ndarray
    c2w: np.ndarray | None
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


def check_intrinsics(k: np.ndarray, height: int, width: int, where: str) -> None:
    """Refuse a ``[3, 3]`` K that cannot belong to a ``height x width`` image (see the module doc)."""
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        raise CameraFileError(f"{where}: focal lengths must be positive, got fx={k[0, 0]:g}, fy={k[1, 1]:g}")
    if not np.allclose(k[2], [0, 0, 1]):
        raise CameraFileError(f"{where}: last row must be [0, 0, 1], got {k[2].tolist()}")
    if k[1, 0] != 0:
        raise CameraFileError(f"{where}: K[1][0] must be 0 (a pinhole matrix), got {k[1, 0]:g}")
    cx, cy = k[0, 2], k[1, 2]
    if not (-0.5 * width <= cx <= 1.5 * width and -0.5 * height <= cy <= 1.5 * height):
        raise CameraFileError(
            f"{where}: principal point ({cx:g}, {cy:g}) is far outside the {width}x{height} image; "
            "K must be in pixels of this image (centre of the top-left pixel at (0.5, 0.5))"
        )


def _pixels(value, where: str) -> int:
    """An image side in pixels: a positive integer (``true`` is not an integer here, though JSON
    and Python count it as 1)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CameraFileError(f"{where}: expected a positive integer number of pixels, got {json.dumps(value)}")
    return value


MAX_CAMERA_DISTANCE = 1e5
"""Largest camera distance from the world origin a cameras file may give (in its units, metres for
ffsplat files): float32 rendering keeps about 1 cm of precision there; beyond it positions are
garbage (e.g. 1e300 overflows to inf inside the renderer)."""


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CameraFileError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def read_cameras(path: str | os.PathLike, require_poses: bool = True) -> CameraFile:
    """Parse and validate a cameras JSON (finite values, intrinsics that fit the image, proper
    rotations, numeric near/far). With ``require_poses=False`` every view may omit ``"c2w"``
    (an intrinsics-only file; all views or none)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CameraFileError(f"cameras file not found: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CameraFileError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("convention") != CONVENTION:
        raise CameraFileError(
            f'{path}: "convention" must be "{CONVENTION}" (OpenCV axes, camera-to-world, pixel intrinsics)'
        )
    views = data.get("views")
    if not isinstance(views, list) or not views:
        raise CameraFileError(f'{path}: "views" must be a non-empty list')
    parsed = []
    for i, view in enumerate(views):
        where = f"{path}: views[{i}]"
        if not isinstance(view, dict):
            raise CameraFileError(f"{where}: expected an object")
        posed = "c2w" in view or require_poses
        for key in ("K", "c2w", "width", "height") if posed else ("K", "width", "height"):
            if key not in view:
                raise CameraFileError(f'{where}: missing "{key}"')
        width, height = _pixels(view["width"], f"{where}.width"), _pixels(view["height"], f"{where}.height")
        k = _matrix(view["K"], (3, 3), f"{where}.K")
        check_intrinsics(k, height, width, f"{where}.K")
        c2w = check_pose(_matrix(view["c2w"], (4, 4), f"{where}.c2w"), f"{where}.c2w") if posed else None
        parsed.append(CameraView(k, c2w, height, width, view.get("image")))
    if len({v.c2w is None for v in parsed}) > 1:
        raise CameraFileError(f'{path}: give "c2w" for every view or for none (an intrinsics-only file)')
    near, far = data.get("near"), data.get("far")
    if (near is None) != (far is None):
        raise CameraFileError(f'{path}: "near" and "far" must be given together')
    if near is not None:
        near, far = _number(near, f'{path}: "near"'), _number(far, f'{path}: "far"')
        if not 0 < near < far:
            raise CameraFileError(f'{path}: "near" and "far" need 0 < near < far, got {near:g}, {far:g}')
    return CameraFile(parsed, near, far)


def check_pose(c2w: np.ndarray, where: str) -> np.ndarray:
    """Refuse a ``[4, 4]`` camera-to-world that is not a rigid transform; returns it."""
    rot = c2w[:3, :3]
    if np.abs(rot.T @ rot - np.eye(3)).max() > 1e-3 or np.linalg.det(rot) <= 0:
        raise CameraFileError(f"{where}: the rotation part is not a proper rotation (singular, scaled or reflected)")
    if not np.allclose(c2w[3], [0, 0, 0, 1]):
        raise CameraFileError(f"{where}: last row must be [0, 0, 0, 1]")
    distance = float(np.abs(c2w[:3, 3]).max())  # (a norm of 1e300 would overflow)
    if not distance <= MAX_CAMERA_DISTANCE:
        raise CameraFileError(
            f"{where}: the camera position {[float(f'{v:.3g}') for v in c2w[:3, 3]]} is {distance:.3g} from the origin "
            f"along an axis; expected at most {MAX_CAMERA_DISTANCE:g} (metres): re-centre or rescale the poses"
        )
    return c2w


def write_cameras(path: str | os.PathLike, cameras: CameraFile) -> None:
    """Write a cameras JSON (atomically) that :func:`read_cameras` reads back."""
    data = {
        "convention": CONVENTION,
        "views": [
            {
                **({"image": v.image} if v.image else {}),
                "width": v.width,
                "height": v.height,
                "K": np.asarray(v.k).tolist(),
                **({} if v.c2w is None else {"c2w": np.asarray(v.c2w).tolist()}),
            }  # fmt: skip
            for v in cameras.views
        ],
    }
    if cameras.near is not None:
        data.update(near=cameras.near, far=cameras.far)
    with atomic_open(path, "w") as f:
        json.dump(data, f, indent=2)


# --- Intrinsics from the photo's EXIF -------------------------------------------------------------

_EXIF_IFD = 0x8769
_FOCAL_LENGTH, _FOCAL_35MM = 0x920A, 0xA405
_FOCAL_PLANE_X_RES, _FOCAL_PLANE_UNIT = 0xA20E, 0xA210
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 1e-3}  # EXIF FocalPlaneResolutionUnit: inch, cm, mm, um
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)


def exif_focal(path: str | os.PathLike, height: int, width: int) -> tuple[float, str] | None:
    """Focal length in pixels of ``path`` (``height x width`` as stored) from its EXIF, or None.

    Uses the 35 mm-equivalent focal length (``FocalLengthIn35mmFilm``, scaled by the image diagonal
    over the 43.27 mm full-frame diagonal) when present, else ``FocalLength`` (mm) times
    ``FocalPlaneXResolution`` (pixels per ``FocalPlaneResolutionUnit``). Returns the focal length
    and a phrase saying which tag was used.

    Raises:
        CameraFileError: EXIF that cannot be parsed, or a focal tag that is zero, negative, NaN or
            has a zero denominator.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            exif = im.getexif()
            sub = exif.get_ifd(_EXIF_IFD) if exif else {}
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, ZeroDivisionError) as exc:
        raise CameraFileError(f"{path}: corrupt EXIF ({exc}); remove it or give --focal / --intrinsics") from exc
    tags = {**dict(exif or {}), **dict(sub or {})}

    def value(tag: int, name: str) -> float | None:
        if tag not in tags:
            return None
        try:
            v = float(tags[tag])
        except (TypeError, ValueError, ZeroDivisionError) as exc:
            raise CameraFileError(f"{path}: corrupt EXIF {name} {tags[tag]!r}; give --focal / --intrinsics") from exc
        if not math.isfinite(v) or v < 0:
            raise CameraFileError(f"{path}: corrupt EXIF {name} {tags[tag]!r}; give --focal / --intrinsics")
        return v

    f35 = value(_FOCAL_35MM, "FocalLengthIn35mmFilm")
    if f35:  # 0 means unknown (EXIF 2.3)
        return f35 * math.hypot(
            width, height
        ) / FULL_FRAME_DIAGONAL_MM, f"EXIF 35 mm-equivalent focal length {f35:g} mm"
    f_mm, res = value(_FOCAL_LENGTH, "FocalLength"), value(_FOCAL_PLANE_X_RES, "FocalPlaneXResolution")
    if f_mm is not None and f_mm == 0 and res:
        raise CameraFileError(f"{path}: corrupt EXIF FocalLength 0; give --focal / --intrinsics")
    if f_mm and res:
        unit = int(tags.get(_FOCAL_PLANE_UNIT, 2))
        if unit not in _UNIT_MM:
            raise CameraFileError(f"{path}: corrupt EXIF FocalPlaneResolutionUnit {unit}; give --focal / --intrinsics")
        return f_mm * res / _UNIT_MM[unit], f"EXIF focal length {f_mm:g} mm x focal-plane resolution"
    return None


# --- Camera formats --cameras reads -------------------------------------------------------------

OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # flips a camera's y and z axes


def detect_camera_format(path: str | os.PathLike) -> str:
    """``ffsplat`` (cameras JSON), ``nerfstudio`` (transforms.json), ``colmap`` (sparse model folder)
    or ``scannet`` (exported scene folder); raises CameraFileError for anything else."""
    path = Path(path)
    if path.is_dir():
        if any((path / f"cameras{ext}").is_file() and (path / f"images{ext}").is_file() for ext in (".bin", ".txt")):
            return "colmap"
        if (path / "pose").is_dir() and (path / "intrinsic").is_dir():
            return "scannet"
        raise CameraFileError(
            f"{path}: a cameras folder must be a COLMAP sparse model (cameras + images .bin/.txt) or a ScanNet export (pose/, intrinsic/)"
        )
    if not path.is_file():
        raise CameraFileError(f"cameras file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CameraFileError(f"{path}: not valid JSON ({exc})") from exc
    return "nerfstudio" if isinstance(data, dict) and "frames" in data and "convention" not in data else "ffsplat"


def load_cameras(
    path: str | os.PathLike, image_names: list[str], sizes: list[tuple[int, int]]
) -> tuple[CameraFile, str]:
    """Cameras for the given photos from any format :func:`detect_camera_format` knows.

    Args:
        image_names: file names of the photos (folder formats match views by name; the cameras
            JSON by order).
        sizes: ``(height, width)`` of each photo (ScanNet stores none; the others are checked).
    Returns:
        the cameras in ffsplat's convention (OpenCV axes, camera-to-world, pixel intrinsics) and
        the format's name.
    """
    fmt = detect_camera_format(path)
    cams = CAMERA_FORMATS[fmt](Path(path), list(image_names), list(sizes))
    return cams, fmt


def _find(path: Path, wanted: list[str], available: dict[str, object], what: str) -> list:
    """Entries of ``available`` (keyed by file name) for each wanted file name, or one clear error."""
    missing = [n for n in wanted if n not in available]
    if missing:
        known = sorted(available)[:5]
        raise CameraFileError(f"{path}: no {what} for {', '.join(missing)} (it has {len(available)}, e.g. {known})")
    return [available[n] for n in wanted]


def _read_ffsplat(path: Path, names: list[str], sizes: list[tuple[int, int]]) -> CameraFile:
    return read_cameras(path, require_poses=False)


def _read_colmap(path: Path, names: list[str], sizes: list[tuple[int, int]]) -> CameraFile:
    import pycolmap

    try:
        rec = pycolmap.Reconstruction(path)
    except Exception as exc:  # pycolmap raises plain RuntimeError/ValueError for unreadable models
        raise CameraFileError(f"{path}: cannot read the COLMAP model ({exc})") from exc
    images = {Path(im.name).name: im for im in rec.images.values()}
    views = []
    for name, image in zip(names, _find(path, [Path(n).name for n in names], images, "COLMAP image")):
        camera = rec.cameras[image.camera_id]
        where = f"{path}: camera {image.camera_id} ({camera.model.name}) of {image.name}"
        extra = [camera.params[i] for i in camera.extra_params_idxs()]
        if not camera.is_perspective_pinhole():
            raise CameraFileError(f"{where}: not a pinhole-type camera model")
        if any(abs(e) > 1e-9 for e in extra):
            raise CameraFileError(
                f"{where}: has lens distortion {extra}; undistort the images first (colmap image_undistorter)"
            )
        if not image.has_pose:
            raise CameraFileError(f"{path}: image {image.name} is not registered in the model (no pose)")
        w2c = np.eye(4)
        w2c[:3] = image.cam_from_world().matrix()
        k = np.asarray(camera.calibration_matrix(), dtype=np.float64)
        check_intrinsics(k, camera.height, camera.width, where)
        views.append(CameraView(k, check_pose(np.linalg.inv(w2c), where), int(camera.height), int(camera.width), name))
    return CameraFile(views)


def _read_nerfstudio(path: Path, names: list[str], sizes: list[tuple[int, int]]) -> CameraFile:
    data = json.loads(path.read_text())
    frames = data.get("frames")
    if not isinstance(frames, list):
        raise CameraFileError(f'{path}: "frames" must be a list')
    by_name = {}
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise CameraFileError(f'{path}: frames[{i}] needs "file_path" and "transform_matrix"')
        by_name[Path(str(frame["file_path"])).name] = (i, frame)
    views = []
    for name, (i, frame) in zip(names, _find(path, [Path(n).name for n in names], by_name, "frame")):
        where = f"{path}: frames[{i}]"

        def get(key, frame=frame):  # per-frame values override the shared ones
            return frame.get(key, data.get(key))

        model = get("camera_model") or "OPENCV"
        if model not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE"):
            raise CameraFileError(f"{where}: camera_model {model} is not a pinhole camera")
        for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
            if get(key) is None and not (key == "fl_y" and get("fl_x") is not None):
                raise CameraFileError(f'{where}: missing "{key}"')
        fx = _number(get("fl_x"), f"{where}.fl_x")
        fy = _number(get("fl_y") if get("fl_y") is not None else fx, f"{where}.fl_y")
        cx, cy = _number(get("cx"), f"{where}.cx"), _number(get("cy"), f"{where}.cy")
        w, h = _pixels(get("w"), f"{where}.w"), _pixels(get("h"), f"{where}.h")
        distortion = {k: get(k) for k in ("k1", "k2", "k3", "k4", "p1", "p2") if get(k)}
        if distortion:
            raise CameraFileError(f"{where}: has lens distortion {distortion}; undistort the images first")
        k = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        check_intrinsics(k, h, w, where)
        c2w_gl = _matrix(frame["transform_matrix"], (4, 4), f"{where}.transform_matrix")
        c2w = check_pose(c2w_gl @ OPENGL_TO_OPENCV, f"{where}.transform_matrix")
        views.append(CameraView(k, c2w, h, w, name))
    return CameraFile(views)


def _read_scannet(path: Path, names: list[str], sizes: list[tuple[int, int]]) -> CameraFile:
    """ScanNet export: intrinsics used as stored, as ffsplat's ScanNet ingest (``ffsplat.data.sequence``) does."""
    kfile = path / "intrinsic" / "intrinsic_color.txt"
    try:
        k = _matrix(np.loadtxt(kfile), (4, 4), str(kfile))[:3, :3]
    except (OSError, ValueError) as exc:
        raise CameraFileError(f"{kfile}: cannot read a 4x4 intrinsics matrix ({exc})") from exc
    poses = {p.stem: p for p in (path / "pose").glob("*.txt")}
    views = []
    for name, (h, w), pfile in zip(
        names, sizes, _find(path / "pose", [Path(n).stem for n in names], poses, "pose file")
    ):
        check_intrinsics(k, h, w, f"{kfile} (for {name}, {w}x{h})")
        try:
            c2w = np.loadtxt(pfile)
        except ValueError as exc:
            raise CameraFileError(f"{pfile}: cannot read a 4x4 pose ({exc})") from exc
        if not np.isfinite(c2w).all():
            raise CameraFileError(f"{pfile}: invalid pose (ScanNet marks frames without tracking with -inf)")
        views.append(CameraView(k.copy(), check_pose(_matrix(c2w, (4, 4), str(pfile)), str(pfile)), h, w, name))
    return CameraFile(views)


CAMERA_FORMATS = {
    "ffsplat": _read_ffsplat,
    "colmap": _read_colmap,
    "nerfstudio": _read_nerfstudio,
    "scannet": _read_scannet,
}
