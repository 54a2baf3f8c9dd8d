"""Profile of per-scene baseline training steps (``ffsplat.baselines.trainer``) on CPU.

Fits plain 3DGS (:class:`SceneMethod`) to a synthetic room (``--views`` frames of ``--size``
pixels, one Gaussian per pixel from the exact depth) with ``configs/baseline/quick.yaml``, runs
``--warmup`` steps, then profiles ``--steps`` steps (the default window 90..120 contains the
densification at step 100) with cProfile and prints the top entries by cumulative and by own time,
followed by one JSON line (seconds per step, wall and CPU, Gaussians, threads). Steps run with
the config's ``cpu_threads`` intra-op threads (as ``SceneTrainer.fit``) unless ``--threads``.

    python benchmarks/profile_baseline.py --size 48 --steps 30 [--threads 2]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from ffsplat.baselines.trainer import SceneConfig, SceneMethod, SceneTrainer, intra_op_threads
from ffsplat.core.benchmarking import machine
from ffsplat.core.types import Cameras, Views
from ffsplat.synthetic import SyntheticConfig, make_scene, render_frame

QUICK = Path(__file__).resolve().parents[1] / "configs" / "baseline" / "quick.yaml"


def synthetic_scene(size: int, views: int, seed: int = 3) -> Views:
    """``views`` frames of synthetic room ``seed`` (RGB + exact depth), batch ``[1, V]``."""
    room, poses, k = make_scene(seed, SyntheticConfig(height=size, width=size, frames=12))
    frames = list(range(0, 12, max(1, 12 // views)))[:views]
    rendered = [render_frame(room, poses[i], k, size, size) for i in frames]
    images = torch.from_numpy(np.stack([r[0] for r in rendered]))[None].permute(0, 1, 4, 2, 3).float() / 255
    depths = torch.from_numpy(np.stack([r[1] for r in rendered]))[None].float()
    cams = Cameras(torch.from_numpy(k).float().expand(1, views, 3, 3).clone(),
                   torch.from_numpy(poses[frames]).float()[None], (size, size))  # fmt: skip
    return Views(images, cams, torch.tensor([0.3]), torch.tensor([8.0]), depths=depths)


def quick_config() -> SceneConfig:
    fields = yaml.safe_load(QUICK.read_text())
    fields.pop("method_iterations", None)
    return SceneConfig(**fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=90)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--threads", type=int, help="intra-op threads (default: the quick config's cpu_threads)")
    args = parser.parse_args()

    cfg = quick_config()
    if args.threads is not None:
        cfg.cpu_threads = args.threads
    torch.manual_seed(0)
    trainer = SceneTrainer(cfg, synthetic_scene(args.size, args.views), SceneMethod())
    with intra_op_threads(cfg.cpu_threads):  # as SceneTrainer.fit does
        threads = torch.get_num_threads()
        for _ in range(args.warmup):
            trainer.train_step(trainer.next_view())
        gaussians = trainer.num_gaussians
        profile = cProfile.Profile()
        wall, cpu = time.perf_counter(), time.process_time()
        profile.enable()
        for _ in range(args.steps):
            trainer.train_step(trainer.next_view())
        profile.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    for key in ("cumulative", "tottime"):
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats(key).print_stats(args.top)
        print(f"== top {args.top} by {key}\n" + text.getvalue().split("\n\n", 1)[-1].strip() + "\n")
    print(json.dumps({
        "machine": machine(), "size": args.size, "views": args.views, "steps": args.steps, "threads": threads,
        "first_step": args.warmup, "gaussians": [gaussians, trainer.num_gaussians],
        "wall_s_per_step": wall / args.steps, "cpu_s_per_step": cpu / args.steps,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
