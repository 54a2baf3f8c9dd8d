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
=====================  ======================================================================

``<j>`` is the zero-padded position in the clip (``000``...). Everything but JPEG colour is
lossless, so decoding what :func:`encode_clip` wrote gives back the same arrays (colour: the
same as decoding the JPEG bytes).
"""

from __future__ import annotations

import io
import json
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

    def __len__(self) -> int:
        return len(self.frame_ids)


_PNG_FIELDS = {"depths": "depth", "labels": "label", "nyu40": "nyu40", "instances": "inst"}
"""Clip attribute -> per-frame PNG field name."""


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


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
    return sample


def _decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im).copy()


def decode_clip(sample: dict[str, bytes | str]) -> Clip:
    """Inverse of :func:`encode_clip`. Raises ``ValueError`` naming the sample key and the field."""
    key = sample.get("__key__", "?")
    try:
        meta = json.loads(sample["meta.json"])
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"format version {meta.get('version')}, expected {FORMAT_VERSION}")
        length = len(meta["frame_ids"])
        with np.load(io.BytesIO(sample["cameras.npz"])) as cams:
            intrinsics, extrinsics = cams["intrinsics"], cams["extrinsics"]

        def frames(name: str, ext: str, required: bool) -> np.ndarray | None:
            keys = [f"{name}.{j:03d}.{ext}" for j in range(length)]
            if not required and keys[0] not in sample:
                return None
            missing = [k for k in keys if k not in sample]
            if missing:
                raise ValueError(f"missing fields {missing[:3]}")
            arrays = [_decode_png(sample[k]) if ext == "png" else decode_rgb(sample[k]) for k in keys]
            return np.stack(arrays)

        images = frames("rgb", "jpg", True)
        clip = Clip(
            scene=meta["scene"],
            frame_ids=np.asarray(meta["frame_ids"], dtype=np.int64),
            images=images,
            depths=frames("depth", "png", True),
            intrinsics=intrinsics,
            extrinsics=extrinsics,
            near=float(meta["near"]),
            far=float(meta["far"]),
            labels=frames("label", "png", False),
            nyu40=frames("nyu40", "png", False),
            instances=frames("inst", "png", False),
            teacher={name: np.load(io.BytesIO(sample[f"teacher.{name}.npy"])) for name in meta["teacher"]},
        )
    except (KeyError, ValueError, OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"corrupt clip sample {key!r}: {type(exc).__name__}: {exc}") from exc
    expected = (length, meta["height"], meta["width"])
    if images.shape[:3] != expected or intrinsics.shape != (length, 3, 3) or extrinsics.shape != (length, 4, 4):
        raise ValueError(f"corrupt clip sample {key!r}: arrays do not match meta (L, H, W) = {expected}")
    return clip


def decode_rgb(data: bytes) -> np.ndarray:
    """JPEG (or any image) bytes -> ``[H, W, 3]`` uint8 RGB."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB")).copy()
