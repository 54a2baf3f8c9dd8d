"""Build a deterministic evaluation index (MVSplat-style JSON) from a split's shards.

    # the LSM / Uni3R ScanNet protocol: 30-frame subsample, targets i % 8 in {1, 4}, context i +- 1
    python data_prep/make_eval_index.py --shards data/shards/scannet --split val --protocol lsm --out index/scannet_lsm.json

    # seeded random sampling (MVSplat style): 2 context views 10..30 keyframes apart, 4 targets between
    python data_prep/make_eval_index.py --shards shards/synthetic --split val --protocol sampled \
        --num-context 2 --num-target 4 --min-gap 10 --max-gap 30 --seed 0 --out index/synthetic.json

Frame ids are taken from the keyframes stored in the shards, so every indexed frame can be loaded.
The schema is documented in ``ffsplat/data/sampling.py``. Bad options, a missing manifest or split, and
an index that would be empty end with one ``error:`` line and exit code 2, nothing written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from ffsplat.core.atomic import make_dirs, transaction  # noqa: E402
from ffsplat.core.errors import (  # noqa: E402
    ArgumentParser,
    InputError,
    check_number,
    check_output_file,
    check_outputs,
    one_line,
    run_command,
)
from ffsplat.data.shards import CorruptCounter, scene_frame_ids  # noqa: E402
from ffsplat.data.sampling import ViewSamplerConfig, build_eval_index, build_lsm_index, save_eval_index  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, required=True, help="shard folder with manifest.json")
    parser.add_argument("--split", default="val", help="split of the shards to index")
    parser.add_argument(
        "--protocol",
        choices=["lsm", "sampled"],
        required=True,
        help="lsm: the LSM/Uni3R ScanNet protocol (one entry per target frame); sampled: seeded random entries",
    )
    parser.add_argument("--out", type=Path, required=True, help="evaluation index JSON to write")
    parser.add_argument("--lsm-frames", type=int, default=30, help="lsm: frames in the per-scene subsample")
    parser.add_argument("--num-context", type=int, default=2, help="sampled: context views per entry")
    parser.add_argument("--num-target", type=int, default=4, help="sampled: target views per entry")
    parser.add_argument(
        "--min-gap", type=int, default=10, help="sampled: smallest keyframe gap between the outer context views"
    )
    parser.add_argument(
        "--max-gap", type=int, default=30, help="sampled: largest keyframe gap between the outer context views"
    )
    parser.add_argument("--entries-per-scene", type=int, default=1, help="sampled: entries per scene")
    parser.add_argument("--seed", type=int, default=0, help="sampled: random seed (per scene, stable)")
    args = parser.parse_args(argv)
    return run_command(lambda: run(args))


def run(args) -> int:
    check_number("--lsm-frames", args.lsm_frames, low=3, integer=True)
    check_number("--num-context", args.num_context, low=1, integer=True)
    check_number("--num-target", args.num_target, low=1, integer=True)
    check_number("--min-gap", args.min_gap, low=1, integer=True)
    check_number("--max-gap", args.max_gap, low=args.min_gap, integer=True)
    check_number("--entries-per-scene", args.entries_per_scene, low=1, integer=True)
    check_output_file("--out", args.out, ".json")
    shard_files = [p for p in Path(args.shards).rglob("*") if p.is_file()] if Path(args.shards).is_dir() else []
    check_outputs({"--out": args.out}, {"--shards": shard_files})
    corrupt = CorruptCounter()
    try:
        scenes = scene_frame_ids(args.shards, args.split, corrupt)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise InputError(f"--shards/--split: {one_line(exc)}") from exc
    if args.protocol == "lsm":
        index = build_lsm_index(scenes, num_frames=args.lsm_frames, skip_short=True)
    else:
        config = ViewSamplerConfig(
            num_context=args.num_context, num_target=args.num_target, min_gap=args.min_gap, max_gap=args.max_gap
        )
        index = build_eval_index(
            scenes, config, seed=args.seed, entries_per_scene=args.entries_per_scene, skip_short=True
        )
    skipped = sorted(set(scenes) - set(index))
    if not index:
        raise InputError(
            f"--shards: no scene of split {args.split!r} is long enough for this protocol ({len(scenes)} scenes, all too short); nothing written"
        )
    try:
        with transaction():  # the index and any folder made for it appear together, or not at all
            make_dirs(args.out.parent)
            save_eval_index(args.out, index)
    except OSError as exc:
        raise InputError(f"--out: cannot write {args.out}: {exc.strerror or exc} (nothing was written)") from exc
    print(json.dumps({"out": str(args.out), "scenes": len(index), "entries": sum(map(len, index.values())),
                      "skipped_too_short": skipped, "bad_shard_data": corrupt.summary()}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
