"""Cost of two model kernels at paper shapes: the plane-sweep cost volume and ``rotate_sh``.

* ``cost_volume``: ``correlation_cost_volume`` for 2 views of 128-channel 64x64 features
  (the paper config at 256x256) and 128 depth candidates, forward only.
* ``rotate_sh``: degree-4 SH of 2x256x256 per-pixel Gaussians rotated by per-view rotations.

Each case runs in a fresh subprocess (peak memory = growth of max RSS). Times are medians after one
warm-up; ``cpu_s`` is this process's CPU time (all threads), robust to other load on the machine.
Run the script from an older checkout to get "before" figures with the same harness.

    python benchmarks/kernels.py

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ffsplat.core.benchmarking import PeakMemory, machine, run_case_subprocess  # noqa: E402


def run_case(name: str, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    if name == "cost_volume":
        from ffsplat.model.cost_volume import correlation_cost_volume

        v, c, h, w, d = 2, 128, 64, 64, 128
        feats = torch.randn(1, v, c, h, w, generator=gen)
        k = torch.tensor([[0.9 * w, 0, w / 2], [0, 0.9 * w, h / 2], [0, 0, 1.0]]).expand(1, v, 3, 3).clone()
        c2w = torch.eye(4).repeat(1, v, 1, 1)
        c2w[0, :, 0, 3] = torch.linspace(-0.3, 0.3, v)
        depths = (1.0 / torch.linspace(1 / 0.5, 1 / 10.0, d)).expand(1, v, d)

        def fn():
            with torch.no_grad():
                correlation_cost_volume(feats, k, c2w, depths)

        shape = f"features [1, {v}, {c}, {h}, {w}], D={d}"
    elif name == "rotate_sh":
        from ffsplat.core.geometry import quat_to_rotmat
        from ffsplat.core.sh import rotate_sh

        coeffs = torch.randn(1, 2, 256 * 256, 25, 3, generator=gen)
        rot = quat_to_rotmat(torch.randn(1, 2, 1, 4, generator=gen))

        def fn():
            with torch.no_grad():
                rotate_sh(coeffs, rot)

        shape = "coeffs [1, 2, 65536, 25, 3], rot [1, 2, 1, 3, 3]"
    else:
        raise SystemExit(f"error: unknown case {name!r}")
    wall, cpu = [], []
    with PeakMemory("cpu") as peak:
        for i in range(repeats + 1):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            if i:
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    return {"case": name, "shape": shape, "seconds": round(statistics.median(wall), 4),
            "cpu_s": round(statistics.median(cpu), 4), "peak_memory_mb": round(peak.mb, 1), "repeats": repeats}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.repeats)))
        return
    results = [
        run_case_subprocess(__file__, ["--repeats", str(args.repeats), "--case", c])
        for c in ("cost_volume", "rotate_sh")
    ]
    print(json.dumps({"benchmark": "kernels", "machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
