"""Tests for ffsplat.synthetic and data_prep/make_synthetic.py: determinism, exact multi-view
consistency, conventions, the ScanNet label path, camera paths and the dataset CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ffsplat.data.labels import LabelMap
from ffsplat.data.sequence import RGBDSequence
from ffsplat.synthetic import (
    EVAL_TO_RAW,
    SCANNET_RAW_IDS,
    SyntheticConfig,
    cast_rays,
    generate_room,
    make_scene,
    render_frame,
    write_synthetic_scene,
)
from ffsplat.synthetic.config import CEILING, FLOOR, WALL
from ffsplat.synthetic.raycast import shade
from ffsplat.core.geometry import project_points, unproject_depth
from tests.conftest import shared_data

REPO = Path(__file__).resolve().parents[1]
SMALL = SyntheticConfig(height=36, width=48, frames=5)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def world_points(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """``[H*W, 3]`` float64 world points of a z-depth map (ffsplat.core.geometry.unproject_depth)."""
    pts = unproject_depth(torch.from_numpy(depth).double(), torch.from_numpy(K), torch.from_numpy(c2w))
    return pts.reshape(-1, 3).numpy()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_synthetic_scene(tmp_path / name, seed, SMALL)
    a, b, c = (files(tmp_path / name) for name in "abc")
    assert len(a) == 5 * 5 + 2 + 1  # 5 files per frame, 2 intrinsics, synthetic.json
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in ("color/0.jpg", "pose/0.txt", "depth/0.png"))


def test_render_conventions_z_depth_and_pixel_centres():
    """Empty room, camera looking along +x: a fronto-parallel wall has constant z-depth, floor pixels
    hit z = 0 exactly through pixel centres, image top sees the ceiling (OpenCV y down, world z up)."""
    empty = SyntheticConfig(chairs=(0, 0), tables=(0, 0), sofas=(0, 0), beds=(0, 0), others=(0, 0))
    room = generate_room(np.random.default_rng(0), empty)
    X, Y, Z = room.size
    height, width = 49, 65
    K = SyntheticConfig(height=height, width=width, hfov_deg=90).intrinsics()
    c2w = np.eye(4)
    c2w[:3, :3] = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]]).T  # columns: right=-y, down=-z, forward=+x
    cam_z = 1.5
    c2w[:3, 3] = [1.0, Y / 2, cam_z]
    rgb, depth, labels, instances = render_frame(room, c2w, K, height, width)
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8 and depth.dtype == np.float32
    far_wall = room.box_instance[3]  # wall x = X
    on_wall = instances == far_wall
    assert on_wall[height // 2, width // 2] and on_wall.sum() > 100
    np.testing.assert_allclose(depth[on_wall], X - 1.0, rtol=1e-6)
    assert (labels[on_wall] == WALL).all()
    v = np.arange(height)[:, None] + 0.5 + np.zeros((1, width))
    v[height // 2] = np.nan  # the horizon row (centre) sees the wall, avoid 0-division below
    floor = labels == FLOOR
    assert floor[-1].all() and (labels[0] == CEILING).any() and not floor[: height // 2].any()
    np.testing.assert_allclose(depth[floor], (cam_z * K[1, 1] / (v - K[1, 2]))[floor], rtol=1e-6)
    ceiling = labels == CEILING
    np.testing.assert_allclose(depth[ceiling], ((Z - cam_z) * K[1, 1] / (K[1, 2] - v))[ceiling], rtol=1e-6)


@pytest.fixture(scope="module")
def scene():
    config = SyntheticConfig(height=96, width=128, frames=12)
    room, poses, K = make_scene(3, config)
    frames = [render_frame(room, c2w, K, config.height, config.width) for c2w in poses]
    return room, poses, K, frames


@pytest.mark.parametrize("gap", [1, 4])
def test_exact_consistency_by_ray_casting(scene, gap):
    """Points unprojected from view A lie exactly on the surfaces seen from view B: a ray from B's
    centre towards them never passes them, and where it reaches them, colour and labels agree."""
    room, poses, K, frames = scene
    rgb_a, depth_a, labels_a, inst_a = frames[0]
    points = world_points(depth_a, K, poses[0])
    origin = poses[gap][:3, 3]
    dirs = points - origin
    t, box, axis = cast_rays(room, origin, dirs)
    assert (t <= 1 + 1e-5).all()  # nothing behind a surface point: A's depth is exact
    visible = t > 1 - 1e-5
    assert 0.1 < visible.mean() < 1.0  # some points visible from B, some occluded (furniture)
    np.testing.assert_array_equal(room.box_class[box[visible]], labels_a.reshape(-1)[visible])
    np.testing.assert_array_equal(room.box_instance[box[visible]], inst_a.reshape(-1)[visible])
    colour_b = shade(room, origin + t[visible, None] * dirs[visible], box[visible], axis[visible], dirs[visible])
    diff = np.abs(np.round(colour_b * 255) - rgb_a.reshape(-1, 3)[visible].astype(np.float64))
    assert np.quantile(diff, 0.999) <= 1 and diff.max() <= 3  # view-independent colour


def test_neighbour_warp_depth_colour_labels(scene):
    """Image-space check between neighbouring frames: projected depth matches B's depth where visible,
    warped colour is far closer than the unwarped image, labels warp consistently."""
    room, poses, K, frames = scene
    height, width = frames[0][1].shape
    for a, b in [(0, 1), (5, 6), (10, 11)]:
        rgb_a, depth_a, labels_a, _ = frames[a]
        rgb_b, depth_b, labels_b, _ = frames[b]
        points = torch.from_numpy(world_points(depth_a, K, poses[a]))
        uv, z = project_points(points, torch.from_numpy(K), torch.linalg.inv(torch.from_numpy(poses[b])))
        uv, z = uv.numpy(), z.numpy()
        col, row = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
        inside = (z > 0) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
        assert inside.mean() > 0.7  # strong overlap between neighbours
        zb = np.full_like(z, np.nan)
        zb[inside] = depth_b[row[inside], col[inside]]
        agree = inside & (np.abs(z - zb) < 0.02 * zb)
        in_front = inside & (z < 0.98 * zb)  # would have to be visible in B: only at depth edges (nearest pixel)
        assert agree.sum() > 0.8 * inside.sum() and in_front.sum() < 0.03 * inside.sum()
        assert (labels_b[row[agree], col[agree]] == labels_a.reshape(-1)[agree]).mean() > 0.98

        grid = torch.from_numpy(np.stack([uv[:, 0] / width * 2 - 1, uv[:, 1] / height * 2 - 1], -1)).float()
        img_b = torch.from_numpy(rgb_b).permute(2, 0, 1)[None].float()
        warped = F.grid_sample(img_b, grid[None, None], align_corners=False, mode="bilinear")[0, :, 0].T.numpy()
        warp_err = np.abs(warped[agree] - rgb_a.reshape(-1, 3)[agree]).mean()
        plain_err = np.abs(rgb_b.astype(float) - rgb_a.astype(float)).mean()
        assert warp_err < 6 and warp_err < 0.3 * plain_err, (warp_err, plain_err)


def test_scannet_raw_label_path(tmp_path):
    """label-filt holds ScanNet raw ids; the real tsv maps them back to the rendered 8-class labels,
    and all 8 classes occur in a few scenes."""
    label_map = LabelMap.from_tsv(shared_data("scannet/scannetv2-labels.combined.tsv"))
    np.testing.assert_array_equal(label_map.eval8(EVAL_TO_RAW), np.arange(9))
    assert label_map.nyu40(np.array([SCANNET_RAW_IDS["sofa"], SCANNET_RAW_IDS["other"]])).tolist() == [6, 29]
    config = SyntheticConfig(height=30, width=40, frames=16, room_x=(4.5, 5.5), room_y=(4.5, 5.5), sofas=(1, 1),
                             beds=(1, 1))  # fmt: skip
    seen = set()
    for seed in range(4):
        write_synthetic_scene(tmp_path / f"s{seed}", seed, config)
        room, poses, K = make_scene(seed, config)
        seq = RGBDSequence(tmp_path / f"s{seed}")
        assert seq.frame_ids() == list(range(16)) and seq.has_labels
        np.testing.assert_allclose(seq.color_intrinsics, K, atol=1e-8)
        for i in seq.frame_ids():
            frame = seq.read_frame(i)
            rgb, depth, labels, instances = render_frame(room, poses[i], K, config.height, config.width)
            assert set(np.unique(frame.labels)) <= set(SCANNET_RAW_IDS.values())
            np.testing.assert_array_equal(label_map.eval8(frame.labels), labels)
            np.testing.assert_array_equal(frame.instances, instances)
            np.testing.assert_allclose(frame.c2w, poses[i], atol=1e-8)
            np.testing.assert_allclose(frame.depth, depth, atol=0.0006)  # stored in millimetres
            assert np.abs(frame.color.astype(float) - rgb).mean() < 6  # JPEG
            seen |= set(np.unique(labels).tolist())
    assert seen == set(range(1, 9))


@pytest.mark.parametrize("seed", range(4))
def test_camera_path_is_valid_smooth_and_overlapping(seed):
    config = SyntheticConfig()
    room, poses, K = make_scene(seed, config)
    assert poses.shape == (config.frames, 4, 4)
    rot, centers = poses[:, :3, :3], poses[:, :3, 3]
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-9)
    assert np.allclose(np.linalg.det(rot), 1)
    to_shell, to_objects = room.camera_clearance(centers)
    assert (to_shell >= 0.3).all() and (to_objects >= config.obstacle_margin - 1e-9).all()
    low, high = config.camera_height
    assert (centers[:, 2] >= low - 1e-9).all() and (centers[:, 2] <= high + 1e-9).all()
    steps = np.linalg.norm(np.diff(centers, axis=0), axis=-1)
    assert (steps <= config.max_step + 1e-9).all() and (steps > 0.3 * config.max_step).all()
    relative = rot[:-1].transpose(0, 2, 1) @ rot[1:]
    angles = np.degrees(np.arccos(np.clip((np.trace(relative, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert angles.max() < config.max_turn_deg + 3
    assert (rot[:, 2, 1] < 0).all()  # image "down" (camera y) points down in the z-up world
    assert np.ptp(centers[:, :2], axis=0).max() > 1.0  # the scan moves through the room

    small = 24  # overlap of consecutive frames: A's pixels inside B's image and not occluded there
    k = SyntheticConfig(height=small, width=small).intrinsics()
    for a in range(0, config.frames - 1, 7):
        points = world_points(render_frame(room, poses[a], k, small, small)[1], k, poses[a])
        w2c = torch.linalg.inv(torch.from_numpy(poses[a + 1]))
        uv, z = project_points(torch.from_numpy(points), torch.from_numpy(k), w2c)
        inside = (z.numpy() > 0) & (uv.numpy() >= 0).all(-1) & (uv.numpy() < small).all(-1)
        t = cast_rays(room, poses[a + 1][:3, 3], points - poses[a + 1][:3, 3])[0]
        assert (inside & (t > 1 - 1e-5)).mean() > 0.6


def test_sens_written_beside_frames(tmp_path):
    sens_mod = pytest.importorskip("ffsplat.data.sens")
    stats = write_synthetic_scene(tmp_path / "scene", 2, SMALL, sens=True, name="synth_0002")
    path = tmp_path / "scene" / "synth_0002.sens"
    assert stats["sens"] == str(path) and stats["frames"] == SMALL.frames
    reader = sens_mod.SensReader(path)
    assert len(reader) == SMALL.frames and (reader.header.color_height, reader.header.color_width) == (36, 48)
    first = next(iter(reader))
    np.testing.assert_allclose(first.camera_to_world, np.loadtxt(tmp_path / "scene" / "pose" / "0.txt"), atol=1e-6)


@pytest.mark.slow
def test_cli_writes_splits_and_resumes(tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, str(REPO / "data_prep" / "make_synthetic.py"), "--out", str(out), "--scenes", "2",
           "--size", "24", "--frames", "3", "--workers", "2", "--split-val", "0.5"]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert first.returncode == 0, first.stderr
    names = ["synth_0000", "synth_0001"]
    assert sorted(p.name for p in out.iterdir()) == ["splits"] + names  # no temporary folders left
    train = (out / "splits" / "train.txt").read_text().split()
    val = (out / "splits" / "val.txt").read_text().split()
    assert len(train) == len(val) == 1 and sorted(train + val) == names
    seq = RGBDSequence(out / "synth_0001")
    assert seq.frame_ids() == [0, 1, 2] and seq.read_frame(0).color.shape == (24, 24, 3)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "splits" not in p.parts}
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("exists, skipped") == 2
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert (out / "splits" / "val.txt").read_text().split() == val


def test_shipped_synthetic_label_map_equals_the_scannet_tsv_rows():
    """Synthetic rooms need no ScanNet download: their shipped label map agrees with the real TSV."""
    from ffsplat.synthetic.config import synthetic_label_map

    shipped = synthetic_label_map()
    np.testing.assert_array_equal(shipped.eval8(EVAL_TO_RAW), np.arange(9))
    tsv = shared_data("scannet/scannetv2-labels.combined.tsv")
    real = LabelMap.from_tsv(tsv)
    raw = np.array(sorted(SCANNET_RAW_IDS.values()))
    np.testing.assert_array_equal(shipped.nyu40(raw), real.nyu40(raw))


@pytest.mark.slow
def test_make_shards_on_synthetic_rooms_without_tsv_and_clear_error_for_scannet(tmp_path):
    import json
    import shutil

    import data_prep.make_shards as make_shards

    write_synthetic_scene(tmp_path / "rooms" / "synth0", 0, SyntheticConfig(height=24, width=24, frames=8))
    make_shards.main(["--scene", str(tmp_path / "rooms" / "synth0"), "--out", str(tmp_path / "shards"), "--size", "16",
                      "--clip-length", "8", "--keyframe-translation", "0", "--keyframe-rotation-deg", "0"])  # fmt: skip
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] >= 1  # labelled clips written with the shipped label map

    scannet = tmp_path / "scannet" / "scene0000_00"
    shutil.copytree(tmp_path / "rooms" / "synth0", scannet)
    (scannet / "synthetic.json").unlink()  # a real ScanNet scene: label-filt with raw ids, no label map
    root = Path(__file__).resolve().parents[1]
    for extra in ([], ["--labels-tsv", str(tmp_path / "missing.tsv")]):
        result = subprocess.run([sys.executable, "data_prep/make_shards.py", "--scene", str(scannet), "--out", str(tmp_path / "s2"), *extra],
                                capture_output=True, text=True, cwd=root, timeout=300)  # fmt: skip
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --labels-tsv:"), result.stderr
        assert not (tmp_path / "s2").exists()
