"""What a training run reports (issue 29.6): one console line per validation, a line when
``stage.init_from`` was loaded, and a resumed run continuing the same wandb run."""

from __future__ import annotations

import torch

import train
from ffsplat.training.fit import make_logger
from tests.test_training import tiny_config


def test_validation_and_init_from_are_printed(tiny_shards, tmp_path, capsys, caplog):
    cfg = tiny_config(tiny_shards, tmp_path, optim__max_steps=2)
    cfg.trainer.val_every_n_steps = 2
    assert train.run(cfg) == 0
    err = capsys.readouterr().err
    val = [line for line in err.splitlines() if line.startswith("[val] step 2: ")]
    assert len(val) == 1 and "psnr" in val[0], err
    lang = tiny_config(tiny_shards, tmp_path, stage="lang", optim__max_steps=1)
    lang.stage.init_from = str(tmp_path / "checkpoints" / cfg.run_name / "model.pt")
    with caplog.at_level("INFO"):
        assert train.run(lang) == 0
    assert (
        f"[init] loaded {lang.stage.init_from} (stage.init_from; groups: all)" in caplog.text + capsys.readouterr().err
    )
    groups = [
        torch.load(tmp_path / "checkpoints" / c.run_name / "model.pt", weights_only=True)["trained_groups"]
        for c in (cfg, lang)
    ]
    assert groups == [["geometry", "segmentation"], ["geometry", "language", "segmentation"]]


def test_a_resumed_run_continues_its_wandb_run(tiny_shards, tmp_path):
    cfg = tiny_config(tiny_shards, tmp_path)
    cfg.logging.wandb_mode = "offline"
    first = make_logger(cfg, resuming=False)._wandb_init
    assert first["resume"] == "allow"
    assert make_logger(cfg, resuming=True)._wandb_init["id"] == first["id"]  # same wandb run
    assert make_logger(cfg, resuming=False)._wandb_init["id"] != first["id"]  # a fresh run: a new one
    assert (tmp_path / "checkpoints" / cfg.run_name / "wandb_id").read_text().strip() != first["id"]


def test_report_md_blames_the_data_only_for_columns_the_model_row_lacks():
    from ffsplat.evaluation.cli import COLUMNS, markdown

    model = {c: 0.5 for c in COLUMNS if c != "lpips"}
    teacher = {"target_miou": 0.4, "target_acc": 0.8}
    reasons = {c: "the shards hold no depth" for c in COLUMNS} | {"lpips": "no --lpips-vgg weights given"}
    md = markdown({"model": model, "teacher_2d": teacher}, reasons)
    assert "`lpips` is empty: no --lpips-vgg weights given" in md  # missing for the model too: the real reason
    assert "`depth_abs_rel` is empty in the `teacher_2d` row: not scored for the 2D teacher" in md
    assert "`psnr` is empty in the `teacher_2d` row" in md and "shards hold no depth" not in md
    assert "`target_miou` is empty" not in md
