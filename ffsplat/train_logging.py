"""Training image logs: target, render, depth, feature PCA and class map of one target view."""

from __future__ import annotations

import lightning as L
import torch

from ffsplat.metrics import classify_by_embeddings
from ffsplat.model.network import LANG, SEG
from ffsplat.render import render
from ffsplat.visualize import colorize_depth, colorize_labels, feature_pca


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
        images = self.panels(pl_module, batch)
        logger.log_image(key="train/views", images=list(images.values()), caption=list(images), step=trainer.global_step)

    @staticmethod
    def panels(pl_module, batch) -> dict[str, torch.Tensor]:
        """Name -> ``[3, H, W]`` image for the first target view of ``batch``."""
        needs_teacher = bool(pl_module.cfg.model.conditioning.names)
        out = pl_module(batch.context, pl_module.teacher_maps(batch.context) if needs_teacher else None)
        target = batch.target
        rendered = render(out.gaussians[:1], target.cameras[:1, :1], features=[SEG, LANG])
        h, w = target.images.shape[-2:]
        decoded = pl_module.model.decode_fields(rendered.features, {"sam": (h, w), "lseg": (h, w)})
        panels = {
            "target": target.images[0, 0],
            "render": rendered.rgb[0, 0].clamp(0, 1),
            "depth": colorize_depth(rendered.depth[0, 0]),
            "seg_pca": feature_pca(decoded["sam"][0, 0]),
            "lang_pca": feature_pca(decoded["lseg"][0, 0]),
            "classes": colorize_labels(classify_by_embeddings(decoded["lseg"][0], pl_module._class_embeddings)[0]),
        }
        if target.labels is not None:
            panels["gt_classes"] = colorize_labels(target.labels[0, 0])
        return {k: v.float().cpu() for k, v in panels.items()}
