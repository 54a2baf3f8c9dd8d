"""SAM's three-scale automatic masks cached in the shards (``make_shards --teacher sam_masks:...``):
the compact segment/table layout round-trips exactly, shards decode back to the masks SAM computes
online on the same frames (following the sampled views), a training step with the cache never runs
SAM and gives the online step's loss, and a config that asks for the cache without one says so."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds

from ffsplat.core.types import MASK_SCALES, SegmentMasks
from ffsplat.data.clip import ClipDecodeError, decode_clip
from ffsplat.data.sampling import ViewSamplerConfig
from ffsplat.data.shards import ClipExamples, EvalIndexDataset, collate_examples, decode_check, manifest_shards
from ffsplat.teachers.base import TEACHERS
from ffsplat.teachers.sam import SAMTeacher, build_sam_mask_teacher
from ffsplat.training.module import SemanticSplatModule
from tests.conftest import shared_data
from tests.test_teacher_sam import tiny_sam
from tests.test_training import tiny_config

# Loose thresholds: a random tiny SAM then gives non-empty, overlapping masks at every scale.
OPTIONS = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def assert_same_masks(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert set(g) == set(w) == set(MASK_SCALES)
        for scale in MASK_SCALES:
            assert g[scale].dtype == torch.bool and g[scale].shape == w[scale].shape, scale
            assert torch.equal(g[scale].cpu(), w[scale].cpu()), scale


@pytest.fixture(scope="module")
def sam() -> SAMTeacher:
    torch.set_num_threads(1)
    return SAMTeacher(tiny_sam())


@pytest.fixture(scope="module")
def mask_shards(tmp_path_factory, sam):
    """Two tiny synthetic rooms (32x32, 8 keyframes) with both label teachers and SAM's masks cached."""
    from ffsplat.data.shard_writer import ShardConfig, write_shards
    from ffsplat.synthetic import SyntheticConfig, write_synthetic_scene

    root = tmp_path_factory.mktemp("mask_cache")
    ckpt = root / "tiny_sam.pth"
    torch.save(sam.sam.state_dict(), ckpt)
    for i in range(2):
        write_synthetic_scene(root / "scenes" / f"room{i}", 20 + i, SyntheticConfig(height=32, width=32, frames=8))
    cfg = ShardConfig(size=32, clip_length=8, min_clip_length=8, keyframe_translation=0.0, teacher_size=(8, 8),
                      teachers={"label_seg": {}, "label_lang": {}, "sam_masks": {"checkpoint": str(ckpt), **OPTIONS}})  # fmt: skip
    scenes = {"train": [root / "scenes" / "room0"], "val": [root / "scenes" / "room1"]}
    with pytest.MonkeyPatch.context() as mp:  # the tiny architecture instead of the registry's ViT-B
        mp.setitem(TEACHERS, "sam_masks", lambda **kw: build_sam_mask_teacher(builder=tiny_sam, **kw))
        write_shards(scenes, root / "shards", cfg, shared_data("scannet/scannetv2-labels.combined.tsv"), progress=False)
    return root / "shards"


def random_masks(gen: torch.Generator, counts: tuple[int, int, int], h: int = 6, w: int = 5) -> dict:
    return {s: torch.rand(k, h, w, generator=gen) < 0.4 for s, k in zip(MASK_SCALES, counts)}


def test_segment_masks_round_trip_exactly_with_overlaps_order_and_empty_masks():
    gen = torch.Generator().manual_seed(0)
    items = [random_masks(gen, (3, 5, 1)), random_masks(gen, (0, 2, 7))]
    items[0]["medium"][2] = False  # an empty mask keeps its place
    items[1]["large"][:] = True  # every pixel covered: no empty segment among the rows
    packed = SegmentMasks.from_masks(items)
    assert packed.segments.shape[:2] == (2, 3) and packed.counts.tolist() == [[3, 5, 1], [0, 2, 7]]
    assert not packed.tables[..., 0, :].any()  # row 0: pixels no mask covers
    assert_same_masks(packed.to_masks(), items)
    more = [random_masks(gen, (9, 1, 2))]
    assert_same_masks(SegmentMasks.cat([packed, SegmentMasks.from_masks(more)]).to_masks(), items + more)


