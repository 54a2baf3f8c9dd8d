"""The shard loader: rank/worker splitting covers every sample once, corrupt data is skipped,
resampled epochs, batching into Examples, and evaluation-index examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ffsplat.data import shards as shards_module
from ffsplat.data.clip import encode_clip
from ffsplat.data.shards import ClipExamples, EvalIndexDataset, collate_examples, manifest_shards
from ffsplat.data.shard_writer import build_manifest, ShardConfig
from ffsplat.data.sampling import ViewSamplerConfig
from tests.test_data import random_clip, write_tar

SAMPLER = ViewSamplerConfig(num_context=2, num_target=1, min_gap=2, max_gap=3)


def make_shards(root: Path, num_shards: int = 6, per_shard: int = 3) -> list[str]:
    """``num_shards`` shards (one scene each) of ``per_shard`` clips with unique frame ids, plus a manifest."""
    split = root / "train"
    (split / ".done").mkdir(parents=True)
    import json

    for s in range(num_shards):
        scene = f"scene{s:04d}_00"
        samples = []
        for c in range(per_shard):
            clip = random_clip(length=4, size=16, seed=s * 100 + c, teacher=False)
            clip.scene = scene
            clip.frame_ids = np.arange(4) + 10 * c
            samples.append(encode_clip(clip, f"{scene}_{c:04d}"))
        write_tar(split / f"{scene}-0000.tar", samples)
        record = {"scene": scene, "split": "train", "skipped_invalid_pose": 0,
                  "shards": [{"path": f"{scene}-0000.tar", "samples": per_shard, "frames": 4 * per_shard, "bytes": 0, "sha256": ""}]}  # fmt: skip
        (split / ".done" / f"{scene}.json").write_text(json.dumps(record))
    (root / "manifest.json").write_text(json.dumps(build_manifest(root, ShardConfig())))
    return manifest_shards(root, "train")


def seen_clips(dataset, workers: int) -> list[tuple[str, int]]:
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    # Each example's frame ids start inside one clip of 4 frames: clip index = min id // 10.
    return [(ex.scenes[0], int(ex.context.frame_ids.min()) // 10) for ex in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_and_workers_cover_every_sample_exactly_once(tmp_path, monkeypatch, workers):
    urls = make_shards(tmp_path)
    seen = []
    for rank in range(2):
        monkeypatch.setattr(shards_module, "rank_and_world", lambda rank=rank: (rank, 2))
        seen += seen_clips(ClipExamples(urls, SAMPLER, shuffle_buffer=4, seed=1), workers)
    assert sorted(seen) == sorted((f"scene{s:04d}_00", c) for s in range(6) for c in range(3))


def test_epochs_reshuffle_but_stay_complete(tmp_path):
    urls = make_shards(tmp_path)
    data = ClipExamples(urls, SAMPLER, shuffle_buffer=8, seed=3)
    first = seen_clips(data, 0)
    data.set_epoch(1)
    second = seen_clips(data, 0)
    assert sorted(first) == sorted(second) and len(first) == 18
    assert first != second


def test_resampled_epoch_has_fixed_length(tmp_path):
    urls = make_shards(tmp_path, num_shards=2)
    data = ClipExamples(urls, SAMPLER, resampled=True, epoch_length=25, seed=0)
    assert len(seen_clips(data, 0)) == 25


def test_corrupt_samples_and_shards_are_skipped_and_counted(tmp_path):
    urls = make_shards(tmp_path, num_shards=3)
    # A sample whose metadata is garbage, in an extra shard.
    bad = encode_clip(random_clip(length=4, size=16, seed=7), "broken_0000")
    bad["meta.json"] = b"{garbage"
    write_tar(tmp_path / "train" / "broken.tar", [bad, encode_clip(random_clip(length=4, size=16, seed=8), "ok_0000")])
    # A truncated shard.
    data = (tmp_path / "train" / "scene0000_00-0000.tar").read_bytes()
    (tmp_path / "train" / "truncated.tar").write_bytes(data[: len(data) // 2 + 100])
    dataset = ClipExamples(
        urls + [str(tmp_path / "train" / n) for n in ("broken.tar", "truncated.tar")], SAMPLER, shuffle_buffer=0
    )
    seen = seen_clips(dataset, 0)
    assert dataset.corrupt.count >= 2
    assert any("broken_0000" in e for e in dataset.corrupt.examples)
    assert len(seen) >= 9 + 1  # the three intact shards, the good sample next to the broken one


def test_batches_are_examples_with_consistent_shapes(tmp_path):
    urls = make_shards(tmp_path)
    sampler = ViewSamplerConfig(num_context=2, num_target=2, min_gap=2, max_gap=3)
    loader = DataLoader(ClipExamples(urls, sampler, seed=0), batch_size=3, collate_fn=collate_examples)
    batch = next(iter(loader))
    assert batch.context.images.shape == (3, 2, 3, 16, 16)
    assert batch.target.images.shape == (3, 2, 3, 16, 16)
    assert batch.context.cameras.extrinsics.shape == (3, 2, 4, 4)
    assert batch.context.depths.shape == (3, 2, 16, 16) and batch.context.labels.dtype == torch.int64
    assert len(batch.scenes) == 3 and batch.context.near.shape == (3,)
    assert 0 <= batch.context.images.min() and batch.context.images.max() <= 1
    # Context views are ordered and the gap is within the sampler's range.
    gaps = batch.context.frame_ids[:, 1] - batch.context.frame_ids[:, 0]
    assert ((gaps >= 2) & (gaps <= 3)).all()


def test_eval_index_dataset_returns_the_indexed_frames(tmp_path):
    make_shards(tmp_path, num_shards=2)
    index = {
        "scene0000_00": [{"context": [0, 12], "target": [2, 21]}],  # spans clips 0, 1 and 2
        "scene0001_00": [{"context": [1, 3], "target": [2]}, {"context": [10, 13], "target": [11]}],
    }
    data = EvalIndexDataset(tmp_path, "train", index)
    examples = list(data)
    assert len(data) == len(examples) == 3
    first = examples[0]
    assert first.context.frame_ids.tolist() == [[0, 12]] and first.target.frame_ids.tolist() == [[2, 21]]
    with pytest.raises(KeyError, match="no keyframes"):
        list(EvalIndexDataset(tmp_path, "train", {"scene0000_00": [{"context": [0, 99], "target": [1]}]}))
    with pytest.raises(KeyError, match="no shards"):
        EvalIndexDataset(tmp_path, "train", {"scene9999_00": [{"context": [0, 1], "target": [2]}]})


@pytest.mark.slow
def test_make_eval_index_cli_indexes_stored_keyframes(tmp_path):
    import subprocess
    import sys

    from ffsplat.data.shards import scene_frame_ids
    from ffsplat.data.sampling import load_eval_index

    make_shards(tmp_path / "shards", num_shards=2)
    frames = scene_frame_ids(tmp_path / "shards", "train")
    assert frames == {f"scene{s:04d}_00": [0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23] for s in range(2)}
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "data_prep/make_eval_index.py"), "--shards", str(tmp_path / "shards"),
           "--split", "train", "--protocol", "sampled", "--min-gap", "3", "--max-gap", "8", "--num-target", "2",
           "--out", str(tmp_path / "index.json")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    index = load_eval_index(tmp_path / "index.json")
    assert sorted(index) == sorted(frames)
    for scene, entries in index.items():
        ids = set(entries[0]["context"]) | set(entries[0]["target"])
        assert ids <= set(frames[scene])
    # ...and every indexed frame loads.
    assert len(list(EvalIndexDataset(tmp_path / "shards", "train", index))) == 2


def test_data_scenes_keeps_the_shards_of_those_scenes_only(tiny_shards):
    from ffsplat.data.shards import ClipExamples, manifest_shards

    everything = manifest_shards(tiny_shards, "train")
    room1 = manifest_shards(tiny_shards, "train", ["room1"])
    assert room1 and set(room1) < set(everything) and all("room1" in Path(u).name for u in room1)
    assert manifest_shards(tiny_shards, "train", []) == everything  # empty: all
    sampler = ViewSamplerConfig(num_context=2, num_target=1, min_gap=2, max_gap=4)
    scenes = {s for example, _ in zip(ClipExamples(room1, sampler, shuffle_buffer=0), range(4)) for s in example.scenes}
    assert scenes == {"room1"}
    with pytest.raises(ValueError, match=r"data.scenes: \['room2'\] not in split 'train'.*room0"):
        manifest_shards(tiny_shards, "train", ["room2"])  # a val scene
