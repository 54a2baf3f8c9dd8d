"""Procedural indoor rooms rendered exactly by ray casting: for tests, learning benchmarks and a demo model.

A synthetic scene is a closed box-shaped room (floor, ceiling, four walls) furnished with chairs,
tables, sofas, beds and box-like "other" objects, all built from axis-aligned boxes, seen by a
hand-held-like camera path. Every frame is ray cast exactly (one ray per pixel centre, slab test
against every box), so depth, labels, instances and poses are exact and consistent across views.

Conventions (the same as the rest of ffsplat and ScanNet):

* World: z up, metres. The room interior is ``[0, X] x [0, Y] x [0, Z]``: floor at ``z = 0``,
  ceiling at ``z = Z``.
* Cameras: OpenCV axes (x right, y down, z forward), camera-to-world 4x4 poses, pixel intrinsics
  with the centre of pixel ``(u, v)`` at ``(u + 0.5, v + 0.5)``, square pixels, principal point at
  the image centre. Depth is z-depth (along the optical axis) in metres.
* Every box has an 8-class evaluation label (:data:`ffsplat.data.labels.EVAL_CLASSES`, 1..8) and an
  instance id (1..; each wall, the floor and the ceiling one each, each furniture object one shared
  by all its boxes; 0 = none, which never occurs because the room is closed).
* Colour is view-independent: a procedural albedo defined on 3D surface points (value noise at
  several scales, checkers, stripes; random per surface) times Lambertian shading from a
  directional "sun", a point lamp under the ceiling and ambient light. No shadows, no specular.

On disk a scene uses the exported-ScanNet layout of :mod:`ffsplat.data.sequence`; ``label-filt``
holds ScanNet *raw* category ids (:data:`SCANNET_RAW_IDS`), so reading it back exercises the real
raw -> nyu40 -> eval8 path of :class:`ffsplat.data.labels.LabelMap`.
"""

from __future__ import annotations

import colorsys
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ffsplat.core.atomic import atomic_open
from ffsplat.data.labels import EVAL_CLASSES
from ffsplat.data.sequence import write_frame, write_intrinsics

SCANNET_RAW_IDS = {"wall": 1, "floor": 3, "ceiling": 41, "chair": 2, "table": 4, "sofa": 6, "bed": 11, "other": 26}
"""Evaluation class name -> the ScanNet raw category id written to ``label-filt`` (ids of
``scannetv2-labels.combined.tsv``): wall 1 (nyu40 1), floor 3 (nyu40 2), ceiling 41 (nyu40 22),
chair 2 (nyu40 5), table 4 (nyu40 7), sofa 6 (raw "couch", nyu40 6), bed 11 (nyu40 4),
other 26 (raw "box", nyu40 29, which evaluates as "other")."""

EVAL_TO_RAW = np.array([0] + [SCANNET_RAW_IDS[name] for name in EVAL_CLASSES], dtype=np.uint16)
"""Lookup table: 8-class label (0..8) -> ScanNet raw id (0 stays 0)."""

WALL, FLOOR, CEILING, CHAIR, TABLE, SOFA, BED, OTHER = range(1, 9)
SCENE_META = "synthetic.json"
"""File in each scene folder holding the seed, the config and the room layout (written last)."""


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


# ----------------------------------------------------------------------------- materials
# Material parameter table columns (one row per material, float64).
_A, _B = slice(0, 3), slice(3, 6)  # the two colours the pattern blends between (linear albedo)
_F1, _F2, _W1, _W2, _WC, _WS, _FP, _ANG, _SHARP, _PH1, _PH2, _SEED, _GRAIN, _GAIN = range(6, 20)
_NUM_PARAMS = 20


def _hsv(h: float, s: float, v: float) -> list[float]:
    return list(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)))


