"""Training: stages freeze exactly their parameters, the LR schedule, a 2-process CPU DDP run ends
with identical weights on both ranks, a killed run resumes from last.ckpt at the right step with the
same optimiser state, wandb writes an offline run, and the slim export loads back."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from ffsplat.core.config import group_file, to_dataclass
from ffsplat.data.sampling import ViewSamplerConfig
from ffsplat.model.network import ModelConfig
from ffsplat.training.module import SemanticSplatModule, export_slim, load_model_weights, lr_lambda
from ffsplat.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "scripts" / "train_driver.py"


@pytest.fixture(scope="module")
def shards(tiny_shards) -> Path:
    return tiny_shards


def tiny_config(shards: Path, tmp: Path, stage: str = "seg", **overrides) -> TrainConfig:
    cfg = TrainConfig(run_name=f"test_{stage}")
    cfg.model = to_dataclass(ModelConfig, group_file("model", "small"))
    cfg.data.root = str(shards)
    cfg.data.batch_size = 1
    cfg.data.epoch_length = 4
    cfg.data.val_examples = 1
    cfg.data.sampler = ViewSamplerConfig(num_context=2, num_target=1, min_gap=2, max_gap=4)
    cfg.stage.name = stage
    cfg.optim.max_steps = 4
    cfg.optim.warmup_steps = 1
    cfg.optim.lr = 1e-3
    cfg.trainer.accelerator = "cpu"
    cfg.trainer.val_every_n_steps = 0
    cfg.logging.wandb_mode = "disabled"
    cfg.logging.save_dir = str(tmp / "outputs")
    cfg.logging.images_every_n_steps = 0
    cfg.checkpoint.dir = str(tmp / "checkpoints")
    cfg.checkpoint.every_n_steps = 2
    cfg.loss.num_prompts = 2
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        setattr(getattr(cfg, section), name, value) if name else setattr(cfg, section, value)
    return cfg


def run_driver(cfg: TrainConfig, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    path = tmp / f"config_{len(list(tmp.glob('config_*.json')))}.json"
    path.write_text(json.dumps(asdict(cfg)))
    return subprocess.run(
        [sys.executable, str(DRIVER), str(path), *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )


def test_lr_schedule_warms_up_then_decays():
    values = [lr_lambda(s, 10, 110, 0.01) for s in range(0, 111)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.01 + 0.99 * 0.5, rel=1e-6)  # half way through the cosine
    assert values[110] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(values[9:], values[10:]))


TRAINED_GROUPS = {
    "geometry": ("geometry",),
    "seg": ("geometry", "segmentation"),
    "semantic": ("segmentation",),
    "lang": ("language",),
}
"""Written out, not taken from the stage registry (SemanticSplat sec. 3.6)."""


@pytest.mark.parametrize("stage", ["geometry", "seg", "semantic", "lang"])
def test_each_stage_trains_exactly_its_parameters(shards, tmp_path, stage):
    from ffsplat.data.shards import ClipExamples, collate_examples, manifest_shards

    torch.manual_seed(0)
    module = SemanticSplatModule(tiny_config(shards, tmp_path, stage))
    groups = module.model.parameter_groups()
    for group, params in groups.items():
        assert all(p.requires_grad == (group in TRAINED_GROUPS[stage]) for p in params), group
    optimizer = module.configure_optimizers()["optimizer"]
    trained_ids = {id(p) for g in TRAINED_GROUPS[stage] for p in groups[g]}
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == trained_ids
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    data = ClipExamples(manifest_shards(shards, "train"), module.cfg.data.sampler, shuffle_buffer=0)
    batch = collate_examples([next(iter(data))])
    module._move_helpers()
    loss, logs = module.compute_losses(batch)
    assert torch.isfinite(loss) and loss > 0
    expected_terms = {
        "geometry": {"rgb_l1"},
        "seg": {"rgb_l1", "sam_cos", "sam_mask"},
        "semantic": {"sam_cos", "sam_mask"},
        "lang": {"lang_plain", "lang_total"},
    }[stage]
    assert expected_terms <= set(logs), logs.keys()
    if stage == "semantic":  # no photometric or depth term on a frozen geometry
        assert not any(k.startswith(("rgb_", "depth_")) for k in logs), logs.keys()
    loss.backward()
    optimizer.step()
    trained = {n for n, p in module.model.named_parameters() if id(p) in trained_ids}
    for name, p in module.model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        if name not in trained:
            assert not changed, f"{name} is frozen in stage {stage} but changed"
    assert any(not torch.equal(before[n], p.detach()) for n, p in module.model.named_parameters() if n in trained)


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_with_identical_weights(shards, tmp_path):
    cfg = tiny_config(shards, tmp_path, "seg", trainer__devices=2, trainer__strategy="ddp", optim__max_steps=3)
    done = run_driver(cfg, tmp_path, "--report-dir", str(tmp_path / "report"))
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / "report" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert reports[0]["end_step"] == reports[1]["end_step"] == 3
    assert reports[0]["weights"] == reports[1]["weights"]


def read_samples(path: Path) -> dict[int, list]:
    return {line["step"]: line["ids"] for line in map(json.loads, path.read_text().splitlines())}


def uninterrupted_stream(cfg: TrainConfig, steps: int) -> dict[int, list]:
    """Sample ids per step of an uninterrupted run (the stream depends on the data config only)."""
    from torch.utils.data import DataLoader

    from ffsplat.data.shards import ClipExamples, collate_examples, manifest_shards

    d = cfg.data
    data = ClipExamples(
        manifest_shards(d.root, d.train_split),
        d.sampler,
        d.shuffle_buffer,
        d.resampled,
        d.epoch_length,
        cfg.trainer.seed,
    )
    out: dict[int, list] = {}
    epoch = 0
    while len(out) < steps:
        data.set_position(epoch, len(out), 0, d.batch_size)
        for batch in DataLoader(data, batch_size=d.batch_size, num_workers=d.num_workers, collate_fn=collate_examples):
            ids = [
                [s, batch.context.frame_ids[i].tolist(), batch.target.frame_ids[i].tolist()]
                for i, s in enumerate(batch.scenes)
            ]
            out[len(out)] = ids
        epoch += 1
    return {s: out[s] for s in range(steps)}


@pytest.mark.slow
def test_killed_run_resumes_from_last_checkpoint(shards, tmp_path):
    # deterministic=true: with it two runs are bit-identical (README "Reproducible runs").
    cfg = tiny_config(shards, tmp_path, "seg", optim__max_steps=6, trainer__deterministic=True)
    killed = run_driver(cfg, tmp_path, "--kill-at-step", "3", "--samples", str(tmp_path / "killed.jsonl"))
    assert killed.returncode == 137
    run_dir = Path(cfg.checkpoint.dir) / cfg.run_name
    assert (run_dir / "last.ckpt").is_file() and not (run_dir / "model.pt").exists()
    assert not list(run_dir.glob(".*.tmp"))  # no half-written checkpoint
    saved = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2
    # network, optimiser, schedule and loop state only: no LPIPS / teacher / prompt-decoder weights
    assert saved["state_dict"] and all(k.startswith("model.") for k in saved["state_dict"])
    from tests.scripts.train_driver import checksum

    state = saved["optimizer_states"][0]["state"]
    saved_optimizer = checksum([v for k in sorted(state) for v in state[k].values() if torch.is_tensor(v)])
    resumed = run_driver(
        cfg, tmp_path, "--report-dir", str(tmp_path / "report"), "--samples", str(tmp_path / "resumed.jsonl")
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The data stream of an uninterrupted run: epochs of 4 steps, so the resume lands mid-epoch 0.
    ref = uninterrupted_stream(cfg, 6)
    first, second = (read_samples(tmp_path / f"{n}.jsonl") for n in ("killed", "resumed"))
    assert sorted(first) == [0, 1, 2] and sorted(second) == [2, 3, 4, 5]
    assert len({json.dumps(v) for v in ref.values()}) == 6  # the stream does not repeat itself
    # The killed run saw the reference's first batches; the resumed one continues the stream at
    # step 2 (not from the epoch's first sample) and crosses into epoch 1 like the reference.
    assert [first[s] for s in (0, 1, 2)] == [ref[s] for s in (0, 1, 2)]
    assert [second[s] for s in (2, 3, 4, 5)] == [ref[s] for s in (2, 3, 4, 5)]
    report = json.loads((tmp_path / "report" / "rank0.json").read_text())
    assert report["start_step"] == 2 and report["end_step"] == 6
    assert report["start_optimizer"] == saved_optimizer
    assert report["start_lr"] == pytest.approx(1e-3 * lr_lambda(2, 1, 6, 0.01))
    assert (run_dir / "model.pt").is_file()


@pytest.mark.slow
def test_wandb_offline_run_and_slim_export(shards, tmp_path):
    cfg = tiny_config(shards, tmp_path, "seg", logging__wandb_mode="offline", optim__max_steps=2,
                      trainer__val_every_n_steps=2, logging__images_every_n_steps=1, logging__progress_every_n_steps=1)  # fmt: skip
    done = run_driver(cfg, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        "[train] step 1/2 (50.0%) loss " in done.stderr and "[train] step 2/2 (100.0%)" in done.stderr
    )  # plain progress lines
    runs = list((tmp_path / "outputs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    slim = Path(cfg.checkpoint.dir) / cfg.run_name / "model.pt"
    blob = torch.load(slim, map_location="cpu", weights_only=False)
    assert blob["format"] == "ffsplat-model" and blob["stage"] == "seg" and blob["class_embeddings"].shape == (8, 512)
    model_cfg = to_dataclass(ModelConfig, blob["model_config"])
    from ffsplat.model.network import build_model

    model = build_model(model_cfg)
    load_model_weights(model, slim)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, blob["state_dict"][name])
    load_model_weights(
        model, Path(cfg.checkpoint.dir) / cfg.run_name / "last.ckpt"
    )  # Lightning's file, weights_only=True
    # the next stage starts from it
    module = SemanticSplatModule(tiny_config(shards, tmp_path, "lang", stage__init_from=str(slim)))
    torch.testing.assert_close(
        module.model.state_dict()["seg_head.net.0.weight"], blob["state_dict"]["seg_head.net.0.weight"]
    )
    export_slim(module, tmp_path / "again.pt")
    assert (tmp_path / "again.pt").is_file()