def test_shards_decode_back_to_the_masks_sam_computes_online(mask_shards, sam):
    manifest = json.loads((mask_shards / "manifest.json").read_text())
    assert manifest["masks"]["teacher"] == "sam_masks" and manifest["masks"]["resolution"] == [32, 32]
    assert manifest["masks"]["options"]["points_per_side"] == 4
    assert decode_check(mask_shards)["bad"] == 0
    sampler = ViewSamplerConfig(num_context=2, num_target=3, min_gap=2, max_gap=4)
    data = ClipExamples(manifest_shards(mask_shards, "train"), sampler, shuffle_buffer=0)
    batch = collate_examples([next(iter(data))])
    index = {"room1": [{"context": [0, 5], "target": [3, 1]}]}  # evaluation examples: frames picked by id
    evaluated = next(iter(EvalIndexDataset(mask_shards, "val", index)))
    total = 0
    for views in (batch.context, batch.target, evaluated.context, evaluated.target):
        assert views.masks is not None and views.masks.segments.shape[-2:] == views.images.shape[-2:]
        online = sam.automatic_masks(views.images.flatten(0, 1), **OPTIONS)
        assert_same_masks(views.masks.to_masks(), online)  # same frames, same pixels, same masks
        total += sum(len(m) for item in online for m in item.values())
    assert total > 0


def test_the_cached_member_is_verified_on_decode(mask_shards):
    sample = next(
        iter(wds.DataPipeline(wds.SimpleShardList(manifest_shards(mask_shards, "train")), wds.tarfile_to_samples()))
    )
    assert decode_clip(sample).masks is not None
    with np.load(io.BytesIO(sample["masks.npz"])) as archive:
        arrays = {k: archive[k] for k in archive.files}
    for damage in ("row0", "segments", "counts"):
        bad = {k: v.copy() for k, v in arrays.items()}
        if damage == "row0":
            bad["tables"][0, 0, 0, 0] = True
        elif damage == "segments":
            bad["segments"][0, 0, 0, 0] = bad["tables"].shape[2]
        else:
            bad["counts"] = bad["counts"][:, :2].copy()
        buf = io.BytesIO()
        np.savez_compressed(buf, **bad)
        with pytest.raises(ClipDecodeError, match="masks.npz"):
            decode_clip({**sample, "masks.npz": buf.getvalue()})
    with pytest.raises(ClipDecodeError, match="masks.npz"):
        decode_clip({k: v for k, v in sample.items() if k != "masks.npz"})


class CountingSAM:
    """The tiny SAM's automatic masks (with :data:`OPTIONS`), counting the calls."""

    def __init__(self, sam: SAMTeacher) -> None:
        self.sam, self.calls = sam, 0

    def automatic_masks(self, images):
        self.calls += 1
        return self.sam.automatic_masks(images, **OPTIONS)


@pytest.mark.parametrize("choice", ["cached", "auto", "sam"])
def test_a_step_with_cached_masks_runs_no_sam_and_matches_the_online_loss(mask_shards, tmp_path, sam, choice):
    module = SemanticSplatModule(tiny_config(mask_shards, tmp_path, "lang", teachers__masks=choice))
    counting = CountingSAM(sam)
    object.__setattr__(module, "prompt_decoder", counting)
    data = ClipExamples(manifest_shards(mask_shards, "train"), module.cfg.data.sampler, shuffle_buffer=0)
    batch = collate_examples([next(iter(data))])
    torch.manual_seed(0)
    cached_total, cached_logs = module.compute_losses(batch)
    assert counting.calls == 0 and "lang_hcam" in cached_logs
    # the same batch without the cache: SAM runs online (teachers.masks=sam)
    module.cfg.teachers.masks = "sam"
    batch.target.masks = None
    torch.manual_seed(0)
    online_total, online_logs = module.compute_losses(batch)
    assert counting.calls == 1
    torch.testing.assert_close(cached_total, online_total, rtol=0, atol=0)
    for scale in MASK_SCALES:
        torch.testing.assert_close(cached_logs[f"lang_hcam_{scale}"], online_logs[f"lang_hcam_{scale}"], rtol=0, atol=0)


