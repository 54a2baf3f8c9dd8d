"""Render speed and memory: forward and backward of ``ffsplat.render.renderer`` on per-pixel scenes.

A scene is ``V`` views of ``S x S`` pixels turned into one Gaussian per pixel (``V * S * S``
Gaussians, what the feed-forward model predicts), rendered back into the same ``V`` cameras with
RGB only or RGB + 64 feature channels. Each case runs in a fresh subprocess so that its peak
memory (CPU: growth of the process's max RSS; CUDA: ``max_memory_allocated``) is its own.

    python benchmarks/render.py                      # CPU, torch backend, all cases
    python benchmarks/render.py --device cuda        # CUDA: gsplat and torch backends side by side

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time


import torch  # noqa: E402

from ffsplat.core.benchmarking import PeakMemory, machine, run_case_subprocess  # noqa: E402
from ffsplat import Cameras
from ffsplat.render import RasterSettings, render  # noqa: E402
from ffsplat.render.init import gaussians_from_rgbd  # noqa: E402


def per_pixel_scene(size: int, views: int, channels: int, device: str):
    """Two views of a wavy textured wall at ~2 m, as per-pixel Gaussians; ``B = 1``."""
    gen = torch.Generator().manual_seed(0)
    focal = 0.9 * size
    k = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])
    c2w = torch.eye(4).repeat(views, 1, 1)
    c2w[:, 0, 3] = torch.linspace(-0.15, 0.15, views)
    cams = Cameras(k.expand(1, views, 3, 3).clone(), c2w[None], (size, size))
    v, u = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    depth = (2.0 + 0.2 * torch.sin(6 * math.pi * u) * torch.cos(4 * math.pi * v)).expand(1, views, size, size)
    images = torch.rand(1, views, 3, size, size, generator=gen)
    feats = {"feat": torch.randn(1, views, channels, size, size, generator=gen)} if channels else None
    g = gaussians_from_rgbd(images, depth.contiguous(), cams, footprint=1.0, features=feats)
    return g.to(device), cams.to(device)


def run_case(size: int, views: int, channels: int, backend: str, device: str, repeats: int) -> dict:
    g, cams = per_pixel_scene(size, views, channels, device)
    params = [g.means, g.scales, g.rotations, g.opacities, g.sh] + list(g.features.values())
    for p in params:
        p.requires_grad_(True)
    settings = RasterSettings(backend=backend)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    fwd, bwd, cpu = [], [], []
    with PeakMemory(device) as peak:
        for i in range(repeats + 1):  # the first run warms up (and JIT-compiles gsplat)
            sync()
            c0 = time.process_time()
            t0 = time.perf_counter()
            out = render(g, cams, settings=settings)
            sync()
            t1 = time.perf_counter()
            loss = out.rgb.square().sum() + out.depth.sum() + sum(f.square().sum() for f in out.features.values())
            loss.backward()
            sync()
            t2 = time.perf_counter()
            c2 = time.process_time()
            if i:
                fwd.append(t1 - t0)
                bwd.append(t2 - t1)
                cpu.append(c2 - c0)
            for p in params:
                p.grad = None
    return {
        "scene": f"{views}x{size}x{size}",
        "gaussians": g.num_gaussians,
        "channels": 3 + channels,
        "backend": backend,
        "device": device,
        "forward_s": round(statistics.median(fwd), 4),
        "backward_s": round(statistics.median(bwd), 4),
        "forward_backward_s": round(statistics.median(f + b for f, b in zip(fwd, bwd)), 4),
        # CPU seconds of this process (all threads): robust to other processes loading the machine.
        "forward_backward_cpu_s": round(statistics.median(cpu), 4),
        "peak_memory_mb": round(peak.mb, 1),
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--channels", type=int, nargs="+", default=[0, 64], help="feature channels beside RGB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--case", nargs=3, metavar=("SIZE", "CHANNELS", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:  # child process: one measurement
        size, channels, backend = int(args.case[0]), int(args.case[1]), args.case[2]
        print(json.dumps(run_case(size, args.views, channels, backend, args.device, args.repeats)))
        return

    backends = ["gsplat", "torch"] if args.device == "cuda" else ["torch"]
    results = []
    for size in args.sizes:
        for channels in args.channels:
            for backend in backends:
                repeats = args.repeats if size <= 128 or args.device == "cuda" else max(2, args.repeats // 2)
                case = ["--device", args.device, "--views", str(args.views), "--repeats", str(repeats),
                        "--case", str(size), str(channels), backend]  # fmt: skip
                results.append(run_case_subprocess(__file__, case))
    report = {"benchmark": "render", "machine": machine(), "results": results}
    if args.device == "cuda":
        by_key = {(r["scene"], r["channels"], r["backend"]): r for r in results}
        report["gsplat_speedup_over_torch_backend"] = {
            f"{scene}/{ch}ch": round(by_key[(scene, ch, "torch")]["forward_backward_s"] / r["forward_backward_s"], 2)
            for (scene, ch, backend), r in by_key.items()
            if backend == "gsplat"
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
