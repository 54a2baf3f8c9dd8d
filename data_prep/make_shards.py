"""Write webdataset clip shards from exported ScanNet scenes or other RGB-D sequences.

    # every scene folder under a root, with ScanNet's official split lists
    python data_prep/make_shards.py --scenes-root scannet_exported --out shards/scannet \
        --split train=scannetv2_train.txt --split val=scannetv2_val.txt \
        --labels-tsv scannetv2-labels.combined.tsv --size 256 --workers 16

    # one generic sequence (no labels)
    python data_prep/make_shards.py --scene ../shared/data/hololens-office --out shards/holo

    # cache teacher features in the shards (local weights; run on a GPU node with --teacher-device cuda)
    python data_prep/make_shards.py ... --teacher sam:checkpoint=weights/sam_vit_b_01ec64.pth,model_type=vit_b \
        --teacher lseg:checkpoint=weights/demo_e200.ckpt,clip_path=weights/clip-vit-base-patch32 \
        --teacher-size 32 32 --teacher-device cuda

Scene folders use the exported-ScanNet layout (``data_prep/export_sens.py`` makes it from
``.sens`` files). Re-running resumes: finished scenes are skipped. See
``ffsplat/data/shard_writer.py`` for the sample format and ``ffsplat/data/clip.py`` for the
fields of a sample.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ffsplat.data.shard_writer import ShardConfig, write_shards  # noqa: E402


def parse_teacher(spec: str) -> tuple[str, dict]:
    """``name[:key=value,key=value]`` -> (name, kwargs); values become int/float/bool when they parse."""
    name, _, rest = spec.partition(":")
    kwargs: dict = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--teacher {spec!r}: expected key=value, got {item!r}")
        lowered = value.lower()
        if lowered in ("true", "false"):
            kwargs[key] = lowered == "true"
        else:
            for cast in (int, float):
                try:
                    kwargs[key] = cast(value)
                    break
                except ValueError:
                    continue
            else:
                kwargs[key] = value
    return name, kwargs


def read_split_list(path: Path) -> list[str]:
    if not path.is_file():
        raise SystemExit(f"--split: list file {path} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes-root", type=Path, help="folder whose sub-folders are scenes")
    parser.add_argument("--scene", type=Path, nargs="*", default=[], help="individual scene folders (split --default-split)")
    parser.add_argument("--split", action="append", default=[], metavar="NAME=LIST",
                        help="split name and a file listing scene names (one per line); repeatable")  # fmt: skip
    parser.add_argument("--default-split", default="train", help="split for scenes not assigned by --split")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--labels-tsv", type=Path, help="scannetv2-labels.combined.tsv (needed when scenes have label-filt/)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--clip-length", type=int, default=24)
    parser.add_argument("--clip-stride", type=int)
    parser.add_argument("--frame-skip", type=int, default=1)
    parser.add_argument("--keyframe-translation", type=float, default=0.05)
    parser.add_argument("--keyframe-rotation-deg", type=float, default=5.0)
    parser.add_argument("--max-shard-mb", type=float, default=256)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--teacher", action="append", default=[], metavar="NAME[:K=V,...]",
                        help="cache this teacher's features (sam, lseg, label_lang, label_seg); repeatable")  # fmt: skip
    parser.add_argument("--teacher-size", type=int, nargs=2, metavar=("H", "W"), help="cache features at this grid size")
    parser.add_argument("--teacher-device", default="cpu")
    parser.add_argument("--color-ext", default="jpg")
    parser.add_argument("--depth-scale", type=float, default=1000.0, help="stored depth units per metre")
    parser.add_argument("--frame-range", type=int, nargs=2, metavar=("START", "STOP"),
                        help="only frames START <= id < STOP of every scene (hold out the rest)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.frame_range and not 0 <= args.frame_range[0] < args.frame_range[1]:
        print(f"error: --frame-range {args.frame_range[0]} {args.frame_range[1]}: expected 0 <= START < STOP", file=sys.stderr)
        raise SystemExit(2)

    scenes: dict[str, list[Path]] = {}
    if args.scenes_root:
        if not args.scenes_root.is_dir():
            raise SystemExit(f"--scenes-root {args.scenes_root} is not a folder")
        available = {p.name: p for p in sorted(args.scenes_root.iterdir()) if (p / "pose").is_dir()}
        assigned: set[str] = set()
        for item in args.split:
            name, _, list_path = item.partition("=")
            if not list_path:
                raise SystemExit(f"--split expects NAME=LIST, got {item!r}")
            wanted = read_split_list(Path(list_path))
            missing = [s for s in wanted if s not in available]
            if missing:
                print(f"warning: split {name}: {len(missing)} listed scenes not under {args.scenes_root} (e.g. {missing[:3]})")
            scenes[name] = [available[s] for s in wanted if s in available]
            assigned.update(wanted)
        if not args.split:
            scenes.setdefault(args.default_split, []).extend(p for n, p in available.items() if n not in assigned)
    if args.scene:
        scenes.setdefault(args.default_split, []).extend(args.scene)
    if not any(scenes.values()):
        raise SystemExit("no scenes: give --scenes-root (with scene folders containing pose/) or --scene")

    cfg = ShardConfig(
        size=args.size,
        clip_length=args.clip_length,
        clip_stride=args.clip_stride,
        frame_skip=args.frame_skip,
        keyframe_translation=args.keyframe_translation,
        keyframe_rotation_deg=args.keyframe_rotation_deg,
        max_shard_bytes=int(args.max_shard_mb * 2**20),
        teachers=dict(parse_teacher(spec) for spec in args.teacher),
        teacher_size=tuple(args.teacher_size) if args.teacher_size else None,
        teacher_device=args.teacher_device,
    )
    manifest = write_shards(
        scenes, args.out, cfg, args.labels_tsv, workers=args.workers,
        sequence_kwargs={"color_ext": args.color_ext, "depth_scale": args.depth_scale}
        | ({"frame_range": tuple(args.frame_range)} if args.frame_range else {}),
    )  # fmt: skip
    summary = {split: {k: v for k, v in entry.items() if k != "shards"} | {"shards": len(entry["shards"])}
               for split, entry in manifest["splits"].items()}  # fmt: skip
    print(json.dumps({"out": str(args.out), "run": manifest["run"], "splits": summary}, indent=1))


if __name__ == "__main__":
    main()
