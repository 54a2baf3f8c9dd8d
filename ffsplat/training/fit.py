"""Train one stage: the Lightning Trainer with its callbacks, atomic checkpoints, resuming, the
wandb logger, and the slim ``model.pt`` export at the end (the library call behind ``ffsplat-train``)."""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ffsplat.core.atomic import atomic_open
from ffsplat.training.config import TrainConfig
from ffsplat.training.datamodule import ClipDataModule, EpochAndStep
from ffsplat.training.module import SemanticSplatModule, export_slim


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes to a temporary file and renames it into place, so a
    kill during saving never leaves a truncated ``last.ckpt``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        from ffsplat.training.guards import NonFiniteCheckpointError, nonfinite_tensors

        bad = nonfinite_tensors(checkpoint.get("state_dict", {}))
        if bad:  # never write a checkpoint that resumes into NaN
            raise NonFiniteCheckpointError(
                f"refusing to write {path}: non-finite weights in {len(bad)} tensors (e.g. {bad[:3]})"
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as f:  # also removes temporary files a killed run left for this name
            torch.save(checkpoint, f)


def resume_path(cfg: TrainConfig) -> str | None:
    """The checkpoint to resume from: ``checkpoint.resume`` resolved (``auto`` -> existing last.ckpt)."""
    resume = cfg.checkpoint.resume
    if resume is None:
        return None
    if resume == "auto":
        from ffsplat.training.guards import find_resume

        path, note = find_resume(Path(cfg.checkpoint.dir) / cfg.run_name)
        if note:
            print(f"warning: {note}", file=sys.stderr, flush=True)
        return path
    if not Path(resume).is_file():
        raise FileNotFoundError(f"checkpoint.resume: no checkpoint at {resume}")
    return resume


def wandb_run_id(run_dir: Path, resuming: bool) -> str:
    """The wandb run id of ``checkpoints/<run_name>/``: kept in its ``wandb_id`` file, so a resumed run
    continues the same wandb run; a fresh run (not resuming) gets a new id."""
    path = run_dir / "wandb_id"
    if resuming and path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    if (
        os.environ.get("RANK", "0") != "0"
        or os.environ.get("LOCAL_RANK", "0") != "0"
        or os.environ.get("NODE_RANK", "0") != "0"
    ):
        return run_id  # only global rank 0 logs to wandb (and keeps the id)
    from ffsplat.core.atomic import atomic_open

    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:
        f.write(run_id + "\n")
    return run_id


def make_logger(cfg: TrainConfig, resuming: bool = False):
    """The wandb logger (or False); ``resuming``: continue the run's wandb run (:func:`wandb_run_id`)."""
    mode = cfg.logging.wandb_mode
    if mode == "disabled":
        return False
    if mode not in ("offline", "online"):
        raise ValueError(f"logging.wandb_mode={mode!r}; choose offline, online or disabled")
    from lightning.pytorch.loggers import WandbLogger

    Path(cfg.logging.save_dir).mkdir(parents=True, exist_ok=True)
    run_id = wandb_run_id(Path(cfg.checkpoint.dir) / cfg.run_name, resuming)
    return WandbLogger(
        project=cfg.logging.project, name=cfg.run_name, save_dir=cfg.logging.save_dir,
        offline=mode == "offline", config=asdict(cfg), id=run_id, resume="allow",
    )  # fmt: skip


def fit(cfg: TrainConfig, callbacks: list[L.Callback] | None = None) -> SemanticSplatModule:
    """Train one stage as configured; resumes from ``last.ckpt`` when asked; writes ``model.pt``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ffsplat.training.guards import NonFiniteGuard, deterministic_mode, print_data_report
    from ffsplat.training.loader_rate import LoaderRateWarning
    from ffsplat.training.logs import ImageLogger, ProgressLog

    L.seed_everything(cfg.trainer.seed, workers=True)
    run_dir = Path(cfg.checkpoint.dir) / cfg.run_name
    checkpoints = ModelCheckpoint(
        dirpath=run_dir, filename="step={step}", auto_insert_metric_name=False,
        every_n_train_steps=cfg.checkpoint.every_n_steps, save_last=True, save_top_k=-1,
        enable_version_counter=False,  # always last.ckpt, never last-vN.ckpt (auto-resume reads the newest)
    )  # fmt: skip
    t = cfg.trainer
    resume = resume_path(cfg)
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=t.precision, max_steps=cfg.optim.max_steps, logger=make_logger(cfg, resume is not None),
        callbacks=[checkpoints, EpochAndStep(), ImageLogger(cfg.logging.images_every_n_steps),
                   ProgressLog(cfg.logging.progress_every_n_steps),
                   NonFiniteGuard(cfg.optim.max_nonfinite_steps),
                   LoaderRateWarning(cfg.data.batch_size, cfg.data.num_workers)] + list(callbacks or []),
        plugins=[AtomicCheckpointIO()], gradient_clip_val=cfg.optim.grad_clip or None,
        val_check_interval=t.val_every_n_steps or None, check_val_every_n_epoch=None if t.val_every_n_steps else 1,
        log_every_n_steps=t.log_every_n_steps, deterministic=deterministic_mode(t), use_distributed_sampler=False,
        default_root_dir=cfg.logging.save_dir,
    )  # fmt: skip
    module = SemanticSplatModule(cfg)
    data = ClipDataModule(cfg)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume)
    finally:
        if trainer.is_global_zero and data.train_set is not None:  # the run's list of skipped bad shard data
            print_data_report(data.train_set.corrupt.summary(), run_dir / "bad_samples.json")
    if trainer.is_global_zero:
        export_slim(module, run_dir / "model.pt")
    return module
