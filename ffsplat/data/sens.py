"""ScanNet SensorData ``.sens`` files (version 4): streaming reader, writer and exporter.

This is the format of ScanNet's ``SensReader`` (``sensorData.h`` / ``SensorData.py``). Everything
is little-endian::

    header
        uint32   version                      must be 4
        uint64   n, then n bytes              sensor name
        float32  intrinsic_color [4, 4]       row-major, pixels
        float32  extrinsic_color [4, 4]
        float32  intrinsic_depth [4, 4]
        float32  extrinsic_depth [4, 4]
        int32    color_compression_type       -1 unknown, 0 raw, 1 png, 2 jpeg
        int32    depth_compression_type       -1 unknown, 0 raw_ushort, 1 zlib_ushort, 2 occi_ushort
        uint32   color_width, color_height, depth_width, depth_height
        float32  depth_shift                  stored depth value / depth_shift = metres
        uint64   num_frames
    num_frames x frame
        float32  camera_to_world [4, 4]       row-major, OpenCV axes (x right, y down, z forward)
        uint64   timestamp_color, timestamp_depth
        uint64   color_size_bytes, depth_size_bytes
        bytes    color, depth

ScanNet appends IMU data after the frames; it is ignored. Decoded colour is ``[Hc, Wc, 3]``
uint8 RGB and decoded depth ``[Hd, Wd]`` uint16. Some real ScanNet poses are inf/NaN:
:class:`SensReader` still yields those frames, and :func:`valid_pose` tells them apart.

:func:`export_sens` writes the exported-ScanNet folder layout (``color/<i>.jpg``,
``depth/<i>.png`` in millimetres, ``pose/<i>.txt``, ``intrinsic/*.txt``) and
:func:`folder_to_sens` turns such a folder back into a ``.sens`` file.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator

import numpy as np
from PIL import Image

from ffsplat.core.atomic import atomic_open
from ffsplat.data.sequence import (
    PIXEL_CENTER_FILE,
    jpeg_bytes,
    png_bytes,
    pose_problem,
    read_image,
    write_bytes,
    write_matrix,
)

COLOR_COMPRESSION = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
MAX_IMAGE_SIDE = 16384
MAX_SENSOR_NAME = 4096

_MATRICES = struct.Struct("<64f")  # intrinsic_color, extrinsic_color, intrinsic_depth, extrinsic_depth
_HEADER_TAIL = struct.Struct("<ii4IfQ")  # compressions, sizes, depth_shift, num_frames
_FRAME_HEAD = struct.Struct("<16f4Q")  # camera_to_world, timestamps, payload sizes


class SensError(ValueError):
    """A ``.sens`` file is malformed, truncated or uses an unsupported compression."""


@dataclass
class SensHeader:
    """The ``.sens`` header. Matrices are ``[4, 4]`` float64 (intrinsics in pixels); sizes in pixels;
    stored depth / ``depth_shift`` = metres (ScanNet: 1000). Compression codes are the ints of
    :data:`COLOR_COMPRESSION` / :data:`DEPTH_COMPRESSION`; the properties give their names.

    ``path`` is the file the header was read from (None for a header built in memory); it is
    only used in error messages.
    """

    sensor_name: str
    intrinsic_color: np.ndarray
    extrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray
    extrinsic_depth: np.ndarray
    color_compression_type: int
    depth_compression_type: int
    color_width: int
    color_height: int
    depth_width: int
    depth_height: int
    depth_shift: float
    num_frames: int
    version: int = 4
    path: Path | None = None

    @property
    def color_compression(self) -> str:
        return COLOR_COMPRESSION[self.color_compression_type]

    @property
    def depth_compression(self) -> str:
        return DEPTH_COMPRESSION[self.depth_compression_type]


@dataclass
class SensFrame:
    """One frame as stored: ``camera_to_world`` is ``[4, 4]`` float64 (OpenCV axes), payloads compressed."""

    index: int
    camera_to_world: np.ndarray
    timestamp_color: int
    timestamp_depth: int
    color_bytes: bytes = field(repr=False)
    depth_bytes: bytes = field(repr=False)

    def decode_color(self, header: SensHeader) -> np.ndarray:
        """``[color_height, color_width, 3]`` uint8 RGB."""
        shape = (header.color_height, header.color_width, 3)
        kind = header.color_compression
        if kind in ("jpeg", "png"):
            with Image.open(io.BytesIO(self.color_bytes)) as im:
                rgb = np.array(im.convert("RGB"))
        elif kind == "raw":
            rgb = np.frombuffer(self.color_bytes, np.uint8).copy()
        else:
            raise SensError(f"{header.path}: colour compression '{kind}' is not supported (raw, png, jpeg are)")
        return _shaped(rgb, shape, header, self.index, "colour")

    def decode_depth(self, header: SensHeader) -> np.ndarray:
        """``[depth_height, depth_width]`` uint16 as stored; metres = value / ``header.depth_shift``."""
        kind = header.depth_compression
        if kind == "zlib_ushort":
            try:
                raw = zlib.decompress(self.depth_bytes)
            except zlib.error as exc:
                raise SensError(f"{header.path}: frame {self.index}: bad zlib depth ({exc})") from exc
        elif kind == "raw_ushort":
            raw = self.depth_bytes
        else:
            raise SensError(f"{header.path}: depth compression '{kind}' is not supported (raw_ushort, zlib_ushort are)")
        if len(raw) % 2:
            raise SensError(f"{header.path}: frame {self.index}: depth has an odd byte count {len(raw)}")
        depth = np.frombuffer(raw, "<u2").astype(np.uint16)
        return _shaped(depth, (header.depth_height, header.depth_width), header, self.index, "depth")


def _shaped(array: np.ndarray, shape: tuple[int, ...], header: SensHeader, index: int, what: str) -> np.ndarray:
    if array.size != np.prod(shape) or (array.ndim > 1 and array.shape != shape):
        raise SensError(f"{header.path}: frame {index}: {what} has shape {array.shape}, header says {shape}")
    return array.reshape(shape)


def valid_pose(frame: SensFrame) -> bool:
    """True when the frame's camera-to-world matrix is a usable pose (ScanNet marks lost tracking with
    inf/NaN; zero, reflected or far-away matrices are refused too: :func:`ffsplat.data.sequence.pose_problem`)."""
    return pose_problem(frame.camera_to_world) is None


def _read_exact(f: IO[bytes], n: int, path: Path, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise SensError(f"{path}: file ends inside {what} (needed {n} bytes, got {len(data)})")
    return data


def _read_header(f: IO[bytes], path: Path, file_size: int) -> SensHeader:
    (version,) = struct.unpack("<I", _read_exact(f, 4, path, "the header"))
    if version != 4:
        raise SensError(f"{path}: not a version-4 .sens file (version field is {version}, expected 4)")
    (name_len,) = struct.unpack("<Q", _read_exact(f, 8, path, "the header"))
    if name_len > MAX_SENSOR_NAME:
        raise SensError(f"{path}: sensor name length {name_len} exceeds {MAX_SENSOR_NAME}; not a .sens file")
    name = _read_exact(f, name_len, path, "the header").decode("utf-8", errors="replace")
    mats = np.array(_MATRICES.unpack(_read_exact(f, _MATRICES.size, path, "the header")), np.float64).reshape(4, 4, 4)
    cc, dc, cw, ch, dw, dh, shift, n = _HEADER_TAIL.unpack(_read_exact(f, _HEADER_TAIL.size, path, "the header"))
    if cc not in COLOR_COMPRESSION or dc not in DEPTH_COMPRESSION:
        raise SensError(
            f"{path}: unknown compression codes (colour {cc}, depth {dc}); expected colour in "
            f"{sorted(COLOR_COMPRESSION)} and depth in {sorted(DEPTH_COMPRESSION)}"
        )
    if not all(0 < side <= MAX_IMAGE_SIDE for side in (cw, ch, dw, dh)):
        raise SensError(f"{path}: image sizes colour {cw}x{ch}, depth {dw}x{dh} must be in 1..{MAX_IMAGE_SIDE}")
    if not (np.isfinite(shift) and shift > 0):
        raise SensError(f"{path}: depth_shift {shift} must be finite and positive")
    if n * _FRAME_HEAD.size > file_size - f.tell():
        raise SensError(f"{path}: header declares {n} frames but only {file_size - f.tell()} bytes follow it")
    return SensHeader(name, *mats, cc, dc, cw, ch, dw, dh, float(shift), n, version, path)


class SensReader:
    """Streams the frames of a ``.sens`` file, one frame's bytes in memory at a time.

    The header is parsed (and validated) on construction; ``data_offset`` is where frame 0 starts.
    Iterating opens the file afresh, so a reader can be iterated several times.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.file_size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            self.header = _read_header(f, self.path, self.file_size)
            self.data_offset = f.tell()

    def __len__(self) -> int:
        return self.header.num_frames

    def __iter__(self) -> Iterator[SensFrame]:
        return self.frames()

    def frames(self, step: int = 1) -> Iterator[SensFrame]:
        """Yield frames ``0, step, 2 step, ...`` (payloads of the others are seeked over, not read).

        Raises :class:`SensError` naming the frame when the file ends inside it.
        """
        if step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        with open(self.path, "rb") as f:
            f.seek(self.data_offset)
            for i in range(self.header.num_frames):
                what = f"frame {i} of {self.header.num_frames}"
                *pose, t_color, t_depth, n_color, n_depth = _FRAME_HEAD.unpack(
                    _read_exact(f, _FRAME_HEAD.size, self.path, what)
                )
                left = self.file_size - f.tell()
                if n_color + n_depth > left:
                    raise SensError(
                        f"{self.path}: {what} declares {n_color} + {n_depth} payload bytes but only {left} remain "
                        "(truncated file?)"
                    )
                if i % step:
                    f.seek(n_color + n_depth, os.SEEK_CUR)
                    continue
                color = _read_exact(f, n_color, self.path, what)
                depth = _read_exact(f, n_depth, self.path, what)
                c2w = np.array(pose, np.float64).reshape(4, 4)
                yield SensFrame(i, c2w, t_color, t_depth, color, depth)

    def iter_valid(self, step: int = 1) -> Iterator[SensFrame]:
        """Like :meth:`frames` but without the frames whose pose is inf/NaN."""
        return (frame for frame in self.frames(step) if valid_pose(frame))


