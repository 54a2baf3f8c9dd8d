"""RGB-D sequences -> webdataset shards of clips, in parallel over scenes, resumable.

Per scene: valid frames (finite poses) -> keyframes (pose change) -> resized + centre-cropped
frames at ``size`` with updated intrinsics; depth, labels and instances resampled by nearest
neighbour into the colour camera -> clips of ``clip_length`` keyframes -> shards
``<out>/<split>/<scene>-<k>.tar`` of at most ``max_shard_bytes``. Each shard is written to a
temporary file and renamed, then a per-scene marker ``<out>/<split>/.done/<scene>.json`` records
the scene's shards, the settings they were built with (:func:`shard_settings`), what they were built
from (:func:`scene_source`: frame count, and the ``.sens`` file's size/mtime when the scene was
exported by ``export_sens``) and the frames skipped for unusable poses (ids and why). Re-running
skips a scene whose marker matches; a scene whose source changed is rebuilt (its old shards
removed); a run with other settings than the shards already in ``out`` is refused
(:class:`ShardSettingsError`) unless ``overwrite`` removes the old shards first, so shards of two
settings never mix. Temporary files left by a killed run are removed at the start of the next, and
worker processes die with the parent. ``manifest.json`` lists every shard with its sample and
frame counts, size and SHA-256, per split, and every scene's settings and source.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import webdataset as wds

from ffsplat.core.atomic import atomic_open
from torch import nn

from ffsplat.data.clip import Clip, decode_rgb, encode_clip
from ffsplat.data.image_ops import resample_nearest, resize_and_center_crop, scaled_intrinsics
from ffsplat.data.labels import LabelMap, NYU40_TO_EVAL
from ffsplat.data.sequence import Frame, RGBDSequence, jpeg_bytes
from ffsplat.data.feature_stats import clip_stats, merge_stats
from ffsplat.teachers.features import clip_teacher_features, clip_teacher_masks, load_teachers


@dataclass
class ShardConfig:
    """How sequences become shards.

    Attributes:
        size: output images are ``size x size`` (scale to cover, then centre crop).
        clip_length: keyframes per clip (one webdataset sample).
        clip_stride: keyframes between clip starts (default ``clip_length``: no overlap).
        min_clip_length: a scene's last, shorter clip is kept if it has at least this many frames.
        frame_skip: only every ``frame_skip``-th valid frame is a keyframe candidate.
        keyframe_translation: a candidate becomes a keyframe when it moved this far (metres)...
        keyframe_rotation_deg: ...or turned this much (degrees) since the last keyframe...
        keyframe_max_gap: ...or this many source frames passed (so static cameras still sample).
        near_percentile, far_percentile: depth percentiles of a clip that set near / far...
        near_scale, far_scale: ...multiplied by these margins; near is at least ``min_near``.
        min_near: lower bound for near (metres).
        default_near, default_far: used when a clip has no valid depth.
        max_shard_bytes: start a new shard once a shard reaches this size.
        jpeg_quality: JPEG quality of the stored colour.
        teachers: teachers whose features are cached in the shards, ``{name: config kwargs}``
            (e.g. ``{"sam": {"checkpoint": "sam_vit_b_01ec64.pth"}, "label_lang": {}}``). A mask
            teacher (``sam_masks``: SAM's three-scale automatic masks) is cached as ``masks.npz``
            at the frame size ``size x size`` (see :mod:`ffsplat.data.clip`).
        teacher_size: cache every teacher's features at this ``(h, w)``; None keeps native grids
            (masks are always stored at the frame size).
        teacher_device: device the teachers run on while writing ("cuda" on a GPU node).
    """

    size: int = 256
    clip_length: int = 24
    clip_stride: int | None = None
    min_clip_length: int = 8
    frame_skip: int = 1
    keyframe_translation: float = 0.05
    keyframe_rotation_deg: float = 5.0
    keyframe_max_gap: int = 30
    near_percentile: float = 1.0
    far_percentile: float = 99.0
    near_scale: float = 0.8
    far_scale: float = 1.2
    min_near: float = 0.1
    default_near: float = 0.5
    default_far: float = 10.0
    max_shard_bytes: int = 256 * 2**20
    jpeg_quality: int = 95
    teachers: dict[str, dict] = field(default_factory=dict)
    teacher_size: tuple[int, int] | None = None
    teacher_device: str = "cpu"


SETTINGS_IGNORED = ("teacher_device", "max_shard_bytes")
"""ShardConfig fields that do not change what a shard holds (not compared on resume)."""


class ShardSettingsError(ValueError):
    """``out`` already holds shards built with other settings; the message names the fields."""


def shard_settings(cfg: ShardConfig) -> dict:
    """The settings that determine a shard's contents, JSON-normalised (compared on resume)."""
    return json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in SETTINGS_IGNORED}))


