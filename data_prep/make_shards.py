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

    # also cache SAM's three-scale automatic masks (stage 2's hierarchical pooling then never runs
    # SAM); the keys after the checkpoint are SAMTeacher.automatic_masks options (default: as online)
    python data_prep/make_shards.py ... --teacher sam_masks:checkpoint=weights/sam_vit_b_01ec64.pth,model_type=vit_b

Scene folders use the exported-ScanNet layout (``data_prep/export_sens.py`` makes it from
``.sens`` files). Re-running resumes: finished scenes are skipped, scenes whose source changed
(e.g. re-exported from a fixed ``.sens``) are rebuilt, and a run with other settings than the
shards already in ``--out`` is refused unless ``--overwrite`` (the manifest never describes shards
it did not build). Frames with unusable poses are skipped and named in the summary. Bad options
end with one ``error:`` line and exit code 2 before anything is written. See
``ffsplat/data/shard_writer.py`` for the sample format and ``ffsplat/data/clip.py`` for the
fields of a sample.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from ffsplat.core.errors import (
    ArgumentParser,
    InputError,
    check_input_dir,
    check_input_file,
    check_number,
    check_output_dir,
    check_outputs,
    run_command,
)  # noqa: E402
from ffsplat.data.shard_writer import ShardConfig, ShardSettingsError, scene_label_map, write_shards  # noqa: E402
from ffsplat.teachers.features import TeacherLoadError, TeacherWeightsNotFound  # noqa: E402


def parse_teacher(spec: str) -> tuple[str, dict]:
    """``name[:key=value,key=value]`` -> (name, kwargs); values become int/float/bool when they parse."""
    name, _, rest = spec.partition(":")
    kwargs: dict = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise InputError(f"--teacher {spec!r}: expected key=value, got {item!r}")
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
    check_input_file("--split", path, "scene list file")
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes-root", type=Path, help="folder whose sub-folders are scenes")
    parser.add_argument(
        "--scene", type=Path, nargs="*", default=[], help="individual scene folders (split --default-split)"
    )
    parser.add_argument("--split", action="append", default=[], metavar="NAME=LIST",
                        help="split name and a file listing scene names (one per line); repeatable")  # fmt: skip
    parser.add_argument("--default-split", default="train", help="split for scenes not assigned by --split")
    parser.add_argument("--out", type=Path, required=True, help="output folder: <split>/*.tar shards + manifest.json")
    parser.add_argument(
        "--labels-tsv",
        type=Path,
        help="scannetv2-labels.combined.tsv (needed for ScanNet scenes with label-filt/; synthetic rooms ship their own)",
    )
    parser.add_argument(
        "--size", type=int, default=256, help="square frame size in pixels (resize + centre crop, intrinsics follow)"
    )
    parser.add_argument("--clip-length", type=int, default=24, help="keyframes per clip (one shard sample)")
    parser.add_argument(
        "--clip-stride", type=int, help="keyframes between clip starts (default: --clip-length, no overlap)"
    )
    parser.add_argument("--frame-skip", type=int, default=1, help="use every n-th source frame")
    parser.add_argument(
        "--keyframe-translation", type=float, default=0.05, help="metres the camera must move for a new keyframe"
    )
    parser.add_argument("--keyframe-rotation-deg", type=float, default=5.0, help="or degrees it must turn")
    parser.add_argument("--no-keyframing", action="store_true",
                        help="keep every valid frame (keyframe thresholds 0; needs --frame-skip 1): for the LSM protocol, "
                             "whose selected frames keyframing would drop")  # fmt: skip
    parser.add_argument("--max-shard-mb", type=float, default=256, help="start a new .tar shard beyond this size (MiB)")
    parser.add_argument("--workers", type=int, default=1, help="scenes written in parallel (processes)")
    parser.add_argument("--teacher", action="append", default=[], metavar="NAME[:K=V,...]",
                        help="cache this teacher's features (sam, lseg, espnetv2, espnetv2_seg, label_lang, label_seg) or masks "
                             "(sam_masks: SAM's three-scale automatic masks at --size); repeatable")  # fmt: skip
    parser.add_argument(
        "--teacher-size", type=int, nargs=2, metavar=("H", "W"), help="cache features at this grid size"
    )
    parser.add_argument("--teacher-device", default="cpu", help="device for --teacher models (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--color-ext", default="jpg", help="extension of the colour images in the scene folders")
    parser.add_argument("--depth-scale", type=float, default=1000.0, help="stored depth units per metre")
    parser.add_argument("--pixel-center", type=float, choices=[0.0, 0.5],
                        help="first pixel centre in the scenes' intrinsics files: 0 (ScanNet/OpenCV) or 0.5 (ffsplat); "
                             "default: intrinsic/pixel_center.txt of each scene, else 0.5")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="rebuild shards in --out made with other settings")
    parser.add_argument("--frame-range", type=int, nargs=2, metavar=("START", "STOP"),
                        help="only frames START <= id < STOP of every scene (hold out the rest)")  # fmt: skip
    args = parser.parse_args(argv)
    return run_command(lambda: run(args))


