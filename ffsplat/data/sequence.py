"""Read and write RGB-D sequences in the exported-ScanNet folder layout (and generic variants).

Layout of one scene folder (what ScanNet's SensReader exports, and ``data/hololens-office``)::

    color/<i>.jpg                 RGB, any size
    depth/<i>.png                 uint16 depth in millimetres (0 = no measurement), any size
    pose/<i>.txt                  4x4 camera-to-world, OpenCV axes (x right, y down, z forward)
    intrinsic/intrinsic_color.txt 4x4 (or 3x3) pixel intrinsics of the colour images
    intrinsic/intrinsic_depth.txt 4x4 (or 3x3) pixel intrinsics of the depth images
    label-filt/<i>.png            optional: uint16 ScanNet *raw* category ids (0 = unlabelled)
    instance-filt/<i>.png         optional: instance ids (0 = none)

Colour and depth may differ in size (ScanNet: 1296x968 colour, 640x480 depth); labels and
instances are at colour resolution in ScanNet's 2D exports but any size is accepted.
:class:`RGBDSequence` takes other folder names, extensions and depth scales for generic sequences.
Poses with inf/NaN occur in real ScanNet: :meth:`RGBDSequence.valid_frames` skips and counts them,
and :meth:`RGBDSequence.check_frames` names them with the reason; finite but impossible poses (not a
proper rotation, last row not ``[0, 0, 0, 1]``, more than ``MAX_TRANSLATION`` metres from the origin)
are skipped the same way (:func:`pose_problem`).

Pixel centres: ffsplat puts the centre of the first pixel at ``(0.5, 0.5)``. ScanNet's (and
OpenCV's) calibrations put it at ``(0, 0)``. ``intrinsic/pixel_center.txt`` (one number, 0 or 0.5;
written by ``export_sens``) or :attr:`RGBDSequence.pixel_center` says which convention a folder's
intrinsics files use; ``0`` shifts the principal point by +0.5 px at ingest.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ffsplat.core.atomic import atomic_open


MAX_TRANSLATION = 1000.0
"""Camera positions farther than this (metres) from the origin are refused as impossible poses."""
ROTATION_TOLERANCE = 1e-2
"""Largest allowed ``|R^T R - I|`` entry of a pose's rotation part."""
PIXEL_CENTER_FILE = "intrinsic/pixel_center.txt"


def pose_problem(c2w: np.ndarray, max_translation: float = MAX_TRANSLATION) -> str | None:
    """Why ``c2w`` ``[4, 4]`` is not a usable camera-to-world pose, or None if it is.

    A pose must be finite, have a proper rotation (orthonormal within ``ROTATION_TOLERANCE``,
    determinant +1: no reflection, no scale, not all zero), last row ``[0, 0, 0, 1]`` and a position
    within ``max_translation`` metres of the origin.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape != (4, 4):
        return f"shape {c2w.shape}, expected (4, 4)"
    if not np.isfinite(c2w).all():
        return "inf/NaN in the pose"
    rot = c2w[:3, :3]
    if np.abs(rot.T @ rot - np.eye(3)).max() > ROTATION_TOLERANCE:
        return "rotation part is not orthonormal (zero, scaled or sheared)"
    if np.linalg.det(rot) <= 0:
        return "rotation part is a reflection (determinant < 0)"
    if np.abs(c2w[3] - [0, 0, 0, 1]).max() > 1e-6:
        return "last row is not [0, 0, 0, 1]"
    distance = float(np.linalg.norm(c2w[:3, 3]))
    if distance > max_translation:
        return f"camera {distance:.3g} m from the origin (more than {max_translation:g} m)"
    return None


@dataclass
class Frame:
    """One decoded frame at native resolution.

    Attributes:
        index: frame number in the sequence.
        color: ``[Hc, Wc, 3]`` uint8 RGB.
        depth: ``[Hd, Wd]`` float32 metres (0 = invalid).
        c2w: ``[4, 4]`` float64 camera-to-world.
        color_intrinsics, depth_intrinsics: ``[3, 3]`` float64 for the colour / depth images.
        labels: ``[Hl, Wl]`` raw ScanNet category ids (int32) or None.
        instances: ``[Hl, Wl]`` instance ids (int32) or None.
    """

    index: int
    color: np.ndarray
    depth: np.ndarray
    c2w: np.ndarray
    color_intrinsics: np.ndarray
    depth_intrinsics: np.ndarray
    labels: np.ndarray | None = None
    instances: np.ndarray | None = None


def read_matrix(path: Path, rows: int) -> np.ndarray:
    """Read a whitespace-separated matrix file; 4x4 intrinsics files are cut to ``rows`` x ``rows``."""
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot parse a matrix ({exc})") from exc
    if rows == 4 and values.shape != (4, 4):
        raise ValueError(f"{path}: expected a 4x4 camera-to-world matrix, got shape {values.shape}")
    if values.shape not in ((3, 3), (3, 4), (4, 4)):
        raise ValueError(f"{path}: expected 3x3 or 4x4 intrinsics, got shape {values.shape}")
    return values[:rows, :rows]


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to a numpy array, keeping 16-bit PNGs 16-bit."""
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I"):
                return np.asarray(im, dtype=np.uint16 if im.mode != "I" else np.int32).copy()
            return np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im).copy()
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