def scene_source(sequence: RGBDSequence) -> dict:
    """What a scene's shards are built from: its frame count, pixel-centre convention, and the
    ``export.json`` provenance (``.sens`` size/mtime) when ``export_sens`` made the folder."""
    from ffsplat.data.sens import EXPORT_MARKER

    source = {"frames": len(sequence.frame_ids()), "pixel_center": sequence.pixel_center}
    marker = sequence.root / EXPORT_MARKER
    if marker.is_file():
        try:
            source["export"] = json.loads(marker.read_text()).get("source")
        except (json.JSONDecodeError, UnicodeDecodeError):
            source["export"] = "unreadable export.json"
    return source


def select_keyframes(frame_ids: list[int], poses: np.ndarray, cfg: ShardConfig) -> list[int]:
    """Greedy keyframes: keep a frame when it moved, turned or waited enough since the last one.

    Args:
        frame_ids: ``[F]`` valid frame ids in order. poses: ``[F, 4, 4]`` camera-to-world.
    Returns:
        the chosen frame ids (the first frame is always one).
    """
    keep: list[int] = []
    last = None
    for position in range(0, len(frame_ids), cfg.frame_skip):
        pose = poses[position]
        if last is None:
            keep.append(frame_ids[position])
            last = (frame_ids[position], pose)
            continue
        moved = np.linalg.norm(pose[:3, 3] - last[1][:3, 3])
        cos = (np.trace(last[1][:3, :3].T @ pose[:3, :3]) - 1) / 2
        turned = math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))
        waited = frame_ids[position] - last[0]
        if moved >= cfg.keyframe_translation or turned >= cfg.keyframe_rotation_deg or waited >= cfg.keyframe_max_gap:
            keep.append(frame_ids[position])
            last = (frame_ids[position], pose)
    return keep


def prepare_frame(frame: Frame, size: int, label_map: LabelMap | None) -> dict[str, np.ndarray]:
    """Resize/crop one frame to ``size x size`` in the colour camera.

    Returns:
        ``rgb`` ``[S, S, 3]`` uint8, ``depth`` ``[S, S]`` uint16 mm, ``intrinsics`` ``[3, 3]``, and
        when labels exist ``label`` (8-class uint8), ``nyu40`` (uint8), ``inst`` (uint16).
    """
    out = (size, size)
    rgb, k = resize_and_center_crop(frame.color, frame.color_intrinsics, out)
    depth_mm = np.round(frame.depth * 1000.0).clip(0, 65535).astype(np.uint16)
    result = {"rgb": rgb, "intrinsics": k, "depth": resample_nearest(depth_mm, frame.depth_intrinsics, k, out)}
    if frame.labels is not None:
        if label_map is None:
            raise ValueError("scene has label-filt images: pass the ScanNet label map (scannetv2-labels.combined.tsv)")
        # Label images cover the colour camera's field of view at their own resolution.
        k_label = scaled_intrinsics(frame.color_intrinsics, frame.color.shape[:2], frame.labels.shape)
        nyu40 = resample_nearest(label_map.nyu40(frame.labels), k_label, k, out)
        result["nyu40"] = nyu40
        result["label"] = NYU40_TO_EVAL[nyu40]
        if frame.instances is not None:
            result["inst"] = resample_nearest(frame.instances.astype(np.uint16), k_label, k, out)
    return result


def clip_depth_range(depths_mm: np.ndarray, cfg: ShardConfig) -> tuple[float, float]:
    valid = depths_mm[depths_mm > 0].astype(np.float64) / 1000.0
    if valid.size == 0:
        return cfg.default_near, cfg.default_far
    near = max(cfg.min_near, cfg.near_scale * float(np.percentile(valid, cfg.near_percentile)))
    far = max(near * 1.5, cfg.far_scale * float(np.percentile(valid, cfg.far_percentile)))
    return near, far


