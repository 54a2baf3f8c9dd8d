"""train.py's error contract and training integrity (issues 13/19): bad configs -> one ``error:`` line,
exit 2, nothing written; stage.init_from never unpickles code; non-finite steps are skipped and counted,
too many in a row stop with an error and no model.pt; NaN-teacher shards never train; checkpoints with
non-finite weights are refused; a damaged last.ckpt falls back to the newest intact step=N.ckpt."""

from __future__ import annotations

from dataclasses import replace

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from ffsplat.model.network import PretrainedConfig
from ffsplat.training.config import TeacherRole
from ffsplat.training.guards import NonFiniteCheckpointError, find_resume
from ffsplat.training.fit import AtomicCheckpointIO, fit
from ffsplat.training.module import SemanticSplatModule, load_model_weights
from tests.test_error_contract_evaluate import rewrite_tar
from tests.test_training import tiny_config


def bad_config(kind: str, shards: Path, tmp: Path):
    cfg = tiny_config(shards, tmp)
    if kind == "missing_root":
        cfg.data.root, message = str(tmp / "nope"), "data.root: shard folder not found"
    elif kind == "missing_split":
        cfg.data.train_split, message = "trian", "no split 'trian'"
    elif kind == "missing_eval_index":
        cfg.data.eval_index, message = str(tmp / "index.json"), "data.eval_index: evaluation index not found"
    elif kind == "missing_init":
        cfg.stage.init_from, message = str(tmp / "model.pt"), "stage.init_from"
    elif kind == "missing_resume":
        cfg.checkpoint.resume, message = str(tmp / "last.ckpt"), "checkpoint.resume"
    elif kind == "damaged_resume":
        (tmp / "bad.ckpt").write_bytes(b"PK\x03\x04 not really a zip")
        cfg.checkpoint.resume, message = str(tmp / "bad.ckpt"), "checkpoint.resume: "
    elif kind == "unknown_scene":
        cfg.data.scenes, message = ["room9"], "data.scenes: ['room9'] not in split 'train'"
    elif kind == "missing_segmenter_checkpoint":
        cfg.model.semantic = replace(cfg.model.semantic, segmenter="espnetv2", segmenter_checkpoint=str(tmp / "e.pth"))
        message = "model.semantic.segmenter_checkpoint: espnetv2 weights not found"
    elif kind == "segmenter_without_weights":
        cfg.model.semantic = replace(cfg.model.semantic, segmenter="espnetv2")
        message = "model.semantic.segmenter='espnetv2' needs its published weights"
    elif kind == "missing_pretrained":
        cfg.model.pretrained = PretrainedConfig(path=str(tmp / "re10k.ckpt"), format="ffsplat")
        message = "model.pretrained.path: ffsplat checkpoint not found"
    elif kind == "mismatched_pretrained":
        torch.save({"state_dict": {"encoder.foo": torch.zeros(2)}}, tmp / "other.ckpt")
        cfg.model.pretrained = PretrainedConfig(path=str(tmp / "other.ckpt"), format="ffsplat", strict=True)
        message = "model.pretrained"
    elif kind == "damaged_init":
        (tmp / "model.pt").write_bytes(b"PK\x03\x04 not really a zip")
        cfg.stage.init_from, message = str(tmp / "model.pt"), "stage.init_from: "
    elif kind == "missing_online_teacher":
        cfg.teachers.source = "online"
        cfg.teachers.segmentation = TeacherRole("sam", {"checkpoint": str(tmp / "sam_vit_b_01ec64.pth")})
        message = "teachers.segmentation.kwargs.checkpoint: sam weights not found"
    elif kind == "missing_online_lseg":
        cfg.teachers.source = "online"
        cfg.teachers.language = TeacherRole("lseg", {"checkpoint": str(tmp / "demo_e200.ckpt")})
        message = "teachers.language.kwargs.checkpoint: lseg weights not found"
    elif kind == "uncached_conditioning_teacher":  # the geometry stage reads no target teacher, but conditions on both
        cfg.stage.name = "geometry"
        cfg.teachers.language = TeacherRole("espnetv2", {"checkpoint": "e.pth"})
        message = "no 'espnetv2' features (teachers.language.name, which conditions the network)"
    elif kind == "uncached_target_teacher":
        cfg.model.conditioning = replace(cfg.model.conditioning, use_seg_teacher=False, use_lang_teacher=False)
        cfg.teachers.segmentation = TeacherRole("espnetv2_seg", {"checkpoint": "e.pth"})
        message = "no 'espnetv2_seg' features (teachers.segmentation.name, which is the stage's target)"
    elif kind == "zero_lr":
        cfg.optim.lr, message = 0.0, "optim.lr"
    elif kind == "zero_steps":
        cfg.optim.max_steps, message = 0, "optim.max_steps"
    else:
        raise AssertionError(kind)
    return cfg, message


