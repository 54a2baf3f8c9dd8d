"""Smooth hand-held-like camera trajectories inside a room."""

from __future__ import annotations

import math

import numpy as np

from ffsplat.synthetic.config import SyntheticConfig
from ffsplat.synthetic.layout import Room


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
