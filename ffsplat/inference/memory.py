"""Refuse an inference that cannot fit in memory, before it runs (issue 28: ``--size`` 1024 takes
about 11 GB on CPU and minutes; 4096 would take ~16x that).

The estimate counts tensor memory exactly, at two small probe sizes: the network (and its
rendering of the input views) runs once at each under a :class:`LiveBytes` dispatch mode that
adds every tensor storage an operator creates and subtracts it when the storage is freed, so its
peak is the most tensor memory alive at once. Activation memory grows with the pixel count, so the
two peaks fit ``a + b * size^2``, evaluated at the working size; the process's resident memory
now (model, libraries) is added. The limit is the memory the machine has available
(``MemAvailable``; CUDA: the device's free memory), overridable with ``--max-memory-gb``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

PROBE_SIZES = (128, 192)
"""The two working sizes the network runs at to measure its tensor memory (multiples of 4)."""
ALLOCATOR_OVERHEAD = 1.3
"""Factor on the counted tensor bytes for the allocator's rounding and fragmentation."""


class LiveBytes(TorchDispatchMode):
    """Track the bytes of tensor storages created by operators while active; ``peak`` is the most
    alive at once (storages shared by views are counted once)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._holders: dict[int, list[int]] = {}  # storage address -> [tensors alive on it, bytes]

    def _release(self, key: int) -> None:
        entry = self._holders.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._holders[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if not key:
                    continue
                entry = self._holders.get(key)
                if entry is None:
                    entry = self._holders[key] = [0, storage.nbytes()]
                    self.live += entry[1]
                entry[0] += 1  # the storage is freed when the last tensor on it is
                weakref.finalize(t, self._release, key)
        self.peak = max(self.peak, self.live)
        return out


def tensor_peak(run: Callable[[], object]) -> int:
    """Peak bytes of tensors alive at once while ``run()`` executes (its result is dropped)."""
    with LiveBytes() as mode:
        run()
    return mode.peak


def fit_quadratic(sizes: tuple[int, int], peaks: tuple[int, int], size: int) -> float:
    """``a + b * size^2`` through the two ``(size, peak)`` points (b >= 0)."""
    (s1, s2), (p1, p2) = sizes, peaks
    b = max(0.0, (p2 - p1) / (s2 * s2 - s1 * s1))
    return max(p1, p2, p1 + b * (size * size - s1 * s1))


def resident_bytes() -> int:
    """This process's resident memory now (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        import os

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory this run may use: CUDA free memory, or ``MemAvailable`` of ``/proc/meminfo``; None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def estimate_bytes(run_at: Callable[[int], object], size: int, device: torch.device | str = "cpu") -> int:
    """Estimated peak memory of ``run_at(size)`` (bytes): on the CPU the resident memory now plus the
    fitted tensor peak; on CUDA the fitted tensor peak (the device holds nothing else of this run)."""
    peaks = tuple(tensor_peak(lambda s=s: run_at(s)) for s in PROBE_SIZES)
    tensors = fit_quadratic(PROBE_SIZES, peaks, size) * ALLOCATOR_OVERHEAD
    base = resident_bytes() if torch.device(device).type == "cpu" else 0
    return int(base + tensors)
