"""Synthetic-room configuration, class constants and the ScanNet raw ids written to ``label-filt``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ffsplat.data.labels import EVAL_CLASSES, RAW_TO_NYU40, SCANNET_RAW_IDS, SCENE_META, synthetic_label_map  # noqa: F401  (re-exported)

EVAL_TO_RAW = np.array([0] + [SCANNET_RAW_IDS[name] for name in EVAL_CLASSES], dtype=np.uint16)
"""Lookup table: 8-class label (0..8) -> ScanNet raw id (0 stays 0)."""

WALL, FLOOR, CEILING, CHAIR, TABLE, SOFA, BED, OTHER = range(1, 9)


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that shapes a synthetic scene. Ranges ``(lo, hi)`` are sampled uniformly per scene.

    Attributes:
        height, width: image size in pixels.
        frames: frames per scene.
        hfov_deg: horizontal field of view in degrees (square pixels, so the vertical one follows).
        room_x, room_y, room_z: room extent in metres along world x, y and the height z.
        chairs, tables, sofas, beds, others: inclusive range of the number of objects of each class
            (objects that do not fit are dropped, so a room may hold fewer).
        furniture_gap: minimum free space between the footprints of two objects (m).
        max_furniture_area: fraction of the floor that furniture footprints may cover at most.
        camera_height: range of camera-centre heights above the floor (m).
        wall_margin: minimum distance from a camera centre to walls, floor and ceiling (m).
        obstacle_margin: minimum distance from a camera centre to any furniture box (m).
        max_step: maximum camera translation between consecutive frames (m); each scene uses a
            constant step in ``[0.6, 1] * max_step``. 0.08 m is a hand-held scan at ~5 fps.
        max_turn_deg: maximum change of viewing direction between consecutive frames (degrees).
        max_roll_deg: amplitude of the slow, smooth roll about the optical axis (degrees).
        rot_jitter_deg: standard deviation of the per-frame hand-shake rotation (degrees).
        ambient: ambient light intensity.
        sun: intensity of the directional light (elevation 30..70 degrees, random azimuth).
        lamp: intensity of the point lamp hanging 0.25 m under the ceiling near the room centre
            (falloff ``1 / (1 + (d / 2 m)^2)``).
        jpeg_quality: quality of the written colour JPEGs.
    """

    height: int = 128
    width: int = 128
    frames: int = 60
    hfov_deg: float = 60.0
    room_x: tuple[float, float] = (3.5, 6.0)
    room_y: tuple[float, float] = (3.5, 6.0)
    room_z: tuple[float, float] = (2.4, 3.0)
    chairs: tuple[int, int] = (1, 4)
    tables: tuple[int, int] = (1, 2)
    sofas: tuple[int, int] = (0, 1)
    beds: tuple[int, int] = (0, 1)
    others: tuple[int, int] = (1, 3)
    furniture_gap: float = 0.3
    max_furniture_area: float = 0.4
    camera_height: tuple[float, float] = (1.2, 1.7)
    wall_margin: float = 0.4
    obstacle_margin: float = 0.3
    max_step: float = 0.08
    max_turn_deg: float = 5.0
    max_roll_deg: float = 4.0
    rot_jitter_deg: float = 0.3
    ambient: tuple[float, float] = (0.3, 0.4)
    sun: tuple[float, float] = (0.25, 0.45)
    lamp: tuple[float, float] = (0.25, 0.45)
    jpeg_quality: int = 95

    def intrinsics(self) -> np.ndarray:
        """``[3, 3]`` pixel intrinsics for ``(height, width)`` and ``hfov_deg``."""
        f = 0.5 * self.width / math.tan(math.radians(self.hfov_deg) / 2)
        return np.array([[f, 0, self.width / 2], [0, f, self.height / 2], [0, 0, 1]], dtype=np.float64)