@dataclass
class RGBDSequence:
    """A posed RGB-D sequence on disk. Defaults are the exported-ScanNet layout.

    Attributes:
        root: scene folder.
        color_dir, depth_dir, pose_dir, label_dir, instance_dir: sub-folder names.
        color_ext, depth_ext: file extensions (frames are ``<int>.<ext>``).
        color_intrinsics_file, depth_intrinsics_file: paths relative to ``root``.
        depth_scale: stored depth units per metre (1000 for millimetres).
        pixel_center: where the intrinsics files put the centre of the first pixel: 0.5 (ffsplat's
            convention, used as is) or 0.0 (ScanNet / OpenCV calibrations: 0.5 is added to the
            principal point at ingest). ``intrinsic/pixel_center.txt`` in the folder overrides it.
        frame_range: ``(start, stop)``: only frame ids ``start <= id < stop`` (e.g. to hold out a
            contiguous tail of a sequence for evaluation); None uses every frame.
    """

    root: Path
    color_dir: str = "color"
    depth_dir: str = "depth"
    pose_dir: str = "pose"
    label_dir: str = "label-filt"
    instance_dir: str = "instance-filt"
    color_ext: str = "jpg"
    depth_ext: str = "png"
    color_intrinsics_file: str = "intrinsic/intrinsic_color.txt"
    depth_intrinsics_file: str = "intrinsic/intrinsic_depth.txt"
    depth_scale: float = 1000.0
    pixel_center: float = 0.5
    frame_range: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        for sub in (self.color_dir, self.depth_dir, self.pose_dir):
            if not (self.root / sub).is_dir():
                raise FileNotFoundError(f"RGB-D sequence {self.root}: missing folder {sub}/")
        marker = self.root / PIXEL_CENTER_FILE
        if marker.is_file():
            try:
                self.pixel_center = float(marker.read_text().split()[0])
            except (ValueError, IndexError) as exc:
                raise ValueError(f"{marker}: expected 0 or 0.5") from exc
        if self.pixel_center not in (0.0, 0.5):
            raise ValueError(f"RGB-D sequence {self.root}: pixel_center must be 0 or 0.5, got {self.pixel_center}")
        shift = np.array([[0, 0, 0.5 - self.pixel_center], [0, 0, 0.5 - self.pixel_center], [0, 0, 0]])
        self.color_intrinsics = read_matrix(self.root / self.color_intrinsics_file, 3) + shift
        depth_k = self.root / self.depth_intrinsics_file
        self.depth_intrinsics = read_matrix(depth_k, 3) + shift if depth_k.exists() else self.color_intrinsics

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def has_labels(self) -> bool:
        return (self.root / self.label_dir).is_dir()

    def frame_ids(self) -> list[int]:
        """Indices that have colour, depth and pose files, sorted."""

        def ids(sub: str, ext: str) -> set[int]:
            pattern = re.compile(rf"^(\d+)\.{re.escape(ext)}$")
            return {int(m.group(1)) for p in (self.root / sub).iterdir() if (m := pattern.match(p.name))}

        found = ids(self.color_dir, self.color_ext) & ids(self.depth_dir, self.depth_ext) & ids(self.pose_dir, "txt")
        if self.frame_range is not None:
            start, stop = self.frame_range
            found = {i for i in found if start <= i < stop}
        return sorted(found)

    def read_pose(self, index: int) -> np.ndarray:
        return read_matrix(self.root / self.pose_dir / f"{index}.txt", 4)

    def valid_frames(self) -> tuple[list[int], int]:
        """Frame ids with a usable pose (:func:`pose_problem`), and how many were skipped."""
        valid, skipped = self.check_frames()
        return valid, len(skipped)

    def check_frames(self) -> tuple[list[int], dict[int, str]]:
        """Frame ids with a usable pose, and ``{frame id: why it was skipped}`` for the others
        (inf/NaN, not a proper rotation, implausibly far, unreadable pose file)."""
        valid, skipped = [], {}
        for i in self.frame_ids():
            try:
                problem = pose_problem(self.read_pose(i))
            except ValueError as exc:
                problem = str(exc)
            if problem is None:
                valid.append(i)
            else:
                skipped[i] = problem
        return valid, skipped

    def read_frame(self, index: int, with_labels: bool = True) -> Frame:
        color = read_image(self.root / self.color_dir / f"{index}.{self.color_ext}")
        if color.ndim != 3 or color.shape[2] != 3:
            raise ValueError(
                f"{self.root / self.color_dir}/{index}.{self.color_ext}: expected an RGB image, got shape {color.shape}"
            )
        depth_raw = read_image(self.root / self.depth_dir / f"{index}.{self.depth_ext}")
        if depth_raw.ndim != 2:
            raise ValueError(
                f"{self.root / self.depth_dir}/{index}.{self.depth_ext}: expected a single-channel depth image"
            )
        labels = instances = None
        if with_labels and self.has_labels:
            labels = read_image(self.root / self.label_dir / f"{index}.png").astype(np.int32)
            inst_path = self.root / self.instance_dir / f"{index}.png"
            instances = read_image(inst_path).astype(np.int32) if inst_path.exists() else None
        return Frame(
            index=index,
            color=color,
            depth=depth_raw.astype(np.float32) / np.float32(self.depth_scale),
            c2w=self.read_pose(index),
            color_intrinsics=self.color_intrinsics,
            depth_intrinsics=self.depth_intrinsics,
            labels=labels,
            instances=instances,
        )