def test_asking_for_the_cache_without_one_names_the_key_and_the_shards(tiny_shards, tmp_path):
    module = SemanticSplatModule(tiny_config(tiny_shards, tmp_path, "lang", teachers__masks="cached"))
    data = ClipExamples(manifest_shards(tiny_shards, "train"), module.cfg.data.sampler, shuffle_buffer=0)
    batch = collate_examples([next(iter(data))])
    assert batch.target.masks is None
    with pytest.raises(ValueError, match=r"teachers\.masks=cached") as info:
        module.compute_losses(batch)
    assert str(tiny_shards) in str(info.value) and "sam_masks" in str(info.value)
    module.cfg.teachers.masks = "bogus"
    with pytest.raises(ValueError, match=r"teachers\.masks='bogus'; choose one of auto, cached, sam, labels, none"):
        module.compute_losses(batch)


def test_mask_teacher_options_are_checked(tmp_path, sam):
    ckpt = tmp_path / "tiny_sam.pth"
    torch.save(sam.sam.state_dict(), ckpt)
    teacher = build_sam_mask_teacher(checkpoint=str(ckpt), builder=tiny_sam, **OPTIONS)
    assert teacher.produces == "masks" and teacher.options == OPTIONS
    with pytest.raises(ValueError, match="sam_masks: unknown option 'points_per_sid'"):
        build_sam_mask_teacher(checkpoint=str(ckpt), builder=tiny_sam, points_per_sid=4)


def test_make_shards_caches_masks_from_the_teacher_spec(tmp_path, sam, monkeypatch, capsys):
    import data_prep.make_shards as make_shards
    from ffsplat.synthetic import SyntheticConfig, write_synthetic_scene

    ckpt = tmp_path / "tiny_sam.pth"
    torch.save(sam.sam.state_dict(), ckpt)
    write_synthetic_scene(tmp_path / "rooms" / "synth0", 3, SyntheticConfig(height=16, width=16, frames=8))
    monkeypatch.setitem(TEACHERS, "sam_masks", lambda **kw: build_sam_mask_teacher(builder=tiny_sam, **kw))
    spec = f"sam_masks:checkpoint={ckpt},points_per_side=2,pred_iou_thresh=0,stability_score_thresh=0"
    out = tmp_path / "shards"
    code = make_shards.main(["--scene", str(tmp_path / "rooms" / "synth0"), "--out", str(out), "--size", "16",
                             "--clip-length", "8", "--keyframe-translation", "0", "--teacher", spec])  # fmt: skip
    assert code == 0
    entry = json.loads((out / "manifest.json").read_text())["masks"]
    assert entry["teacher"] == "sam_masks" and entry["resolution"] == [16, 16]
    assert entry["options"] == {"checkpoint": str(ckpt), "points_per_side": 2, "pred_iou_thresh": 0,
                                "stability_score_thresh": 0}  # fmt: skip
    clip = decode_clip(
        next(iter(wds.DataPipeline(wds.SimpleShardList(manifest_shards(out, "train")), wds.tarfile_to_samples())))
    )
    images = torch.from_numpy(clip.images).permute(0, 3, 1, 2).float() / 255
    cached = SegmentMasks(
        *(
            torch.from_numpy(clip.masks[k].astype(np.int64 if k != "tables" else bool))
            for k in ("segments", "tables", "counts")
        )
    )
    assert_same_masks(
        cached.to_masks(), sam.automatic_masks(images, points_per_side=2, pred_iou_thresh=0, stability_score_thresh=0)
    )


@pytest.mark.parametrize("choice", ["cached", "sam", "bogus"])
def test_train_refuses_a_missing_cache_before_anything_runs(tiny_shards, tmp_path, capsys, choice):
    import train

    code = train.run(tiny_config(tiny_shards, tmp_path, "lang", teachers__masks=choice))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert f"teachers.masks={choice}" in err or f"teachers.masks='{choice}'" in err
    if choice == "cached":
        assert str(tiny_shards) in err and "sam_masks" in err
    if choice == "sam":  # label teachers: no SAM decoder to compute the masks online
        assert str(tiny_shards) in err and "prompt decoder" in err
    assert not (tmp_path / "checkpoints").exists()
