"""Whole scenes: room + camera path from a seed, frame iteration, and the writer of the exported-ScanNet layout."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ffsplat.core.atomic import atomic_open
from ffsplat.data.labels import EVAL_CLASSES
from ffsplat.data.sequence import write_frame, write_intrinsics
from ffsplat.synthetic.camera_path import camera_path
from ffsplat.synthetic.config import CHAIR, EVAL_TO_RAW, OTHER, SCANNET_RAW_IDS, SCENE_META, SyntheticConfig
from ffsplat.synthetic.layout import Room, generate_room
from ffsplat.synthetic.raycast import render_frame


def make_scene(seed: int, config: SyntheticConfig | None = None) -> tuple[Room, np.ndarray, np.ndarray]:
    """Room, poses ``[F, 4, 4]`` and intrinsics ``[3, 3]`` of scene ``seed`` (deterministic).

    A room in which no valid camera path exists is re-sampled (from the same random stream).
    """
    config = config or SyntheticConfig()
    rng = np.random.default_rng(seed)
    for _ in range(20):
        room = generate_room(rng, config)
        try:
            return room, camera_path(room, config, rng), config.intrinsics()
        except RuntimeError:
            continue
    raise RuntimeError(f"make_scene: seed {seed} gives no room with a valid camera path; loosen the config")


def render_scene(seed: int, config: SyntheticConfig | None = None):
    """Yield ``(c2w, rgb, depth, labels, instances)`` per frame of scene ``seed`` (see :func:`render_frame`)."""
    config = config or SyntheticConfig()
    room, poses, K = make_scene(seed, config)
    for c2w in poses:
        yield (c2w, *render_frame(room, c2w, K, config.height, config.width))


def write_synthetic_scene(
    out_dir: str | Path, seed: int, config: SyntheticConfig | None = None, sens: bool = False, name: str | None = None
) -> dict:
    """Render scene ``seed`` into ``out_dir`` in the exported-ScanNet layout; same seed, same bytes.

    Writes ``color/<i>.jpg``, ``depth/<i>.png`` (uint16 mm), ``pose/<i>.txt`` (c2w),
    ``intrinsic/intrinsic_{color,depth}.txt``, ``label-filt/<i>.png`` (ScanNet raw ids,
    :data:`SCANNET_RAW_IDS`), ``instance-filt/<i>.png`` and, last, ``synthetic.json`` (seed, config,
    room size, objects). With ``sens=True`` it also packs the folder into ``out_dir/<name>.sens``
    (ScanNet's ``scans/<scene>/<scene>.sens`` place) with :func:`ffsplat.data.sens.folder_to_sens`.
    ``name`` (default ``out_dir``'s name) names the scene in the stats and the ``.sens`` file, so a
    scene can be written into a temporary folder and renamed into place.

    Returns:
        stats: ``name``, ``seed``, ``frames``, ``boxes``, ``objects`` (count per class name),
        ``path_length_m``, ``pixel_fraction`` (per class name, over all frames), ``sens`` (path or None).
    """
    config = config or SyntheticConfig()
    out_dir = Path(out_dir)
    name = name or out_dir.name
    out_dir.mkdir(parents=True, exist_ok=True)
    room, poses, K = make_scene(seed, config)
    counts = np.zeros(len(EVAL_CLASSES) + 1, dtype=np.int64)
    for i, c2w in enumerate(poses):
        rgb, depth, labels, instances = render_frame(room, c2w, K, config.height, config.width)
        write_frame(out_dir, i, rgb, depth, c2w, EVAL_TO_RAW[labels], instances, jpeg_quality=config.jpeg_quality)
        counts += np.bincount(labels.ravel(), minlength=len(counts))
    write_intrinsics(out_dir, K, K)
    stats = {
        "name": name,
        "seed": int(seed),
        "frames": len(poses),
        "boxes": len(room.lo),
        "objects": {EVAL_CLASSES[c - 1]: int((room.object_class == c).sum()) for c in range(CHAIR, OTHER + 1)},
        "path_length_m": round(float(np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=-1).sum()), 4),
        "pixel_fraction": {cls: round(float(counts[i + 1] / counts.sum()), 4) for i, cls in enumerate(EVAL_CLASSES)},
        "sens": None,
    }
    meta = {
        "seed": int(seed),
        "config": asdict(config),
        "room_size": room.size.round(6).tolist(),
        "objects": [
            {"class": EVAL_CLASSES[c - 1], "instance": int(i), "lo": lo.round(6).tolist(), "hi": hi.round(6).tolist()}
            for c, i, lo, hi in zip(room.object_class, room.object_instance, room.object_lo, room.object_hi)
        ],
        "scannet_raw_ids": SCANNET_RAW_IDS,
        "stats": {k: v for k, v in stats.items() if k not in ("name", "sens")},
    }
    if sens:
        from ffsplat.data.sens import folder_to_sens  # lazy: optional dependency of this module

        sens_path = out_dir / f"{name}.sens"
        folder_to_sens(out_dir, sens_path)
        stats["sens"] = str(sens_path)
    with atomic_open(out_dir / SCENE_META) as f:
        f.write((json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
    return stats
