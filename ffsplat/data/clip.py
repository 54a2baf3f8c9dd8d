"""A clip: consecutive keyframes of one scene at the training resolution, and its shard encoding.

One webdataset sample holds one clip. Its files (``<key>.<field>``) are:

=====================  ======================================================================
``meta.json``          ``{"scene", "frame_ids", "near", "far", "height", "width", "version",
                       "teacher": {name: [C, h, w]}}``
``cameras.npz``        ``intrinsics`` ``[L, 3, 3]`` float64 (pixels, for ``height x width``,
                       pixel centres at +0.5) and ``extrinsics`` ``[L, 4, 4]`` float64
                       camera-to-world, OpenCV axes
``rgb.<j>.jpg``        frame ``j`` colour, ``[H, W, 3]`` uint8 RGB (JPEG)
``depth.<j>.png``      z-depth in millimetres, uint16 PNG (0 = no measurement)
``label.<j>.png``      8-class evaluation labels, uint8 PNG (0 = ignore)    [optional]
``nyu40.<j>.png``      nyu40 ids, uint8 PNG                                  [optional]
``inst.<j>.png``       instance ids, uint16 PNG (0 = none)                   [optional]
``teacher.<name>.npy`` cached teacher features ``[L, C, h, w]`` float16      [optional]
``masks.npz``          cached three-scale masks (``--teacher sam_masks``)   [optional]:
                       ``segments`` ``[L, 3, H, W]`` uint16 (uint32 beyond 65535 segments),
                       ``tables`` ``[L, 3, U, K]`` bool, ``counts`` ``[L, 3]`` int32 (see
                       :class:`~ffsplat.core.types.SegmentMasks`); meta ``"masks": [3, H, W]``
=====================  ======================================================================

``<j>`` is the zero-padded position in the clip (``000``...). Everything but JPEG colour is
lossless, so decoding what :func:`encode_clip` wrote gives back the same arrays (colour: the
same as decoding the JPEG bytes).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ffsplat.data.sequence import jpeg_bytes, png_bytes

FORMAT_VERSION = 1


@dataclass
class Clip:
    """``L`` keyframes of one scene, all ``H x W``.

    Attributes:
        scene: scene name.
        frame_ids: ``[L]`` int64 source frame numbers.
        images: ``[L, H, W, 3]`` uint8 RGB.
        depths: ``[L, H, W]`` uint16 millimetres (0 = unknown).
        intrinsics: ``[L, 3, 3]`` float64 pixel intrinsics.
        extrinsics: ``[L, 4, 4]`` float64 camera-to-world.
        near, far: depth range of the clip in metres.
        labels: ``[L, H, W]`` uint8 8-class labels, or None.
        nyu40: ``[L, H, W]`` uint8 nyu40 ids, or None.
        instances: ``[L, H, W]`` uint16 instance ids, or None.
        teacher: name -> ``[L, C, h, w]`` float16 features.
        masks: cached three-scale masks ``{"segments": [L, 3, H, W] uint16/uint32, "tables":
            [L, 3, U, K] bool, "counts": [L, 3] int32}`` at ``H x W`` (the
            :class:`~ffsplat.core.types.SegmentMasks` layout), or None.
    """

    scene: str
    frame_ids: np.ndarray
    images: np.ndarray
    depths: np.ndarray
    intrinsics: np.ndarray
    extrinsics: np.ndarray
    near: float
    far: float
    labels: np.ndarray | None = None
    nyu40: np.ndarray | None = None
    instances: np.ndarray | None = None
    teacher: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.frame_ids)


_PNG_FIELDS = {"depths": "depth", "labels": "label", "nyu40": "nyu40", "instances": "inst"}
"""Clip attribute -> per-frame PNG field name."""


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


MASK_MEMBERS = ("segments", "tables", "counts")


def masks_to_numpy(segments, tables, counts) -> dict[str, np.ndarray]:
    """``SegmentMasks`` arrays -> the stored arrays (the smallest segment-id dtype that fits)."""
    segments, tables, counts = (np.asarray(a) for a in (segments, tables, counts))
    dtype = np.uint16 if tables.shape[-2] <= 65536 else np.uint32
    return {"segments": segments.astype(dtype), "tables": tables.astype(bool), "counts": counts.astype(np.int32)}


def stack_masks(items: list[dict[str, np.ndarray]], positions: list[int]) -> dict[str, np.ndarray]:
    """Frames ``positions[i]`` of ``items[i]`` stacked into one ``[len, ...]`` mask dict (tables padded)."""
    u = max(m["tables"].shape[-2] for m in items)
    k = max(m["tables"].shape[-1] for m in items)
    tables = [
        np.pad(m["tables"][p], ((0, 0), (0, u - m["tables"].shape[-2]), (0, k - m["tables"].shape[-1])))
        for m, p in zip(items, positions)
    ]
    return masks_to_numpy(
        np.stack([m["segments"][p] for m, p in zip(items, positions)]),
        np.stack(tables),
        np.stack([m["counts"][p] for m, p in zip(items, positions)]),
    )


def check_masks(masks: dict[str, np.ndarray], length: int, height: int, width: int) -> None:
    """Raise ``ValueError`` unless ``masks`` is a valid :class:`Clip` mask dict for ``length`` frames of ``height x width``."""
    if set(masks) != set(MASK_MEMBERS):
        raise ValueError(f"mask arrays {sorted(masks)}, expected {sorted(MASK_MEMBERS)}")
    segments, tables, counts = masks["segments"], masks["tables"], masks["counts"]
    if segments.dtype not in (np.uint16, np.uint32):
        raise ValueError(f"mask segments have dtype {segments.dtype}, expected uint16 or uint32")
    _check_array(segments, (length, 3, height, width), segments.dtype, "mask segments", finite=False)
    if tables.ndim != 4:
        raise ValueError(f"mask tables have shape {tuple(tables.shape)}, expected [L, 3, U, K]")
    _check_array(tables, (length, 3, *tables.shape[2:]), bool, "mask tables", finite=False)
    _check_array(counts, (length, 3), np.int32, "mask counts", finite=False)
    u, k = tables.shape[2:]
    if u < 1 or (segments.size and int(segments.max()) >= u):
        raise ValueError(
            f"mask segments name ids up to {int(segments.max()) if segments.size else -1}, table has {u} rows"
        )
    if tables[:, :, 0].any():
        raise ValueError("mask tables: row 0 (pixels no mask covers) must be empty")
    if (counts < 0).any() or (counts > k).any():
        raise ValueError(f"mask counts must lie in [0, {k}], got {counts.min()}..{counts.max()}")
    if (tables & (np.arange(k) >= counts[..., None, None])).any():
        raise ValueError("mask tables have members beyond the scale's mask count")


def encode_clip(clip: Clip, key: str, jpeg_quality: int = 95) -> dict[str, bytes | str]:
    """Webdataset sample (``{"__key__": key, field: bytes}``) for a clip."""
    length, height, width = clip.images.shape[:3]
    meta = {
        "version": FORMAT_VERSION,
        "scene": clip.scene,
        "frame_ids": [int(i) for i in clip.frame_ids],
        "near": float(clip.near),
        "far": float(clip.far),
        "height": height,
        "width": width,
        "teacher": {name: list(feat.shape[1:]) for name, feat in clip.teacher.items()},
    }
    if clip.masks is not None:
        meta["masks"] = list(clip.masks["segments"].shape[1:])
    sample: dict[str, bytes | str] = {"__key__": key, "meta.json": json.dumps(meta).encode()}
    buf = io.BytesIO()
    np.savez(buf, intrinsics=clip.intrinsics.astype(np.float64), extrinsics=clip.extrinsics.astype(np.float64))
    sample["cameras.npz"] = buf.getvalue()
    for j in range(length):
        sample[f"rgb.{j:03d}.jpg"] = jpeg_bytes(clip.images[j], jpeg_quality)
        for attr, name in _PNG_FIELDS.items():
            array = getattr(clip, attr)
            if array is not None:
                sample[f"{name}.{j:03d}.png"] = png_bytes(array[j])
    for name, feat in clip.teacher.items():
        sample[f"teacher.{name}.npy"] = _npy_bytes(feat.astype(np.float16))
    if clip.masks is not None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **masks_to_numpy(*(clip.masks[k] for k in MASK_MEMBERS)))
        sample["masks.npz"] = buf.getvalue()
    return sample


def _decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im).copy()


_DTYPES = {"depths": np.uint16, "labels": np.uint8, "nyu40": np.uint8, "instances": np.uint16}
"""Clip attribute -> the dtype its decoded PNGs must have."""


def clip_frame_ids(sample: dict[str, bytes | str]) -> list[int]:
    """A clip sample's keyframe ids, from its ``meta.json`` alone (no image is decoded).

    Raises :class:`ClipDecodeError` (a ``ValueError``) naming the key if the meta is unreadable."""
    key = sample.get("__key__", "?")
    try:
        meta = json.loads(sample["meta.json"])
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"format version {meta.get('version')}, expected {FORMAT_VERSION}")
        return [int(i) for i in meta["frame_ids"]]
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ClipDecodeError(key, "meta.json", f"{type(exc).__name__}: {exc}") from exc


def clip_length(sample: dict[str, bytes | str]) -> int:
    """Number of keyframes in a clip sample, from its ``meta.json`` alone (see :func:`clip_frame_ids`)."""
    return len(clip_frame_ids(sample))


def _load_npy_frames(data: bytes, frames: np.ndarray | None) -> np.ndarray:
    """A ``.npy`` array, or only its leading-axis entries ``frames`` (read from the bytes, the rest untouched)."""
    if frames is None:
        return np.load(io.BytesIO(data), allow_pickle=False)
    buf = io.BytesIO(data)
    version = np.lib.format.read_magic(buf)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
    else:
        raise ValueError(f".npy format version {version} not supported")
    if dtype.hasobject or fortran or not shape:
        raise ValueError(f".npy array with dtype {dtype}, shape {shape} (fortran order {fortran}) cannot be sliced")
    offset, row = buf.tell(), int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    if len(data) - offset != row * shape[0]:
        raise ValueError(f".npy data holds {len(data) - offset} bytes, header says {row * shape[0]}")
    if len(frames) and (frames.min() < 0 or frames.max() >= shape[0]):
        raise ValueError(f"frames {frames.tolist()} outside the array's {shape[0]} entries")
    rows = [np.frombuffer(data, dtype, row // dtype.itemsize, offset + int(i) * row) for i in frames]
    return np.stack(rows).reshape(len(frames), *shape[1:]) if rows else np.empty((0, *shape[1:]), dtype)


def decode_clip(sample: dict[str, bytes | str], positions: np.ndarray | list[int] | None = None) -> Clip:
    """Inverse of :func:`encode_clip`, verifying every member on decode.

    Checked: the JSON, the ``cameras.npz`` archive (a damaged zip is caught), every image decodes,
    arrays have the shape and dtype the meta and the format declare, cameras, near/far and teacher
    features are finite. Raises ``ValueError`` naming the sample key and the member.

    With ``positions`` (distinct clip positions, in the order wanted), only those frames' members are
    decoded and checked (images, depths, labels, teacher rows, masks) and the returned clip holds those
    frames only, in that order: ``decode_clip(s, p)`` equals ``decode_clip(s)`` indexed at ``p`` at a
    fraction of the cost when ``p`` is a few of the clip's frames.
    """
    key = sample.get("__key__", "?")
    member = "meta.json"
    try:
        meta = json.loads(sample["meta.json"])
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"format version {meta.get('version')}, expected {FORMAT_VERSION}")
        full, height, width = len(meta["frame_ids"]), int(meta["height"]), int(meta["width"])
        pick = None if positions is None else np.asarray(positions, dtype=np.int64).reshape(-1)
        if pick is not None and (len(np.unique(pick)) != len(pick) or (pick < 0).any() or (pick >= full).any()):
            raise ValueError(f"positions {pick.tolist()} must be distinct positions in [0, {full})")
        order = np.arange(full) if pick is None else pick
        length = len(order)
        member = "cameras.npz"
        with np.load(io.BytesIO(sample["cameras.npz"]), allow_pickle=False) as cams:
            intrinsics, extrinsics = cams["intrinsics"], cams["extrinsics"]
        for name, array, shape in (
            ("intrinsics", intrinsics, (full, 3, 3)),
            ("extrinsics", extrinsics, (full, 4, 4)),
        ):
            _check_array(array, shape, np.float64, name)
        intrinsics, extrinsics = intrinsics[order], extrinsics[order]

        def frames(name: str, ext: str, required: bool, dtype=None) -> np.ndarray | None:
            nonlocal member
            keys = [f"{name}.{j:03d}.{ext}" for j in order]
            if not required and keys[0] not in sample:
                return None
            missing = [k for k in keys if k not in sample]
            if missing:
                member = missing[0]
                raise ValueError(f"missing fields {missing[:3]}")
            arrays = []
            for k in keys:
                member = k
                array = _decode_png(sample[k]) if ext == "png" else decode_rgb(sample[k])
                shape = (height, width, 3) if ext == "jpg" else (height, width)
                _check_array(array, shape, dtype or np.uint8, "image", finite=False)
                arrays.append(array)
            return np.stack(arrays)

        images = frames("rgb", "jpg", True)
        member = "meta.json"
        near, far = float(meta["near"]), float(meta["far"])
        if not (np.isfinite(near) and np.isfinite(far) and 0 < near < far):
            raise ValueError(f"near/far must be finite with 0 < near < far, got {near}, {far}")
        teacher = {}
        for name, shape in meta["teacher"].items():
            member = f"teacher.{name}.npy"
            if pick is not None:  # the header must agree with the meta before rows are sliced out
                _check_array(_npy_header(sample[member]), (full, *shape), np.float16, "teacher features", finite=False)
            teacher[name] = _load_npy_frames(sample[member], pick)
            _check_array(teacher[name], (length, *shape), np.float16, "teacher features")
        masks = None
        if meta.get("masks") is not None:
            member = "masks.npz"
            if list(meta["masks"]) != [3, height, width]:
                raise ValueError(f"meta says masks {meta['masks']}, expected [3, {height}, {width}]")
            with np.load(io.BytesIO(sample[member]), allow_pickle=False) as archive:
                masks = {k: archive[k] for k in archive.files}
            check_masks(masks, full, height, width)
            masks = {k: v[order] for k, v in masks.items()}
        clip = Clip(
            scene=meta["scene"],
            frame_ids=np.asarray(meta["frame_ids"], dtype=np.int64)[order],
            images=images,
            depths=frames("depth", "png", True, _DTYPES["depths"]),
            intrinsics=intrinsics,
            extrinsics=extrinsics,
            near=near,
            far=far,
            labels=frames("label", "png", False, _DTYPES["labels"]),
            nyu40=frames("nyu40", "png", False, _DTYPES["nyu40"]),
            instances=frames("inst", "png", False, _DTYPES["instances"]),
            teacher=teacher,
            masks=masks,
        )
    except (KeyError, ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise ClipDecodeError(key, member, f"{type(exc).__name__}: {exc}") from exc
    return clip


class _Header:
    """Shape and dtype of a ``.npy`` array read from its header alone (for :func:`_check_array`)."""

    def __init__(self, shape: tuple, dtype: np.dtype):
        self.shape, self.dtype = shape, dtype


def _npy_header(data: bytes) -> _Header:
    buf = io.BytesIO(data)
    version = np.lib.format.read_magic(buf)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(buf)
    return _Header(tuple(shape), dtype)


class ClipDecodeError(ValueError):
    """A sample that fails verification; names the sample ``key`` and the ``member`` (file in the sample)."""

    def __init__(self, key: str, member: str, reason: str):
        super().__init__(f"corrupt clip sample {key!r}, member {member}: {reason}")
        self.key, self.member, self.reason = key, member, reason


def _check_array(array: np.ndarray, shape: tuple, dtype, what: str, finite: bool = True) -> None:
    if array.dtype != np.dtype(dtype):
        raise ValueError(f"{what} have dtype {array.dtype}, expected {np.dtype(dtype)}")
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{what} have shape {tuple(array.shape)}, expected {tuple(shape)}")
    if finite and not np.isfinite(array).all():
        raise ValueError(f"{what} contain NaN or inf")


def decode_rgb(data: bytes) -> np.ndarray:
    """JPEG (or any image) bytes -> ``[H, W, 3]`` uint8 RGB."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB")).copy()
