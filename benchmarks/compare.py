"""Feed-forward vs per-scene baselines: several rooms, several budgets, mean and spread, one command.

1. Data: ``--scenes`` procedural rooms (seeds 2000...) at ``--size``, written as a ``test`` split with
   the label-derived stand-in teachers cached (``label_seg`` for SAM, ``label_lang`` for LSeg, as
   ``benchmarks/learn_synthetic.py``), and a seeded evaluation index (2 context views, 2 targets,
   ``--examples`` entries per room), one index file per room so that every room is its own sample.
2. Per room and per budget, ``python -m ffsplat.baselines compare`` (sparse setting) with the
   feed-forward checkpoint ``--checkpoint`` and every method of ``--methods``, from the baselines'
   default non-oracle start: SfM points of the two context views topped up with random frustum
   points to ``--init-points`` (default: Inria's 100,000), teacher supervision, and the Inria
   schedule scaled to the budget (``configs/baseline/quick.yaml``: every budget densifies).
3. Budgets: ``--budgets`` steps on this device, plus ``ff`` = the feed-forward model's own
   reconstruction wall time (each method's steps = that time / its seconds per step measured at the
   first numeric budget). ``--gpu-budgets`` (default 3000 and the papers' 30k, FHGS 10k) are run only
   with ``--device cuda``; otherwise their rows say "not run: no GPU". ``--cpu-too-slow`` methods are
   listed with the reason instead of being run on CPU.
4. ``--oracle-methods``: the same methods at the first budget from sensor depth with ground-truth
   labels, marked ORACLE.

Output: one JSON document (also ``<work>/report.json``) with per-room rows, the aggregated table
(mean and sample standard deviation over rooms) and ``<work>/table.md``: per method and budget PSNR,
target mIoU, depth AbsRel, Gaussians and seconds per room, and a "reaches the feed-forward model"
column (the first budget whose mean PSNR / mIoU is at least the feed-forward model's, with its time).

    python benchmarks/compare.py --scenes 3 --size 48 --budgets 100 300 ff --init-points 10000 \
        --methods 3dgs semlogits feature3dgs --work /tmp/ffsplat-compare
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ffsplat.core.atomic import atomic_open  # noqa: E402
from ffsplat.core.benchmarking import claim_work_dir, machine  # noqa: E402
from ffsplat.core.errors import run_command  # noqa: E402

LABEL_TSV = ROOT.parent / "shared" / "data" / "scannet" / "scannetv2-labels.combined.tsv"
METRICS = ("psnr", "target_miou", "depth_abs_rel", "gaussians", "init_points", "reconstruction_s", "iterations")
PAPER_BUDGETS = {"fhgs": 10000}
"""The papers' step budgets where they differ from 30k (FHGS: 10k)."""


def make_data(
    work: Path, scenes: int, size: int, frames: int, examples: int, label_tsv: Path
) -> tuple[Path, dict[str, Path]]:
    import ffsplat  # noqa: F401
    from ffsplat.data.shard_writer import ShardConfig, write_shards
    from ffsplat.data.shards import scene_frame_ids
    from ffsplat.data.sampling import ViewSamplerConfig, build_eval_index, save_eval_index
    from ffsplat.synthetic import SyntheticConfig, write_synthetic_scene

    paths = []
    for i in range(scenes):
        out = work / "scenes" / f"synth_{i:04d}"
        if not (out / "synthetic.json").exists():
            write_synthetic_scene(out, 2000 + i, SyntheticConfig(height=size, width=size, frames=frames))
        paths.append(out)
    shards = work / "shards"
    if not shards.exists():
        cfg = ShardConfig(size=size, clip_length=frames, min_clip_length=12,
                          teachers={"label_seg": {"noise_std": 0.05}, "label_lang": {"flip_rate": 0.1, "blur_sigma": 1.5, "noise_std": 0.02}})  # fmt: skip
        write_shards({"test": paths}, shards, cfg, label_tsv, workers=1, progress=False)
    index = build_eval_index(scene_frame_ids(shards, "test"), ViewSamplerConfig(num_context=2, num_target=2, min_gap=4, max_gap=8),
                             seed=0, entries_per_scene=examples)  # fmt: skip
    rooms = {}
    for scene, entries in sorted(index.items()):
        rooms[scene] = work / f"index_{scene}.json"
        save_eval_index(rooms[scene], {scene: entries})
    return shards, rooms


