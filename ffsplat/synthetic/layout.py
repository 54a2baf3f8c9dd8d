"""Room layout: the box shell, furniture built from boxes, rejection-sampled placement, materials and lights."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ffsplat.synthetic.config import BED, CEILING, CHAIR, FLOOR, OTHER, SOFA, TABLE, WALL, SyntheticConfig
from ffsplat.synthetic.materials import _A, _B, _random_material  # the material table layout is shared


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