def scene_clips(
    sequence: RGBDSequence, cfg: ShardConfig, label_map: LabelMap | None, teachers: dict[str, nn.Module] | None = None
) -> Iterator[Clip]:
    """Yield the clips of one scene (frames are read clip by clip: memory stays bounded)."""
    valid, _ = sequence.valid_frames()
    if not valid:
        return
    poses = np.stack([sequence.read_pose(i) for i in valid])
    keyframes = select_keyframes(valid, poses, cfg)
    stride = cfg.clip_stride or cfg.clip_length
    for start in range(0, len(keyframes), stride):
        ids = keyframes[start : start + cfg.clip_length]
        if len(ids) < cfg.min_clip_length:
            break
        frames = [prepare_frame(sequence.read_frame(i), cfg.size, label_map) for i in ids]
        stack = {k: np.stack([f[k] for f in frames]) for k in frames[0]}
        near, far = clip_depth_range(stack["depth"], cfg)
        clip = Clip(
            scene=sequence.name,
            frame_ids=np.asarray(ids, dtype=np.int64),
            images=stack["rgb"],
            depths=stack["depth"],
            intrinsics=stack["intrinsics"],
            extrinsics=np.stack([sequence.read_pose(i) for i in ids]),
            near=near,
            far=far,
            labels=stack.get("label"),
            nyu40=stack.get("nyu40"),
            instances=stack.get("inst"),
        )
        if teachers:
            # Teachers see what the loader will yield: the JPEG-decoded frames.
            decoded = np.stack([decode_rgb(jpeg_bytes(im, cfg.jpeg_quality)) for im in clip.images])
            clip.teacher = clip_teacher_features(teachers, decoded, clip.labels, clip.instances, cfg.teacher_size)
            clip.masks = clip_teacher_masks(teachers, decoded)  # at the frame size (exact), or None
        yield clip
        if start + cfg.clip_length >= len(keyframes):  # overlapping strides: no tail sub-clips
            break


class _ShardSink:
    """Writes samples into ``<prefix>-<k>.tar`` shards of bounded size, each atomically."""

    def __init__(self, out_dir: Path, prefix: str, max_bytes: int):
        self.out_dir, self.prefix, self.max_bytes = out_dir, prefix, max_bytes
        self.done: list[dict] = []
        self._open: tuple | None = None

    def add(self, sample: dict, frames: int) -> None:
        if self._open is None:
            path = self.out_dir / f"{self.prefix}-{len(self.done):04d}.tar"
            ctx = atomic_open(path, clean_stale=False)  # write_shards cleans the folder once per run
            stream = ctx.__enter__()
            self._open = (path, ctx, stream, wds.TarWriter(stream), [0, 0])
        path, ctx, stream, writer, counts = self._open
        writer.write(sample)
        counts[0] += 1
        counts[1] += frames
        if stream.tell() >= self.max_bytes:
            self.close()

    def close(self) -> None:
        if self._open is None:
            return
        path, ctx, stream, writer, counts = self._open
        self._open = None
        writer.close()  # flushes the tar end blocks; the stream stays open for atomic_open
        ctx.__exit__(None, None, None)
        self.done.append(
            {
                "path": path.name,
                "samples": counts[0],
                "frames": counts[1],
                "bytes": path.stat().st_size,
                "sha256": sha256(path),
            }
        )

    def abort(self, exc: BaseException) -> None:
        if self._open is not None:
            _, ctx, _, _, _ = self._open
            self._open = None
            ctx.__exit__(type(exc), exc, exc.__traceback__)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_scene(
    sequence: RGBDSequence,
    out_dir: Path,
    split: str,
    cfg: ShardConfig,
    label_map: LabelMap | None,
    teachers: dict[str, nn.Module] | None = None,
) -> dict:
    """Write one scene's shards and its done-marker. Returns the marker plus ``"status"``.

    Skipped (``status`` "skipped") when the marker's settings and source match; rebuilt ("rebuilt:
    source changed") when the source changed; the old shards are removed before the new are written.
    """
    split_dir = Path(out_dir) / split
    marker = split_dir / ".done" / f"{sequence.name}.json"
    settings, source = shard_settings(cfg), scene_source(sequence)
    status = "written"
    if marker.exists():
        old = _read_marker(marker)
        if old is not None and old.get("settings") == settings and old.get("source") == source:
            return {**old, "skipped": True, "status": "skipped"}
        _remove_scene(marker, old)
        status = "rebuilt: source changed" if old is not None and old.get("settings") == settings else "rebuilt"
    marker.parent.mkdir(parents=True, exist_ok=True)
    sink = _ShardSink(split_dir, sequence.name, cfg.max_shard_bytes)
    stats: list = []  # teacher feature statistics (ffsplat.data.feature_stats)
    try:
        for n, clip in enumerate(scene_clips(sequence, cfg, label_map, teachers)):
            sink.add(encode_clip(clip, f"{sequence.name}_{n:04d}", cfg.jpeg_quality), len(clip))
            stats.append(clip_stats({k: v.astype(np.float16) for k, v in clip.teacher.items()}))
        sink.close()
    except BaseException as exc:
        sink.abort(exc)
        raise
    _, skipped = sequence.check_frames()
    record = {
        "scene": sequence.name, "split": split, "shards": sink.done, "skipped_invalid_pose": len(skipped),
        "skipped_frames": {str(i): why for i, why in skipped.items()}, "settings": settings, "source": source,
        "teacher_stats": merge_stats(stats),
    }  # fmt: skip
    with atomic_open(marker, "w") as f:
        json.dump(record, f)
    return {**record, "skipped": False, "status": status}