def compare(
    args, shards: Path, index: Path, out: Path, methods: list[str], iterations: int, extra: list[str]
) -> list[dict]:
    cmd = [sys.executable, "-m", "ffsplat.baselines", "compare", "--checkpoint", str(args.checkpoint), "--shards", str(shards),
           "--split", "test", "--index", str(index), "--out", str(out), "--scene-config", str(ROOT / "configs/baseline/quick.yaml"),
           "--iterations", str(iterations), "--prompt-grid", str(args.prompt_grid), "--init-points", str(args.init_points),
           "--mask-grid", str(args.mask_grid), "--settings", "sparse", "--device", args.device, "--no-progress",
           "--methods", *methods, *extra]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads((out / "compare.json").read_text())["results"]


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None, None
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def aggregate(rows: list[dict]) -> dict:
    """Mean and spread over rooms of each metric of rows that share (method, budget, oracle)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], str(r["budget"]), bool(r.get("oracle"))), []).append(r)
    table = {}
    for (method, budget, oracle), rs in groups.items():
        entry = {"method": method, "budget": budget, "oracle": oracle, "rooms": len(rs), "init": rs[0].get("init")}
        for k in METRICS:
            entry[k], entry[f"{k}_std"] = mean_std([r.get(k) for r in rs])
        table[f"{method}|{budget}|{'oracle' if oracle else ''}"] = entry
    return table


def reach(table: dict, budgets: list[str]) -> dict[str, str]:
    """Per method: the first budget (in run order) whose mean PSNR / target mIoU reaches the feed-forward row's."""
    ff = next(e for e in table.values() if e["method"] == "feed-forward")
    out = {}
    for method in sorted({e["method"] for e in table.values()} - {"feed-forward"}):
        parts = []
        for metric in ("psnr", "target_miou"):
            if ff.get(metric) is None:
                continue
            hit = None
            for b in budgets:
                e = table.get(f"{method}|{b}|")
                if e and e.get(metric) is not None and e[metric] >= ff[metric]:
                    hit = e
                    break
            parts.append(f"{metric}: budget {hit['budget']}, {hit['reconstruction_s']:.1f} s" if hit
                         else f"{metric}: not within {budgets[-1]}")  # fmt: skip
        out[method] = "; ".join(parts) or "-"
    return out


def fmt(e: dict, k: str, digits: int) -> str:
    if e.get(k) is None:
        return "-"
    return f"{e[k]:.{digits}f} ± {e[f'{k}_std']:.{digits}f}"