def check_options(args) -> None:
    check_number("--size", args.size, low=8, high=4096, integer=True)
    check_number("--clip-length", args.clip_length, low=2, integer=True)
    check_number("--clip-stride", args.clip_stride, low=1, integer=True)
    check_number("--frame-skip", args.frame_skip, low=1, integer=True)
    check_number("--keyframe-translation", args.keyframe_translation, low=0)
    check_number("--keyframe-rotation-deg", args.keyframe_rotation_deg, low=0, high=180)
    if args.no_keyframing:
        if args.frame_skip != 1:
            raise InputError(
                f"--no-keyframing keeps every valid frame; it cannot be combined with --frame-skip {args.frame_skip}"
            )
        args.keyframe_translation = args.keyframe_rotation_deg = 0.0
    check_number("--max-shard-mb", args.max_shard_mb, low=0, low_open=True)
    check_number("--workers", args.workers, low=1, high=256, integer=True)
    check_number("--depth-scale", args.depth_scale, low=0, low_open=True)
    if args.teacher_size:
        for value in args.teacher_size:
            check_number("--teacher-size", value, low=1, high=4096, integer=True)
    check_output_dir("--out", args.out)
    if args.labels_tsv is not None:
        check_input_file("--labels-tsv", args.labels_tsv, "label TSV")
    if args.frame_range and not 0 <= args.frame_range[0] < args.frame_range[1]:
        raise InputError(f"--frame-range {args.frame_range[0]} {args.frame_range[1]}: expected 0 <= START < STOP")


def check_scene(path: Path, option: str, labels_tsv: Path | None, color_ext: str) -> None:
    """A scene folder in the exported layout (colour, depth, poses, intrinsics); labels need the TSV."""
    check_input_dir(option, path, "scene folder")
    missing = [sub for sub in ("color", "depth", "pose") if not (path / sub).is_dir()]
    if missing:
        raise InputError(
            f"{option}: {path} is not a scene folder (no {', '.join(m + '/' for m in missing)}); see data_prep/export_sens.py"
        )
    if not (path / "intrinsic" / "intrinsic_color.txt").is_file():
        raise InputError(f"{option}: {path} has no intrinsic/intrinsic_color.txt")
    if (
        (path / "label-filt").is_dir() and labels_tsv is None and scene_label_map(path) is None
    ):  # synthetic rooms bring their own
        raise InputError(f"--labels-tsv: {path} has label-filt/ (ScanNet raw ids) but no label map; pass the ScanNet "
                         "label map (scannetv2-labels.combined.tsv from your ScanNet download)")  # fmt: skip


