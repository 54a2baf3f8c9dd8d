"""Teacher feature statistics recorded at shard time, and the decode check that uses them.

Finite garbage in cached teacher features (values 1e5x the normal range: a broken teacher, a bit
flip in a float16 exponent, a bad cache) passes the shape, dtype and finiteness checks of
:func:`ffsplat.data.clip.decode_clip`. So :mod:`ffsplat.data.shard_writer` records, per teacher,
the largest absolute value and the largest per-frame RMS it wrote (``manifest.json``
``"teacher_stats"``, each scene's in its ``.done`` marker), and the loaders skip-and-name (like a
corrupt member) a sample whose features exceed them by more than :data:`TOLERANCE`. Shards written
before these statistics existed are not checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

TOLERANCE = 4.0
"""A sample is refused when its largest absolute value or a frame's RMS exceeds the recorded
maximum by this factor (the recorded values are maxima over every sample written, so clean data never
exceeds them; garbage at 1e5x does by far)."""


def clip_stats(teacher: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``{name: {"max_abs", "max_rms"}}`` of one clip's ``[L, C, h, w]`` teacher features."""
    out = {}
    for name, feat in teacher.items():
        values = np.asarray(feat, dtype=np.float32).reshape(len(feat), -1)
        out[name] = {
            "max_abs": float(np.abs(values).max(initial=0.0)),
            "max_rms": float(np.sqrt((values * values).mean(axis=1)).max(initial=0.0)) if values.size else 0.0,
        }
    return out


def merge_stats(parts: Iterable[Mapping[str, Mapping[str, float]] | None]) -> dict[str, dict[str, float]]:
    """The element-wise maximum of several :func:`clip_stats` / merged results (None entries skipped)."""
    merged: dict[str, dict[str, float]] = {}
    for part in parts:
        for name, stats in (part or {}).items():
            entry = merged.setdefault(name, {"max_abs": 0.0, "max_rms": 0.0})
            for key in entry:
                entry[key] = max(entry[key], float(stats.get(key, 0.0)))
    return merged


class OutOfRangeFeatures(ValueError):
    """Teacher features far outside the recorded statistics; ``member`` names the sample's file."""

    def __init__(self, member: str, reason: str):
        super().__init__(reason)
        self.member = member


def check_teacher_stats(teacher: Mapping[str, np.ndarray], recorded: Mapping[str, Mapping[str, float]] | None) -> None:
    """Raise ValueError naming the teacher when a clip's features lie far outside ``recorded``
    (the manifest's ``"teacher_stats"``; None or a teacher without an entry: nothing to check)."""
    if not recorded:
        return
    for name, stats in clip_stats(teacher).items():
        bound = recorded.get(name)
        if not bound:
            continue
        for key, what in (("max_abs", "largest absolute value"), ("max_rms", "largest frame RMS")):
            limit = TOLERANCE * float(bound.get(key, 0.0))
            if limit > 0 and stats[key] > limit:
                raise OutOfRangeFeatures(
                    f"teacher.{name}.npy",
                    f"teacher features {name}: {what} {stats[key]:.4g} is far outside the range recorded when the "
                    f"shards were written ({float(bound[key]):.4g}; refused above {TOLERANCE:g}x): damaged or garbage features",
                )