def _random_material(rng: np.random.Generator, kind: str) -> np.ndarray:
    """One material row. ``kind``: ``"wall"``, ``"floor"``, ``"ceiling"`` or ``"furniture"``."""
    m = np.zeros(_NUM_PARAMS)
    hue = rng.uniform()
    if kind == "wall":
        sat, val, dval = rng.uniform(0.1, 0.4), rng.uniform(0.6, 0.85), rng.uniform(0.3, 0.45)
        weights = (rng.uniform(0.5, 1), rng.uniform(0.3, 0.6), 0.0, rng.uniform(0.0, 1.0))
    elif kind == "floor":
        hue = rng.choice([rng.uniform(0.05, 0.12), rng.uniform()])  # wood-like or any tint
        sat, val, dval = rng.uniform(0.2, 0.6), rng.uniform(0.45, 0.75), rng.uniform(0.3, 0.45)
        tiles = rng.uniform() < 0.5
        weights = (rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.6), 1.0 if tiles else 0.0, 0.0 if tiles else 1.0)
    elif kind == "ceiling":
        sat, val, dval = rng.uniform(0.0, 0.2), rng.uniform(0.7, 0.9), rng.uniform(0.25, 0.35)
        weights = (1.0, rng.uniform(0.3, 0.7), 0.0, 0.0)
    else:
        sat, val, dval = rng.uniform(0.3, 0.8), rng.uniform(0.45, 0.85), rng.uniform(0.3, 0.45)
        weights = rng.uniform(0, 1, 4) * (rng.uniform(size=4) < 0.7) + np.array([0.3, 0, 0, 0])
    dhue = rng.uniform(-0.12, 0.12)
    m[_A] = _hsv(hue, sat, val)
    m[_B] = _hsv(hue + dhue, sat + rng.uniform(-0.1, 0.2), val - dval)
    if rng.uniform() < 0.5:
        m[_A], m[_B] = m[_B].copy(), m[_A].copy()
    m[[_W1, _W2, _WC, _WS]] = weights
    m[_F1], m[_F2] = rng.uniform(2.0, 4.0), rng.uniform(6.0, 12.0)  # noise cells of 25-50 cm and 8-17 cm
    m[_FP] = rng.uniform(1.0, 3.0) if kind == "floor" else rng.uniform(1.5, 5.0)  # pattern periods, 1/m
    m[_ANG] = rng.uniform(0, math.pi)
    m[_SHARP] = rng.uniform(2.0, 5.0)
    m[_PH1], m[_PH2] = rng.uniform(0, 2 * math.pi, 2)
    m[_SEED] = rng.integers(0, 2**20)
    m[_GRAIN] = rng.uniform(0.1, 0.25)
    m[_GAIN] = rng.uniform(1.6, 2.2)
    return m


