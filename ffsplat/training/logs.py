"""Training logs: image panels for wandb (context, target, render, depth, class maps and feature PCA of
one target view) and plain-text progress lines that read well in a terminal and in a redirected log."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import lightning as L
import numpy as np
import torch
from torch import Tensor

from ffsplat.evaluation.figures import example_panels
from ffsplat.render.colormap import to_uint8


def wandb_images(panels: dict[str, Tensor]) -> list[np.ndarray]:
    """Float ``[3, H, W]`` panels in [0, 1] -> ``[H, W, 3]`` uint8 arrays, the 0-255 range ``wandb.Image``
    expects (float tensors were logged as-is and came out black)."""
    return [to_uint8(p).numpy() for p in panels.values()]


class ImageLogger(L.Callback):
    """Every ``every_n_steps`` steps, log a row of images for the batch's first target view."""

    def __init__(self, every_n_steps: int):
        self.every = every_n_steps

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.every or trainer.global_step % self.every or not trainer.is_global_zero:
            return
        logger = trainer.logger
        if logger is None or not hasattr(logger, "log_image"):
            return
        panels = example_panels(pl_module, batch)
        logger.log_image(key="train/views", images=wandb_images(panels), caption=list(panels), step=trainer.global_step)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLog(L.Callback):
    """Every ``every_n_steps`` optimiser steps one flushed line on ``stream`` (stderr by default):
    ``[train] step 100/5000 (2.0%) loss 0.4321 | 1.85 steps/s | elapsed 0:00:54 | eta 0:44:07``.

    Unlike a progress bar it needs no terminal, so a redirected log shows progress too.
    """

    def __init__(self, every_n_steps: int, stream: TextIO | None = None):
        self.every = every_n_steps
        self.stream = stream
        self._start: float | None = None
        self._first_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._first_step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.every or step % self.every or not trainer.is_global_zero or self._start is None:
            return
        elapsed = time.perf_counter() - self._start
        rate = (step - self._first_step) / max(elapsed, 1e-9)
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        parts = [f"[train] step {step}" + (f"/{total} ({100 * step / total:.1f}%)" if total else "")]
        if isinstance(loss, Tensor):
            parts[0] += f" loss {float(loss.detach()):.4f}"
        parts.append(f"{rate:.2f} steps/s")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if total and rate > 0:
            parts.append(f"eta {format_duration((total - step) / rate)}")
        print(" | ".join(parts), file=self.stream or sys.stderr, flush=True)