@pytest.mark.parametrize("kind", ["missing_root", "missing_split", "missing_eval_index", "missing_init", "missing_resume",
                                  "damaged_resume", "unknown_scene", "missing_segmenter_checkpoint",
                                  "segmenter_without_weights", "zero_lr", "zero_steps", "missing_pretrained",
                                  "mismatched_pretrained", "damaged_init", "missing_online_teacher", "missing_online_lseg",
                                  "uncached_conditioning_teacher", "uncached_target_teacher"])  # fmt: skip
def test_bad_config_gives_one_error_line_and_writes_nothing(tiny_shards, tmp_path, capsys, kind):
    cfg, message = bad_config(kind, tiny_shards, tmp_path)
    code = train.run(cfg)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "checkpoints").exists()


class _RunsCode:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_init_from_never_unpickles_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": "ffsplat-model", "state_dict": {}, "payload": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_model_weights(torch.nn.Linear(2, 2), tmp_path / "evil.pt")
    assert not marker.exists()


def test_checkpoints_with_nonfinite_weights_are_refused(tmp_path):
    with pytest.raises(NonFiniteCheckpointError, match="non-finite weights"):
        AtomicCheckpointIO().save_checkpoint(
            {"state_dict": {"w": torch.tensor([1.0, float("nan")])}}, tmp_path / "last.ckpt"
        )
    assert not list(tmp_path.iterdir())
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, tmp_path / "last.ckpt")
    assert (tmp_path / "last.ckpt").is_file()