def _hash01(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Deterministic integer hash of lattice points -> uniform values in ``[0, 1]``."""
    mask = np.uint64(0xFFFFFFFF)
    h = (
        ix.astype(np.uint64) * np.uint64(73856093)
        ^ iy.astype(np.uint64) * np.uint64(19349663)
        ^ iz.astype(np.uint64) * np.uint64(83492791)
        ^ seed.astype(np.uint64) * np.uint64(2654435761)
    ) & mask
    for _ in range(2):
        h = ((h ^ (h >> np.uint64(16))) * np.uint64(0x45D9F3B)) & mask
    h ^= h >> np.uint64(16)
    return (h & np.uint64(0xFFFFFF)).astype(np.float64) / float(0xFFFFFF)


def value_noise(points: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Smooth 3D value noise (lattice spacing 1, smoothstep-trilinear) in ``[0, 1]``.

    Args:
        points: ``[P, 3]`` coordinates in lattice units. seed: ``[P]`` integer noise seeds.
    Returns:
        ``[P]`` noise values, a continuous function of the point (so the same 3D point gets the same
        value in every view).
    """
    cell = np.floor(points)
    frac = points - cell
    s = frac * frac * (3 - 2 * frac)
    cell = cell.astype(np.int64)
    out = np.zeros(len(points))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                corner = np.array([dx, dy, dz])
                w = np.where(corner, s, 1 - s).prod(-1)
                out += w * _hash01(cell[:, 0] + dx, cell[:, 1] + dy, cell[:, 2] + dz, seed)
    return out


def albedo(materials: np.ndarray, points: np.ndarray, normal_axis: np.ndarray) -> np.ndarray:
    """Procedural albedo of surface points.

    Args:
        materials: ``[P, 20]`` material rows (one per point).
        points: ``[P, 3]`` world points (m). normal_axis: ``[P]`` world axis (0..2) of the surface
            normal; checkers and stripes use the two in-plane coordinates.
    Returns:
        ``[P, 3]`` albedo in ``[0, 1]``.
    """
    m = materials
    seed = m[:, _SEED].astype(np.int64)
    n1 = value_noise(points * m[:, _F1, None] + 17.0, seed)
    n2 = value_noise(points * m[:, _F2, None] + 31.0, seed + 1)
    grain = value_noise(points * 18.0 + 7.0, seed + 2)  # 5.5 cm detail
    rows = np.arange(len(points))
    a = points[rows, (normal_axis + 1) % 3]
    b = points[rows, (normal_axis + 2) % 3]
    two_pi_f = 2 * math.pi * m[:, _FP]
    checker = np.sin(two_pi_f * a + m[:, _PH1]) * np.sin(two_pi_f * b + m[:, _PH2])
    stripe = np.sin(two_pi_f * (a * np.cos(m[:, _ANG]) + b * np.sin(m[:, _ANG])) + m[:, _PH1])
    checker = 0.5 + 0.5 * np.tanh(m[:, _SHARP] * checker)
    stripe = 0.5 + 0.5 * np.tanh(m[:, _SHARP] * stripe)
    weights = m[:, [_W1, _W2, _WC, _WS]]
    mix = (weights * np.stack([n1, n2, checker, stripe], -1)).sum(-1) / np.maximum(weights.sum(-1), 1e-9)
    mix = np.clip((mix - 0.5) * m[:, _GAIN] + 0.5, 0.0, 1.0)
    colour = m[:, _A] + (m[:, _B] - m[:, _A]) * mix[:, None]
    return np.clip(colour * (1 + m[:, _GRAIN, None] * (grain[:, None] - 0.5) * 2), 0.0, 1.0)


# ----------------------------------------------------------------------------- room
@dataclass
class Room:
    """A furnished room made of axis-aligned boxes (world z up, metres).

    Attributes:
        size: ``[3]`` interior extent ``(X, Y, Z)``; the interior is ``[0, X] x [0, Y] x [0, Z]``.
        lo, hi: ``[N, 3]`` box corners. The first 6 boxes are the shell (floor, ceiling, walls
            x=0, x=X, y=0, y=Y), 0.2 m thick slabs outside the interior.
        box_class: ``[N]`` 8-class evaluation label of each box.
        box_instance: ``[N]`` instance id of each box (1..).
        box_material: ``[N]`` row of ``materials`` used by each box.
        materials: ``[M, 20]`` material parameters (see :func:`albedo`).
        object_lo, object_hi: ``[K, 3]`` bounding boxes of the furniture objects.
        object_class, object_instance: ``[K]`` class and instance id of each object.
        ambient: ambient intensity. sun_dir: ``[3]`` unit vector towards the directional light.
        sun: its intensity. lamp_pos: ``[3]`` point-lamp position. lamp: its intensity.
    """

    size: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    box_class: np.ndarray
    box_instance: np.ndarray
    box_material: np.ndarray
    materials: np.ndarray
    object_lo: np.ndarray
    object_hi: np.ndarray
    object_class: np.ndarray
    object_instance: np.ndarray
    ambient: float = 0.35
    sun_dir: np.ndarray = field(default_factory=lambda: np.array([0.3, 0.2, 0.93]))
    sun: float = 0.35
    lamp_pos: np.ndarray = field(default_factory=lambda: np.zeros(3))
    lamp: float = 0.35

    def camera_clearance(self, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distances of points ``[P, 3]`` to the nearest wall/floor/ceiling and to the nearest
        furniture box (``inf`` without furniture; 0 inside a box). Returns two ``[P]`` arrays."""
        centers = np.atleast_2d(centers)
        to_shell = np.minimum(centers, self.size - centers).min(-1)
        if len(self.object_lo) == 0:
            return to_shell, np.full(len(centers), np.inf)
        below, above = self.object_lo[None] - centers[:, None], centers[:, None] - self.object_hi[None]
        gap = np.maximum(np.maximum(below, above), 0)  # [P, K, 3]
        return to_shell, np.linalg.norm(gap, axis=-1).min(-1)


def _furniture(rng: np.random.Generator, cls: int) -> tuple[list[tuple[list[float], list[float]]], list[bool]]:
    """Boxes of one object in a local frame (footprint ``[0, w] x [0, d]``, back side at ``y = d``).

    Returns the boxes as ``(lo, hi)`` lists and, per box, whether it uses the secondary material.
    """
    u = rng.uniform
    if cls == CHAIR:
        w, d, seat, t, leg = u(0.42, 0.55), u(0.42, 0.55), u(0.42, 0.48), 0.05, u(0.035, 0.05)
        back_h = seat + u(0.4, 0.5)
        boxes = [([0, 0, seat - t], [w, d, seat]), ([0, d - 0.06, seat], [w, d, back_h])]
    elif cls == TABLE:
        w, d, top, t, leg = u(0.8, 1.6), u(0.6, 1.0), u(0.7, 0.78), 0.04, u(0.05, 0.08)
        seat = top
        boxes = [([0, 0, top - t], [w, d, top])]
    elif cls == SOFA:
        w, d, base, arm_w, back_t = u(1.6, 2.2), u(0.8, 0.95), u(0.38, 0.45), u(0.15, 0.22), u(0.18, 0.25)
        boxes = [
            ([arm_w, 0, 0], [w - arm_w, d - back_t, base]),
            ([0, d - back_t, 0], [w, d, u(0.8, 0.9)]),
            ([0, 0, 0], [arm_w, d - back_t, u(0.55, 0.65)]),
            ([w - arm_w, 0, 0], [w, d - back_t, u(0.55, 0.65)]),
        ]
        return boxes, [False, True, True, True]
    elif cls == BED:
        w, d, base = u(1.3, 1.8), u(1.9, 2.1), u(0.45, 0.55)
        return [([0, 0, 0], [w, d - 0.08, base]), ([0, d - 0.08, 0], [w, d, u(0.9, 1.1)])], [False, True]
    else:  # "other": a cabinet / box, sometimes with a smaller box on top
        w, d, h = u(0.3, 1.0), u(0.3, 0.8), u(0.3, 1.8)
        boxes = [([0, 0, 0], [w, d, h])]
        if h < 1.0 and rng.uniform() < 0.5:
            tw, td = w * u(0.4, 0.8), d * u(0.4, 0.8)
            x0, y0 = u(0, w - tw), u(0, d - td)
            boxes.append(([x0, y0, h], [x0 + tw, y0 + td, h + u(0.1, 0.4)]))
        return boxes, [False] + [True] * (len(boxes) - 1)
    legs = [([x, y, 0], [x + leg, y + leg, seat - t]) for x in (0, w - leg) for y in (0, d - leg)]
    return boxes + legs, [False] * len(boxes) + [True] * 4


def _rotate_boxes(boxes: list, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotate local boxes by ``k * 90`` degrees about z around their footprint centre; the result is
    centred on the origin in x, y. Returns ``lo, hi`` ``[n, 3]``."""
    lo = np.array([b[0] for b in boxes], dtype=np.float64)
    hi = np.array([b[1] for b in boxes], dtype=np.float64)
    centre = np.array([(lo[:, 0].min() + hi[:, 0].max()) / 2, (lo[:, 1].min() + hi[:, 1].max()) / 2, 0])
    lo, hi = lo - centre, hi - centre
    c, s = [1, 0, -1, 0][k % 4], [0, 1, 0, -1][k % 4]
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)
    a, b = lo @ rot.T, hi @ rot.T
    return np.minimum(a, b), np.maximum(a, b)


def _place(
    rng: np.random.Generator, half: np.ndarray, wall: int | None, floor: np.ndarray, placed: list, gap: float
) -> np.ndarray | None:
    """Rejection-sample the ``[2]`` footprint centre of an object with footprint half-extents ``half``.

    ``wall`` (the object's rotation k) puts its back (local +y, rotated to y=Y, x=0, y=0, x=X for
    k = 0..3) 2-10 cm from that wall. Footprints keep ``gap`` from the ``placed`` footprints
    ``[x0, y0, x1, y1]`` and 5 cm from the walls. Returns None if 60 tries fail.
    """
    lo, hi = half + 0.05, floor - half - 0.05
    if np.any(lo >= hi):
        return None
    for _ in range(60):
        centre = rng.uniform(lo, hi)
        if wall is not None:
            axis, high = (1, 0, 1, 0)[wall], wall in (0, 3)
            wall_gap = rng.uniform(0.02, 0.1)
            centre[axis] = floor[axis] - half[axis] - wall_gap if high else half[axis] + wall_gap
        x0, y0, x1, y1 = np.concatenate([centre - half, centre + half])
        if all(x0 >= p[2] + gap or x1 + gap <= p[0] or y0 >= p[3] + gap or y1 + gap <= p[1] for p in placed):
            return centre
    return None


def generate_room(rng: np.random.Generator, config: SyntheticConfig) -> Room:
    """Sample a room, its furniture (rejection sampling on the floor plan), materials and lights."""
    size = np.array([rng.uniform(*config.room_x), rng.uniform(*config.room_y), rng.uniform(*config.room_z)])
    X, Y, Z = size
    T = 0.2
    lo = [[-T, -T, -T], [-T, -T, Z], [-T, -T, 0], [X, -T, 0], [-T, -T, 0], [-T, Y, 0]]
    hi = [[X + T, Y + T, 0], [X + T, Y + T, Z + T], [0, Y + T, Z], [X + T, Y + T, Z], [X + T, 0, Z], [X + T, Y + T, Z]]
    classes = [FLOOR, CEILING] + [WALL] * 4
    instances = list(range(1, 7))
    materials = [_random_material(rng, "floor"), _random_material(rng, "ceiling")]
    wall_material = _random_material(rng, "wall")
    for _ in range(4):  # same paint family, own pattern per wall
        m = _random_material(rng, "wall")
        m[_A], m[_B] = wall_material[_A] * rng.uniform(0.9, 1.1), m[_B]
        materials.append(np.clip(m, 0, None))
    box_material = list(range(6))

    ranges = {BED: config.beds, SOFA: config.sofas, TABLE: config.tables, OTHER: config.others, CHAIR: config.chairs}
    counts = {cls: int(rng.integers(lo_n, hi_n + 1)) for cls, (lo_n, hi_n) in ranges.items()}  # big objects first
    placed: list[np.ndarray] = []  # footprints [x0, y0, x1, y1]
    obj_lo, obj_hi, obj_cls, obj_inst = [], [], [], []
    area_left = config.max_furniture_area * X * Y
    for cls, count in counts.items():
        for _ in range(count):
            parts, secondary = _furniture(rng, cls)
            k = int(rng.integers(4))
            along_wall = cls in (BED, SOFA, OTHER) and rng.uniform() < 0.7
            blo, bhi = _rotate_boxes(parts, k)
            half = np.maximum(-blo.min(0), bhi.max(0))[:2]
            area = 4 * half[0] * half[1]
            if area > area_left:
                continue
            centre = _place(rng, half, k if along_wall else None, size[:2], placed, config.furniture_gap)
            if centre is None:
                continue
            foot = np.concatenate([centre - half, centre + half])
            placed.append(foot)
            area_left -= area
            inst = 7 + len(obj_cls)
            offset = np.array([centre[0], centre[1], 0.0])
            main, second = len(materials), len(materials) + 1
            materials += [_random_material(rng, "furniture"), _random_material(rng, "furniture")]
            lo += list(blo + offset)
            hi += list(bhi + offset)
            classes += [cls] * len(parts)
            instances += [inst] * len(parts)
            box_material += [second if s else main for s in secondary]
            obj_lo.append((blo + offset).min(0))
            obj_hi.append((bhi + offset).max(0))
            obj_cls.append(cls)
            obj_inst.append(inst)

    elevation, azimuth = rng.uniform(math.radians(30), math.radians(70)), rng.uniform(0, 2 * math.pi)
    sun_dir = np.array([math.cos(azimuth), math.sin(azimuth), math.tan(elevation)]) * math.cos(elevation)
    lamp_pos = np.array([X / 2 + rng.uniform(-0.5, 0.5), Y / 2 + rng.uniform(-0.5, 0.5), Z - 0.25])
    return Room(
        size=size,
        lo=np.array(lo, dtype=np.float64),
        hi=np.array(hi, dtype=np.float64),
        box_class=np.array(classes, dtype=np.int32),
        box_instance=np.array(instances, dtype=np.int32),
        box_material=np.array(box_material, dtype=np.int32),
        materials=np.array(materials),
        object_lo=np.array(obj_lo, dtype=np.float64).reshape(-1, 3),
        object_hi=np.array(obj_hi, dtype=np.float64).reshape(-1, 3),
        object_class=np.array(obj_cls, dtype=np.int32),
        object_instance=np.array(obj_inst, dtype=np.int32),
        ambient=float(rng.uniform(*config.ambient)),
        sun_dir=sun_dir,
        sun=float(rng.uniform(*config.sun)),
        lamp_pos=lamp_pos,
        lamp=float(rng.uniform(*config.lamp)),
    )


# ----------------------------------------------------------------------------- ray casting
def cast_rays(room: Room, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact first hit of rays ``origin + t * dirs`` with the room's boxes (slab test).

    The origin must lie outside every box (any camera inside the room and off the furniture).

    Args:
        origin: ``[3]`` ray origin (world). dirs: ``[P, 3]`` directions, any length (``t`` is in
            units of ``|dirs|``; with camera-z component 1 it is the z-depth).
    Returns:
        ``t`` ``[P]`` (``inf`` without a hit), ``box`` ``[P]`` index of the hit box (-1 without),
        ``axis`` ``[P]`` world axis of the hit face's normal, which is ``-sign(dirs[axis])`` along it.
    """
    origin = np.asarray(origin, dtype=np.float64)
    dirs = np.asarray(dirs, dtype=np.float64)
    safe = np.where(np.abs(dirs) < 1e-12, np.where(dirs < 0, -1e-12, 1e-12), dirs)
    inv = np.ascontiguousarray((1.0 / safe).T)  # [3, P]; per-axis rows are much faster than [P, 3] reductions
    best_t = np.full(len(dirs), np.inf)
    best_box = np.full(len(dirs), -1, dtype=np.int64)
    best_axis = np.zeros(len(dirs), dtype=np.int64)
    for i in range(len(room.lo)):
        t1 = (room.lo[i, :, None] - origin[:, None]) * inv
        t2 = (room.hi[i, :, None] - origin[:, None]) * inv
        tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
        near = np.maximum(np.maximum(tmin[0], tmin[1]), tmin[2])
        far = np.minimum(np.minimum(tmax[0], tmax[1]), tmax[2])
        hit = (near <= far) & (near > 0) & (near < best_t)
        if not hit.any():
            continue
        best_t = np.where(hit, near, best_t)
        best_box[hit] = i
        best_axis[hit] = np.where(tmin[0] == near, 0, np.where(tmin[1] == near, 1, 2))[hit]
    return best_t, best_box, best_axis


def shade(room: Room, points: np.ndarray, box: np.ndarray, axis: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """View-independent colour ``[P, 3]`` in ``[0, 1]`` of hit points (albedo x Lambertian light).

    ``box``, ``axis``: from :func:`cast_rays`; ``dirs`` only fixes which side of the face was hit.
    """
    rows = np.arange(len(points))
    normal = np.zeros_like(points)
    normal[rows, axis] = -np.sign(dirs[rows, axis])
    to_lamp = room.lamp_pos - points
    dist = np.linalg.norm(to_lamp, axis=-1)
    light = (
        room.ambient
        + room.sun * np.maximum(normal @ room.sun_dir, 0)
        + room.lamp * np.maximum((normal * to_lamp).sum(-1) / np.maximum(dist, 1e-9), 0) / (1 + (dist / 2.0) ** 2)
    )
    return np.clip(albedo(room.materials[room.box_material[box]], points, axis) * light[:, None], 0.0, 1.0)


def render_frame(
    room: Room, c2w: np.ndarray, K: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ray cast one view through every pixel centre.

    Args:
        c2w: ``[4, 4]`` camera-to-world (OpenCV axes). K: ``[3, 3]`` pixel intrinsics for
            ``(height, width)`` (pixel centres at +0.5).
    Returns:
        ``rgb`` ``[H, W, 3]`` uint8, ``depth`` ``[H, W]`` float32 z-depth in metres, ``labels``
        ``[H, W]`` int32 8-class labels, ``instances`` ``[H, W]`` int32 instance ids.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    dirs = cam @ c2w[:3, :3].T
    origin = c2w[:3, 3]
    t, box, axis = cast_rays(room, origin, dirs)
    if (box < 0).any():
        raise ValueError("render_frame: some rays leave the room; is the camera outside it or inside furniture?")
    rgb = shade(room, origin + t[:, None] * dirs, box, axis, dirs)
    rgb8 = np.round(rgb * 255).astype(np.uint8).reshape(height, width, 3)
    shape = (height, width)
    depth = t.astype(np.float32).reshape(shape)
    return rgb8, depth, room.box_class[box].reshape(shape), room.box_instance[box].reshape(shape)


# ----------------------------------------------------------------------------- camera path
def _catmull_rom(points: np.ndarray, samples_per_segment: int = 64) -> np.ndarray:
    """Dense uniform Catmull-Rom curve ``[S, D]`` through ``points`` ``[n, D]`` (ends repeated)."""
    p = np.concatenate([points[:1], points, points[-1:]])
    s = np.linspace(0, 1, samples_per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        a, b, c = p2 - p0, 2 * p0 - 5 * p1 + 4 * p2 - p3, 3 * p1 - p0 - 3 * p2 + p3
        out.append(p1 + 0.5 * (a * s + b * s**2 + c * s**3))
    out.append(points[-1:])
    return np.concatenate(out)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix ``[3, 3]`` about a unit ``axis``."""
    x, y, z = axis
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def camera_path(room: Room, config: SyntheticConfig, rng: np.random.Generator, attempts: int = 100) -> np.ndarray:
    """A smooth hand-held-like camera trajectory ``[F, 4, 4]`` (camera-to-world, OpenCV axes).

    Positions follow a Catmull-Rom spline through a random walk of waypoints (0.6-1.2 m apart) at
    camera height, sampled at a constant step ``<= max_step``. The camera looks at a target that
    moves along a spline through random points of the room; its viewing direction turns towards
    the target by at most ``max_turn_deg`` per frame. A slow roll and a little hand shake are added.
    Every centre keeps ``wall_margin`` from the shell and ``obstacle_margin`` from furniture.

    Raises:
        RuntimeError: if no valid path was found in ``attempts`` tries (room too cluttered).
    """
    lo_h, hi_h = config.camera_height
    size = room.size

    def valid(points: np.ndarray) -> np.ndarray:
        to_shell, to_objects = room.camera_clearance(points)
        return (to_shell >= config.wall_margin) & (to_objects >= config.obstacle_margin)

    def random_free_point() -> np.ndarray | None:
        for _ in range(200):
            p = np.concatenate([rng.uniform(0, size[:2]), [rng.uniform(lo_h, hi_h)]])
            if valid(p)[0]:
                return p
        return None

    for _ in range(attempts):
        step = config.max_step * rng.uniform(0.6, 1.0)
        length = step * (config.frames - 1)
        start = random_free_point()
        if start is None:
            continue
        waypoints, heading, total = [start], rng.uniform(0, 2 * math.pi), 0.0
        while total < length + 0.3:
            for attempt in range(60):  # turn more sharply after failures (dead ends)
                heading_new = heading + rng.normal(0, 0.9 if attempt < 20 else 2.5)
                dist = rng.uniform(0.6, 1.2)
                z = np.clip(waypoints[-1][2] + rng.normal(0, 0.1), lo_h, hi_h)
                q = waypoints[-1] + [dist * math.cos(heading_new), dist * math.sin(heading_new), 0.0]
                q[2] = z
                segment = waypoints[-1] + np.linspace(0, 1, 12)[:, None] * (q - waypoints[-1])
                if valid(segment).all():
                    waypoints.append(q)
                    heading, total = heading_new, total + dist
                    break
            else:
                break
        if total < length + 0.3:
            continue
        dense = _catmull_rom(np.array(waypoints))
        arc = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=-1))])
        if arc[-1] < length:
            continue
        stations = np.arange(config.frames) * step
        centers = np.stack([np.interp(stations, arc, dense[:, d]) for d in range(3)], -1)
        centers[:, 2] = np.clip(centers[:, 2], lo_h, hi_h)  # the spline may overshoot a little
        if not valid(centers).all():
            continue

        # look-at targets, >= 1.2 m from the matching waypoint: furniture (60 %) or any point of the room
        targets = []
        for w in waypoints:
            for _ in range(50):
                target = np.concatenate([rng.uniform(0.1, 0.9, 2) * size[:2], [rng.uniform(0.2, 1.8)]])
                if len(room.object_lo) and rng.uniform() < 0.6:
                    k = rng.integers(len(room.object_lo))
                    target = (room.object_lo[k] + room.object_hi[k]) / 2
                if np.linalg.norm(target[:2] - w[:2]) >= 1.2:
                    break
            targets.append(target)
        dense_targets = _catmull_rom(np.array(targets))
        target_at = np.stack([np.interp(stations, arc, dense_targets[:, d]) for d in range(3)], -1)
        # view direction as yaw/pitch, turning towards the target by at most max_turn per frame;
        # pitch stays in [-37, +17] degrees (steep views would turn heading changes into image roll)
        desired = target_at - centers
        yaw_goal = np.arctan2(desired[:, 1], desired[:, 0])
        pitch_goal = np.arcsin(np.clip(desired[:, 2] / np.linalg.norm(desired, axis=-1), -0.6, 0.3))
        max_turn = math.radians(config.max_turn_deg)
        yaw, pitch = np.empty(config.frames), np.empty(config.frames)
        yaw[0], pitch[0] = yaw_goal[0], pitch_goal[0]
        for i in range(1, config.frames):
            d_yaw = (yaw_goal[i] - yaw[i - 1] + math.pi) % (2 * math.pi) - math.pi
            d_pitch = pitch_goal[i] - pitch[i - 1]
            scale = min(1.0, max_turn / max(math.hypot(d_yaw, d_pitch), 1e-12))
            yaw[i], pitch[i] = yaw[i - 1] + scale * d_yaw, pitch[i - 1] + scale * d_pitch

        frame_t = np.arange(config.frames)
        freqs, phases = rng.uniform(0.02, 0.08, 2), rng.uniform(0, 2 * math.pi, 2)
        roll = math.radians(config.max_roll_deg) * 0.5 * np.sin(2 * math.pi * freqs * frame_t[:, None] + phases).sum(-1)
        poses = np.tile(np.eye(4), (config.frames, 1, 1))
        for i in range(config.frames):
            cos_p, sin_p, cos_y, sin_y = math.cos(pitch[i]), math.sin(pitch[i]), math.cos(yaw[i]), math.sin(yaw[i])
            forward, right = np.array([cos_p * cos_y, cos_p * sin_y, sin_p]), np.array([sin_y, -cos_y, 0.0])
            rot = np.stack([right, np.cross(forward, right), forward], axis=1)  # columns: x right, y down, z forward
            rot = rot @ _rotation(np.array([0.0, 0.0, 1.0]), roll[i])
            shake = rng.normal(0, math.radians(config.rot_jitter_deg), 3)
            if np.linalg.norm(shake) > 0:
                rot = rot @ _rotation(shake / np.linalg.norm(shake), float(np.linalg.norm(shake)))
            poses[i, :3, :3] = rot
            poses[i, :3, 3] = centers[i]
        return poses
    raise RuntimeError(f"camera_path: no valid path in {attempts} attempts (room {np.round(size, 2)} too cluttered?)")


