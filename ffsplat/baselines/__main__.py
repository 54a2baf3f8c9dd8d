"""Per-scene baselines from the command line.

    # one baseline on an evaluation index (sparse: the index's 2 context views; dense: all keyframes)
    python -m ffsplat.baselines run --method feature3dgs --checkpoint model.pt --shards data/shards/x \
        --split test --index index.json --setting sparse --out results/feature3dgs_sparse.json

    # the feed-forward model and every baseline on the same index, in both settings: one table
    python -m ffsplat.baselines compare --checkpoint model.pt --shards data/shards/x --split test \
        --index index.json --out reports/compare

``--checkpoint`` is the feed-forward model whose class embeddings, prompt decoder and teacher names
both sides are scored with. Per-scene settings come from ``configs/baseline/default.yaml``
(Inria/gsplat defaults; ``--scene-config`` another YAML, ``--iterations`` to shorten). ``compare``
runs each (method, setting) in its own process so that its peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import ffsplat  # noqa: F401  (torchvision shim first)
from ffsplat.baselines.compare import BASELINES, run_baseline, save_json, write_table
from ffsplat.baselines.trainer import SceneConfig
from ffsplat.core.config import CONFIG_DIR, to_dataclass
from ffsplat.data.sampling import load_eval_index


def scene_config(args) -> SceneConfig:
    cfg = to_dataclass(SceneConfig, args.scene_config)
    if args.iterations is not None:
        cfg.iterations = args.iterations
    return cfg


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="feed-forward model.pt (references for scoring)")
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--scene-config", type=Path, default=CONFIG_DIR / "baseline" / "default.yaml")
    p.add_argument("--iterations", type=int)
    p.add_argument("--prompt-grid", type=int, default=32)
    p.add_argument("--dense-views", type=int, default=16)
    p.add_argument("--max-examples", type=int)
    p.add_argument("--device", default="cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffsplat.baselines", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one baseline, one setting")
    common(run)
    run.add_argument("--method", required=True, choices=sorted(BASELINES))
    run.add_argument("--setting", default="sparse", choices=["sparse", "dense"])
    run.add_argument("--out", type=Path, required=True, help="result JSON")
    cmp = sub.add_parser("compare", help="feed-forward model + baselines, one table")
    common(cmp)
    cmp.add_argument("--methods", nargs="+", default=sorted(BASELINES), choices=sorted(BASELINES))
    cmp.add_argument("--settings", nargs="+", default=["sparse", "dense"], choices=["sparse", "dense"])
    cmp.add_argument("--out", type=Path, required=True, help="report folder")
    args = parser.parse_args(argv)

    from ffsplat.inference.predictor import Predictor

    index = load_eval_index(args.index)
    if args.command == "run":
        predictor = Predictor(args.checkpoint, args.device)
        result = run_baseline(args.method, predictor, args.shards, args.split, index, args.setting, scene_config(args),
                              args.prompt_grid, args.dense_views, args.max_examples)  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        save_json(args.out, result)
        print(json.dumps(result, indent=2))
        return 0

    import time

    from ffsplat.evaluation.evaluate import EvalConfig, evaluate_model
    from ffsplat.data.shards import EvalIndexDataset

    args.out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(args.checkpoint, args.device)
    start = time.perf_counter()
    ff = evaluate_model(predictor, EvalIndexDataset(args.shards, args.split, index),
                        EvalConfig(prompt_grid=args.prompt_grid, source_views=False, max_examples=args.max_examples))  # fmt: skip
    ff.update(method="feed-forward", setting="sparse", seconds_per_scene=(time.perf_counter() - start) / max(ff["examples"], 1))
    results = [ff]
    for method in args.methods:
        for setting in args.settings:
            out = args.out / f"{method}_{setting}.json"
            cmd = [sys.executable, "-m", "ffsplat.baselines", "run", "--method", method, "--setting", setting, "--out", str(out),
                   "--checkpoint", str(args.checkpoint), "--shards", str(args.shards), "--split", args.split,
                   "--index", str(args.index), "--scene-config", str(args.scene_config), "--prompt-grid", str(args.prompt_grid),
                   "--dense-views", str(args.dense_views), "--device", args.device]  # fmt: skip
            if args.iterations is not None:
                cmd += ["--iterations", str(args.iterations)]
            if args.max_examples is not None:
                cmd += ["--max-examples", str(args.max_examples)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"error: baseline {method} ({setting}) failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                return 1
            results.append(json.loads(out.read_text()))
            print(f"[compare] {method} ({setting}) done: {results[-1]['seconds_per_scene']:.1f} s/scene", flush=True)
    ratio = {f"{r['method']}_{r['setting']}": r["seconds_per_scene"] / max(ff["seconds_per_scene"], 1e-9) for r in results[1:]}
    save_json(args.out / "compare.json", {"results": results, "time_ratio_vs_feed_forward": ratio})
    print(write_table(results, args.out / "compare.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