def png_bytes(array: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 (gray/RGB) or uint16 (gray) array."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")  # uint16 [H, W] becomes a 16-bit PNG
    return buf.getvalue()


def jpeg_bytes(rgb: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def write_matrix(path: Path, matrix: np.ndarray) -> None:
    text = "\n".join(" ".join(f"{v:.9f}" for v in row) for row in np.asarray(matrix, dtype=np.float64)) + "\n"
    write_bytes(path, text.encode())


def write_intrinsics(root: Path, color_k: np.ndarray, depth_k: np.ndarray | None = None) -> None:
    """Write ``intrinsic/intrinsic_{color,depth}.txt`` as 4x4 matrices (ScanNet's form)."""
    (root / "intrinsic").mkdir(parents=True, exist_ok=True)
    for name, k in (("color", color_k), ("depth", color_k if depth_k is None else depth_k)):
        k4 = np.eye(4)
        k4[:3, :3] = k
        write_matrix(root / "intrinsic" / f"intrinsic_{name}.txt", k4)


def write_frame(
    root: Path,
    index: int,
    color: np.ndarray,
    depth_m: np.ndarray,
    c2w: np.ndarray,
    labels_raw: np.ndarray | None = None,
    instances: np.ndarray | None = None,
    jpeg_quality: int = 95,
) -> None:
    """Write one frame in the exported layout (each file atomically).

    Args:
        color: ``[H, W, 3]`` uint8 RGB. depth_m: ``[H, W]`` metres (stored as uint16 mm).
        c2w: ``[4, 4]``. labels_raw: ``[H, W]`` ScanNet raw ids (uint16 PNG). instances: ``[H, W]``.
    """
    root = Path(root)
    for sub in (
        ("color", "depth", "pose")
        + (("label-filt",) if labels_raw is not None else ())
        + (("instance-filt",) if instances is not None else ())
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
    write_bytes(root / "color" / f"{index}.jpg", jpeg_bytes(color, jpeg_quality))
    depth_mm = np.clip(np.round(depth_m * 1000.0), 0, 65535).astype(np.uint16)
    write_bytes(root / "depth" / f"{index}.png", png_bytes(depth_mm))
    write_matrix(root / "pose" / f"{index}.txt", c2w)
    if labels_raw is not None:
        write_bytes(root / "label-filt" / f"{index}.png", png_bytes(labels_raw.astype(np.uint16)))
    if instances is not None:
        write_bytes(root / "instance-filt" / f"{index}.png", png_bytes(instances.astype(np.uint16)))
