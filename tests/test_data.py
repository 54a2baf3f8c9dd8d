"""Labels, image ops, the clip shard format, the shard writer (resume) and the real HoloLens data."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from ffsplat.data import shard_writer
from ffsplat.data.clip import Clip, decode_clip, encode_clip
from ffsplat.data.image_ops import resample_nearest, resize_and_center_crop
from ffsplat.data.labels import EVAL_CLASSES, LabelMap
from ffsplat.data.sequence import RGBDSequence, write_frame, write_intrinsics
from ffsplat.data.shard_writer import ShardConfig, write_shards
from ffsplat.core.geometry import project_points, unproject_depth
from tests.conftest import shared_data


# ---------------------------------------------------------------- labels
def test_label_map_on_the_real_scannet_tsv():
    labels = LabelMap.from_tsv(shared_data("scannet/scannetv2-labels.combined.tsv"))
    raw = np.array([[1, 3, 41, 2, 4, 6, 11, 26], [9, 0, 99999, 1313, 5, 7, 8, 14]])
    # wall floor ceiling chair table couch bed box | desk none unknown sofa ...
    assert labels.nyu40(raw)[0].tolist() == [1, 2, 22, 5, 7, 6, 4, 29]
    assert labels.eval8(raw)[0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert labels.eval8(raw)[1, :4].tolist() == [8, 0, 8, 6]  # desk -> other, 0 ignored, unknown -> other (LSM)
    assert labels.scannet20(np.array([1, 9, 26])).tolist() == [1, 13, 0]  # wall, desk, box (not in the 20)
    assert EVAL_CLASSES[labels.eval8(np.array([41]))[0] - 1] == "ceiling"
    assert labels.raw_id_for("couch") == 6


def test_label_map_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="scannetv2-labels.combined.tsv"):
        LabelMap.from_tsv(tmp_path / "nope.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="missing columns"):
        LabelMap.from_tsv(bad)


# ---------------------------------------------------------------- image ops
def test_resize_and_crop_keeps_projection_consistent():
    """A marker at a 3D point's projection stays at the projection under the new intrinsics."""
    h, w = 120, 160
    k = np.array([[150.0, 0, 83.0], [0, 148.0, 57.0], [0, 0, 1]])
    point = torch.tensor([[[0.3, -0.2, 2.0]]], dtype=torch.float64)
    uv, _ = project_points(point, torch.as_tensor(k), torch.eye(4, dtype=torch.float64))
    u, v = uv[0, 0].tolist()
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[int(v) - 4 : int(v) + 4, int(u) - 4 : int(u) + 4] = 255  # an 8x8 block centred near (u, v)
    out, k_new = resize_and_center_crop(image, k, (64, 64))
    uv_new, _ = project_points(point, torch.as_tensor(k_new), torch.eye(4, dtype=torch.float64))
    ys, xs = np.nonzero(out[..., 0] > 128)
    centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    expected = uv_new[0, 0].numpy() + (np.array([int(u), int(v)]) - np.array([u, v])) * 64 / 120
    assert np.abs(centre - expected).max() < 0.6


def test_resample_nearest_between_cameras():
    k_src = np.array([[50.0, 0, 40.0], [0, 50.0, 30.0], [0, 0, 1]])
    src = np.arange(60 * 80, dtype=np.uint16).reshape(60, 80)
    same = resample_nearest(src, k_src, k_src, (60, 80))
    assert np.array_equal(same, src)
    half = resample_nearest(src, k_src, k_src * np.array([[0.5], [0.5], [1]]), (30, 40))
    assert np.array_equal(half, src[::2, ::2] + 81)  # centre of 2x2 block -> its lower-right pixel
    wide = resample_nearest(src, k_src, np.array([[25.0, 0, 40.0], [0, 25.0, 30.0], [0, 0, 1]]), (60, 80))
    # Half the focal length: pixel centre (40.5, 30.5) maps to source (41, 31); corners fall outside -> 0.
    assert wide[0, 0] == 0 and wide[30, 40] == src[31, 41]


# ---------------------------------------------------------------- clip format
def random_clip(length=4, size=24, seed=0, labels=True, teacher=True) -> Clip:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.stack(
        [np.stack([(xx * 9 + i * 20) % 256, (yy * 7) % 256, (xx + yy) * 4 % 256], -1) for i in range(length)]
    )
    return Clip(
        scene=f"scene{seed:04d}_00",
        frame_ids=np.arange(length, dtype=np.int64) * 7 + seed,
        images=images.astype(np.uint8),
        depths=rng.integers(0, 65535, (length, size, size), dtype=np.uint16),
        intrinsics=np.tile(np.array([[20.0, 0, 12.1], [0, 20.5, 11.9], [0, 0, 1]]), (length, 1, 1)),
        extrinsics=np.tile(np.eye(4), (length, 1, 1)) + rng.normal(size=(length, 4, 4)) * 1e-3,
        near=0.4,
        far=7.5,
        labels=rng.integers(0, 9, (length, size, size), dtype=np.uint8) if labels else None,
        nyu40=rng.integers(0, 41, (length, size, size), dtype=np.uint8) if labels else None,
        instances=rng.integers(0, 2000, (length, size, size), dtype=np.uint16) if labels else None,
        teacher={"sam": rng.normal(size=(length, 8, 6, 6)).astype(np.float16)} if teacher else {},
    )


