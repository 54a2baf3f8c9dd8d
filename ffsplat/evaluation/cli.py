"""Evaluate a trained model on an evaluation index: the numbers to compare with papers.

    python evaluate.py --checkpoint checkpoints/scannet_lang/model.pt --shards data/shards/scannet \
        --split val --index index/scannet_lsm.json --out reports/scannet_lsm --sam-checkpoint weights/sam_vit_b_01ec64.pth

Writes ``<out>/report.json``, ``<out>/report.md`` (a markdown table) and ``<out>/figures/`` (input,
target, render, depth, ground-truth and predicted class maps, PCA of both feature fields for the
first ``--figures`` examples). Metrics: target- and source-view 8-class mIoU/accuracy (dataset-level,
label 0 ignored; per-image mean too), PSNR/SSIM, depth AbsRel and delta < 1.25, promptable IoU on a
``--prompt-grid`` squared grid of point prompts (SAM's decoder, or the stand-in for stand-in models).
With ``--teacher-baseline`` the 2D teachers applied at the target views are scored as well.

Labels are scored in the dataset's 8 evaluation classes. A model whose classes are others (the demo
model's 20 PASCAL VOC classes) is refused on labelled shards unless ``--class-mapping`` is given
(``pascal-scannet``: chair, sofa, dining table -> table, the rest -> other; or a JSON file
``{"model class": "evaluation class"}``); report.json records the mapping used under
``class_mapping``, with the dataset classes the model cannot predict.

The model runs at the shards' resolution; when that differs from the size the model was trained at,
the report says so (``resolution`` in report.json, a note in report.md). Empty table cells are
explained under the table. Damaged shards (corrupt, truncated, missing) are skipped and listed in
the report (``bad_shard_data``, ``skipped_entries``). Bad input ends with one ``error:`` line, exit
code 2 and nothing written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def write_figures(predictor, examples, folder: Path, count: int) -> list[str]:
    """One PNG row of panels (``ffsplat.evaluation.figures.example_panels``) for each of the first ``count`` examples."""
    from PIL import Image

    from ffsplat.core.atomic import atomic_open, make_dirs
    from ffsplat.evaluation.figures import example_panels, figure_row

    make_dirs(folder)
    paths = []
    for i, example in enumerate(examples):
        if i >= count:
            break
        panels = example_panels(predictor, example.to(predictor.device))
        row = figure_row(
            panels, predictor.class_names, scale=max(1, 128 // panels["target"].shape[-1])
        )  # titles + class legend
        path = folder / f"{i:03d}_{example.scenes[0]}.png"
        with atomic_open(path) as f:
            Image.fromarray(row).save(f, format="PNG")
        paths.append(str(path))
    return paths


COLUMNS = ["target_miou", "target_acc", "source_miou", "source_acc", "psnr", "ssim", "lpips", "depth_abs_rel",
           "depth_delta_1.25", "promptable_iou"]  # fmt: skip


def markdown(results: dict[str, dict], reasons: dict[str, str] | None = None) -> str:
    """The results table; empty cells ("-") are explained by ``reasons`` (column -> why) below it."""
    lines = ["| model | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, r in results.items():
        cells = [f"{r[c]:.4f}" if isinstance(r.get(c), float) else "-" for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    notes = []
    for c in COLUMNS:
        rows = [name for name, r in results.items() if not isinstance(r.get(c), float)]
        if not rows:
            continue
        if "model" in results and "model" not in rows:  # the data had it: only other rows (the 2D teacher) lack it
            why = "not scored for the 2D teacher (it predicts no such output from the target images alone)"
            notes.append(f"- `{c}` is empty in the {', '.join(f'`{r}`' for r in rows)} row: {why}")
        else:
            notes.append(f"- `{c}` is empty: {(reasons or {}).get(c, 'not computed for this model')}")
    return "\n".join(lines) + "\n" + ("\nEmpty columns:\n" + "\n".join(notes) + "\n" if notes else "")


class Observed:
    """Wraps the examples, remembering which ground truth they carried and their image size."""

    def __init__(self, examples):
        self.examples = examples
        self.labels = self.instances = self.depths = False
        self.size: tuple[int, int] | None = None

    def __iter__(self):
        for example in self.examples:
            t = example.target
            self.labels |= t.labels is not None
            self.instances |= t.instances is not None
            self.depths |= t.depths is not None
            self.size = tuple(t.images.shape[-2:])
            yield example


def empty_column_reasons(seen: Observed, args, examples: int) -> dict[str, str]:
    """Why each metric column may be empty, from what the data and options provided."""
    if examples == 0:
        return {c: "no example was evaluated (all skipped, see bad_shard_data)" for c in COLUMNS}
    reasons = {}
    for c in ("target_miou", "target_acc", "source_miou", "source_acc"):
        reasons[c] = (
            "every labelled pixel is 0 (ignored)" if seen.labels else "the shards hold no semantic labels (label.*.png)"
        )
    if args.no_source_views:
        reasons["source_miou"] = reasons["source_acc"] = "--no-source-views"
    reasons["lpips"] = "no --lpips-vgg weights given (LPIPS needs local VGG16 weights)"
    why_depth = "no valid (non-zero) sensor depth in the target views" if seen.depths else "the shards hold no depth"
    reasons["depth_abs_rel"] = reasons["depth_delta_1.25"] = why_depth
    why_prompt = (
        "no ground-truth instance under any prompt point"
        if seen.instances
        else "the shards hold no instance masks (inst.*.png)"
    )
    reasons["promptable_iou"] = "--prompt-grid 0" if args.prompt_grid == 0 else why_prompt
    reasons["psnr"] = reasons["ssim"] = "not computed for this model (the 2D teacher renders no images)"
    return reasons


def check_args(args) -> None:
    from ffsplat.core.errors import (
        InputError,
        check_device,
        check_input_file,
        check_number,
        check_output_dir,
        check_outputs,
    )
    from ffsplat.evaluation.class_mapping import BUILTIN_MAPPINGS

    check_number("--prompt-grid", args.prompt_grid, low=0, high=256, integer=True)
    check_number("--max-examples", args.max_examples, low=1, integer=True)
    check_number("--figures", args.figures, low=0, integer=True)
    if args.device is not None:
        check_device("--device", args.device)
    if args.class_mapping is not None and args.class_mapping not in BUILTIN_MAPPINGS:
        check_input_file("--class-mapping", Path(args.class_mapping), "class mapping JSON")
    check_input_file("--checkpoint", args.checkpoint, "checkpoint")
    check_input_file("--index", args.index, "evaluation index")
    for option, path in (
        ("--lpips-vgg", args.lpips_vgg),
        ("--sam-checkpoint", args.sam_checkpoint),
        ("--lseg-checkpoint", args.lseg_checkpoint),
    ):
        if path:
            check_input_file(option, Path(path), "weights file")
    if args.lpips_vgg:  # before any work: only torchvision's VGG16 file is ever loaded (a hash check, no unpickling)
        from ffsplat.objectives.metrics import check_lpips_weights

        try:
            check_lpips_weights(args.lpips_vgg)
        except ValueError as exc:
            raise InputError(f"--lpips-vgg: {exc}") from None
    check_output_dir("--out", args.out)
    check_outputs(
        {"--out": [args.out / "report.json", args.out / "report.md"]},
        {"--checkpoint": args.checkpoint, "--index": args.index, "--shards": args.shards,
         "--lpips-vgg": args.lpips_vgg and Path(args.lpips_vgg),
         "--sam-checkpoint": args.sam_checkpoint and Path(args.sam_checkpoint),
         "--lseg-checkpoint": args.lseg_checkpoint and Path(args.lseg_checkpoint)},
        {"--out (figures/)": args.out / "figures"},
    )  # fmt: skip
    if os.path.realpath(args.shards) in [os.path.realpath(p) for p in [args.out, *Path(args.out).parents]]:
        raise InputError(f"--out: {args.out} is inside the shard folder --shards {args.shards}; choose another folder")


def check_index_frames(shards: Path, split: str, index: dict) -> dict:
    """:func:`ffsplat.data.shards.check_index_frames` with its error as an ``--index`` input error."""
    from ffsplat.core.errors import InputError
    from ffsplat.data.shards import check_index_frames as check

    try:
        return check(shards, split, index)
    except ValueError as exc:
        raise InputError(f"--index: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    from ffsplat.core.errors import ArgumentParser, run_command
    from ffsplat.data.remote import shard_root

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument(
        "--shards",
        type=shard_root,
        required=True,
        help="shard folder with manifest.json: a path, or a URL (https://, s3://, gs://, pipe:... {})",
    )
    p.add_argument("--split", default="val")
    p.add_argument("--index", type=Path, required=True, help="evaluation index JSON (data_prep/make_eval_index.py)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prompt-grid", type=int, default=32)
    p.add_argument("--no-source-views", action="store_true")
    p.add_argument("--max-examples", type=int)
    p.add_argument("--figures", type=int, default=8)
    p.add_argument("--teacher-baseline", action="store_true", help="also score the 2D teachers at the target views")
    p.add_argument("--lpips-vgg", help="local torchvision vgg16-397923af.pth: adds LPIPS")
    p.add_argument("--device", default=None)
    p.add_argument("--sam-checkpoint")
    p.add_argument("--lseg-checkpoint")
    p.add_argument("--class-mapping", help="model classes -> evaluation classes: pascal-scannet, or a JSON file "
                   '{"model class": "evaluation class"}; needed when the model\'s classes are not the 8 evaluation classes')  # fmt: skip
    args = p.parse_args(argv)
    return run_command(lambda: run(args))


def run(args) -> int:
    import torch

    import ffsplat  # noqa: F401
    from ffsplat.core.atomic import atomic_open, make_dirs, transaction
    from ffsplat.core.errors import InputError
    from ffsplat.data.shards import EvalIndexDataset, read_manifest
    from ffsplat.data.sampling import load_eval_index
    from ffsplat.evaluation.class_mapping import ClassMappingError
    from ffsplat.evaluation.evaluate import EvalConfig, evaluate_model, evaluate_teacher
    from ffsplat.inference.predictor import CheckpointError, Predictor, teacher_overrides

    check_args(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        index = load_eval_index(args.index)
        if not index or not any(index.values()):
            raise InputError(f"--index: {args.index} has no entries; nothing to evaluate")
        EvalIndexDataset(args.shards, args.split, index)  # split and scenes exist
        bad_at_start = check_index_frames(args.shards, args.split, index)
        shard_size = read_manifest(args.shards).get("config", {}).get("size")
        predictor = Predictor(args.checkpoint, device, teacher_overrides(args.sam_checkpoint, args.lseg_checkpoint))
    except CheckpointError as exc:
        raise InputError(f"--checkpoint: {exc}") from exc
    except (FileNotFoundError, KeyError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        from ffsplat.core.errors import one_line

        raise InputError(f"--shards/--split/--index: {one_line(exc)}") from exc
    trained = predictor.meta.get("image_size")
    resolution = {"model_trained_at": trained, "shards": shard_size, "evaluated_at": shard_size}
    if trained and shard_size and trained != shard_size:
        resolution["note"] = (f"the model was trained at {trained}x{trained} but is evaluated at the shards' {shard_size}x{shard_size}; "
                              "scores depend on resolution, so compare only runs at the same size")  # fmt: skip
        print(f"warning: {resolution['note']}", file=sys.stderr)
    cfg = EvalConfig(prompt_grid=args.prompt_grid, source_views=not args.no_source_views, max_examples=args.max_examples,
                     lpips_vgg_path=args.lpips_vgg, progress=True, class_mapping=args.class_mapping)  # fmt: skip
    model_set = EvalIndexDataset(args.shards, args.split, index)
    seen = Observed(model_set)
    try:
        results = {"model": evaluate_model(predictor, seen, cfg)}
    except ClassMappingError as exc:
        raise InputError(f"--class-mapping: {exc}; nothing written") from exc
    mapping = results["model"].get("class_mapping")
    if mapping and mapping["dataset_classes_not_predictable"]:
        print(f"warning: with class mapping {mapping['name']} the model cannot predict the dataset classes "
              f"{', '.join(mapping['dataset_classes_not_predictable'])} (their IoU is 0)", file=sys.stderr)  # fmt: skip
    if results["model"]["examples"] == 0:
        raise InputError(f"--shards: no example of {args.index} could be read from {args.shards} "
                         f"({model_set.corrupt.count} bad shard reads; run data_prep/verify_shards.py); nothing written")  # fmt: skip
    if args.teacher_baseline:
        stand_in = any(spec["name"].startswith("label_") for spec in predictor.cfg.roles.values())
        row = "teacher_2d (stand-in: label-derived)" if stand_in else "teacher_2d"  # stand-ins are not SAM/LSeg
        results[row] = evaluate_teacher(predictor, EvalIndexDataset(args.shards, args.split, index), cfg)
    reasons = empty_column_reasons(seen, args, results["model"]["examples"])
    try:
        with transaction():  # report and figures appear together, or none does (earlier ones stay as they were)
            make_dirs(args.out)
            figures = write_figures(
                predictor, EvalIndexDataset(args.shards, args.split, index), args.out / "figures", args.figures
            )
            report = {"checkpoint": str(args.checkpoint), "shards": str(args.shards), "split": args.split, "index": str(args.index),
                      "settings": vars(cfg), "resolution": resolution, "class_mapping": mapping, "results": results, "figures": figures,
                      "empty_columns": {c: reasons[c] for c in COLUMNS if not isinstance(results["model"].get(c), float)},
                      "bad_shard_data": model_set.corrupt.summary() if model_set.corrupt.count else bad_at_start,
                      "skipped_entries": model_set.skipped_entries}  # fmt: skip
            with atomic_open(args.out / "report.json", "w") as f:
                json.dump(report, f, indent=2, default=str)
            note = f"\n**Resolution:** {resolution['note']}\n" if "note" in resolution else ""
            if mapping and mapping["name"] != "identity":
                note += (f"\n**Class mapping:** {mapping['name']} (model classes -> evaluation classes, see report.json); "
                         f"not predictable: {', '.join(mapping['dataset_classes_not_predictable']) or 'none'}\n")  # fmt: skip
            bad = report["bad_shard_data"]
            damaged = (f"\n**Damaged shards skipped:** {bad['bad']} bad reads in {sorted(bad['by_shard'])}; "
                       f"{len(model_set.skipped_entries)} index entries not evaluated (see report.json)\n") if bad["bad"] else ""  # fmt: skip
            with atomic_open(args.out / "report.md", "w") as f:
                f.write(f"# Evaluation of {args.checkpoint}\n\n{args.split} split of {args.shards}, index {args.index}\n{note}{damaged}\n"
                        + markdown(results, reasons))  # fmt: skip
    except OSError as exc:  # full disk, quota: what this run wrote is removed, earlier reports stay
        raise InputError(
            f"--out: cannot write the report in {args.out}: {exc.strerror or exc} (nothing was written)"
        ) from exc
    print(json.dumps(results, indent=2))
    if bad["bad"]:
        print(f"warning: skipped {bad['bad']} bad shard reads in {len(bad['by_shard'])} shards and {len(model_set.skipped_entries)} "
              "index entries; listed in report.json", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
