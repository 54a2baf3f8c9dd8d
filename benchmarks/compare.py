"""Feed-forward vs per-scene baselines on the same views, with time ratios from the same run.

1. Synthetic: the learning benchmark's held-out rooms (``benchmarks/learn_synthetic.py`` must have
   run: ``--learn`` is its work folder), its trained model, its evaluation index, every baseline,
   sparse (the 2 context views) and dense (up to ``--dense-views`` keyframes) settings.
2. Real: the HoloLens office sequence (``../shared/data``, no labels: PSNR/SSIM/depth only) as
   shards at ``--holo-size``, a seeded index, the demo checkpoint (RGB only) vs plain 3DGS.

Baselines are initialised from the training views' **sensor depth** (the feed-forward model gets
RGB only) and run ``--iterations`` steps of ``configs/baseline/quick.yaml`` (the papers run 7k-30k:
our per-scene numbers are for a short CPU budget). Prints one JSON document.

    python benchmarks/compare.py --learn /tmp/ffsplat-learn [--iterations 200] [--examples 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from ffsplat.core.benchmarking import machine  # noqa: E402

HOLO = ROOT.parent / "shared" / "data" / "hololens-office"


def compare(checkpoint: Path, shards: Path, split: str, index: Path, out: Path, args, methods: list[str]) -> dict:
    cmd = [sys.executable, "-m", "ffsplat.baselines", "compare", "--checkpoint", str(checkpoint), "--shards", str(shards),
           "--split", split, "--index", str(index), "--out", str(out), "--scene-config", str(ROOT / "configs/baseline/quick.yaml"),
           "--iterations", str(args.iterations), "--max-examples", str(args.examples), "--prompt-grid", str(args.prompt_grid),
           "--dense-views", str(args.dense_views), "--methods", *methods]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads((out / "compare.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--learn", type=Path, default=Path("/tmp/ffsplat-learn"))
    p.add_argument("--work", type=Path, default=Path("/tmp/ffsplat-compare"))
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--examples", type=int, default=4)
    p.add_argument("--dense-views", type=int, default=8)
    p.add_argument("--prompt-grid", type=int, default=8)
    p.add_argument("--holo-size", type=int, default=96)
    p.add_argument("--methods", nargs="+", default=["3dgs", "feature3dgs", "semlogits", "protosaga"])
    p.add_argument("--sparse-only", nargs="*", default=["fhgs"],
                   help="methods run in the sparse setting only (FHGS's ordered per-pixel contributions are slow on CPU)")
    args = p.parse_args()
    report = {"benchmark": "compare", "machine": machine(), "settings": {k: str(v) for k, v in vars(args).items()}}

    checkpoint = args.learn / "checkpoints" / "synthetic_lang" / "model.pt"
    if not checkpoint.is_file():
        raise SystemExit(f"run benchmarks/learn_synthetic.py --work {args.learn} first ({checkpoint} missing)")
    report["synthetic"] = compare(checkpoint, args.learn / "shards", "test", args.learn / "eval_index.json", args.work / "synthetic", args, args.methods)
    for method in args.sparse_only:
        out = args.work / "synthetic" / f"{method}_sparse.json"
        cmd = [sys.executable, "-m", "ffsplat.baselines", "run", "--method", method, "--setting", "sparse", "--out", str(out),
               "--checkpoint", str(checkpoint), "--shards", str(args.learn / "shards"), "--split", "test",
               "--index", str(args.learn / "eval_index.json"), "--scene-config", str(ROOT / "configs/baseline/quick.yaml"),
               "--iterations", str(args.iterations), "--max-examples", str(args.examples), "--prompt-grid", str(args.prompt_grid)]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
        result = json.loads(out.read_text())
        report["synthetic"]["results"].append(result)
        ff_time = report["synthetic"]["results"][0]["seconds_per_scene"]
        report["synthetic"]["time_ratio_vs_feed_forward"][f"{method}_sparse"] = result["seconds_per_scene"] / ff_time

    import ffsplat  # noqa: F401
    from ffsplat.data.shard_writer import ShardConfig, write_shards
    from ffsplat.data.shards import scene_frame_ids
    from ffsplat.data.sampling import ViewSamplerConfig, build_eval_index, save_eval_index

    holo_shards = args.work / "holo_shards"
    write_shards({"test": [HOLO]}, holo_shards, ShardConfig(size=args.holo_size, clip_length=24, frame_skip=2), progress=False)
    index = build_eval_index(scene_frame_ids(holo_shards, "test"), ViewSamplerConfig(num_context=2, num_target=2, min_gap=4, max_gap=8),
                             seed=0, entries_per_scene=args.examples)  # fmt: skip
    save_eval_index(args.work / "holo_index.json", index)
    report["hololens"] = compare(ROOT / "checkpoints" / "demo" / "model.pt", holo_shards, "test", args.work / "holo_index.json",
                                 args.work / "hololens", args, ["3dgs"])  # fmt: skip
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
