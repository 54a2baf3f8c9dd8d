"""Shared helpers of the benchmark scripts in benchmarks/ (machine description, timing, peak memory, one case per subprocess)."""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch


def machine() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "torch": torch.__version__,
    }


def run_case_subprocess(script: str, args: list[str]) -> dict:
    """Run ``python script args`` (one case) and return the JSON it prints last."""
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark case {args} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class PeakMemory:
    """Peak memory of a block: CUDA ``max_memory_allocated`` or the growth of this process's max RSS
    (so run one case per process on CPU)."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            self.mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.base) / 1024


def median_time(fn: Callable[[], None], repeats: int, device: str) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up run."""
    times = []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


WORK_MARKER = ".ffsplat-benchmark-work"
"""Written into a benchmark's work folder when it is claimed: only such folders are ever cleared."""


def claim_work_dir(path, option: str = "--work"):
    """A benchmark's scratch folder: created (with :data:`WORK_MARKER`) when missing, reused when it has
    the marker (an earlier run's data), refused (:class:`~ffsplat.core.errors.InputError`) when it is an
    existing folder of the user's, so a benchmark never writes into, or clears, a folder it did not make."""
    from pathlib import Path

    from ffsplat.core.errors import InputError, check_output_dir

    path = Path(path)
    check_output_dir(option, path)
    if path.is_dir() and not (path / WORK_MARKER).is_file() and any(path.iterdir()):
        raise InputError(
            f"{option}: {path} is an existing folder that a benchmark did not make ({WORK_MARKER} missing); "
            "give a new or empty folder"
        )
    path.mkdir(parents=True, exist_ok=True)
    (path / WORK_MARKER).touch()
    return path


def clear_work_dir(path, option: str = "--work"):
    """Empty a benchmark's work folder for a fresh run (:func:`claim_work_dir` first: a folder of the user's
    is refused, never removed); returns it."""
    import shutil

    path = claim_work_dir(path, option)
    for entry in path.iterdir():
        if entry.name != WORK_MARKER:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    return path
