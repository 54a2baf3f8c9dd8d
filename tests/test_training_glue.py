"""Training glue, checked against literal expectations (not derived from the code under test):
what each stage trains, how each stage's total loss is composed, which teachers each stage runs,
that checkpoints hold no helper weights, the LPIPS fallback is loud and recorded, validation is
split across ranks, and the view-gap curriculum advances inside DataLoader workers."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import ffsplat.data.shards as shards_module
import ffsplat.training.module as module_lib
from ffsplat.data.shards import ClipExamples, EvalIndexDataset, collate_examples, manifest_shards, scene_frame_ids
from ffsplat.data.sampling import ViewSamplerConfig, build_eval_index
from ffsplat.training.module import SemanticSplatModule, export_slim
from tests.test_training import tiny_config

# What each stage trains, written out (SemanticSplat sec. 3.6): top-level network parts.
GEOMETRY = {"backbone", "conditioning", "depth_head", "gaussian_head"}
SEGMENTATION = {"semantic_trunk", "seg_head", "seg_decoder"}
LANGUAGE = {"lang_head", "lang_decoder"}
TRAINS = {"geometry": GEOMETRY, "seg": GEOMETRY | SEGMENTATION, "semantic": SEGMENTATION, "lang": LANGUAGE}


def first_batch(module: SemanticSplatModule, shards):
    data = ClipExamples(manifest_shards(shards, "train"), module.cfg.data.sampler, shuffle_buffer=0)
    return collate_examples([next(iter(data))])


@pytest.mark.parametrize("stage", ["geometry", "seg", "semantic", "lang"])
def test_each_stage_trains_the_parts_of_a_literal_table(tiny_shards, tmp_path, stage):
    module = SemanticSplatModule(tiny_config(tiny_shards, tmp_path, stage))
    parts = dict(module.model.named_children())
    assert set(parts) == GEOMETRY | SEGMENTATION | LANGUAGE
    for name, part in parts.items():
        flags = {p.requires_grad for p in part.parameters()}
        assert flags == {name in TRAINS[stage]}, f"stage {stage}: {name} requires_grad {flags}"
    optimised = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert optimised == {id(p) for name in TRAINS[stage] for p in parts[name].parameters()}


def test_seg_total_is_rgb_plus_sam_plus_weighted_mask(tiny_shards, tmp_path, monkeypatch):
    torch.manual_seed(0)
    module = SemanticSplatModule(tiny_config(tiny_shards, tmp_path, "seg", loss__mask_weight=0.3))
    monkeypatch.setattr(module, "mask_loss", lambda *a: torch.tensor(0.7))
    total, logs = module.compute_losses(first_batch(module, tiny_shards))
    assert float(logs["sam_mask"]) == pytest.approx(0.7)
    torch.testing.assert_close(total, logs["rgb_total"] + logs["sam_cos"] + 0.3 * 0.7)
    torch.testing.assert_close(logs["total"], total)


def test_semantic_total_is_sam_plus_weighted_mask_without_rgb(tiny_shards, tmp_path, monkeypatch):
    torch.manual_seed(0)
    module = SemanticSplatModule(tiny_config(tiny_shards, tmp_path, "semantic", loss__mask_weight=0.3))
    monkeypatch.setattr(module, "mask_loss", lambda *a: torch.tensor(0.7))
    total, logs = module.compute_losses(first_batch(module, tiny_shards))
    torch.testing.assert_close(total, logs["sam_cos"] + 0.3 * 0.7)
    assert module._lpips is None and not any(k.startswith(("rgb_", "depth_")) for k in logs)
    total.backward()  # gradient reaches the segmentation branch only
    grads = {name: any(p.grad is not None for p in part.parameters()) for name, part in module.model.named_children()}
    assert {name for name, g in grads.items() if g} == SEGMENTATION


def test_lang_total_is_the_language_loss_with_hcam_masks(tiny_shards, tmp_path, monkeypatch):
    torch.manual_seed(0)
    module = SemanticSplatModule(tiny_config(tiny_shards, tmp_path, "lang"))
    sentinel = [{"small": torch.zeros(1, 32, 32, dtype=torch.bool)}]
    monkeypatch.setattr(module, "hcam_masks", lambda target: sentinel)
    received = {}

    def fake_language_loss(expanded, target, masks=None, weights=None):
        received["masks"], received["weights"] = masks, weights
        return {"plain": expanded.mean() * 0, "total": expanded.mean() + 3.0}

    monkeypatch.setattr(module_lib, "language_loss", fake_language_loss)
    total, logs = module.compute_losses(first_batch(module, tiny_shards))
    assert received["masks"] is sentinel and received["weights"] is None  # loss.class_balance = 0: uniform
    torch.testing.assert_close(total, logs["lang_total"])
    assert not any(k.startswith(("rgb_", "sam_")) for k in logs)  # no photometric / SAM term in stage 2


@pytest.mark.parametrize("stage,target_teacher", [("seg", "label_seg"), ("lang", "label_lang")])
def test_online_teachers_run_only_for_what_the_stage_uses(tiny_shards, tmp_path, monkeypatch, stage, target_teacher):
    cfg = tiny_config(tiny_shards, tmp_path, stage, teachers__source="online")
    cfg.model.conditioning.use_lang_teacher = False  # the network is conditioned on SAM only
    module = SemanticSplatModule(cfg)
    calls = []
    import ffsplat.teachers.features as features_lib

    real = features_lib.teacher_features

    def recording(teachers, images, *args, **kwargs):
        calls.append(sorted(teachers))
        return real(teachers, images, *args, **kwargs)

    monkeypatch.setattr(features_lib, "teacher_features", recording)
    module.compute_losses(first_batch(module, tiny_shards))
    # context: the conditioning teacher only; targets: the stage's own teacher only
    assert calls == [["label_seg"], [target_teacher]]


def test_checkpoint_state_holds_the_network_only(tiny_shards, tmp_path, monkeypatch):
    fake_lpips = nn.Linear(3, 3)
    monkeypatch.setattr(module_lib, "make_lpips", lambda path: fake_lpips)
    module = SemanticSplatModule(tiny_config(tiny_shards, tmp_path, "seg", teachers__source="online"))
    assert module._lpips is fake_lpips and module._online  # helpers are there and used ...
    keys = list(module.state_dict())
    assert keys and all(k.startswith("model.") for k in keys), [k for k in keys if not k.startswith("model.")][:5]
    assert all(not p.requires_grad for p in fake_lpips.parameters())  # ... frozen, outside the module tree
    assert module.photometric_loss == "l1+0.05*lpips" and module.hparams["photometric_loss"] == "l1+0.05*lpips"


def test_missing_lpips_weights_warn_once_naming_the_key_and_are_recorded(tiny_shards, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = SemanticSplatModule(tiny_config(tiny_shards, tmp_path, "seg"))
    lpips_lines = [str(w.message) for w in caught if "lpips" in str(w.message).lower()]
    assert len(lpips_lines) == 1 and "loss.lpips_vgg_path" in lpips_lines[0], lpips_lines
    assert module.photometric_loss == "l1" and module.hparams["photometric_loss"] == "l1"
    blob = torch.load(export_slim(module, tmp_path / "model.pt"), map_location="cpu", weights_only=False)
    assert blob["photometric_loss"] == "l1"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet = SemanticSplatModule(tiny_config(tiny_shards, tmp_path, "seg", loss__lpips_weight=0.0))
    assert not [w for w in caught if "lpips" in str(w.message).lower()] and quiet.photometric_loss == "l1"


def test_validation_index_is_split_across_ranks(tiny_shards, monkeypatch):
    sampler = ViewSamplerConfig(num_context=2, num_target=1, min_gap=2, max_gap=4)
    index = build_eval_index(scene_frame_ids(tiny_shards, "train"), sampler, seed=0, entries_per_scene=3)
    everything = [(e.scenes[0], e.context.frame_ids.tolist()) for e in EvalIndexDataset(tiny_shards, "train", index)]
    assert len(everything) == 6
    shares = []
    for rank in range(2):
        monkeypatch.setattr(shards_module, "rank_and_world", lambda rank=rank: (rank, 2))
        data = EvalIndexDataset(tiny_shards, "train", index)
        shares.append([(e.scenes[0], e.context.frame_ids.tolist()) for e in data])
        assert len(data) == len(shares[-1]) == 3
    assert sorted(shares[0] + shares[1]) == sorted(everything)  # disjoint shares covering the index once
    # fewer entries than ranks: padded, so no rank gets an empty loader (Lightning refuses one)
    one = {scene: entries[:1] for scene, entries in list(index.items())[:1]}
    data = EvalIndexDataset(tiny_shards, "train", one)
    assert [data.rank_entries(r, 2) for r in (0, 1)] == [one, one]
    three = {scene: entries[:3] for scene, entries in list(index.items())[:1]}
    assert [
        sum(map(len, EvalIndexDataset(tiny_shards, "train", three).rank_entries(r, 2).values())) for r in (0, 1)
    ] == [2, 2]


def test_view_gap_curriculum_advances_inside_dataloader_workers(tiny_shards):
    sampler = ViewSamplerConfig(num_context=2, num_target=1, min_gap=2, max_gap=7, gap_warmup_steps=10)
    data = ClipExamples(
        manifest_shards(tiny_shards, "train"), sampler, shuffle_buffer=0, resampled=True, epoch_length=48, seed=0
    )
    data.set_position(epoch=0, epoch_start_step=0, batch_size=4)
    loader = DataLoader(data, batch_size=4, num_workers=2, collate_fn=collate_examples)
    gaps = [(b.context.frame_ids[:, 1] - b.context.frame_ids[:, 0]).tolist() for b in loader]
    assert len(gaps) == 12
    for step, batch in enumerate(gaps):  # batch k is step k: both workers follow the schedule
        assert max(batch) <= sampler.current_max_gap(step), (step, batch)
    assert gaps[0] == gaps[1] == [2, 2, 2, 2]
    assert max(max(b) for b in gaps[10::2]) > 4 and max(max(b) for b in gaps[11::2]) > 4  # each worker widened
    # A later epoch starting at step 1000 samples the full range from its first batch.
    data.set_position(epoch=1, epoch_start_step=1000, batch_size=4)
    late = [
        g
        for b in DataLoader(data, batch_size=4, num_workers=2, collate_fn=collate_examples)
        for g in (b.context.frame_ids[:, 1] - b.context.frame_ids[:, 0]).tolist()
    ]
    assert max(late[:8]) > 4 and max(late) <= 7


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_stream_continues_after_the_consumed_batches(tiny_shards, workers):
    sampler = ViewSamplerConfig(num_context=2, num_target=1, min_gap=2, max_gap=6, gap_warmup_steps=4)
    data = ClipExamples(
        manifest_shards(tiny_shards, "train"), sampler, shuffle_buffer=4, resampled=True, epoch_length=12, seed=5
    )

    def stream(consumed: int) -> list:
        data.set_position(epoch=2, epoch_start_step=40, consumed_batches=consumed, batch_size=2)
        loader = DataLoader(data, batch_size=2, num_workers=workers, collate_fn=collate_examples)
        return [(b.scenes, b.context.frame_ids.tolist(), b.target.frame_ids.tolist()) for b in loader]

    full = stream(0)
    assert len(full) == 6 and len({str(b) for b in full}) > 1
    assert stream(3) == full[3:]  # what an uninterrupted run sees after its first 3 batches


def test_datamodule_resumes_the_epoch_position_from_its_checkpoint_state(tiny_shards, tmp_path):
    from types import SimpleNamespace

    from ffsplat.training.datamodule import ClipDataModule

    dm = ClipDataModule(tiny_config(tiny_shards, tmp_path, "seg", data__batch_size=2))
    dm.load_state_dict({"epoch": 3, "epoch_start_step": 40})  # as saved in the checkpoint
    dm.trainer = SimpleNamespace(global_step=43)  # restored before the loader is built
    dm.train_dataloader()
    data = dm.train_set
    assert (data.epoch, data.epoch_start_step, data.consumed_batches, data.batch_size) == (3, 40, 3, 2)
    dm.start_epoch(4, 52)
    assert dm.state_dict() == {"epoch": 4, "epoch_start_step": 52}
    assert (data.epoch, data.epoch_start_step, data.consumed_batches) == (4, 52, 0)


def test_datamodule_trains_on_data_scenes_only(tiny_shards, tmp_path):
    from ffsplat.training.datamodule import ClipDataModule

    dm = ClipDataModule(tiny_config(tiny_shards, tmp_path, "seg", data__scenes=["room1"]))
    batches = [b for b, _ in zip(dm.train_dataloader(), range(4))]
    assert dm.train_set.urls and all("room1" in u for u in dm.train_set.urls)
    assert {s for b in batches for s in b.scenes} == {"room1"}


def test_model_pt_records_the_median_training_depth_range(tiny_shards, tmp_path):
    """training_step keeps each clip's (near, far); model.pt's depth_range is their medians and
    survives a Lightning checkpoint round trip (resume)."""
    from ffsplat.checkpoint import load_model

    module = SemanticSplatModule(tiny_config(tiny_shards, tmp_path, "geometry"))
    assert module.training_depth_range() is None
    batch = first_batch(module, tiny_shards)
    for near, far in [(0.5, 4.0), (1.0, 6.0), (2.0, 5.0)]:
        batch.context.near, batch.context.far = torch.tensor([near]), torch.tensor([far])
        module.training_step(batch, 0)
    assert module.training_depth_range() == [1.0, 5.0]
    saved: dict = {}
    module.on_save_checkpoint(saved)
    resumed = SemanticSplatModule(tiny_config(tiny_shards, tmp_path, "geometry"))
    resumed.on_load_checkpoint(saved)
    assert resumed.training_depth_range() == [1.0, 5.0]
    assert load_model(export_slim(module, tmp_path / "model.pt"))["depth_range"] == [1.0, 5.0]


@pytest.mark.parametrize("stage,kept", [("semantic", True), ("lang", True), ("seg", False)])
def test_a_stage_on_a_frozen_geometry_keeps_the_depth_range_it_starts_from(tiny_shards, tmp_path, stage, kept):
    from ffsplat.checkpoint import load_model

    first = SemanticSplatModule(tiny_config(tiny_shards, tmp_path, "geometry"))
    batch = first_batch(first, tiny_shards)
    batch.context.near, batch.context.far = torch.tensor([0.5]), torch.tensor([4.0])
    first.training_step(batch, 0)
    init = export_slim(first, tmp_path / "init.pt")
    module = SemanticSplatModule(tiny_config(tiny_shards, tmp_path, stage, stage__init_from=str(init)))
    batch.context.near, batch.context.far = torch.tensor([2.0]), torch.tensor([9.0])  # other clips
    module.training_step(batch, 0)
    expected = [0.5, 4.0] if kept else [2.0, 9.0]
    assert load_model(export_slim(module, tmp_path / "model.pt"))["depth_range"] == expected


@pytest.mark.parametrize("workers", [0, 2])
def test_each_sample_gets_exactly_the_step_of_its_batch(tiny_shards, tmp_path, monkeypatch, workers):
    """The curriculum's step is exact, not only bounded: batch ``k`` of an epoch that started at step
    ``s`` samples its views at step ``s + k`` (a few steps of lag would pass an upper-bound check)."""
    import os

    real = shards_module.sample_views

    def recording(n, sampler, draw, step):
        with open(tmp_path / f"steps-{os.getpid()}.txt", "a") as f:
            f.write(f"{step}\n")
        return real(n, sampler, draw, step)

    monkeypatch.setattr(shards_module, "sample_views", recording)
    sampler = ViewSamplerConfig(num_context=2, num_target=1, min_gap=2, max_gap=7, gap_warmup_steps=10)
    data = ClipExamples(
        manifest_shards(tiny_shards, "train"), sampler, shuffle_buffer=0, resampled=True, epoch_length=24, seed=0
    )
    data.set_position(epoch=1, epoch_start_step=100, batch_size=4)
    batches = list(DataLoader(data, batch_size=4, num_workers=workers, collate_fn=collate_examples))
    assert len(batches) == 6
    steps = sorted(int(line) for p in tmp_path.glob("steps-*.txt") for line in p.read_text().split())
    assert steps == sorted(100 + k for k in range(6) for _ in range(4))
