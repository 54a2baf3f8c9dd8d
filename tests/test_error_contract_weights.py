"""Issue 28 (rest of the contract): rejected or malicious weight files and Hydra override mistakes
end with one ``error:`` line and exit code 2, never a traceback, and never run the file's code:
train.py's segmenter, ``stage.init_from`` and LPIPS weights, ``evaluate.py --lpips-vgg``, the
teachers of ``make_shards.py``."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import train
from ffsplat.core.errors import InputError
from tests.test_training import tiny_config

ROOT = Path(__file__).resolve().parents[1]


class _RunsCode:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def bad_file(kind: str, tmp: Path) -> Path:
    path = tmp / f"{kind}.pth"
    if kind == "malicious":
        torch.save({"w": torch.zeros(2), "payload": _RunsCode(tmp / "pwned")}, path)
    elif kind == "text":
        path.write_text("not weights\n")
    elif kind == "truncated":
        torch.save({"w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "wrong_tensors":
        torch.save({"conv.weight": torch.zeros(3)}, path)
    elif kind == "not_a_dict":
        torch.save([torch.zeros(3)], path)
    else:
        raise AssertionError(kind)
    return path


KINDS = ["malicious", "text", "truncated", "wrong_tensors", "not_a_dict"]


def test_segmenter_and_lpips_loaders_refuse_bad_files_in_one_line(tmp_path):
    from ffsplat.model.semantic_heads import PretrainedSegmenter
    from ffsplat.objectives.losses import LPIPSLoss

    segmenter = PretrainedSegmenter("espnetv2", (32, 32))
    for kind in KINDS:
        path = bad_file(kind, tmp_path)
        loaders = [("model.semantic.segmenter_checkpoint", segmenter.load_weights)]
        if kind != "wrong_tensors":  # (that one builds the VGG trunk first: the slow train.py test covers it)
            loaders.append(("loss.lpips_vgg_path", LPIPSLoss))
        for key, load in loaders:
            with pytest.raises(InputError) as err:
                load(path)
            message = str(err.value)
            assert message.startswith(f"{key}: ") and str(path) in message and "\n" not in message, message
            assert len(message) < 400, message
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["segmenter", "init_from", "lpips"])
def test_train_refuses_bad_weight_files_in_one_line(tiny_shards, tmp_path, capsys, where):
    for kind in ("malicious", "truncated", "wrong_tensors"):
        path = bad_file(kind, tmp_path)
        cfg = tiny_config(tiny_shards, tmp_path)
        if where == "segmenter":
            cfg.model.semantic = replace(
                cfg.model.semantic, segmenter="espnetv2", segmenter_checkpoint=str(path), seg_dim=21
            )
            key = "model.semantic.segmenter_checkpoint"
        elif where == "init_from":
            cfg.stage.init_from, key = str(path), "stage.init_from"
        else:
            cfg.loss.lpips_vgg_path, key = str(path), "loss.lpips_vgg_path"
        code = train.run(cfg)
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith(f"error: {key}") and err.count("\n") == 1 and str(path) in err, err
        assert not (tmp_path / "checkpoints").exists()
    assert not (tmp_path / "pwned").exists()


def test_evaluate_refuses_a_malicious_lpips_file_before_any_work(tmp_path, capsys):
    from ffsplat.evaluation.cli import main

    path = bad_file("malicious", tmp_path)
    (tmp_path / "model.pt").write_bytes(b"x")
    (tmp_path / "index.json").write_text("{}")
    code = main(["--checkpoint", str(tmp_path / "model.pt"), "--shards", str(tmp_path), "--index", str(tmp_path / "index.json"),
                 "--out", str(tmp_path / "out"), "--lpips-vgg", str(path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: --lpips-vgg: ") and err.count("\n") == 1 and "not torchvision's VGG16" in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "teacher, expected",
    [
        ("espnetv2:checkpoint={malicious}", "would run code"),
        ("espnetv2:checkpoint={wrong}", "does not fit"),
        ("espnetv2:checkpoint={tmp}/absent.pth", "no checkpoint file"),
        ("label_seg:colour=1", "unexpected keyword argument 'colour'"),
    ],
)
def test_make_shards_teacher_errors_are_one_line(tmp_path, capsys, teacher, expected):
    sys.path.insert(0, str(ROOT / "data_prep"))
    try:
        from make_shards import main
    finally:
        sys.path.remove(str(ROOT / "data_prep"))
    from ffsplat.synthetic import SyntheticConfig, write_synthetic_scene

    write_synthetic_scene(tmp_path / "room", 1, SyntheticConfig(height=16, width=16, frames=8))
    spec = teacher.format(
        malicious=bad_file("malicious", tmp_path), wrong=bad_file("wrong_tensors", tmp_path), tmp=tmp_path
    )
    code = main(["--scene", str(tmp_path / "room"), "--out", str(tmp_path / "shards"), "--size", "16",
                 "--clip-length", "4", "--teacher", spec])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    last = err.strip().split("\n")[-1].split("\r")[-1]  # after the progress bar
    assert last.startswith(f"error: --teacher: teacher {spec.split(':')[0]}") and expected in last, err
    assert not (tmp_path / "shards").exists() and not (tmp_path / "pwned").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, expected",
    [
        ("optim.lrr=1", "error: config: optim.lrr: "),
        ("data.batch_size=true", "error: config: data.batch_size: "),
        ("model=nope", "error: config: In 'train': Could not find 'model/nope'"),
        ("optim.lr", "error: config: override 'optim.lr': "),
    ],
)
def test_hydra_override_mistakes_are_one_line_exit_2(tmp_path, override, expected):
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), override, f"hydra.run.dir={tmp_path / 'run'}",
                           f"checkpoint.dir={tmp_path / 'ck'}"], capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith(expected) and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "ck").exists()