def test_damaged_last_ckpt_falls_back_to_the_newest_intact_step(tmp_path):
    for step in (2, 4, 6):
        torch.save({"state_dict": {"w": torch.full((64,), float(step))}}, tmp_path / f"step={step}.ckpt")
    shutil.copy(tmp_path / "step=6.ckpt", tmp_path / "last.ckpt")
    assert find_resume(tmp_path) == (str(tmp_path / "last.ckpt"), None)
    last = tmp_path / "last.ckpt"
    last.write_bytes(last.read_bytes()[:300])  # truncated
    data = bytearray((tmp_path / "step=6.ckpt").read_bytes())
    at = data.index(np.full(64, 6.0, np.float32).tobytes()[:16])
    data[at] ^= 0xFF  # a flipped byte inside the tensor: the zip CRC catches it
    (tmp_path / "step=6.ckpt").write_bytes(bytes(data))
    path, note = find_resume(tmp_path)
    assert path == str(tmp_path / "step=4.ckpt")
    assert "last.ckpt is damaged" in note and "step=6.ckpt is damaged" in note and "resuming from step=4.ckpt" in note


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(tiny_shards, tmp_path, monkeypatch, capsys):
    real = SemanticSplatModule.compute_losses
    bad_steps = {1}

    def sometimes_nan(self, batch):
        total, logs = real(self, batch)
        return (total * float("nan") if self.global_step in bad_steps else total), logs

    monkeypatch.setattr(SemanticSplatModule, "compute_losses", sometimes_nan)
    cfg = tiny_config(tiny_shards, tmp_path, "geometry", optim__max_steps=3)
    cfg.checkpoint.every_n_steps = 1
    module = fit(cfg)
    guard = next(c for c in module.trainer.callbacks if type(c).__name__ == "NonFiniteGuard")
    assert guard.skipped == 1 and module.trainer.global_step == 3
    assert all(torch.isfinite(p).all() for p in module.model.parameters())

    bad_steps.update(range(100))  # now every step: stop after optim.max_nonfinite_steps in a row
    cfg = tiny_config(tiny_shards, tmp_path / "b", "geometry", optim__max_steps=6, optim__max_nonfinite_steps=2)
    code = train.run(cfg)
    err = capsys.readouterr().err
    assert code == 1 and "error: 2 training steps in a row had a non-finite loss or gradient" in err, err
    run_dir = Path(cfg.checkpoint.dir) / cfg.run_name
    assert not (run_dir / "model.pt").exists()
    for ckpt in run_dir.glob("*.ckpt"):  # whatever was saved holds finite weights
        state = torch.load(ckpt, weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.slow
def test_nan_teacher_shards_never_train(tiny_shards, tmp_path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)

    def poison(sample):
        name = next(k for k in sample if k.startswith("teacher."))
        array = np.load(__import__("io").BytesIO(sample[name]))
        array[:, 0, 0, 0] = np.nan  # every frame: the loader decodes only the frames it samples
        buf = __import__("io").BytesIO()
        np.save(buf, array)
        return sample | {name: buf.getvalue()}

    for tar in (shards / "train").glob("*.tar"):
        rewrite_tar(tar, poison)
    cfg = tiny_config(shards, tmp_path, "seg")
    code = train.run(cfg)
    err = capsys.readouterr().err
    assert code == 1 and "error: training data:" in err and "NaN" in err, err
    run_dir = Path(cfg.checkpoint.dir) / cfg.run_name
    assert not (run_dir / "model.pt").exists()
    report = __import__("json").loads((run_dir / "bad_samples.json").read_text())
    assert report["bad"] >= 1 and all(Path(s).parent.name == "train" for s in report["by_shard"])
    assert any(".teacher." in m["member"] for v in report["by_shard"].values() for m in v["members"])


@pytest.mark.slow
def test_train_py_through_hydra_gives_one_error_line_and_leaves_no_run_folder(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "train.py"), f"data.root={tmp_path / 'nope'}", f"logging.save_dir={tmp_path / 'out'}",
                           f"checkpoint.dir={tmp_path / 'ck'}", "logging.wandb_mode=disabled"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr == f"error: data.root: shard folder not found: {tmp_path / 'nope'}\n"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.yaml"))
    assert not (tmp_path / "ck").exists()


@pytest.mark.slow
def test_bad_samples_found_in_dataloader_workers_reach_the_report(tiny_shards, tmp_path):
    """With ``data.num_workers=2`` the damaged members are recorded inside the worker processes; the
    run's ``bad_samples.json`` (written by rank 0's main process) still lists them."""
    from ffsplat.training.fit import fit

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    tar = sorted((shards / "train").glob("*.tar"))[0]

    def damage(sample):
        name = next(k for k in sample if k.startswith("teacher."))
        return sample | {name: b"not an array"}

    rewrite_tar(tar, damage)
    cfg = tiny_config(shards, tmp_path, "seg", optim__max_steps=3)
    cfg.data.num_workers = 2
    fit(cfg)
    report = __import__("json").loads((Path(cfg.checkpoint.dir) / cfg.run_name / "bad_samples.json").read_text())
    assert report["bad"] >= 1 and {Path(s).name for s in report["by_shard"]} == {tar.name}, report


def test_resume_with_other_data_teachers_or_model_is_refused(tiny_shards, tmp_path, capsys):
    """Issue 29.5: re-running a finished run under its name with other settings must not resume it."""
    from dataclasses import asdict

    from ffsplat.core.errors import InputError
    from ffsplat.training.guards import check_train_config

    saved = tiny_config(tiny_shards, tmp_path)
    run_dir = tmp_path / "checkpoints" / saved.run_name
    run_dir.mkdir(parents=True)
    torch.save({"hyper_parameters": {"config": asdict(saved)}, "state_dict": {}}, run_dir / "last.ckpt")
    (run_dir / "model.pt").write_bytes(b"finished run")
    check_train_config(tiny_config(tiny_shards, tmp_path))  # same settings: resumes
    check_train_config(tiny_config(tiny_shards, tmp_path, optim__max_steps=8))  # more steps: resumes
    cfg = tiny_config(tiny_shards, tmp_path, data__name="other")
    cfg.teachers.language = replace(cfg.teachers.language, kwargs={"flip_rate": 0.5})
    cfg.model.semantic = replace(cfg.model.semantic, lang_dim=cfg.model.semantic.lang_dim + 1)
    assert train.run(cfg) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint.resume=auto: ") and err.count("\n") == 1, err
    for key in (
        "data.name",
        "teachers.language.kwargs.flip_rate",
        "model.semantic.lang_dim",
    ):
        assert key in err, (key, err)
    assert "optim" not in err and "checkpoint.allow_config_change=true" in err
    assert (run_dir / "model.pt").read_bytes() == b"finished run" and (run_dir / "last.ckpt").is_file()
    cfg.checkpoint.allow_config_change = True
    with pytest.raises(InputError, match="class table the field was never trained against"):
        check_train_config(cfg)  # allowed, but the language teacher changed and stage seg does not train it
    cfg.stage.name = "lang"
    check_train_config(cfg)  # asked for explicitly, and this stage trains the field on the new teacher
    assert "warning: checkpoint.allow_config_change: resuming" in capsys.readouterr().err
    cfg.checkpoint.allow_config_change, cfg.checkpoint.resume = False, None
    check_train_config(cfg)  # starting fresh


@pytest.mark.parametrize("content", ["wrong_model", "not_torch"])
def test_an_online_teacher_file_that_does_not_load_is_refused_at_start_up(tiny_shards, tmp_path, capsys, content):
    """Issue 29.3: a teacher weights file that exists but is not that teacher's (another model's state
    dict, or not a torch file) is one error line naming ``teachers.<role>`` before training starts."""
    from ffsplat.training.config import TeacherRole

    weights = tmp_path / "espnetv2.pth"
    if content == "wrong_model":
        torch.save({"conv.weight": torch.zeros(2, 2)}, weights)
    else:
        weights.write_bytes(b"these are not weights")
    cfg = tiny_config(tiny_shards, tmp_path, "seg")
    cfg.teachers.source = "online"
    cfg.teachers.segmentation = TeacherRole("espnetv2_seg", {"checkpoint": str(weights)})
    code = train.run(cfg)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: teachers.segmentation") and str(weights) in err, err
    assert not (Path(cfg.checkpoint.dir) / cfg.run_name).exists()
