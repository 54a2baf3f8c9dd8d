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


from ffsplat.data.shard_writer import ShardConfig, scene_label_map, write_shards


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


def check_label_maps(scenes: dict[str, list[Path]], labels_tsv: Path | None) -> None:
    """Fail early, in one line: a given TSV must exist; labelled ScanNet scenes need one (synthetic
    rooms bring their own label map)."""
    problem = None
    if labels_tsv is not None:
        if not labels_tsv.is_file():
            problem = f"{labels_tsv} not found (expected ScanNet's scannetv2-labels.combined.tsv)"
    else:
        for root in (r for roots in scenes.values() for r in roots):
            if (root / "label-filt").is_dir() and scene_label_map(root) is None:
                problem = (f"scene {root} has label-filt/ (ScanNet raw ids) but no label map was given; "
                           "pass scannetv2-labels.combined.tsv from your ScanNet download")  # fmt: skip
                break
    if problem:
        print(f"error: --labels-tsv: {problem}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes-root", type=Path, help="folder whose sub-folders are scenes")
    parser.add_argument("--scene", type=Path, nargs="*", default=[], help="individual scene folders (split --default-split)")
    parser.add_argument("--split", action="append", default=[], metavar="NAME=LIST",
                        help="split name and a file listing scene names (one per line); repeatable")  # fmt: skip
    parser.add_argument("--default-split", default="train", help="split for scenes not assigned by --split")
    parser.add_argument("--out", type=Path, required=True, help="output folder: <split>/*.tar shards + manifest.json")
    parser.add_argument("--labels-tsv", type=Path,
                        help="scannetv2-labels.combined.tsv (needed for ScanNet scenes with label-filt/; synthetic rooms ship their own)")
    parser.add_argument("--size", type=int, default=256, help="square frame size in pixels (resize + centre crop, intrinsics follow)")
    parser.add_argument("--clip-length", type=int, default=24, help="keyframes per clip (one shard sample)")
    parser.add_argument("--clip-stride", type=int, help="keyframes between clip starts (default: --clip-length, no overlap)")
    parser.add_argument("--frame-skip", type=int, default=1, help="use every n-th source frame")
    parser.add_argument("--keyframe-translation", type=float, default=0.05, help="metres the camera must move for a new keyframe")
    parser.add_argument("--keyframe-rotation-deg", type=float, default=5.0, help="or degrees it must turn")
    parser.add_argument("--max-shard-mb", type=float, default=256, help="start a new .tar shard beyond this size (MiB)")
    parser.add_argument("--workers", type=int, default=1, help="scenes written in parallel (processes)")
    parser.add_argument("--teacher", action="append", default=[], metavar="NAME[:K=V,...]",
                        help="cache this teacher's features (sam, lseg, label_lang, label_seg); repeatable")  # fmt: skip
    parser.add_argument("--teacher-size", type=int, nargs=2, metavar=("H", "W"), help="cache features at this grid size")
    parser.add_argument("--teacher-device", default="cpu", help="device for --teacher models (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--color-ext", default="jpg", help="extension of the colour images in the scene folders")
    parser.add_argument("--depth-scale", type=float, default=1000.0, help="stored depth units per metre")
    args = parser.parse_args(argv)

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

    check_label_maps(scenes, args.labels_tsv)
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
        sequence_kwargs={"color_ext": args.color_ext, "depth_scale": args.depth_scale},
    )  # fmt: skip
    summary = {split: {k: v for k, v in entry.items() if k != "shards"} | {"shards": len(entry["shards"])}
               for split, entry in manifest["splits"].items()}  # fmt: skip
    print(json.dumps({"out": str(args.out), "run": manifest["run"], "splits": summary}, indent=1))


if __name__ == "__main__":
    main()
