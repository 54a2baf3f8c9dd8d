"""Training image logs: context, target, render, depth, class maps and feature PCA of one target view."""

from __future__ import annotations

import lightning as L
import torch

from ffsplat.evaluation.figures import example_panels


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
        images = example_panels(pl_module, batch)
        logger.log_image(key="train/views", images=list(images.values()), caption=list(images), step=trainer.global_step)