def _read_marker(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None


def _remove_scene(marker: Path, record: dict | None) -> None:
    """Delete a scene's marker and the shards it lists (the marker first: never a marker without shards)."""
    marker.unlink(missing_ok=True)
    for shard in (record or {}).get("shards", []):
        (marker.parent.parent / shard["path"]).unlink(missing_ok=True)


def check_existing(out_dir: Path, cfg: ShardConfig, overwrite: bool = False) -> list[str]:
    """Refuse (or, with ``overwrite``, remove) shards in ``out_dir`` built with other settings.

    Returns the scenes removed. Raises :class:`ShardSettingsError` naming the scene and the fields.
    """
    settings = shard_settings(cfg)
    removed = []
    for marker in sorted(Path(out_dir).glob("*/.done/*.json")):
        record = _read_marker(marker)
        old = (record or {}).get("settings")
        if old == settings:
            continue
        if not overwrite:
            if old is None:
                why = "its marker records no settings (made by an older version) or is unreadable"
            else:
                diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                why = ", ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in diff[:4])
            raise ShardSettingsError(
                f"--out {out_dir} already holds shards of scene {marker.stem!r} built with other settings ({why}); "
                "use another --out, or --overwrite to rebuild them"
            )
        _remove_scene(marker, record)
        removed.append(marker.stem)
    return removed


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete ``.<name>.<pid>-<id>.tmp`` files that a killed run left in ``out_dir`` and its split folders."""
    from ffsplat.core.atomic import is_stale_temp

    stale = [
        p
        for pattern in (".*.tmp", "*/.*.tmp", "*/.done/.*.tmp")
        for p in Path(out_dir).glob(pattern)
        if p.is_file() and is_stale_temp(p)  # never a temporary file another running process is writing
    ]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _die_with_parent() -> None:
    """Pool initializer: the worker exits when the parent process dies (even by ``kill -9``)."""
    parent = os.getppid()
    try:  # Linux: the kernel sends SIGKILL when the parent dies
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # elsewhere (and as a fallback): poll the parent
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def scene_label_map(root: Path) -> LabelMap | None:
    """The label map a scene brings along without a TSV: synthetic rooms (``synthetic.json``) ship
    theirs (:func:`ffsplat.data.labels.synthetic_label_map`); other scenes have none."""
    from ffsplat.data.labels import SCENE_META, synthetic_label_map

    return synthetic_label_map() if (root / SCENE_META).is_file() else None


def _write_scene_job(args: tuple) -> dict:
    root, out_dir, split, cfg, tsv, sequence_kwargs = args
    label_map = LabelMap.from_tsv(tsv) if tsv else scene_label_map(Path(root))
    teachers = load_teachers(cfg.teachers, cfg.teacher_device) if cfg.teachers else None
    return write_scene(RGBDSequence(Path(root), **sequence_kwargs), Path(out_dir), split, cfg, label_map, teachers)


def write_shards(
    scenes: dict[str, list[Path]],
    out_dir: Path,
    cfg: ShardConfig,
    label_tsv: Path | None = None,
    workers: int = 1,
    progress: bool = True,
    sequence_kwargs: dict | None = None,
    overwrite: bool = False,
) -> dict:
    """Write shards for ``{split: [scene folders]}`` with ``workers`` processes; returns the manifest.

    Scenes whose done-marker matches are skipped (resume); see the module docstring for changed
    sources and settings (``overwrite``). The manifest is rebuilt from all markers and written
    atomically to ``<out_dir>/manifest.json``. ``sequence_kwargs`` are passed to
    :class:`RGBDSequence` (folder names, extensions, depth scale, pixel centre of generic sequences).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_existing(out_dir, cfg, overwrite)
    remove_stale_temporaries(out_dir)
    tsv = str(label_tsv) if label_tsv else None
    jobs = [
        (str(root), str(out_dir), split, cfg, tsv, sequence_kwargs or {})
        for split, roots in scenes.items()
        for root in roots
    ]
    results = []
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(workers, initializer=_die_with_parent) as pool:
            iterator = pool.imap_unordered(_write_scene_job, jobs)
            results = list(_progress(iterator, len(jobs), progress))
    else:
        results = list(_progress(map(_write_scene_job, jobs), len(jobs), progress))
    manifest = build_manifest(out_dir, cfg)
    manifest["run"] = {
        "scenes": len(results), "skipped_existing": sum(r["skipped"] for r in results),
        "rebuilt": sorted(r["scene"] for r in results if r.get("status", "").startswith("rebuilt")),
    }  # fmt: skip
    with atomic_open(out_dir / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def _progress(iterator, total: int, enabled: bool):
    if not enabled:
        yield from iterator
        return
    from tqdm import tqdm

    yield from tqdm(iterator, total=total, desc="scenes", unit="scene")


def build_manifest(out_dir: Path, cfg: ShardConfig) -> dict:
    """Collect every split's done-markers into one manifest dict."""
    splits: dict[str, dict] = {}
    scenes: dict[str, dict] = {}
    stats, unrecorded = [], False
    for marker in sorted(Path(out_dir).glob("*/.done/*.json")):
        record = json.loads(marker.read_text())
        stats.append(record.get("teacher_stats"))
        unrecorded |= "teacher_stats" not in record
        scenes[record["scene"]] = {k: record.get(k) for k in ("split", "settings", "source", "skipped_frames")}
        entry = splits.setdefault(
            record["split"], {"shards": [], "samples": 0, "frames": 0, "scenes": 0, "skipped_invalid_pose": 0}
        )
        for shard in record["shards"]:
            entry["shards"].append({**shard, "path": f"{record['split']}/{shard['path']}", "scene": record["scene"]})
            entry["samples"] += shard["samples"]
            entry["frames"] += shard["frames"]
        entry["scenes"] += 1
        entry["skipped_invalid_pose"] += record["skipped_invalid_pose"]
    return {
        "format": "ffsplat-clips", "version": 1, "config": asdict(cfg), "splits": splits, "scenes": scenes,
        "masks": cached_masks_entry(cfg),
        "teacher_stats": None if unrecorded else merge_stats(stats),  # None: a scene written before they were recorded
    }  # fmt: skip


def cached_masks_entry(cfg: ShardConfig) -> dict | None:
    """The manifest's ``"masks"`` entry: which teacher's three-scale masks the shards cache, its
    options and the resolution (the frame size), or None when none are cached."""
    from ffsplat.core.types import MASK_SCALES
    from ffsplat.teachers.base import mask_teacher_names

    names = sorted(set(cfg.teachers) & mask_teacher_names())
    if not names:
        return None
    return {"teacher": names[0], "options": cfg.teachers[names[0]], "resolution": [cfg.size, cfg.size],
            "scales": list(MASK_SCALES), "member": "masks.npz"}  # fmt: skip
