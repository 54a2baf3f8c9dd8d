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
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


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


def make_logger(cfg: TrainConfig):
    mode = cfg.logging.wandb_mode
    if mode == "disabled":
        return False
    if mode not in ("offline", "online"):
        raise ValueError(f"logging.wandb_mode={mode!r}; choose offline, online or disabled")
    from lightning.pytorch.loggers import WandbLogger

    Path(cfg.logging.save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=cfg.logging.project, name=cfg.run_name, save_dir=cfg.logging.save_dir,
        offline=mode == "offline", config=asdict(cfg),
    )  # fmt: skip


def fit(cfg: TrainConfig, callbacks: list[L.Callback] | None = None) -> SemanticSplatModule:
    """Train one stage as configured; resumes from ``last.ckpt`` when asked; writes ``model.pt``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ffsplat.training.guards import NonFiniteGuard, print_data_report
    from ffsplat.training.loader_rate import LoaderRateWarning
    from ffsplat.training.logs import ImageLogger, ProgressLog

    L.seed_everything(cfg.trainer.seed, workers=True)
    run_dir = Path(cfg.checkpoint.dir) / cfg.run_name
    checkpoints = ModelCheckpoint(
        dirpath=run_dir, filename="step={step}", auto_insert_metric_name=False,
        every_n_train_steps=cfg.checkpoint.every_n_steps, save_last=True, save_top_k=-1,
    )  # fmt: skip
    t = cfg.trainer
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=t.precision, max_steps=cfg.optim.max_steps, logger=make_logger(cfg),
        callbacks=[checkpoints, EpochAndStep(), ImageLogger(cfg.logging.images_every_n_steps),
                   ProgressLog(cfg.logging.progress_every_n_steps),
                   NonFiniteGuard(cfg.optim.max_nonfinite_steps),
                   LoaderRateWarning(cfg.data.batch_size, cfg.data.num_workers)] + list(callbacks or []),
        plugins=[AtomicCheckpointIO()], gradient_clip_val=cfg.optim.grad_clip or None,
        val_check_interval=t.val_every_n_steps or None, check_val_every_n_epoch=None if t.val_every_n_steps else 1,
        log_every_n_steps=t.log_every_n_steps, deterministic=t.deterministic, use_distributed_sampler=False,
        default_root_dir=cfg.logging.save_dir,
    )  # fmt: skip
    module = SemanticSplatModule(cfg)
    data = ClipDataModule(cfg)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_path(cfg))
    finally:
        if trainer.is_global_zero and data.train_set is not None:  # the run's list of skipped bad shard data
            print_data_report(data.train_set.corrupt.summary(), run_dir / "bad_samples.json")
    if trainer.is_global_zero:
        export_slim(module, run_dir / "model.pt")
    return module
