"""benchmarks/gpu_check.py as the GPU machine will run it, rehearsed on CPU (issue 27): the GPU
configuration at a tiny size (paper model, bf16-mixed, DataLoader workers, 4 target views) with only
the packages of the GPU image (``--rehearse``: no segment_anything, wandb, hydra, lpips), every step
in order, a summary rewritten after each step, and at most 8 output files (the device tool's limit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_rehearsal(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), GPU_CHECK_WORK=str(tmp_path / "work" / "w"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--rehearse"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert done.returncode == 0 and summary["ok"], json.dumps(summary, indent=1)[-3000:]
    steps = summary["steps"]
    assert list(steps) == ["compile", "env", "preflight", "data", "parity", "train", "model", "tests", "render"]
    assert (
        summary["rehearsal"]["site"] and "segment-anything" not in (REPO / "benchmarks" / "gpu_image.txt").read_text()
    )
    train = steps["train"]["result"]
    assert train["model"] == "paper" and train["precision"] == "bf16-mixed" and train["target_views"] == 4
    assert train["num_workers"] == 2 and train["weights_finite"] and train["model_pt"]
    assert steps["preflight"]["result"]["paper_model_parameters"] > 10_000_000
    assert steps["model"]["result"]["eager_bf16_s"] > 0
    assert "passed" in steps["tests"]["pytest"]
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(files) <= 8 and {"summary.json", "setup.log", "train.log", "compile.log"} <= set(files), files
    assert "[gpu_check] train" in done.stderr


@pytest.mark.slow
def test_a_failing_preflight_stops_the_run_with_one_line(tmp_path):
    """A training stack that cannot start stops the check at once (the rest would fail the same way)."""
    env = dict(os.environ, OUT=str(tmp_path / "out"), GPU_CHECK_WORK=str(tmp_path / "work" / "w"), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = f"{tmp_path / 'broken'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    (tmp_path / "broken" / "lightning").mkdir(parents=True)
    (tmp_path / "broken" / "lightning" / "__init__.py").write_text("raise ImportError('lightning is broken here')\n")
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--budget", "60"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert done.returncode == 1 and "lightning is broken here" in summary["stopped"]
    assert [line for line in done.stderr.splitlines() if line.startswith("error: gpu_check stopped")]
    assert set(summary["steps"]) == {"compile", "env", "preflight"}
