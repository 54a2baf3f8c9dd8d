"""Tests for ffsplat.data.sens: .sens write/read round trip, streaming, export, folder -> .sens, errors, CLI."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ffsplat.data import sens as sens_mod
from ffsplat.data.sens import SensError, SensReader, export_sens, folder_to_sens, valid_pose, write_sens
from tests.conftest import shared_data

REPO = Path(__file__).resolve().parents[1]
COLOR_HW, DEPTH_HW = (32, 40), (16, 20)
K_COLOR = np.array([[50.0, 0, 20.5, 0], [0, 51.0, 16.25, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
K_DEPTH = np.array([[25.0, 0, 10.0, 0], [0, 25.5, 8.0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
EXTR_DEPTH = np.array([[1, 0, 0, 0.05], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
NAN_FRAME = 2


def synthetic_frames(n: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Smooth colour gradients, random uint16 depth, distinct poses; frame NAN_FRAME has a NaN pose."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0 : COLOR_HW[0], 0 : COLOR_HW[1]].astype(np.float64)
    frames = []
    for i in range(n):
        rgb = np.stack([u / COLOR_HW[1] * 200 + 20 * i, v / COLOR_HW[0] * 200, 128 + 60 * np.sin((u + v + i) / 9)], -1)
        angle = 0.3 * i
        c2w = np.eye(4)
        c2w[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
        c2w[:3, 3] = [0.1 * i, -0.2 * i, 1.0 + i / 7]
        if i == NAN_FRAME:
            c2w[0, 0] = np.nan
        depth = rng.integers(0, 65535, DEPTH_HW, dtype=np.uint16)
        frames.append((c2w, np.clip(rgb, 0, 255).astype(np.uint8), depth, 1_000_000 + 33_333 * i))
    return frames


def write_scene(path: Path, frames=None, sensor_name: str = "test-sensor") -> list:
    frames = synthetic_frames() if frames is None else frames
    n = write_sens(
        path,
        iter(frames),  # a plain iterator: the writer must not need len()
        intrinsic_color=K_COLOR,
        intrinsic_depth=K_DEPTH[:3, :3],
        extrinsic_depth=EXTR_DEPTH,
        color_hw=COLOR_HW,
        depth_hw=DEPTH_HW,
        sensor_name=sensor_name,
    )
    assert n == len(frames)
    return frames


@pytest.fixture
def sens_file(tmp_path: Path) -> tuple[Path, list]:
    path = tmp_path / "scene0001_00.sens"
    return path, write_scene(path)


def decode_jpeg(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def test_round_trip(sens_file):
    path, frames = sens_file
    reader = SensReader(path)
    h = reader.header
    assert (h.version, h.sensor_name, h.num_frames, len(reader)) == (4, "test-sensor", 5, 5)
    assert (h.color_compression, h.depth_compression) == ("jpeg", "zlib_ushort")
    assert (h.color_height, h.color_width, h.depth_height, h.depth_width) == (*COLOR_HW, *DEPTH_HW)
    assert h.depth_shift == 1000.0
    for got, want in [(h.intrinsic_color, K_COLOR), (h.intrinsic_depth, K_DEPTH), (h.extrinsic_depth, EXTR_DEPTH)]:
        assert got.dtype == np.float64 and got.shape == (4, 4)
        np.testing.assert_allclose(got, want.astype(np.float32), rtol=0, atol=0)
    np.testing.assert_array_equal(h.extrinsic_color, np.eye(4))

    read = list(reader)
    assert [f.index for f in read] == list(range(5))
    assert [valid_pose(f) for f in read] == [i != NAN_FRAME for i in range(5)]
    assert [f.index for f in reader.iter_valid()] == [0, 1, 3, 4]
    for frame, (c2w, rgb, depth, ts) in zip(read, frames):
        np.testing.assert_array_equal(frame.camera_to_world, c2w.astype(np.float32))
        assert frame.timestamp_color == frame.timestamp_depth == ts
        np.testing.assert_array_equal(frame.decode_depth(h), depth)
        color = frame.decode_color(h)
        assert color.shape == (*COLOR_HW, 3) and color.dtype == np.uint8
        np.testing.assert_array_equal(color, decode_jpeg(frame.color_bytes))
        assert np.abs(color.astype(float) - rgb).mean() < 3.0  # RGB order, not BGR
    # A second pass works too (each iteration opens the file afresh).
    assert [f.index for f in reader.frames(step=2)] == [0, 2, 4]


def test_reader_streams(sens_file, monkeypatch):
    path, _ = sens_file
    reader = SensReader(path)
    name = b"test-sensor"
    assert reader.data_offset == 4 + 8 + len(name) + 4 * 64 + 4 * 2 + 4 * 4 + 4 + 8

    reads: list[int] = []

    class RecordingFile:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            reads.append(n)
            return self.f.read(n)

        def __getattr__(self, attr):
            return getattr(self.f, attr)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(sens_mod, "open", lambda p, mode: RecordingFile(open(p, mode)), raising=False)
    frames = reader.frames()
    first = next(frames)
    largest_frame = max(len(first.color_bytes), len(first.depth_bytes))
    assert reads and all(0 <= n <= largest_frame for n in reads)  # only the first frame's pieces so far
    assert sum(reads) < path.stat().st_size / 3
    assert len(list(frames)) == 4
    assert all(0 <= n < path.stat().st_size / 3 for n in reads)  # never the whole file, never read()


def test_export_and_back(sens_file, tmp_path):
    path, frames = sens_file
    out = tmp_path / "exported"
    stats = export_sens(path, out)
    assert stats == {
        "frames": 5,
        "exported": 4,
        "skipped_invalid_pose": 1,
        "skipped_frames": {NAN_FRAME: "inf/NaN in the pose"},
    }
    kept = [i for i in range(5) if i != NAN_FRAME]
    for sub, ext in [("color", "jpg"), ("depth", "png"), ("pose", "txt")]:
        assert sorted(int(p.stem) for p in (out / sub).glob(f"*.{ext}")) == kept
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*"))
    np.testing.assert_allclose(np.loadtxt(out / "intrinsic" / "intrinsic_color.txt"), K_COLOR)
    np.testing.assert_allclose(np.loadtxt(out / "intrinsic" / "intrinsic_depth.txt"), K_DEPTH)
    np.testing.assert_allclose(np.loadtxt(out / "intrinsic" / "extrinsic_depth.txt"), EXTR_DEPTH.astype(np.float32))
    np.testing.assert_array_equal(np.loadtxt(out / "intrinsic" / "extrinsic_color.txt"), np.eye(4))

    originals = {f.index: f for f in SensReader(path)}
    for i in kept:
        c2w, _, depth, _ = frames[i]
        pose = np.loadtxt(out / "pose" / f"{i}.txt")
        np.testing.assert_array_equal(pose.astype(np.float32), c2w.astype(np.float32))
        png = cv2.imread(str(out / "depth" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16
        np.testing.assert_array_equal(png, depth)
        assert (out / "color" / f"{i}.jpg").read_bytes() == originals[i].color_bytes  # copied as-is

    packed = tmp_path / "repacked.sens"
    assert folder_to_sens(out, packed) == 4
    reader = SensReader(packed)
    assert reader.header.num_frames == 4 and reader.header.depth_shift == 1000.0
    np.testing.assert_allclose(reader.header.intrinsic_color, K_COLOR)
    np.testing.assert_allclose(reader.header.extrinsic_depth, EXTR_DEPTH.astype(np.float32))
    for frame, i in zip(reader, kept, strict=True):
        np.testing.assert_array_equal(frame.camera_to_world, originals[i].camera_to_world)
        assert frame.color_bytes == originals[i].color_bytes
        np.testing.assert_array_equal(frame.decode_depth(reader.header), frames[i][2])


def test_export_frame_skip_and_depth_shift(tmp_path):
    frames = synthetic_frames(seed=1)
    frames = [(c2w, rgb, (depth // 4).astype(np.uint16), ts) for c2w, rgb, depth, ts in frames]
    path = tmp_path / "shift.sens"
    write_sens(
        path,
        frames,
        intrinsic_color=K_COLOR,
        intrinsic_depth=K_DEPTH,
        color_hw=COLOR_HW,
        depth_hw=DEPTH_HW,
        depth_shift=4000.0,
    )
    stats = export_sens(path, tmp_path / "out", frame_skip=2)
    assert stats["exported"] == 2 and stats["skipped_frames"] == {
        2: "inf/NaN in the pose"
    }  # 0 and 4 kept, 2 has a NaN pose
    assert sorted(int(p.stem) for p in (tmp_path / "out" / "depth").glob("*.png")) == [0, 4]
    png = cv2.imread(str(tmp_path / "out" / "depth" / "4.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(png, np.rint(frames[4][2] / 4.0).astype(np.uint16))  # millimetres


def test_truncated_file(sens_file, tmp_path):
    path, _ = sens_file
    offsets = []
    with open(path, "rb") as f:
        f.seek(SensReader(path).data_offset)
        for _ in range(5):
            offsets.append(f.tell())
            head = f.read(96)
            n_color, n_depth = struct.unpack("<QQ", head[80:96])
            f.seek(n_color + n_depth, 1)
    cut = tmp_path / "cut.sens"
    cut.write_bytes(path.read_bytes()[: offsets[3] + 96 + 10])  # inside frame 3's colour payload
    reader = SensReader(cut)
    it = iter(reader)
    assert [next(it).index for _ in range(3)] == [0, 1, 2]
    with pytest.raises(SensError, match=r"cut\.sens.*frame 3"):
        next(it)
    cut.write_bytes(path.read_bytes()[: offsets[3] + 50])  # inside frame 3's pose
    with pytest.raises(SensError, match=r"cut\.sens.*frame 3"):
        list(SensReader(cut))


def test_bad_files(sens_file, tmp_path):
    path, _ = sens_file
    bad = tmp_path / "bad.sens"
    bad.write_bytes(struct.pack("<I", 3) + path.read_bytes()[4:])
    with pytest.raises(SensError, match=r"bad\.sens.*expected 4"):
        SensReader(bad)
    garbage = tmp_path / "garbage.sens"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(SensError, match="garbage.sens"):
        SensReader(garbage)
    empty = tmp_path / "empty.sens"
    empty.write_bytes(b"\x04\x00")
    with pytest.raises(SensError, match="empty.sens"):
        SensReader(empty)
    # A version-4 header with a huge frame count is rejected before any frame is read.
    data = bytearray(path.read_bytes())
    offset = SensReader(path).data_offset
    data[offset - 8 : offset] = struct.pack("<Q", 10**9)
    bad.write_bytes(bytes(data))
    with pytest.raises(SensError, match="declares 1000000000 frames"):
        SensReader(bad)


def test_unsupported_compression(sens_file, tmp_path):
    path, _ = sens_file
    data = bytearray(path.read_bytes())
    offset = SensReader(path).data_offset
    tail = offset - (4 * 2 + 4 * 4 + 4 + 8)  # colour / depth compression codes
    data[tail : tail + 8] = struct.pack("<ii", 2, 2)  # occi_ushort depth
    occi = tmp_path / "occi.sens"
    occi.write_bytes(bytes(data))
    reader = SensReader(occi)
    frame = next(iter(reader))
    assert frame.decode_color(reader.header).shape == (*COLOR_HW, 3)
    with pytest.raises(SensError, match=r"occi\.sens.*occi_ushort"):
        frame.decode_depth(reader.header)


def test_writer_rejects_bad_frames(tmp_path):
    c2w, rgb, depth, ts = synthetic_frames(1)[0]
    target = tmp_path / "x.sens"
    kwargs = dict(intrinsic_color=K_COLOR, intrinsic_depth=K_DEPTH, color_hw=COLOR_HW, depth_hw=DEPTH_HW)
    with pytest.raises(ValueError, match="frame 1"):
        write_sens(target, [(c2w, rgb, depth, ts), (c2w, rgb, depth.astype(np.int32), ts)], **kwargs)
    assert not target.exists() and not list(tmp_path.iterdir())  # atomic: nothing left behind


@pytest.mark.slow
def test_cli_two_files(tmp_path):
    write_scene(tmp_path / "sceneA.sens")
    write_scene(tmp_path / "sceneB.sens", synthetic_frames(3, seed=5))
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "data_prep" / "export_sens.py"),
            "--sens",
            str(tmp_path / "sceneA.sens"),
            str(tmp_path / "sceneB.sens"),
            "--out",
            str(tmp_path / "out"),
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["failed"] == {}
    assert {k: v["exported"] for k, v in summary["scenes"].items()} == {"sceneA": 4, "sceneB": 2}
    for scene, n in [("sceneA", 4), ("sceneB", 2)]:
        assert len(list((tmp_path / "out" / scene / "color").glob("*.jpg"))) == n
        assert (tmp_path / "out" / scene / "intrinsic" / "intrinsic_depth.txt").exists()


def test_real_scene_round_trip(tmp_path):
    """Ten frames of the real HoloLens scene: folder -> .sens -> export reproduces the files."""
    src = shared_data("hololens-office")
    scene = tmp_path / "holo"
    for sub in ("color", "depth", "pose", "intrinsic"):
        (scene / sub).mkdir(parents=True)
    for name in ("intrinsic_color.txt", "intrinsic_depth.txt"):
        shutil.copy(src / "intrinsic" / name, scene / "intrinsic" / name)
    ids = list(range(100, 110))
    for i in ids:
        for sub, ext in [("color", "jpg"), ("depth", "png"), ("pose", "txt")]:
            shutil.copy(src / sub / f"{i}.{ext}", scene / sub / f"{i}.{ext}")

    assert folder_to_sens(scene, tmp_path / "holo.sens") == 10
    stats = export_sens(tmp_path / "holo.sens", tmp_path / "out")
    assert stats == {"frames": 10, "exported": 10, "skipped_invalid_pose": 0, "skipped_frames": {}}
    for new, i in enumerate(ids):  # the .sens renumbers frames 0..n-1
        assert (tmp_path / "out" / "color" / f"{new}.jpg").read_bytes() == (src / "color" / f"{i}.jpg").read_bytes()
        depth = cv2.imread(str(tmp_path / "out" / "depth" / f"{new}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(depth, cv2.imread(str(src / "depth" / f"{i}.png"), cv2.IMREAD_UNCHANGED))
        pose = np.loadtxt(tmp_path / "out" / "pose" / f"{new}.txt")
        np.testing.assert_allclose(pose, np.loadtxt(src / "pose" / f"{i}.txt"), atol=1e-6)
    np.testing.assert_allclose(
        np.loadtxt(tmp_path / "out" / "intrinsic" / "intrinsic_color.txt"),
        np.loadtxt(src / "intrinsic" / "intrinsic_color.txt"),
        rtol=1e-7,
    )