def markdown(table: dict, reached: dict, not_run: list[tuple[str, str, str]]) -> str:
    lines = ["| method | budget (steps) | init | PSNR | target mIoU | depth AbsRel | Gaussians | s / room | reaches feed-forward |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for e in table.values():
        name = e["method"] + (" **ORACLE**" if e["oracle"] else "")
        budget = e["budget"] if e["method"] != "feed-forward" else "-"
        if e["budget"] == "ff" and e.get("iterations") is not None:
            budget = f"ff wall time ({e['iterations']:.0f})"
        lines.append(f"| {name} | {budget} | {e['init']} | {fmt(e, 'psnr', 2)} | {fmt(e, 'target_miou', 3)} | "
                     f"{fmt(e, 'depth_abs_rel', 3)} | {fmt(e, 'gaussians', 0)} | {fmt(e, 'reconstruction_s', 1)} | "
                     f"{reached.get(e['method'], '-') if not e['oracle'] and e['method'] != 'feed-forward' else '-'} |")  # fmt: skip
    for method, budget, why in not_run:
        lines.append(f"| {method} | {budget} | - | {why} | | | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/ffsplat-compare"))
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "demo_synthetic" / "model.pt")
    p.add_argument("--label-tsv", type=Path, default=LABEL_TSV, help="scannetv2-labels.combined.tsv")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda also runs --gpu-budgets)")
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--scenes", type=int, default=3)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--examples", type=int, default=1, help="index entries per room")
    p.add_argument("--budgets", nargs="+", default=["ff", "300", "1000"],
                   help="step budgets run on --device; 'ff' = the feed-forward model's wall time")  # fmt: skip
    p.add_argument("--gpu-budgets", nargs="*", type=int, default=[3000, 30000], help="budgets run only on cuda")
    p.add_argument("--init-points", type=int, default=100_000, help="random / SfM top-up points (Inria: 100,000)")
    p.add_argument("--prompt-grid", type=int, default=8)
    p.add_argument("--mask-grid", type=int, default=16)
    p.add_argument("--methods", nargs="+", default=["3dgs", "feature3dgs", "semlogits", "protosaga", "fhgs"])
    p.add_argument("--cpu-too-slow", nargs="*", default=["fhgs"],
                   help="methods listed, not run, on CPU (FHGS: ~9 s per step on one core)")  # fmt: skip
    p.add_argument("--oracle-methods", nargs="*", default=["3dgs", "semlogits"])
    args = p.parse_args(argv)
    numeric = [b for b in args.budgets if b != "ff"]
    if not numeric or any(not b.isdigit() or int(b) < 1 for b in numeric):
        p.error("--budgets: give at least one positive step count (and optionally 'ff')")
    claim_work_dir(args.work)  # a folder of the user's is refused, never written into
    cpu = args.device == "cpu"
    methods = [m for m in args.methods if not (cpu and m in args.cpu_too_slow)]
    not_run = [(m, b, "not run on CPU: ~9 s per step on one core (issue 30)") for m in args.methods
               if cpu and m in args.cpu_too_slow for b in args.budgets]  # fmt: skip
    gpu_budgets = [str(b) for b in args.gpu_budgets]
    if not args.device.startswith("cuda"):
        for b in gpu_budgets:
            for m in args.methods:
                budget = str(PAPER_BUDGETS.get(m, b)) if b == "30000" else b
                not_run.append((m, budget, "not run: no GPU lent"))
        gpu_budgets = []
    report = {"benchmark": "compare", "machine": machine(), "settings": {k: str(v) for k, v in vars(args).items()}}
    shards, rooms = make_data(args.work, args.scenes, args.size, args.frames, args.examples, args.label_tsv)
    rows: list[dict] = []
    per_step: dict[tuple[str, str], float] = {}
    order = numeric + [b for b in gpu_budgets if b not in numeric]
    for b in order:
        for scene, index in rooms.items():
            for r in compare(args, shards, index, args.work / f"b{b}" / scene, methods, int(b), []):
                if r["method"] != "feed-forward":
                    per_step.setdefault((r["method"], scene), r["reconstruction_s"] / max(r["iterations"], 1))
                rows.append({**r, "budget": b, "room": scene})
            print(f"[compare] budget {b}, {scene} done", file=sys.stderr, flush=True)
    if "ff" in args.budgets:
        for scene, index in rooms.items():
            ff_s = next(r["reconstruction_s"] for r in rows if r["method"] == "feed-forward" and r["room"] == scene)
            for m in methods:
                steps = max(1, int(ff_s / per_step[(m, scene)]))
                for r in compare(args, shards, index, args.work / "bff" / scene / m, [m], steps, []):
                    if r["method"] != "feed-forward":
                        rows.append({**r, "budget": "ff", "room": scene})
            print(f"[compare] budget ff, {scene} done", file=sys.stderr, flush=True)
    if args.oracle_methods:
        oracle = [m for m in args.oracle_methods if m in methods]
        for scene, index in rooms.items():
            for r in compare(args, shards, index, args.work / "oracle" / scene, oracle, int(numeric[0]),
                             ["--init", "sensor", "--supervision", "oracle"]):  # fmt: skip
                if r["method"] != "feed-forward":
                    rows.append({**r, "budget": numeric[0], "room": scene})
    ff_rows = [r for r in rows if r["method"] == "feed-forward" and r["budget"] == numeric[0]]
    rows = [r for r in rows if r["method"] != "feed-forward"] + ff_rows
    table = aggregate(ff_rows) | aggregate([r for r in rows if r["method"] != "feed-forward"])
    run_order = (["ff"] if "ff" in args.budgets else []) + order
    reached = reach(table, run_order)
    report.update(rows=rows, table=table, reaches_feed_forward=reached, not_run=not_run,
                  markdown=markdown(table, reached, not_run))  # fmt: skip
    (args.work / "table.md").write_text(report["markdown"])
    text = json.dumps(report, indent=2, default=str)
    with atomic_open(args.work / "report.json", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(run_command(main))
