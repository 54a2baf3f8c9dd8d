"""Feed-forward vs per-scene baselines on the same views, with the baselines' non-oracle defaults.

1. Data: ``--scenes`` procedural rooms (seeds 2000...) at ``--size`` (default 96x96), written as a
   ``test`` split with the label-derived stand-in teachers cached (``label_seg`` for SAM,
   ``label_lang`` for LSeg, as ``benchmarks/learn_synthetic.py``), and a seeded evaluation index
   (2 context views, 2 targets, ``--examples`` entries per scene).
2. ``python -m ffsplat.baselines compare`` with the feed-forward checkpoint ``--checkpoint``
   (default: `checkpoints/demo_synthetic/model.pt`, the small model trained on synthetic rooms with
   the label stand-in teachers, whose vocabulary these rooms use) and every method in ``--methods``, sparse setting, with the defaults:
   SfM initialisation (COLMAP SIFT + known-pose triangulation) and teacher supervision
   (language-teacher argmax labels, automatic masks of the segmentation teacher).
3. ``--oracle-methods``: the same methods once more with sensor-depth initialisation and
   ground-truth labels / instances, in rows marked ORACLE.

``--iterations`` steps of ``configs/baseline/quick.yaml`` (the papers run 30k / FHGS 10k: these are
short CPU budgets). Prints one JSON document (also ``<work>/report.json``).

    python benchmarks/compare.py [--size 96] [--iterations 100] [--examples 1] [--work /tmp/ffsplat-compare]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from ffsplat.core.atomic import atomic_open  # noqa: E402
from ffsplat.core.benchmarking import claim_work_dir, machine  # noqa: E402
from ffsplat.core.errors import run_command  # noqa: E402

LABEL_TSV = ROOT.parent / "shared" / "data" / "scannet" / "scannetv2-labels.combined.tsv"


def make_data(work: Path, scenes: int, size: int, frames: int, examples: int, label_tsv: Path) -> tuple[Path, Path]:
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
    save_eval_index(work / "index.json", index)
    return shards, work / "index.json"


def compare(args, shards: Path, index: Path, out: Path, methods: list[str], extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "ffsplat.baselines", "compare", "--checkpoint", str(args.checkpoint), "--shards", str(shards),
           "--split", "test", "--index", str(index), "--out", str(out), "--scene-config", str(ROOT / "configs/baseline/quick.yaml"),
           "--iterations", str(args.iterations), "--max-examples", str(args.examples * args.scenes), "--prompt-grid", str(args.prompt_grid),
           "--mask-grid", str(args.mask_grid), "--settings", "sparse", "--device", args.device, "--methods", *methods, *extra]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads((out / "compare.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/ffsplat-compare"))
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "demo_synthetic" / "model.pt")
    p.add_argument("--label-tsv", type=Path, default=LABEL_TSV, help="scannetv2-labels.combined.tsv")
    p.add_argument("--device", default="cpu", help="cpu or cuda (GPU runs: gsplat rasterizer, peak GPU memory per row)")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--scenes", type=int, default=1)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--examples", type=int, default=1, help="index entries per scene")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--prompt-grid", type=int, default=8)
    p.add_argument("--mask-grid", type=int, default=16)
    p.add_argument("--methods", nargs="+", default=["3dgs", "feature3dgs", "semlogits", "protosaga", "fhgs"])
    p.add_argument("--oracle-methods", nargs="*", default=["3dgs", "semlogits"])
    args = p.parse_args()
    claim_work_dir(args.work)  # a folder of the user's is refused, never written into
    report = {"benchmark": "compare", "machine": machine(), "settings": {k: str(v) for k, v in vars(args).items()}}
    shards, index = make_data(args.work, args.scenes, args.size, args.frames, args.examples, args.label_tsv)
    report["default"] = compare(args, shards, index, args.work / "default", args.methods, [])
    if args.oracle_methods:
        report["oracle"] = compare(
            args,
            shards,
            index,
            args.work / "oracle",
            args.oracle_methods,
            ["--init", "sensor", "--supervision", "oracle"],
        )
    text = json.dumps(report, indent=2, default=str)
    with atomic_open(args.work / "report.json", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(run_command(main))
