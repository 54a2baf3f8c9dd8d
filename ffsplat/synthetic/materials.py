"""Procedural materials: a random parameter row per surface and the albedo (value noise, checkers,
stripes) of 3D surface points."""

from __future__ import annotations

import colorsys
import math

import numpy as np

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
