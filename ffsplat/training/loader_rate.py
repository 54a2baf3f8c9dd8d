"""Warn once when the data loader cannot keep up with the training steps.

Between two training batches the loop waits for the DataLoader; during a batch it computes. Over the
first minutes of a run (after a few warm-up steps: worker start-up, first shard reads) the callback
adds both up. When the loop waited for data more than ``max_wait_fraction`` of the time, the loader,
not the accelerator, sets the pace, and the run says so once, with the rate the loader delivered, the
rate the steps would consume, and the ``data.num_workers`` that would close the gap
(``benchmarks/data.py --loader-report`` measures a shard kind's examples per CPU-second).
"""

from __future__ import annotations

import math
import time

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn


class LoaderRateWarning(L.Callback):
    """One warning per run if the loader is the bottleneck (see the module docstring).

    Args:
        batch_size: examples per step (per rank).
        num_workers: the DataLoader's workers (``data.num_workers``).
        warmup_steps: steps not counted (loader start-up).
        window_steps: steps measured after the warm-up; the verdict comes after these, or earlier
            once ``window_s`` seconds were measured (and at least ``min_steps`` steps).
        max_wait_fraction: waiting for data longer than this share of the measured time warns.
        clock: time source (tests pass a fake one).
    """

    def __init__(self, batch_size: int, num_workers: int, warmup_steps: int = 5, window_steps: int = 50,
                 window_s: float = 180.0, min_steps: int = 5, max_wait_fraction: float = 0.2, clock=time.perf_counter):  # fmt: skip
        self.batch_size, self.num_workers = batch_size, num_workers
        self.warmup_steps, self.window_steps, self.window_s, self.min_steps = (
            warmup_steps,
            window_steps,
            window_s,
            min_steps,
        )
        self.max_wait_fraction, self.clock = max_wait_fraction, clock
        self.seen = 0  # batches since the start of fit
        self.wait = self.compute = 0.0
        self.measured = 0
        self.done = False
        self.message: str | None = None
        self._batch_end: float | None = None
        self._batch_start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = self.clock()
        if not self.done and self.seen >= self.warmup_steps and self._batch_end is not None:
            self.wait += now - self._batch_end
        self._batch_start = now

    def on_validation_start(self, trainer, pl_module) -> None:
        self._batch_end = None  # validation is neither waiting for training data nor a training step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = self.clock()
        self.seen += 1
        if self.done:
            return
        if self.seen > self.warmup_steps:
            self.compute += now - self._batch_start
            self.measured += 1
        self._batch_end = now
        if self.measured >= self.window_steps or (
            self.measured >= self.min_steps and self.wait + self.compute >= self.window_s
        ):
            self.verdict()

    def verdict(self) -> None:
        """Decide once, from what was measured so far."""
        self.done = True
        total = self.wait + self.compute
        if self.measured == 0 or total <= 0 or self.wait / total <= self.max_wait_fraction:
            return
        delivered = self.measured * self.batch_size / total
        consumed = self.measured * self.batch_size / max(self.compute, 1e-9)
        workers = max(1, self.num_workers)
        self.message = (
            f"data loading is the bottleneck: over {self.measured} steps the loop waited for data "
            f"{100 * self.wait / total:.0f}% of the time; the loader delivered {delivered:.2f} examples/s, the steps "
            f"would consume {consumed:.2f} examples/s; data.num_workers={self.num_workers} -> about "
            f"{math.ceil(workers * consumed / delivered)} (one core each; benchmarks/data.py --loader-report measures "
            "a shard kind's examples per CPU-second)"
        )
        rank_zero_warn(self.message)
