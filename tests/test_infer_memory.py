"""Issue 28: infer.py estimates its peak memory before running a large ``--size`` and refuses, in
one line with the estimate and the limit, what cannot fit; the estimate is checked against a
measured peak."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import infer
from ffsplat.inference.memory import LiveBytes, fit_quadratic, tensor_peak
from tests.test_infer import checkpoint, inputs, room_views  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]


def test_live_bytes_counts_the_peak_of_tensors_alive_at_once():
    def work():
        a = torch.ones(1000, 1000)  # 4 MB
        b = a * 2  # 8 MB alive
        del a
        c = b + 1  # 8 MB alive again (a freed)
        v = c.view(-1)  # a view: no new storage
        return v.sum()

    peak = tensor_peak(work)
    assert 8_000_000 <= peak < 8_100_000, peak
    with LiveBytes() as mode:
        x = torch.zeros(250_000)  # 1 MB
        y = x[:10]
        del x
        assert mode.live >= 1_000_000  # the view keeps the storage (and its base tensor) alive
        del y
    assert mode.live < 1_000_000 and mode.peak >= 1_000_000
    assert fit_quadratic((100, 200), (1000, 4000), 400) == pytest.approx(1000 + 0.1 * (160_000 - 10_000))


@pytest.mark.slow
def test_a_size_that_cannot_fit_is_refused_in_one_line_with_the_estimate_and_the_limit(
    tmp_path,
    checkpoint,  # noqa: F811  (fixture)
    inputs,  # noqa: F811  (fixture)
    capsys,
):
    views, cameras = inputs
    out = tmp_path / "res" / "scene.ply"
    code = infer.main([*["--views", *map(str, views)], "--cameras", str(cameras), "--out", str(out), "--checkpoint", str(checkpoint),
                       "--device", "cpu", "--size", "512", "--max-memory-gb", "0.05"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --size: 512x512 with 2 views needs about ") and err.count("\n") == 1, (
        err
    )
    assert "GB (estimated) but the limit is 0.05 GB (--max-memory-gb)" in err, err
    assert not (tmp_path / "res").exists()


MEASURE = """
import resource, sys
import infer
code = infer.main(sys.argv[1:])
print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
sys.exit(code)
"""


@pytest.mark.slow
def test_the_estimate_matches_a_measured_peak(tmp_path, checkpoint, inputs):  # noqa: F811
    """The estimate at --size 256 (probes at 128 and 192) against the process's measured peak RSS."""
    import ffsplat.inference.cli as cli
    from ffsplat.inference import memory

    views, cameras = inputs
    argv = [*["--views", *map(str, views)], "--cameras", str(cameras), "--checkpoint", str(checkpoint), "--device", "cpu",
            "--size", "256"]  # fmt: skip
    estimates = []
    real = memory.estimate_bytes

    def spy(*a, **k):
        estimates.append(real(*a, **k))
        return estimates[-1]

    memory.estimate_bytes = spy
    try:  # the estimate, in this process, with a limit it meets
        assert infer.main([*argv, "--out", str(tmp_path / "a" / "s.ply"), "--max-memory-gb", "100"]) == 0
    finally:
        memory.estimate_bytes = real
    assert cli is not None and len(estimates) == 1
    done = subprocess.run([sys.executable, "-c", MEASURE, *argv, "--out", str(tmp_path / "b" / "s.ply")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    peak = int(done.stdout.split("PEAK")[-1])
    print(f"estimate {estimates[0] / 2**20:.0f} MiB, measured peak {peak / 2**20:.0f} MiB")
    assert 0.75 * peak <= estimates[0] <= 1.5 * peak, (estimates[0] / 2**20, peak / 2**20)