# ----------------------------------------------------------------------------- scenes
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


def synthetic_views(seed: int, frames: list[int], height: int = 32, width: int | None = None, path_frames: int = 12):
    """Frames of one synthetic room as :class:`ffsplat.core.types.Views` (batch ``[1, V]``) with exact
    depth, 8-class labels and instance ids (for tests, examples and benchmarks).

    Args:
        seed: room seed; frames: indices into a camera path of ``path_frames`` poses.
    """
    import torch

    from ffsplat.core.types import Cameras, Views

    width = width or height
    room, poses, k = make_scene(seed, SyntheticConfig(height=height, width=width, frames=path_frames))
    rendered = [render_frame(room, poses[i], k, height, width) for i in frames]

    def stack(j: int):
        return torch.from_numpy(np.stack([r[j] for r in rendered]))[None]

    cams = Cameras(torch.from_numpy(k).float().expand(1, len(frames), 3, 3).clone(), torch.from_numpy(poses[list(frames)]).float()[None], (height, width))
    return Views(
        images=stack(0).permute(0, 1, 4, 2, 3).float() / 255,
        cameras=cams,
        near=torch.tensor([0.3]),
        far=torch.tensor([8.0]),
        depths=stack(1).float(),
        labels=stack(2).long(),
        instances=stack(3).long(),
    )
