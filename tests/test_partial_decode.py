"""Training decodes only the frames an example uses (issue 33, part 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import webdataset as wds

from ffsplat.data import clip as clip_module
from ffsplat.data import shards as shards_module
from ffsplat.data.clip import ClipDecodeError, clip_length, decode_clip, encode_clip, masks_to_numpy
from ffsplat.data.sampling import ViewSamplerConfig, sample_views
from ffsplat.data.shards import ClipExamples, clip_to_views
from tests.test_data import random_clip, write_tar

SAMPLER = ViewSamplerConfig(num_context=2, num_target=3, min_gap=2, max_gap=6)


def clip_with_masks(seed: int, length: int = 8, size: int = 12):
    clip = random_clip(length=length, size=size, seed=seed)
    rng = np.random.default_rng(seed)
    tables = np.zeros((length, 3, 4, 3), bool)
    tables[:, :, 1:, :2] = rng.random((length, 3, 3, 2)) < 0.5
    clip.masks = masks_to_numpy(
        rng.integers(0, 4, (length, 3, size, size)), tables, np.full((length, 3), 2, dtype=np.int32)
    )
    return clip


def samples_of(path) -> list[dict]:
    return list(wds.DataPipeline(wds.SimpleShardList([str(path)]), wds.tarfile_to_samples()))


def test_decode_of_chosen_positions_equals_full_decode_indexed(tmp_path):
    write_tar(tmp_path / "s.tar", [encode_clip(clip_with_masks(3), "k0")])
    (sample,) = samples_of(tmp_path / "s.tar")
    full = decode_clip(sample)
    assert clip_length(sample) == 8
    positions = [5, 1, 6]
    part = decode_clip(sample, positions)
    for name in ("frame_ids", "images", "depths", "intrinsics", "extrinsics", "labels", "nyu40", "instances"):
        np.testing.assert_array_equal(getattr(part, name), getattr(full, name)[positions], err_msg=name)
    np.testing.assert_array_equal(part.teacher["sam"], full.teacher["sam"][positions])
    for k in ("segments", "tables", "counts"):
        np.testing.assert_array_equal(part.masks[k], full.masks[k][positions])
    assert part.near == full.near and part.far == full.far and part.scene == full.scene


def test_decode_of_positions_reads_only_those_frames(tmp_path, monkeypatch):
    write_tar(tmp_path / "s.tar", [encode_clip(random_clip(length=8, size=12, seed=1), "k0")])
    (sample,) = samples_of(tmp_path / "s.tar")
    # a damaged member of an unused frame is not read; the same damage in a used frame is named
    sample["rgb.004.jpg"] = b"not a jpeg"
    decoded = decode_clip(sample, [0, 2])
    assert decoded.images.shape[0] == 2
    with pytest.raises(ClipDecodeError, match="rgb.004.jpg"):
        decode_clip(sample, [4])
    with pytest.raises(ClipDecodeError, match=r"positions \[1, 1\]"):
        decode_clip(sample, [1, 1])
    with pytest.raises(ClipDecodeError, match="positions"):
        decode_clip(sample, [8])
    # a teacher array whose header disagrees with the meta is refused before slicing
    sample["teacher.sam.npy"] = clip_module._npy_bytes(np.zeros((7, 8, 6, 6), np.float16))
    with pytest.raises(ClipDecodeError, match=r"teacher.sam.npy.*shape \(7, 8, 6, 6\)"):
        decode_clip(sample, [0])


def test_training_examples_are_the_same_as_decoding_whole_clips(tmp_path, monkeypatch):
    """The old path (decode the whole clip, then draw views from it) gives the same examples, for a seed."""
    write_tar(tmp_path / "a.tar", [encode_clip(clip_with_masks(s), f"c{s:04d}") for s in range(5)])
    urls = [str(tmp_path / "a.tar")]
    decoded: list[int] = []
    real = shards_module.decode_clip

    def counting(sample, positions=None):
        clip = real(sample, positions)
        decoded.append(len(clip))
        return clip

    monkeypatch.setattr(shards_module, "decode_clip", counting)
    new = list(ClipExamples(urls, SAMPLER, shuffle_buffer=0, seed=11))
    assert len(new) == 5 and all(n <= 5 for n in decoded)  # 2 context + 3 targets of 8 frames
    old = []
    for produced, sample in enumerate(samples_of(urls[0])):
        clip = real(sample)
        draw = np.random.default_rng([11, 0, 0, 0, produced])
        context, target = sample_views(len(clip), SAMPLER, draw, 0)
        old.append((clip_to_views(clip, context), clip_to_views(clip, target)))
    for example, (context, target) in zip(new, old):
        for got, want in ((example.context, context), (example.target, target)):
            for name in ("images", "depths", "labels", "instances", "frame_ids"):
                assert torch.equal(getattr(got, name), getattr(want, name)), name
            assert torch.equal(got.cameras.extrinsics, want.cameras.extrinsics)
            assert torch.equal(got.teacher["sam"], want.teacher["sam"])
            assert torch.equal(got.masks.segments, want.masks.segments)
            assert torch.equal(got.masks.tables, want.masks.tables)


def test_evaluation_decodes_only_the_indexed_frames(tmp_path, monkeypatch):
    from tests.test_loader import make_shards

    root = tmp_path / "shards"
    make_shards(root, num_shards=1, per_shard=3)  # frame ids 0-3, 10-13, 20-23
    second = samples_of(root / "train" / "scene0000_00-0000.tar")[1]  # frames 10-13
    decoded: list[list[int]] = []
    real = shards_module.decode_clip

    def counting(sample, positions=None):
        clip = real(sample, positions)
        decoded.append(clip.frame_ids.tolist())
        return clip

    monkeypatch.setattr(shards_module, "decode_clip", counting)
    index = {"scene0000_00": [{"context": [10, 12], "target": [11]}, {"context": [20, 22], "target": [21]}]}
    examples = list(shards_module.EvalIndexDataset(root, "train", index))
    assert sorted(decoded) == [[10, 11, 12], [20, 21, 22]]  # the clip with frames 0-3 is not decoded
    assert [e.context.frame_ids.flatten().tolist() for e in examples] == [[10, 12], [20, 22]]
    full = real(second)  # frame 11 is its position 1: the same pixels as decoding the whole clip
    want = torch.from_numpy(full.images[1]).permute(2, 0, 1).float() / 255.0
    assert torch.equal(examples[0].target.images[0, 0], want)