def _jpeg_type(data: bytes) -> tuple:
    """``((H, W, 3), uint8)`` for JPEG bytes (read from the JPEG header only), else the format found."""
    with Image.open(io.BytesIO(data)) as im:
        return ((im.height, im.width, 3), np.dtype(np.uint8)) if im.format == "JPEG" else (im.format, None)


def write_sens(
    path: str | os.PathLike,
    frames: Iterable[tuple[np.ndarray, np.ndarray | bytes, np.ndarray, int]],
    *,
    intrinsic_color: np.ndarray,
    intrinsic_depth: np.ndarray,
    color_hw: tuple[int, int],
    depth_hw: tuple[int, int],
    depth_shift: float = 1000.0,
    sensor_name: str = "ffsplat",
    extrinsic_color: np.ndarray | None = None,
    extrinsic_depth: np.ndarray | None = None,
    jpeg_quality: int = 95,
) -> int:
    """Write a version-4 ``.sens`` file (jpeg colour, zlib depth) atomically; return the frame count.

    ``frames`` yields ``(c2w, color, depth, timestamp)``: ``c2w`` ``[4, 4]`` camera-to-world (OpenCV
    axes; inf/NaN allowed), ``color`` ``[H, W, 3]`` uint8 RGB or already-encoded JPEG bytes,
    ``depth`` ``[h, w]`` uint16 (metres * ``depth_shift``), ``timestamp`` an integer used for both
    streams. ``color_hw``/``depth_hw`` are ``(H, W)``. Intrinsics may be 3x3 or 4x4 (padded with
    the identity); extrinsics default to the identity. Frames are streamed and the frame count is
    patched into the header at the end.
    """

    def mat4(m: np.ndarray | None) -> np.ndarray:
        out = np.eye(4)
        if m is not None:
            m = np.asarray(m, np.float64)
            out[: m.shape[0], : m.shape[1]] = m
        return out

    (ch, cw), (dh, dw) = color_hw, depth_hw
    mats = np.stack([mat4(intrinsic_color), mat4(extrinsic_color), mat4(intrinsic_depth), mat4(extrinsic_depth)])
    name = sensor_name.encode()
    n = 0
    with atomic_open(path, "wb") as f:
        f.write(struct.pack("<IQ", 4, len(name)) + name + _MATRICES.pack(*mats.ravel()))
        f.write(_HEADER_TAIL.pack(2, 1, cw, ch, dw, dh, depth_shift, 0))
        count_at = f.tell() - 8  # num_frames, patched below
        for c2w, color, depth, timestamp in frames:
            c2w, depth = np.asarray(c2w, np.float64), np.asarray(depth)
            if isinstance(color, bytes):
                jpeg, color_type = color, _jpeg_type(color)
            else:
                jpeg, color_type = None, (np.shape(color), np.asarray(color).dtype)
            depth_type = (depth.shape, depth.dtype)
            if c2w.shape != (4, 4) or color_type != ((ch, cw, 3), np.uint8) or depth_type != ((dh, dw), np.uint16):
                raise ValueError(
                    f"{path}: frame {n}: expected c2w (4, 4), colour {(ch, cw, 3)} uint8 or JPEG, depth "
                    f"{(dh, dw)} uint16; got {c2w.shape}, {color_type}, {depth_type}"
                )
            if jpeg is None:
                jpeg = jpeg_bytes(color, jpeg_quality)
            packed_depth = zlib.compress(depth.astype("<u2").tobytes())
            f.write(_FRAME_HEAD.pack(*c2w.ravel(), timestamp, timestamp, len(jpeg), len(packed_depth)))
            f.write(jpeg)
            f.write(packed_depth)
            n += 1
        f.seek(count_at)
        f.write(struct.pack("<Q", n))
    return n


