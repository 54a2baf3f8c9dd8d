"""Training and evaluation logs: wandb gets 0-255 images (float ones came out black), progress lines
are plain flushed text (readable in a redirected log), figures carry titles and a class legend."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import torch

import ffsplat  # noqa: F401
from ffsplat.evaluation.figures import CLASS_PALETTE, figure_row
from ffsplat.training import logs


def panels() -> dict[str, torch.Tensor]:
    return {"render": torch.full((3, 8, 8), 0.5), "classes": CLASS_PALETTE[4][:, None, None].expand(3, 8, 8)}


def test_wandb_images_are_uint8_hwc_in_0_255():
    images = logs.wandb_images(panels())
    assert all(im.dtype == np.uint8 and im.shape == (8, 8, 3) for im in images)
    assert images[0].max() == 128 and images[1][0, 0].tolist() == [214, 39, 40]


def test_image_logger_sends_uint8_images_that_wandb_keeps_bright(monkeypatch):
    import wandb

    monkeypatch.setattr(logs, "example_panels", lambda module, batch: panels())
    logged = {}

    class Logger:
        def log_image(self, key, images, caption, step):
            logged.update(key=key, images=images, caption=caption, step=step)

    trainer = SimpleNamespace(global_step=10, is_global_zero=True, logger=Logger())
    logs.ImageLogger(5).on_train_batch_end(trainer, None, None, None, 0)
    assert logged["caption"] == ["render", "classes"] and logged["step"] == 10
    pixels = np.asarray(wandb.Image(logged["images"][0]).image)  # what the panel shows
    assert pixels.dtype == np.uint8 and pixels.max() == 128


def test_progress_log_lines(monkeypatch):
    stream = io.StringIO()
    callback = logs.ProgressLog(2, stream)
    trainer = SimpleNamespace(global_step=0, is_global_zero=True, max_steps=8)
    clock = iter([100.0, 104.0, 108.0])
    monkeypatch.setattr(logs.time, "perf_counter", lambda: next(clock))
    callback.on_train_start(trainer, None)
    for step, loss in ((1, 0.9), (2, 0.5), (3, 0.4), (4, 0.25)):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, 0)
    lines = stream.getvalue().splitlines()
    assert lines == [
        "[train] step 2/8 (25.0%) loss 0.5000 | 0.50 steps/s | elapsed 0:00:04 | eta 0:00:12",
        "[train] step 4/8 (50.0%) loss 0.2500 | 0.50 steps/s | elapsed 0:00:08 | eta 0:00:08",
    ]
    assert "\r" not in stream.getvalue()


def test_figure_row_has_titles_and_legend():
    row = figure_row(panels(), ["wall", "floor", "ceiling", "chair", "table", "sofa", "bed", "other"], scale=4)
    assert row.dtype == np.uint8 and row.shape[1] >= 2 * 32 and row.shape[0] > 14 + 32 + 12
    chair = np.array([214, 39, 40], dtype=np.uint8)
    legend = row[14 + 32 + 4 :]
    assert (legend == chair).all(-1).sum() > 50  # the chair swatch sits in the legend strip
    assert (row[:14] < 128).any()  # dark title text above the panels
