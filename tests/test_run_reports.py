"""What a training run reports (issue 29.6): one console line per validation, a line when
``stage.init_from`` was loaded, and a resumed run continuing the same wandb run."""

from __future__ import annotations

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
    assert f"[init] loaded {lang.stage.init_from} (stage.init_from; groups: all)" in caplog.text + capsys.readouterr().err


def test_a_resumed_run_continues_its_wandb_run(tiny_shards, tmp_path):
    cfg = tiny_config(tiny_shards, tmp_path)
    cfg.logging.wandb_mode = "offline"
    first = make_logger(cfg, resuming=False)._wandb_init
    assert first["resume"] == "allow"
    assert make_logger(cfg, resuming=True)._wandb_init["id"] == first["id"]  # same wandb run
    assert make_logger(cfg, resuming=False)._wandb_init["id"] != first["id"]  # a fresh run: a new one
    assert (tmp_path / "checkpoints" / cfg.run_name / "wandb_id").read_text().strip() != first["id"]
