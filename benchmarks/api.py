"""The public Python API end to end on one device: load -> predict -> save_ply / render / query, timed.

    python benchmarks/api.py --device cuda      # prints one JSON object

Uses the demo checkpoint and views (examples/demo). On CUDA, rendering goes through gsplat; the
numbers are per call after one warm-up, with the device synchronised.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import ffsplat

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo"


def timed(fn, device: str, repeats: int):
    fn()  # warm-up (kernel compilation, caches)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per step (after one warm-up)")
    args = p.parse_args(argv)
    model = ffsplat.load(device=args.device)
    views = [DEMO / "view_0.png", DEMO / "view_1.png"]
    scene, t_predict = timed(lambda: model.predict(views, cameras=DEMO / "cameras.json"), args.device, args.repeats)
    out, t_render = timed(lambda: scene.render(DEMO / "novel_cameras.json"), args.device, args.repeats)
    hit, t_query = timed(lambda: scene.query("chair"), args.device, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        _, t_ply = timed(lambda: scene.save_ply(Path(tmp) / "scene.ply"), args.device, 1)
    print(json.dumps({
        "device": args.device, "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "gaussians": int(scene.gaussians.num_gaussians), "gaussians_device": str(scene.gaussians.means.device),
        "render_shape": list(out["rgb"].shape), "rgb_range": [float(out["rgb"].min()), float(out["rgb"].max())],
        "chair_gaussians": int(hit.mask.sum()), "classes": scene.classes,
        "seconds": {"predict": round(t_predict, 4), "render": round(t_render, 4), "query": round(t_query, 4), "save_ply": round(t_ply, 4)},
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
