"""Evaluate a trained model on an evaluation index: the numbers to compare with papers.

    python evaluate.py --checkpoint checkpoints/scannet_lang/model.pt --shards data/shards/scannet \
        --split val --index index/scannet_lsm.json --out reports/scannet_lsm --sam-checkpoint weights/sam_vit_b_01ec64.pth

Writes ``<out>/report.json``, ``<out>/report.md`` (a markdown table) and ``<out>/figures/`` (input,
target, render, depth, ground-truth and predicted class maps, PCA of both feature fields for the
first ``--figures`` examples). Metrics: target- and source-view 8-class mIoU/accuracy (dataset-level,
label 0 ignored; per-image mean too), PSNR/SSIM, depth AbsRel and delta < 1.25, promptable IoU on a
``--prompt-grid`` squared grid of point prompts (SAM's decoder, or the stand-in for stand-in models).
With ``--teacher-baseline`` the 2D teachers applied at the target views are scored as well.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path



def write_figures(predictor, examples, folder: Path, count: int) -> list[str]:
    """One PNG row of panels (``ffsplat.evaluation.figures.example_panels``) for each of the first ``count`` examples."""
    from PIL import Image

    from ffsplat.core.atomic import atomic_open
    from ffsplat.evaluation.figures import example_panels, figure_row

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, example in enumerate(examples):
        if i >= count:
            break
        panels = example_panels(predictor, example.to(predictor.device))
        row = figure_row(panels, predictor.class_names, scale=max(1, 128 // panels["target"].shape[-1]))  # titles + class legend
        path = folder / f"{i:03d}_{example.scenes[0]}.png"
        with atomic_open(path) as f:
            Image.fromarray(row).save(f, format="PNG")
        paths.append(str(path))
    return paths


def markdown(results: dict[str, dict]) -> str:
    columns = ["target_miou", "target_acc", "source_miou", "source_acc", "psnr", "ssim", "lpips", "depth_abs_rel",
               "depth_delta_1.25", "promptable_iou"]  # fmt: skip
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, r in results.items():
        cells = [f"{r[c]:.4f}" if isinstance(r.get(c), float) else "-" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--shards", type=Path, required=True, help="shard folder with manifest.json")
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
    args = p.parse_args(argv)

    import torch

    import ffsplat  # noqa: F401
    from ffsplat.core.atomic import atomic_open
    from ffsplat.data.shards import EvalIndexDataset
    from ffsplat.data.sampling import load_eval_index
    from ffsplat.evaluation.evaluate import EvalConfig, evaluate_model, evaluate_teacher
    from ffsplat.inference.predictor import CheckpointError, Predictor, teacher_overrides

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        predictor = Predictor(args.checkpoint, device, teacher_overrides(args.sam_checkpoint, args.lseg_checkpoint))
        index = load_eval_index(args.index)
        dataset = lambda: EvalIndexDataset(args.shards, args.split, index)  # noqa: E731
        dataset()
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = EvalConfig(prompt_grid=args.prompt_grid, source_views=not args.no_source_views, max_examples=args.max_examples,
                     lpips_vgg_path=args.lpips_vgg, progress=True)  # fmt: skip
    results = {"model": evaluate_model(predictor, dataset(), cfg)}
    if args.teacher_baseline:  # label-derived stand-ins are not SAM/LSeg: the row says so
        stand_in = any(spec["name"].startswith("label_") for spec in predictor.cfg.roles.values())
        results["teacher_2d (stand-in: label-derived)" if stand_in else "teacher_2d"] = evaluate_teacher(predictor, dataset(), cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    figures = write_figures(predictor, dataset(), args.out / "figures", args.figures)
    report = {"checkpoint": str(args.checkpoint), "shards": str(args.shards), "split": args.split, "index": str(args.index),
              "settings": vars(cfg), "results": results, "figures": figures}  # fmt: skip
    with atomic_open(args.out / "report.json", "w") as f:
        json.dump(report, f, indent=2, default=str)
    with atomic_open(args.out / "report.md", "w") as f:
        f.write(f"# Evaluation of {args.checkpoint}\n\n{args.split} split of {args.shards}, index {args.index}\n\n" + markdown(results))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