def run(args) -> int:
    check_options(args)
    teachers = dict(parse_teacher(spec) for spec in args.teacher)
    if teachers:
        from ffsplat.teachers.base import BUILTIN_TEACHER_MODULES, TEACHERS

        for module in BUILTIN_TEACHER_MODULES:
            __import__(module)
        unknown = sorted(set(teachers) - set(TEACHERS))
        if unknown:
            raise InputError(f"--teacher: unknown teacher {unknown[0]!r}; choose from {sorted(TEACHERS)}")

    scenes: dict[str, list[Path]] = {}
    if args.scenes_root:
        check_input_dir("--scenes-root", args.scenes_root, "scenes folder")
        available = {
            p.name: p
            for p in sorted(args.scenes_root.iterdir())
            if (p / "pose").is_dir() and not p.name.startswith(".")
        }
        assigned: set[str] = set()
        for item in args.split:
            name, _, list_path = item.partition("=")
            if not list_path or not name:
                raise InputError(f"--split: expected NAME=LIST, got {item!r}")
            wanted = read_split_list(Path(list_path))
            missing = [s for s in wanted if s not in available]
            if missing:
                print(
                    f"warning: split {name}: {len(missing)} listed scenes not under {args.scenes_root} (e.g. {missing[:3]})",
                    file=sys.stderr,
                )
            scenes[name] = [available[s] for s in wanted if s in available]
            assigned.update(wanted)
        if not args.split:
            scenes.setdefault(args.default_split, []).extend(p for n, p in available.items() if n not in assigned)
    elif args.split:
        raise InputError("--split needs --scenes-root (the folder the listed scene names are in)")
    if args.scene:
        scenes.setdefault(args.default_split, []).extend(args.scene)
    if not any(scenes.values()):
        raise InputError("no scenes: give --scenes-root (with scene folders containing pose/) or --scene")
    for roots in scenes.values():
        for root in roots:
            check_scene(root, "--scene" if root in args.scene else "--scenes-root", args.labels_tsv, args.color_ext)

    cfg = ShardConfig(
        size=args.size,
        clip_length=args.clip_length,
        min_clip_length=min(ShardConfig.min_clip_length, args.clip_length),
        clip_stride=args.clip_stride,
        frame_skip=args.frame_skip,
        keyframe_translation=args.keyframe_translation,
        keyframe_rotation_deg=args.keyframe_rotation_deg,
        max_shard_bytes=int(args.max_shard_mb * 2**20),
        teachers=teachers,
        teacher_size=tuple(args.teacher_size) if args.teacher_size else None,
        teacher_device=args.teacher_device,
    )
    sequence_kwargs = {"color_ext": args.color_ext, "depth_scale": args.depth_scale}
    if args.pixel_center is not None:
        sequence_kwargs["pixel_center"] = args.pixel_center
    if args.frame_range:
        sequence_kwargs["frame_range"] = tuple(args.frame_range)
    inputs = {"--scene/--scenes-root": [r for roots in scenes.values() for r in roots], "--labels-tsv": args.labels_tsv}
    check_outputs({"--out": args.out / "manifest.json"}, inputs, {"--out": [args.out / split for split in scenes]})
    made = [args.out, *(d for split in scenes for d in (args.out / split, args.out / split / ".done"))]
    made = [d for d in made if not d.exists()]  # folders this run may create
    try:
        manifest = write_shards(scenes, args.out, cfg, args.labels_tsv, workers=args.workers, sequence_kwargs=sequence_kwargs,
                                overwrite=args.overwrite)  # fmt: skip
    except ShardSettingsError as exc:
        raise InputError(str(exc)) from exc
    except (TeacherLoadError, TeacherWeightsNotFound) as exc:  # before the scene's shards: drop the folders made
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise InputError(f"--teacher: {exc}") from None
    except OSError as exc:  # full disk, quota: the shard being written is removed; finished scenes are kept
        kept = sorted(args.out.glob("*/.done/*.json")) if args.out.is_dir() else []
        for folder in reversed(made):  # the folders this run made, deepest first, where it left them empty
            try:
                folder.rmdir()
            except OSError:
                pass
        raise InputError(
            f"--out: cannot write shards in {args.out}: {exc.strerror or exc}; "
            + (
                f"the {len(kept)} finished scenes are kept and the next run resumes after them"
                if kept
                else "nothing was kept"
            )
        ) from exc
    summary = {split: {k: v for k, v in entry.items() if k != "shards"} | {"shards": len(entry["shards"])}
               for split, entry in manifest["splits"].items()}  # fmt: skip
    skipped = {name: s["skipped_frames"] for name, s in manifest["scenes"].items() if s.get("skipped_frames")}
    print(
        json.dumps(
            {"out": str(args.out), "run": manifest["run"], "splits": summary, "skipped_frames": skipped}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
