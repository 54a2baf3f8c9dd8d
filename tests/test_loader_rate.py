"""train.py warns once when the data loader is slower than the steps (issue 33, part 4)."""

from __future__ import annotations

import warnings

import pytest

from ffsplat.training.loader_rate import LoaderRateWarning


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run(callback: LoaderRateWarning, clock: Clock, steps: int, wait: float, compute: float) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(steps):
            clock.now += wait  # the loop waits for the next batch
            callback.on_train_batch_start(None, None, None, i)
            clock.now += compute
            callback.on_train_batch_end(None, None, None, None, i)
    return [str(w.message) for w in caught]


def test_a_slow_loader_warns_once_with_the_rates_and_the_workers_needed():
    clock = Clock()
    callback = LoaderRateWarning(batch_size=4, num_workers=2, warmup_steps=3, window_steps=10, clock=clock)
    # warm-up steps are slow (worker start-up) but not counted; then 0.3 s waiting per 0.1 s step
    assert run(callback, clock, 3, wait=5.0, compute=0.1) == []
    messages = run(callback, clock, 40, wait=0.3, compute=0.1)
    assert len(messages) == 1
    (message,) = messages
    assert "waited for data 75% of the time" in message
    assert "delivered 10.00 examples/s" in message and "consume 40.00 examples/s" in message
    assert "data.num_workers=2 -> about 8" in message


@pytest.mark.parametrize("wait", [0.0, 0.01])
def test_a_loader_that_keeps_up_stays_quiet(wait):
    clock = Clock()
    callback = LoaderRateWarning(batch_size=4, num_workers=2, warmup_steps=2, window_steps=10, clock=clock)
    assert run(callback, clock, 30, wait=wait, compute=0.1) == [] and callback.done


def test_the_verdict_comes_after_the_time_window_on_slow_steps():
    clock = Clock()
    callback = LoaderRateWarning(batch_size=1, num_workers=0, warmup_steps=0, window_steps=1000, window_s=60,
                                 min_steps=5, clock=clock)  # fmt: skip
    messages = run(
        callback, clock, 10, wait=10.0, compute=2.0
    )  # 12 s per step (the first wait precedes any batch): 62 s after 6
    assert len(messages) == 1 and callback.measured == 6 and "data.num_workers=0 -> about 6" in messages[0]
