"""benchmarks/speed_before_after.py: old tree exported from git, both trees measured in one run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "speed_before_after.py"


@pytest.mark.slow
def test_before_after_runs_both_trees_and_reports_json():
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        import pytest

        pytest.skip("not a git checkout")
    cmd = [sys.executable, str(SCRIPT), "--ref", "HEAD", "--sizes", "16", "--channels", "2", "--models",
           "--infer-size", "0", "--repeats", "2"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["before"]["commit"] == head.stdout.strip()
    (entry,) = report["results"]
    assert entry["case"] == {"kind": "render", "size": 16, "channels": 2}
    for side in ("before", "after"):
        row = entry[side]
        assert row["samples"] == 2 and row["seconds"] > 0 and row["forward_s"] > 0 and row["peak_memory_mb"] >= 0
        assert row["gaussians"] == 2 * 16 * 16
    assert entry["speedup"] > 0
    for side in ("before", "after"):
        assert entry[side]["seconds_min"] <= entry[side]["seconds"] <= entry[side]["seconds_max"]
    low, high = entry["speedup_min_max"]
    assert len(entry["speedup_per_round"]) == 2 and low == min(entry["speedup_per_round"]) and high >= low > 0


def test_unknown_ref_is_one_clear_error():
    done = subprocess.run([sys.executable, str(SCRIPT), "--ref", "no-such-revision-xyz", "--sizes", "16"],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert done.returncode != 0
    assert "--ref 'no-such-revision-xyz'" in done.stderr and "Traceback" not in done.stderr
