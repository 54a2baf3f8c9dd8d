"""Run per-scene baselines on the feed-forward model's evaluation index and score them the same way.

For every entry of an evaluation index a baseline is optimised from scratch on the entry's training
views and scored on its target views with :mod:`ffsplat.objectives.metrics`, exactly as
:mod:`ffsplat.evaluation.evaluate` scores the feed-forward model:

* ``sparse``: the entry's context views (the 2 views the feed-forward model sees);
* ``dense``: every stored keyframe of the scene except the targets (at most ``dense_views``).

What each method is scored on: all methods render RGB and depth (PSNR, SSIM, depth AbsRel);
``feature3dgs`` (language teacher) and ``semlogits`` give 8-class maps (target mIoU/accuracy);
``fhgs`` gives SAM-space features (promptable IoU through the same prompt decoder); ``protosaga``
gives instance ids (class-agnostic matching mIoU). Class embeddings, the prompt decoder and the
teacher names come from the feed-forward checkpoint, so both sides use identical references.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from ffsplat.baselines.feature3dgs import Feature3DGS
from ffsplat.baselines.fhgs import FHGS
from ffsplat.baselines.protosaga import ProtoSaGa, instance_metrics
from ffsplat.baselines.trainer import SceneConfig, SceneMethod, SceneTrainer
from ffsplat.baselines.semlogits import SemanticLogits
from ffsplat.data.labels import EVAL_CLASSES
from ffsplat.data.shards import EvalIndexDataset, scene_frame_ids
from ffsplat.objectives.metrics import PromptableMeter, SegmentationMeter, classify_by_embeddings, depth_metrics, psnr, ssim
from ffsplat.objectives.prompting import grid_prompt_points
from ffsplat.core.types import Example

MethodFactory = Callable[[dict[str, str], Example], SceneMethod]

BASELINES: dict[str, MethodFactory] = {
    "3dgs": lambda roles, ex: SceneMethod(),
    "feature3dgs": lambda roles, ex: Feature3DGS(teacher=roles["language"], teacher_dim=ex.context.teacher[roles["language"]].shape[2]),
    "semlogits": lambda roles, ex: SemanticLogits(num_classes=len(EVAL_CLASSES)),
    "fhgs": lambda roles, ex: FHGS(teacher=roles["segmentation"]),
    "protosaga": lambda roles, ex: ProtoSaGa(),
}
"""Baseline name -> factory from (teacher names by role, example)."""


def dense_index(root: str | Path, split: str, index: dict[str, list[dict]], max_views: int) -> dict[str, list[dict]]:
    """The same targets, with every other stored keyframe of the scene (evenly thinned) as training views."""
    frames = scene_frame_ids(root, split)
    dense = {}
    for scene, entries in index.items():
        dense[scene] = []
        for entry in entries:
            others = [f for f in frames[scene] if f not in set(entry["target"])]
            step = max(1, -(-len(others) // max_views))
            dense[scene].append({"context": others[::step][:max_views], "target": entry["target"]})
    return dense


@torch.no_grad()
def score(name: str, trainer: SceneTrainer, method: SceneMethod, example: Example, predictor, meters: dict, prompt_grid: int) -> dict[str, float]:
    """Target-view metrics of a fitted baseline; segmentation/prompt meters accumulate over examples."""
    target = example.target
    cams = target.cameras
    out = SceneMethod.render(method, trainer, cams)
    rgb, gt = out.rgb.clamp(0, 1).flatten(0, 1), target.images.flatten(0, 1)
    scalars = {"psnr": float(psnr(rgb, gt).mean()), "ssim": float(ssim(rgb, gt).mean())}
    if target.depths is not None:
        scalars["depth_abs_rel"] = float(depth_metrics(out.depth, target.depths)["abs_rel"])
    if target.labels is not None and name in ("feature3dgs", "semlogits"):
        if name == "semlogits":
            pred = method.predict(trainer, cams)[0]
        else:
            pred = classify_by_embeddings(method.decoded_features(trainer, cams)[0], predictor.class_embeddings)
        meters["seg"].update(pred, target.labels.flatten(0, 1))
    if target.instances is not None and name == "fhgs" and prompt_grid:
        feats = method.features(trainer, cams)[0]
        h, w = target.images.shape[-2:]
        decoder = predictor.prompt_decoder
        size = decoder.output_size(h, w) if hasattr(decoder, "output_size") else feats.shape[-2:]
        feats = torch.nn.functional.interpolate(feats, size=size, mode="bilinear", align_corners=False)
        points = grid_prompt_points(prompt_grid, (h, w)).to(feats)
        for v in range(len(feats)):
            masks = decoder.decode(feats[v : v + 1], points[None], image_size=(h, w))[0][0]
            meters["prompt"].update(masks, target.instances[0, v], points)
    if target.instances is not None and name == "protosaga":
        scalars["instance_miou"] = float(instance_metrics(method.predict_ids(trainer, cams)[0], target.instances[0])["miou"])
    return scalars


def run_baseline(name: str, predictor, root: str | Path, split: str, index: dict[str, list[dict]], setting: str,
                 cfg: SceneConfig, prompt_grid: int = 32, dense_views: int = 16, max_examples: int | None = None,
                 progress: bool = False) -> dict:  # fmt: skip
    """Fit ``name`` on every index entry and return averaged target-view metrics, time and memory."""
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")
    if setting not in ("sparse", "dense"):
        raise ValueError(f"setting must be sparse or dense, got {setting!r}")
    used = dense_index(root, split, index, dense_views) if setting == "dense" else index
    roles = {role: spec["name"] for role, spec in predictor.cfg.roles.items()}
    meters = {"seg": SegmentationMeter(num_classes=len(EVAL_CLASSES)), "prompt": PromptableMeter()}
    sums: dict[str, float] = {}
    seconds, count, gaussians = 0.0, 0, 0
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for example in EvalIndexDataset(root, split, used):
        if max_examples is not None and count >= max_examples:
            break
        example = example.to(predictor.device)
        start = time.perf_counter()
        torch.manual_seed(cfg.seed)
        method = BASELINES[name](roles, example).to(predictor.device)
        trainer = SceneTrainer(cfg, example.context, method)
        trainer.fit(progress=progress)
        seconds += time.perf_counter() - start
        for k, v in score(name, trainer, method, example, predictor, meters, prompt_grid).items():
            sums[k] = sums.get(k, 0.0) + v
        gaussians += trainer.num_gaussians
        count += 1
    result = {k: v / max(count, 1) for k, v in sums.items()}
    if int(meters["seg"].confusion.sum()):
        seg = meters["seg"].compute()
        result.update(target_miou=float(seg["miou"]), target_acc=float(seg["acc"]))
    prompt = meters["prompt"].compute()
    if prompt["points"]:
        result["promptable_iou"] = float(prompt["iou"])
    result.update(
        method=name, setting=setting, examples=count, iterations=cfg.iterations,
        seconds_per_scene=seconds / max(count, 1), gaussians=gaussians / max(count, 1),
        peak_rss_growth_mb=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024,
    )  # fmt: skip
    return result


def write_table(results: list[dict], path: Path) -> str:
    """Markdown table of all rows (feed-forward and baselines)."""
    cols = ["target_miou", "target_acc", "psnr", "ssim", "depth_abs_rel", "promptable_iou", "instance_miou", "seconds_per_scene", "peak_rss_growth_mb"]
    lines = ["| method | setting | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in results:
        cells = [f"{r[c]:.4g}" if isinstance(r.get(c), (int, float)) else "-" for c in cols]
        lines.append(f"| {r['method']} | {r.get('setting', '-')} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    from ffsplat.core.atomic import atomic_open

    with atomic_open(path, "w") as f:
        f.write(text)
    return text


def save_json(path: Path, data) -> None:
    from ffsplat.core.atomic import atomic_open

    with atomic_open(path, "w") as f:
        json.dump(data, f, indent=2, default=str)


def scene_config_dict(cfg: SceneConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k != "render"}