def write_tar(path: Path, samples: list[dict]) -> None:
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)


@pytest.mark.parametrize("labels", [True, False])
def test_clip_round_trips_through_a_shard_bit_exactly(tmp_path, labels):
    clip = random_clip(labels=labels, teacher=labels)
    write_tar(tmp_path / "s.tar", [encode_clip(clip, "k0")])
    (sample,) = list(wds.DataPipeline(wds.SimpleShardList([str(tmp_path / "s.tar")]), wds.tarfile_to_samples()))
    back = decode_clip(sample)
    for name in ("frame_ids", "depths", "intrinsics", "extrinsics", "labels", "nyu40", "instances"):
        a, b = getattr(clip, name), getattr(back, name)
        assert (a is None and b is None) or (np.array_equal(a, b) and a.dtype == b.dtype), name
    jpeg_decoded = np.stack(
        [np.asarray(Image.open(io.BytesIO(encode_clip(clip, "x")[f"rgb.{j:03d}.jpg"]))) for j in range(4)]
    )
    assert np.array_equal(back.images, jpeg_decoded)
    assert np.abs(back.images.astype(int) - clip.images).mean() < 3
    assert (back.scene, back.near, back.far) == (clip.scene, clip.near, clip.far)
    assert back.teacher.keys() == clip.teacher.keys()
    for name in clip.teacher:
        assert np.array_equal(back.teacher[name], clip.teacher[name]) and back.teacher[name].dtype == np.float16


def test_decode_clip_names_the_sample_and_problem():
    sample = encode_clip(random_clip(), "scene_x_0003")
    del sample["depth.002.png"]
    with pytest.raises(ValueError, match=r"scene_x_0003.*depth\.002\.png"):
        decode_clip(sample)
    sample = encode_clip(random_clip(), "k")
    sample["meta.json"] = b"{not json"
    with pytest.raises(ValueError, match="corrupt clip sample 'k'"):
        decode_clip(sample)


