"""The README's interim main command (render the example room) runs end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffsplat.render.ply import read_ply

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_render_example_writes_pngs_and_ply(tmp_path):
    cmd = [sys.executable, str(ROOT / "examples/render_example.py"), "--out", str(tmp_path), "--views", "2",
           "--height", "48", "--width", "64"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "[3/3]" in done.stdout
    rgb = np.asarray(Image.open(tmp_path / "view_0_rgb.png"))
    depth = np.asarray(Image.open(tmp_path / "view_0_depth.png"))
    assert rgb.shape == (48, 64, 3) and depth.shape == (48, 64)
    assert rgb.std() > 10 and depth.max() == 255  # textured, and the nearest surface is brightest
    gaussians, _ = read_ply(tmp_path / "room.ply")
    assert gaussians.num_gaussians > 10_000
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


@pytest.mark.slow
def test_readme_main_command_runs_infer_on_the_example_views(tmp_path):
    """The README's main job: infer.py on the real example photos with the default (demo) checkpoint."""
    from ffsplat.checkpoint import load_model
    from ffsplat.core.config import DEMO_CHECKPOINT

    demo = ROOT / "examples" / "demo_real"
    out = tmp_path / "demo" / "scene.ply"
    cmd = [sys.executable, str(ROOT / "infer.py"), "--views", str(demo / "view_0.jpg"), str(demo / "view_1.jpg"),
           "--cameras", str(demo / "cameras.json"), "--out", str(out), "--render", "--query", "sofa", "--device", "cpu"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    gaussians, extra = read_ply(out)
    blob = load_model(DEMO_CHECKPOINT)
    size, classes = blob["image_size"], len(blob["class_names"])  # the demo model's training size, used by default
    assert size >= 128 and gaussians.num_gaussians == 2 * size * size
    import torch

    assert all(torch.isfinite(t).all() for t in (gaussians.means, gaussians.scales, gaussians.opacities, gaussians.sh))
    assert 0 <= extra["class_id"].min() and extra["class_id"].max() <= classes  # 0: background (unlabelled)
    import json

    counts = json.loads(out.with_suffix(".json").read_text())["class_counts"]
    assert sum(counts.values()) == gaussians.num_gaussians
    assert counts.get("unlabelled", 0) == int((extra["class_id"] == 0).sum())
    # ESPNetv2 sees the sofa in the first photo; the demo model's fields carry it into the Gaussians
    assert counts.get("sofa", 0) > 1000 and "query 'sofa':" in done.stdout
    sofa, _ = read_ply(out.with_name("scene_sofa.ply"))
    assert sofa.num_gaussians == counts["sofa"]
    rgb = np.asarray(Image.open(tmp_path / "demo" / "scene_render" / "view_0_rgb.png"))
    assert rgb.shape == (size, size, 3) and rgb.std() > 5
