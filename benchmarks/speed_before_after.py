"""Before/after speed and memory in one run: an older revision of the repository against this tree.

The old tree is exported with ``git archive REF`` into a temporary directory; every measurement
runs in a fresh subprocess whose ``PYTHONPATH`` and working directory are one of the two trees,
so ``import ffsplat`` (and ``import infer``) resolve to that tree. Both trees run the *same* case
code (this file), using only APIs that exist in both. Repetitions alternate old/new (old first
on even rounds, new first on odd ones), so slow drifts of the machine's load hit both sides alike.

Cases (each ``--repeats`` times per tree, each process: one warm-up + ``--inner`` timed runs):

* ``render``: ``V=2`` per-pixel scenes of ``S x S`` (``--sizes``) with RGB + depth + ``--channels``
  feature channels, torch backend: forward, backward, forward+backward seconds and CPU seconds.
* ``model``: ``--models`` (small at 2x64x64, paper at 2x256x256) forward (no grad) and
  forward+backward with random images and SAM/LSeg conditioning.
* ``infer``: ``infer.py`` on the two demo views at ``--infer-size`` with ``--render`` (each tree's
  own demo checkpoint unless ``--checkpoint``); total and per-stage seconds.

Speed-up: the ratio of the sides' medians (``speedup``), each round's own ratio (``speedup_per_round``:
round ``r`` runs both trees back to back) and their range (``speedup_min_max``); per side the
median, min and max seconds over all timed runs.

Peak memory: on CPU, the growth of the subprocess's max RSS (``resource.getrusage(RUSAGE_SELF)
.ru_maxrss``) over the timed block (after imports and input construction), one case per process,
so it is that case's own peak of process memory (tensors, allocator caches and all); not
tracemalloc, which does not see torch's allocations. On CUDA, ``torch.cuda.max_memory_allocated``.
Reported per side: the median over repetitions (``peak_memory_mb``) and the maximum.

    python benchmarks/speed_before_after.py --ref 8094da2            # full run (CPU)
    python benchmarks/speed_before_after.py --sizes 64 --models small --infer-size 0 --repeats 1

``REF`` defaults to 8094da2, the commit before issue 18's speed work (compositor, cost volume,
rotate_sh, transformer, inference reuse). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REF = "8094da2"


def _helpers():
    """This tree's ffsplat/core/benchmarking.py, loaded by path (the old tree may not have it)."""
    spec = importlib.util.spec_from_file_location(
        "_ffsplat_benchmarking", ROOT / "ffsplat" / "core" / "benchmarking.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# Cases (run in a child process whose sys.path starts with one tree)


def _timed(fn, inner: int, device: str) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of ``inner`` runs of ``fn`` after one warm-up."""
    import torch

    wall, cpu = [], []
    for i in range(inner + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    return wall, cpu


def case_render(size: int, channels: int, device: str, inner: int, helpers) -> dict:
    import math

    import torch

    from ffsplat import Cameras
    from ffsplat.render import RasterSettings, render
    from ffsplat.render.init import gaussians_from_rgbd

    views, gen = 2, torch.Generator().manual_seed(0)
    focal = 0.9 * size
    k = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])
    c2w = torch.eye(4).repeat(views, 1, 1)
    c2w[:, 0, 3] = torch.linspace(-0.15, 0.15, views)
    cams = Cameras(k.expand(1, views, 3, 3).clone(), c2w[None], (size, size))
    v, u = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    depth = (2.0 + 0.2 * torch.sin(6 * math.pi * u) * torch.cos(4 * math.pi * v)).expand(1, views, size, size)
    images = torch.rand(1, views, 3, size, size, generator=gen)
    feats = {"feat": torch.randn(1, views, channels, size, size, generator=gen)} if channels else None
    g = gaussians_from_rgbd(images, depth.contiguous(), cams, footprint=1.0, features=feats).to(device)
    cams = cams.to(device)
    params = [g.means, g.scales, g.rotations, g.opacities, g.sh] + list(g.features.values())
    for p in params:
        p.requires_grad_(True)
    settings = RasterSettings(backend="torch")
    split: list[tuple[float, float]] = []

    def step() -> None:
        t0 = time.perf_counter()
        out = render(g, cams, settings=settings)
        if device == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        loss = out.rgb.square().sum() + out.depth.sum() + sum(f.square().sum() for f in out.features.values())
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        split.append((t1 - t0, time.perf_counter() - t1))
        for p in params:
            p.grad = None

    with helpers.PeakMemory(device) as peak:
        wall, cpu = _timed(step, inner, device)
    split = split[1:]
    return {"forward_s": [s[0] for s in split], "backward_s": [s[1] for s in split], "seconds": wall,
            "cpu_s": cpu, "peak_memory_mb": peak.mb, "gaussians": g.num_gaussians}  # fmt: skip


def case_model(config: str, size: int, mode: str, device: str, inner: int, helpers) -> dict:
    import torch

    from ffsplat.core.config import group_file, to_dataclass
    from ffsplat.core.types import Cameras, Views
    from ffsplat.model.network import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(to_dataclass(ModelConfig, group_file("model", config))).to(device)
    views = 2
    k = torch.tensor([[0.9 * size, 0, size / 2], [0, 0.9 * size, size / 2], [0, 0, 1.0]]).expand(1, views, 3, 3)
    c2w = torch.eye(4).repeat(1, views, 1, 1)
    c2w[0, :, 0, 3] = torch.linspace(-0.3, 0.3, views)
    context = Views(
        torch.rand(1, views, 3, size, size),
        Cameras(k.clone(), c2w, (size, size)),
        torch.tensor([0.5]),
        torch.tensor([10.0]),
    ).to(device)
    cond = {"sam": torch.randn(1, views, 256, 64, 64), "lseg": torch.randn(1, views, 512, size // 2, size // 2)}
    cond = {name: t.to(device) for name, t in cond.items()}

    def forward() -> None:
        with torch.no_grad():
            model(context, cond)

    def forward_backward() -> None:
        g = model(context, cond).gaussians
        loss = g.means.mean() + g.opacities.mean() + g.sh.mean() + sum(f.mean() for f in g.features.values())
        loss.backward()
        model.zero_grad(set_to_none=True)

    with helpers.PeakMemory(device) as peak:
        wall, cpu = _timed(forward_backward if mode == "forward_backward" else forward, inner, device)
    return {"seconds": wall, "cpu_s": cpu, "peak_memory_mb": peak.mb}


def case_infer(size: int, checkpoint: str | None, device: str, inner: int, helpers, tree: Path) -> dict:
    import contextlib
    import io

    import infer  # the tree's infer.py (entry point)

    demo = tree / "examples" / "demo"
    stages: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(inner + 1))

        def once() -> None:
            out = Path(tmp) / f"run{next(runs)}" / "scene.ply"
            argv = ["--views", str(demo / "view_0.png"), str(demo / "view_1.png"), "--cameras", str(demo / "cameras.json"),
                    "--checkpoint", str(checkpoint or tree / "checkpoints" / "demo" / "model.pt"), "--out", str(out), "--size", str(size),
                    "--render", "--device", device]  # fmt: skip
            with contextlib.redirect_stdout(io.StringIO()):
                if infer.main(argv) != 0:
                    raise SystemExit("infer.py failed")
            stages.append(json.loads(out.with_suffix(".json").read_text())["seconds"])

        with helpers.PeakMemory(device) as peak:
            wall, cpu = _timed(once, inner, device)
    return {"seconds": wall, "cpu_s": cpu, "peak_memory_mb": peak.mb, "stages": stages[1:]}


def child(tree: Path, case: dict, device: str, inner: int) -> dict:
    sys.path.insert(0, str(tree))
    helpers = _helpers()
    kind = case["kind"]
    if kind == "render":
        return case_render(case["size"], case["channels"], device, inner, helpers)
    if kind == "model":
        return case_model(case["config"], case["size"], case["mode"], device, inner, helpers)
    if kind == "infer":
        return case_infer(case["size"], case.get("checkpoint"), device, inner, helpers, tree)
    raise ValueError(f"unknown case kind {kind!r}")


# ---------------------------------------------------------------------------------------------
# Parent: export the old tree, alternate old/new subprocesses, summarise


def export_tree(ref: str, dest: Path) -> str:
    """``git archive ref`` of this repository into ``dest``; returns the full commit id."""
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                             check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"--ref {ref!r}: not a commit of {ROOT} ({err.stderr.strip()})") from None
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", sha], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"git archive {sha} failed")
    return sha


def run_child(tree: Path, case: dict, device: str, inner: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tree)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(tree), json.dumps(case),
           "--device", device, "--inner", str(inner)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
    if done.returncode != 0:
        raise RuntimeError(f"case {case} in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    out: dict = {}
    for key in ("seconds", "cpu_s", "forward_s", "backward_s"):
        values = [x for r in runs for x in r.get(key, [])]
        if values:
            out[key] = round(statistics.median(values), 4)
            if key == "seconds":  # the spread over every timed run of this side
                out["seconds_min"], out["seconds_max"] = round(min(values), 4), round(max(values), 4)
    peaks = [r["peak_memory_mb"] for r in runs]
    out["peak_memory_mb"] = round(statistics.median(peaks), 1)
    out["peak_memory_mb_max"] = round(max(peaks), 1)
    stages = [s for r in runs for s in r.get("stages", [])]
    if stages:
        out["stages_s"] = {k: round(statistics.median(s[k] for s in stages if k in s), 3) for k in stages[0]}
    if "gaussians" in runs[0]:
        out["gaussians"] = runs[0]["gaussians"]
    out["samples"] = sum(len(r["seconds"]) for r in runs)
    return out


def cases_from(args) -> list[dict]:
    cases = [{"kind": "render", "size": s, "channels": c} for s in args.sizes for c in args.channels]
    sizes = {"small": 64, "paper": 256}
    for config in args.models:
        for mode in args.model_modes:
            cases.append({"kind": "model", "config": config, "size": sizes.get(config, 256), "mode": mode})
    if args.infer_size:
        cases.append({"kind": "infer", "size": args.infer_size, "checkpoint": args.checkpoint})
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default=DEFAULT_REF, help="git revision measured as 'before' (default: %(default)s)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="*", default=[64, 128, 256], help="render sizes (none: skip)")
    parser.add_argument("--channels", type=int, nargs="+", default=[64], help="render feature channels beside RGB")
    parser.add_argument("--models", nargs="*", default=["small", "paper"], help="model configs (none: skip)")
    parser.add_argument("--model-modes", nargs="+", default=["forward", "forward_backward"])
    parser.add_argument("--infer-size", type=int, default=256, help="infer.py working size (0: skip)")
    parser.add_argument("--checkpoint", help="infer.py checkpoint for both trees (default: each tree's demo model)")
    parser.add_argument("--repeats", type=int, default=3, help="subprocesses per case and tree (alternating)")
    parser.add_argument("--inner", type=int, default=1, help="timed runs per subprocess after one warm-up")
    parser.add_argument("--keep", type=Path, help="export the old tree here and keep it (default: a temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("case", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1 or args.inner < 1:
        parser.error("--repeats and --inner must be >= 1")

    if args.child:
        print(json.dumps(child(Path(args.child), json.loads(args.case), args.device, args.inner)))
        return

    helpers = _helpers()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ffsplat-before-") as tmp:
        old = args.keep or Path(tmp)
        old.mkdir(parents=True, exist_ok=True)
        sha = export_tree(args.ref, old)
        trees = {"before": old, "after": ROOT}
        results = []
        for case in cases_from(args):
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            for r in range(args.repeats):
                for side in ("before", "after") if r % 2 == 0 else ("after", "before"):
                    runs[side].append(run_child(trees[side], case, args.device, args.inner))
            entry = {"case": case, **{side: summarise(rs) for side, rs in runs.items()}}
            b, a = entry["before"], entry["after"]
            entry["speedup"] = round(b["seconds"] / a["seconds"], 2)
            entry["cpu_speedup"] = round(b["cpu_s"] / a["cpu_s"], 2)
            # round r ran both trees back to back: its ratio, and the spread of those ratios
            paired = [statistics.median(x["seconds"]) / statistics.median(y["seconds"])
                      for x, y in zip(runs["before"], runs["after"])]  # fmt: skip
            entry["speedup_per_round"] = [round(v, 2) for v in paired]
            entry["speedup_min_max"] = [round(min(paired), 2), round(max(paired), 2)]
            entry["memory_ratio"] = round(b["peak_memory_mb"] / max(a["peak_memory_mb"], 1e-3), 2)
            if case["kind"] == "render" and case["size"] == 256:
                entry["after_under_1gb"] = a["peak_memory_mb_max"] < 1024
            results.append(entry)
            print(json.dumps(entry), file=sys.stderr, flush=True)  # progress
    report = {
        "benchmark": "speed_before_after",
        "machine": helpers.machine(),
        "before": {"ref": args.ref, "commit": sha},
        "after": {"tree": str(ROOT), "commit": head, "uncommitted_changes": dirty},
        "device": args.device,
        "repeats": args.repeats,
        "inner": args.inner,
        "memory": "CPU: growth of the case subprocess's max RSS (getrusage ru_maxrss) over the timed block; "
        "CUDA: torch.cuda.max_memory_allocated",
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