# ---------------------------------------------------------------- shard writer
def make_labelled_scene(root: Path, frames: int = 12, size=(30, 40), seed=0) -> None:
    """A tiny scene in the exported layout: a camera sliding along x in front of a plane."""
    rng = np.random.default_rng(seed)
    k = np.array([[35.0, 0, 20.0], [0, 35.0, 15.0], [0, 0, 1]])
    write_intrinsics(root, k)
    for i in range(frames):
        c2w = np.eye(4)
        c2w[0, 3] = 0.1 * i
        color = rng.integers(0, 255, size + (3,), dtype=np.uint8)
        raw = np.full(size, 2, dtype=np.uint16)  # chair
        raw[: size[0] // 2] = 1  # wall
        write_frame(root, i, color, np.full(size, 2.0 + 0.01 * i), c2w, raw, np.full(size, 3, np.uint16))


def tsv_path() -> Path:
    return shared_data("scannet/scannetv2-labels.combined.tsv")


def test_shard_writer_maps_labels_and_resamples(tmp_path):
    make_labelled_scene(tmp_path / "scenes" / "a", frames=14)
    cfg = ShardConfig(size=16, clip_length=5, min_clip_length=2, keyframe_translation=0.15)
    manifest = write_shards({"train": [tmp_path / "scenes" / "a"]}, tmp_path / "out", cfg, tsv_path(), progress=False)
    entry = manifest["splits"]["train"]
    # Keyframes every other frame (0.1 m steps, 0.15 m threshold): 0, 2, ..., 12 -> clips of 5 and 2.
    assert entry["frames"] == 7
    assert entry["samples"] == 2
    samples = list(wds.DataPipeline(wds.SimpleShardList([str(tmp_path / "out" / s["path"]) for s in entry["shards"]]),
                                    wds.tarfile_to_samples()))  # fmt: skip
    clip = decode_clip(samples[0])
    assert clip.frame_ids.tolist() == [0, 2, 4, 6, 8]
    assert set(np.unique(clip.labels)) == {1, 4}  # wall, chair
    assert set(np.unique(clip.nyu40)) == {1, 5}
    assert np.all(clip.instances == 3)
    assert clip.images.shape == (5, 16, 16, 3)
    np.testing.assert_allclose(clip.depths[0], 2000)  # mm
    # Intrinsics follow the resize (30x40 -> 16x22 covers 16x16) and the centre crop (3 px off x).
    sx, sy = 22 / 40, 16 / 30
    np.testing.assert_allclose(
        clip.intrinsics[0], [[35 * sx, 0, 20 * sx - 3], [0, 35 * sy, 15 * sy], [0, 0, 1]], atol=1e-9
    )
    assert 0.1 <= clip.near < 2.0 and clip.far > 2.0


def test_interrupted_shard_write_leaves_nothing_and_resumes(tmp_path, monkeypatch):
    for name in ("a", "b"):
        make_labelled_scene(tmp_path / "scenes" / name)
    scenes = {"train": [tmp_path / "scenes" / "a", tmp_path / "scenes" / "b"]}
    cfg = ShardConfig(size=16, clip_length=2, min_clip_length=2, keyframe_translation=0.0, max_shard_bytes=1)
    real_encode, calls = shard_writer.encode_clip, {"n": 0}

    def crash_on_third(clip, key, quality):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_encode(clip, key, quality)

    monkeypatch.setattr(shard_writer, "encode_clip", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        write_shards(scenes, tmp_path / "out", cfg, tsv_path(), progress=False)
    written = sorted(p.name for p in (tmp_path / "out" / "train").iterdir() if p.is_file())
    assert written == ["a-0000.tar", "a-0001.tar"]  # the two finished shards; no temp, no partial shard
    assert not (tmp_path / "out" / "train" / ".done" / "a.json").exists()
    monkeypatch.setattr(shard_writer, "encode_clip", real_encode)
    manifest = write_shards(scenes, tmp_path / "out", cfg, tsv_path(), progress=False)
    assert manifest["splits"]["train"]["samples"] == 12 and manifest["run"]["skipped_existing"] == 0
    mtime = (tmp_path / "out" / "train" / "a-0000.tar").stat().st_mtime_ns
    again = write_shards(scenes, tmp_path / "out", cfg, tsv_path(), progress=False)
    assert again["run"]["skipped_existing"] == 2
    assert (tmp_path / "out" / "train" / "a-0000.tar").stat().st_mtime_ns == mtime
    for shard in again["splits"]["train"]["shards"]:
        assert shard_writer.sha256(tmp_path / "out" / shard["path"]) == shard["sha256"]


def test_invalid_poses_are_skipped_and_counted(tmp_path):
    make_labelled_scene(tmp_path / "s", frames=6)
    (tmp_path / "s" / "pose" / "3.txt").write_text("-inf -inf -inf -inf\n" * 4)
    seq = RGBDSequence(tmp_path / "s")
    assert seq.valid_frames() == ([0, 1, 2, 4, 5], 1)
    cfg = ShardConfig(size=16, clip_length=8, min_clip_length=2, keyframe_translation=0.0)
    manifest = write_shards({"val": [tmp_path / "s"]}, tmp_path / "out", cfg, tsv_path(), progress=False)
    assert manifest["splits"]["val"]["skipped_invalid_pose"] == 1
    assert manifest["splits"]["val"]["frames"] == 5


# ---------------------------------------------------------------- the real HoloLens sequence
def test_hololens_ingests_and_depth_agrees_with_poses(tmp_path):
    root = shared_data("hololens-office")
    cfg = ShardConfig(size=96, clip_length=8, frame_skip=4)
    manifest = write_shards({"train": [root]}, tmp_path, cfg, progress=False)
    entry = manifest["splits"]["train"]
    assert entry["scenes"] == 1 and entry["samples"] >= 5
    (sample, *_) = list(
        wds.DataPipeline(wds.SimpleShardList([str(tmp_path / entry["shards"][0]["path"])]), wds.tarfile_to_samples())
    )
    clip = decode_clip(sample)
    # Warp frame 1 into frame 0 with frame 0's depth and both poses; compare colours.
    depth0 = torch.from_numpy(clip.depths[0].astype(np.float64) / 1000)
    k = torch.from_numpy(clip.intrinsics)
    c2w = torch.from_numpy(clip.extrinsics)
    pts = unproject_depth(depth0[None], k[:1], c2w[:1]).reshape(1, -1, 3)
    uv, z = project_points(pts, k[1:2], torch.linalg.inv(c2w[1:2]))
    size = clip.images.shape[1]
    grid = (uv / size * 2 - 1).reshape(1, size, size, 2).float()
    img1 = torch.from_numpy(clip.images[1]).permute(2, 0, 1)[None].float()
    warped = torch.nn.functional.grid_sample(img1, grid, align_corners=False)[0].permute(1, 2, 0)
    img0 = torch.from_numpy(clip.images[0]).float()
    valid = (depth0 > 0) & (z[0].reshape(size, size) > 0) & (grid.abs() < 0.95).all(-1)[0]
    assert valid.float().mean() > 0.5
    warped_err = (warped - img0).abs().mean(-1)[valid].mean()
    unwarped_err = (img1[0].permute(1, 2, 0) - img0).abs().mean(-1)[valid].mean()
    assert warped_err < 0.5 * unwarped_err, (float(warped_err), float(unwarped_err))
    meta = json.loads(sample["meta.json"])
    assert meta["scene"] == "hololens-office" and 0.1 <= meta["near"] < meta["far"]
