"""Evaluation of a feed-forward model (or the 2D teacher) on examples fixed by an evaluation index.

Metrics, as LSM / Uni3R / SemanticSplat report them:

* target- and source-view 8-class segmentation from the language field: render, expand to the
  language teacher's space, classify each pixel by cosine against the class embeddings (CLIP text
  of the class names, or the stand-in teacher's table); mIoU / accuracy accumulated over the whole
  dataset, label 0 ignored (``miou_per_image`` is the per-image average some scorers use); a model
  whose classes are not the evaluation classes is scored only through ``EvalConfig.class_mapping``
  (:mod:`ffsplat.evaluation.class_mapping`), recorded in the result as ``class_mapping``;
* novel views: PSNR, SSIM of a named variant (``skimage``: MVSplat / SemanticSplat, the default;
  ``torchmetrics``: LSM), and LPIPS when local VGG weights are given (checked against torchvision's
  VGG16 hash, a wrong file is refused);
* depth: AbsRel and delta < 1.25 of the rendered expected depth against sensor depth;
* time: ``reconstruction_s`` (the model's forward pass, per example) and ``evaluation_s`` (rendering
  and scoring, per example) separately, ``peak_gpu_mb`` on CUDA;
* promptable segmentation: a grid of point prompts per target view, the prompt decoder (SAM's, or
  the stand-in) on the *rendered* segmentation embeddings, best IoU of the three masks against the
  ground-truth instance under the point.

A predictor is callable as ``predictor(context, teacher_maps) -> NetworkOutput`` and has ``model``,
``teacher_maps(views)`` (teacher features by role), ``prompt_decoder``, ``class_embeddings`` and
``cfg.model.conditioning`` (``SemanticSplatModule`` is one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor

from ffsplat.data.labels import EVAL_CLASSES
from ffsplat.evaluation.class_mapping import resolve_class_mapping
from ffsplat.objectives.metrics import (
    PromptableMeter,
    VGG16_SHA256_PREFIX,
    SegmentationMeter,
    checked_lpips,
    classify_by_embeddings,
    depth_metrics,
    image_ssim,
    psnr,
)
from ffsplat.model.network import LANG, SEG
from ffsplat.objectives.prompting import grid_prompt_points
from ffsplat.render.renderer import render
from ffsplat.core.types import Example


@dataclass
class EvalConfig:
    """Evaluation options.

    Attributes:
        prompt_grid: point prompts per side for promptable segmentation (paper: 32).
        source_views: also score segmentation at the context (source) views.
        max_examples: stop after this many examples (None: all).
        lpips_vgg_path: local torchvision VGG16 weights (``vgg16-397923af.pth``, hash-checked) for
            LPIPS; None skips LPIPS.
        lpips_sha256_prefix: expected start of the VGG file's SHA-256 (torchvision's ``397923af``);
            a file that does not match is refused.
        ssim_variant: ``skimage`` (MVSplat / SemanticSplat) or ``torchmetrics`` (LSM), see
            :data:`ffsplat.objectives.metrics.SSIM_VARIANTS`.
        progress: print one flushed line per example to stderr (works in a terminal and in a log).
        class_mapping: how the model's classes map to the dataset's evaluation classes before scoring
            labels: None (the model's classes must be the evaluation classes, else
            :class:`~ffsplat.evaluation.class_mapping.ClassMappingError`), ``pascal-scannet`` or a
            JSON file (:mod:`ffsplat.evaluation.class_mapping`). The result records it under
            ``class_mapping`` with the dataset classes the model cannot predict.
    """

    prompt_grid: int = 32
    source_views: bool = True
    max_examples: int | None = None
    lpips_vgg_path: str | None = None
    ssim_variant: str = "skimage"
    lpips_sha256_prefix: str = VGG16_SHA256_PREFIX
    progress: bool = False
    class_mapping: str | None = None


class _Mapper:
    """Maps predicted model class ids to evaluation ids; resolved at the first labelled view, so
    evaluating a model of another vocabulary on unlabelled data needs no mapping."""

    def __init__(self, predictor, option: str | None):
        self.names = list(getattr(predictor, "class_names", EVAL_CLASSES))
        self.option = option
        self.mapping = None
        self.table: Tensor | None = None

    def __call__(self, pred: Tensor) -> Tensor:
        if self.mapping is None:
            self.mapping = resolve_class_mapping(self.names, self.option)
            self.table = self.mapping.lookup(self.names)
        return self.table.to(pred.device)[pred]

    def record(self, result: dict) -> dict:
        if self.mapping is not None:
            result["class_mapping"] = self.mapping.report()
        return result


def report_progress(cfg: EvalConfig, what: str, count: int, example: Example, start: float) -> None:
    """``[eval model] example 3/40 scene0011_00 | 1.2 s/example | elapsed 0:00:04`` on stderr."""
    if not cfg.progress:
        return
    import sys

    elapsed = time.perf_counter() - start
    total = f"/{cfg.max_examples}" if cfg.max_examples is not None else ""
    print(f"[eval {what}] example {count}{total} {example.scenes[0]} | {elapsed / count:.2f} s/example | elapsed {elapsed:.1f} s",
          file=sys.stderr, flush=True)  # fmt: skip


class _Scores:
    """Running means of per-example scalars plus the dataset-level meters."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.target_seg = SegmentationMeter(num_classes=len(EVAL_CLASSES))
        self.source_seg = SegmentationMeter(num_classes=len(EVAL_CLASSES))
        self.prompt = PromptableMeter()

    def add(self, name: str, value: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.counts[name] = self.counts.get(name, 0) + 1

    def result(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        for prefix, meter in (("target", self.target_seg), ("source", self.source_seg)):
            if int(meter.confusion.sum()) > 0:
                seg = meter.compute()
                out.update({f"{prefix}_miou": float(seg["miou"]), f"{prefix}_acc": float(seg["acc"]),
                            f"{prefix}_miou_per_image": float(seg["miou_per_image"])})  # fmt: skip
        prompt = self.prompt.compute()
        if prompt["points"]:
            out["promptable_iou"] = float(prompt["iou"])
            out["promptable_acc"] = float(prompt["acc"])
        return out


def _promptable(scores: _Scores, decoder, embeddings: Tensor, instances: Tensor, grid: int) -> None:
    """Grid prompts on each view's (decoded) segmentation embeddings vs ground-truth instances."""
    h, w = instances.shape[-2:]
    size = decoder.output_size(h, w) if hasattr(decoder, "output_size") else embeddings.shape[-2:]
    if tuple(embeddings.shape[-2:]) != tuple(size):
        embeddings = torch.nn.functional.interpolate(embeddings, size=size, mode="bilinear", align_corners=False)
    points = grid_prompt_points(grid, (h, w)).to(embeddings)
    for n in range(len(embeddings)):
        masks = decoder.decode(embeddings[n : n + 1], points[None], image_size=(h, w))[0][0]  # [P, 3, H, W]
        scores.prompt.update(masks, instances[n], points)


@torch.no_grad()
def evaluate_model(predictor, examples: Iterable[Example], cfg: EvalConfig | None = None) -> dict[str, float]:
    """Score a feed-forward predictor on ``examples`` (batches of one scene each are fine)."""
    cfg = cfg or EvalConfig()
    scores = _Scores()
    mapper = _Mapper(predictor, cfg.class_mapping)
    model, device = predictor.model, predictor.class_embeddings.device
    lpips = checked_lpips(cfg.lpips_vgg_path, cfg.lpips_sha256_prefix).to(device) if cfg.lpips_vgg_path else None
    conditioned = predictor.conditioned
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    start, count, forward = time.perf_counter(), 0, 0.0
    for example in examples:
        if cfg.max_examples is not None and count >= cfg.max_examples:
            break
        count += 1
        example = example.to(device)
        sync()
        t0 = time.perf_counter()
        out = predictor(example.context, predictor.teacher_maps(example.context) if conditioned else None)
        sync()
        forward += time.perf_counter() - t0
        sets = [("target", example.target)] + ([("source", example.context)] if cfg.source_views else [])
        for kind, views in sets:
            rendered = render(out.gaussians, views.cameras, features=[SEG, LANG])
            h, w = views.images.shape[-2:]
            decoded = model.decode_fields(rendered.features, {"sam": (h, w), "lseg": (h, w)})
            if views.labels is not None:
                pred = mapper(classify_by_embeddings(decoded["lseg"].flatten(0, 1), predictor.class_embeddings))
                (scores.target_seg if kind == "target" else scores.source_seg).update(pred, views.labels.flatten(0, 1))
            if kind != "target":
                continue
            rgb, gt = rendered.rgb.clamp(0, 1).flatten(0, 1), views.images.flatten(0, 1)
            scores.add("psnr", psnr(rgb, gt).mean())
            scores.add("ssim", image_ssim(rgb, gt, cfg.ssim_variant).mean())
            if lpips is not None:
                scores.add("lpips", lpips(rgb, gt).mean())
            if views.depths is not None:
                depth = depth_metrics(rendered.depth, views.depths)
                scores.add("depth_abs_rel", depth["abs_rel"])
                scores.add("depth_delta_1.25", depth["delta_1.25"])
            if views.instances is not None and cfg.prompt_grid:
                _promptable(
                    scores,
                    predictor.prompt_decoder,
                    decoded["sam"].flatten(0, 1),
                    views.instances.flatten(0, 1),
                    cfg.prompt_grid,
                )
        report_progress(cfg, "model", count, example, start)
    result = scores.result()
    sync()
    total = time.perf_counter() - start
    result["examples"] = count
    result["seconds"] = total
    result["reconstruction_s"] = forward / max(count, 1)
    result["evaluation_s"] = (total - forward) / max(count, 1)
    result["ssim_variant"] = cfg.ssim_variant
    if cuda:
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return mapper.record(result)


@torch.no_grad()
def evaluate_teacher(predictor, examples: Iterable[Example], cfg: EvalConfig | None = None) -> dict[str, float]:
    """The 2D teachers applied directly at the target views: language-teacher mIoU/accuracy and
    segmentation-teacher promptable IoU (the reference a 3D field should beat by being consistent)."""
    cfg = cfg or EvalConfig()
    scores = _Scores()
    mapper = _Mapper(predictor, cfg.class_mapping)
    device = predictor.class_embeddings.device
    start = time.perf_counter()
    for i, example in enumerate(examples):
        if cfg.max_examples is not None and i >= cfg.max_examples:
            break
        target = example.to(device).target
        feats = predictor.teacher_maps(target)
        h, w = target.images.shape[-2:]
        if target.labels is not None:
            lang = torch.nn.functional.interpolate(
                feats["language"].flatten(0, 1), size=(h, w), mode="bilinear", align_corners=False
            )
            scores.target_seg.update(
                mapper(classify_by_embeddings(lang, predictor.class_embeddings)), target.labels.flatten(0, 1)
            )
        if target.instances is not None and cfg.prompt_grid:
            _promptable(
                scores,
                predictor.prompt_decoder,
                feats["segmentation"].flatten(0, 1),
                target.instances.flatten(0, 1),
                cfg.prompt_grid,
            )
        report_progress(cfg, "teacher", i + 1, example, start)
    return mapper.record(scores.result())