def export_sens(
    sens_path: str | os.PathLike, out_dir: str | os.PathLike, frame_skip: int = 1, pixel_center: float = 0.0
) -> dict:
    """Export a ``.sens`` file to the exported-ScanNet layout under ``out_dir``; return counts.

    Writes ``color/<i>.jpg`` (JPEG payloads copied byte for byte, others encoded at quality 95),
    ``depth/<i>.png`` (uint16 millimetres), ``pose/<i>.txt`` (4x4 camera-to-world) and
    ``intrinsic/{intrinsic,extrinsic}_{color,depth}.txt``. ``<i>`` is the frame's index in the
    ``.sens`` file; every ``frame_skip``-th frame is exported and those with unusable poses
    (inf/NaN, not a proper rotation, implausibly far: :func:`ffsplat.data.sequence.pose_problem`) are
    skipped. ``intrinsic/pixel_center.txt`` records ``pixel_center`` (default 0: ScanNet's
    calibration puts the first pixel centre at (0, 0); readers shift it to ffsplat's (0.5, 0.5)). Every file is written
    atomically. Returns ``{"frames": total frames in the file, "exported": n,
    "skipped_invalid_pose": k, "skipped_frames": {frame id: reason}}``.
    """
    reader = SensReader(sens_path)
    header = reader.header
    out = Path(out_dir)
    for sub in ("color", "depth", "pose", "intrinsic"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name in ("intrinsic_color", "intrinsic_depth", "extrinsic_color", "extrinsic_depth"):
        write_matrix(out / "intrinsic" / f"{name}.txt", getattr(header, name))
    write_bytes(out / PIXEL_CENTER_FILE, f"{pixel_center:g}\n".encode())
    exported = 0
    skipped: dict[int, str] = {}
    for frame in reader.frames(frame_skip):
        problem = pose_problem(frame.camera_to_world)
        if problem is not None:
            skipped[frame.index] = problem
            continue
        color = frame.color_bytes if header.color_compression == "jpeg" else jpeg_bytes(frame.decode_color(header), 95)
        depth = frame.decode_depth(header)
        if header.depth_shift != 1000.0:
            depth = np.clip(np.rint(depth * (1000.0 / header.depth_shift)), 0, 65535).astype(np.uint16)
        write_bytes(out / "color" / f"{frame.index}.jpg", color)
        write_bytes(out / "depth" / f"{frame.index}.png", png_bytes(depth))
        write_matrix(out / "pose" / f"{frame.index}.txt", frame.camera_to_world)
        exported += 1
    return {
        "frames": header.num_frames,
        "exported": exported,
        "skipped_invalid_pose": len(skipped),
        "skipped_frames": skipped,
    }


def folder_to_sens(scene_dir: str | os.PathLike, sens_path: str | os.PathLike) -> int:
    """Pack an exported-layout folder (see :func:`export_sens`) into a ``.sens`` file; return the frame count.

    Frames are the integer stems of ``color/*.jpg`` in numeric order, renumbered 0..n-1. JPEG
    colour is copied byte for byte; depth PNGs are taken as millimetres (``depth_shift`` 1000).
    Missing extrinsics files mean the identity. The layout has no timestamps, so 0 is written.
    """
    root = Path(scene_dir)

    def matrix(name: str, required: bool = True) -> np.ndarray | None:
        path = root / "intrinsic" / f"{name}.txt"
        return np.loadtxt(path, ndmin=2) if required or path.exists() else None

    indices = sorted(int(p.stem) for p in (root / "color").glob("*.jpg") if p.stem.isdigit())
    if not indices:
        raise FileNotFoundError(f"{root}: no color/<i>.jpg frames")

    def depth_png(i: int) -> np.ndarray:
        depth = read_image(root / "depth" / f"{i}.png")
        if depth.dtype != np.uint16 or depth.ndim != 2:
            raise ValueError(f"{root}: depth/{i}.png is missing or not a single-channel uint16 PNG")
        return depth

    def frames() -> Iterator[tuple[np.ndarray, bytes, np.ndarray, int]]:
        for i in indices:
            pose = np.loadtxt(root / "pose" / f"{i}.txt", ndmin=2)
            yield pose, (root / "color" / f"{i}.jpg").read_bytes(), depth_png(i), 0

    with Image.open(root / "color" / f"{indices[0]}.jpg") as im:
        color_hw = (im.height, im.width)
    return write_sens(
        sens_path,
        frames(),
        intrinsic_color=matrix("intrinsic_color"),
        intrinsic_depth=matrix("intrinsic_depth"),
        extrinsic_color=matrix("extrinsic_color", required=False),
        extrinsic_depth=matrix("extrinsic_depth", required=False),
        color_hw=color_hw,
        depth_hw=depth_png(indices[0]).shape,
        depth_shift=1000.0,
    )


EXPORT_MARKER = "export.json"
"""Written last into an exported scene folder: what it was exported from and what was skipped."""
_EXPORT_ENTRIES = {"color", "depth", "pose", "intrinsic", PIXEL_CENTER_FILE, EXPORT_MARKER}
"""Top-level names of an export folder (anything else in it is the user's)."""


def source_stamp(sens_path: str | os.PathLike, frame_skip: int, pixel_center: float) -> dict:
    """Provenance of an export: the ``.sens`` file (resolved path, size, mtime) and the settings."""
    path = Path(sens_path).resolve()
    st = path.stat()
    return {
        "path": str(path),
        "bytes": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "frame_skip": frame_skip,
        "pixel_center": pixel_center,
    }


def export_scene(
    sens_path: str | os.PathLike, out_root: str | os.PathLike, frame_skip: int = 1, pixel_center: float = 0.0
) -> dict:
    """Export ``sens_path`` to ``out_root/<file stem>/``, completely or not at all.

    The frames go to ``out_root/.<stem>.tmp/`` (removed on any failure, and when left by a killed
    run), which is renamed into place once :data:`EXPORT_MARKER` (``{"source": source_stamp,
    "stats": ...}``) is written into it. A scene whose marker matches the file's current size, mtime
    and the settings is skipped; one whose ``.sens`` changed is exported again and replaced.

    Returns the export stats plus ``"status"``: ``"exported"``, ``"re-exported (source changed)"``
    or ``"exists, skipped"``.
    """
    import shutil

    sens_path, out_root = Path(sens_path), Path(out_root)
    stem = sens_path.stem
    final, tmp = out_root / stem, out_root / f".{stem}.tmp"
    if Path(os.path.realpath(final)) in Path(os.path.realpath(sens_path)).parents:
        raise FileExistsError(
            f"{final} holds the input {sens_path}; exporting there could remove it: choose another output root"
        )
    stamp = source_stamp(sens_path, frame_skip, pixel_center)
    marker = final / EXPORT_MARKER
    status = "exported"
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        if old.get("source") == stamp:
            return {**old.get("stats", {}), "status": "exists, skipped"}
        status = "re-exported (source changed)"
        foreign = sorted(e.name for e in final.iterdir() if e.name not in _EXPORT_ENTRIES)
        if foreign:  # replacing the folder would delete them
            raise FileExistsError(
                f"{final} must be exported again (its .sens changed) but also holds files that are not the export's "
                f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); move them out or choose another output root"
            )
    elif final.exists():  # not an export of ours (those get the marker before they are renamed into place)
        raise FileExistsError(
            f"{final} exists and is not an export of ffsplat (no {EXPORT_MARKER}); it is left as it is: "
            "choose another output root"
        )
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted run
    out_root.mkdir(parents=True, exist_ok=True)
    try:
        stats = export_sens(sens_path, tmp, frame_skip, pixel_center)
        stats["skipped_frames"] = {int(k): v for k, v in stats["skipped_frames"].items()}
        with atomic_open(tmp / EXPORT_MARKER, "w") as f:
            json.dump({"source": stamp, "stats": stats}, f, indent=1)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old_dir = out_root / f".{stem}.old"
        shutil.rmtree(old_dir, ignore_errors=True)
        os.rename(final, old_dir)
        os.rename(tmp, final)
        shutil.rmtree(old_dir, ignore_errors=True)
    else:
        os.rename(tmp, final)
    return {**stats, "status": status}
