"""Run per-scene baselines on the feed-forward model's evaluation index and score them the same way.

For every entry of an evaluation index a baseline is optimised from scratch on the entry's training
views and scored on its target views with :mod:`ffsplat.objectives.metrics`, exactly as
:mod:`ffsplat.evaluation.evaluate` scores the feed-forward model:

* ``sparse``: the entry's context views (the 2 views the feed-forward model sees);
* ``dense``: every stored keyframe of the scene except the targets (at most ``dense_views``).

What each method is scored on: all methods render RGB and depth (PSNR, SSIM of the named variant,
LPIPS when checked VGG weights are given, depth AbsRel / delta); ``feature3dgs`` (language teacher)
and ``semlogits`` give 8-class maps (target- and source-view mIoU/accuracy); ``fhgs`` gives
SAM-space features (promptable IoU through the same prompt decoder, decoded at the teacher's feature
scale); ``protosaga`` gives instance ids (Gaga's instance mIoU). Class embeddings, the prompt
decoder and the teacher names come from the feed-forward checkpoint, so both sides use identical
references.

Every row says what the method started from and learnt from: ``init`` (:mod:`.initialisation`;
default SfM points) and ``supervision`` (:mod:`.supervision`; default the teachers), and is marked
``oracle`` when either uses ground truth (sensor-depth initialisation, ground-truth labels /
instances). Time is split into ``reconstruction_s`` (supervision signal + initialisation + fitting
per scene) and ``evaluation_s`` (rendering and scoring per scene); ``peak_gpu_mb`` on CUDA.
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
from ffsplat.baselines.initialisation import InitConfig, initial_gaussians
from ffsplat.baselines.protosaga import ProtoSaGa, instance_metrics
from ffsplat.baselines.trainer import SceneConfig, SceneMethod, SceneTrainer
from ffsplat.baselines.semlogits import SemanticLogits
from ffsplat.baselines.supervision import ORACLE_SUPERVISIONS, MaskConfig, supervised_views
from ffsplat.data.labels import EVAL_CLASSES
from ffsplat.data.shards import EvalIndexDataset, scene_frame_ids
from ffsplat.objectives.metrics import (
    PromptableMeter,
    SegmentationMeter,
    checked_lpips,
    classify_by_embeddings,
    depth_metrics,
    image_ssim,
    psnr,
)
from ffsplat.objectives.prompting import grid_prompt_points
from ffsplat.core.types import Example
from torch import Tensor

MethodFactory = Callable[[dict[str, str], Example], SceneMethod]

BASELINES: dict[str, MethodFactory] = {
    "3dgs": lambda roles, ex: SceneMethod(),
    "feature3dgs": lambda roles, ex: Feature3DGS(
        teacher=roles["language"], teacher_dim=ex.context.teacher[roles["language"]].shape[2]
    ),
    "semlogits": lambda roles, ex: SemanticLogits(num_classes=len(EVAL_CLASSES)),
    "fhgs": lambda roles, ex: FHGS(teacher=roles["segmentation"]),
    "protosaga": lambda roles, ex: ProtoSaGa(),
}
"""Baseline name -> factory from (teacher names by role, example)."""

SUPERVISED_FIELDS: dict[str, tuple[str, ...]] = {"semlogits": ("labels",), "protosaga": ("instances",)}
"""Which per-view signal each baseline trains on besides RGB and teacher feature maps (the field
:mod:`.supervision` fills with the teacher's or the ground truth's version)."""

SIGNAL: dict[str, str] = {
    "3dgs": "rgb",
    "feature3dgs": "rgb + language-teacher features",
    "fhgs": "rgb + segmentation-teacher features",
}
"""What the baselines without a supervised field learn from (the ``supervision`` column)."""


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


def teacher_scale(views_teacher: Tensor) -> float:
    """Median per-pixel L2 norm of a teacher feature map ``[..., C, h, w]`` (the scale its decoder expects)."""
    return float(views_teacher.float().norm(dim=-3).median())


def at_teacher_scale(features: Tensor, scale: float, eps: float = 1e-8) -> Tensor:
    """FHGS's rendered blend of unit features ``[N, C, H, W]`` rescaled to the teacher's norm: unit
    direction times ``scale`` (SAM's decoder is not scale-invariant)."""
    return torch.nn.functional.normalize(features, dim=1, eps=eps) * scale


def _classes(name: str, method, trainer: SceneTrainer, cams, predictor) -> Tensor:
    if name == "semlogits":
        return method.predict(trainer, cams)[0]
    return classify_by_embeddings(method.decoded_features(trainer, cams)[0], predictor.class_embeddings)


@torch.no_grad()
def score(name: str, trainer: SceneTrainer, method: SceneMethod, example: Example, predictor, meters: dict, prompt_grid: int,
          ssim_variant: str = "skimage", lpips=None, source_views: bool = True) -> dict[str, float]:  # fmt: skip
    """Target-view metrics of a fitted baseline; segmentation/prompt meters accumulate over examples."""
    target = example.target
    cams = target.cameras
    out = SceneMethod.render(method, trainer, cams)
    rgb, gt = out.rgb.clamp(0, 1).flatten(0, 1), target.images.flatten(0, 1)
    scalars = {"psnr": float(psnr(rgb, gt).mean()), "ssim": float(image_ssim(rgb, gt, ssim_variant).mean())}
    if lpips is not None:
        scalars["lpips"] = float(lpips(rgb, gt).mean())
    if target.depths is not None:
        depth = depth_metrics(out.depth, target.depths)
        scalars["depth_abs_rel"] = float(depth["abs_rel"])
        scalars["depth_delta_1.25"] = float(depth["delta_1.25"])
    if name in ("feature3dgs", "semlogits"):
        if target.labels is not None:
            meters["seg"].update(_classes(name, method, trainer, cams, predictor), target.labels.flatten(0, 1))
        if source_views and example.context.labels is not None:
            ctx = example.context
            meters["source_seg"].update(
                _classes(name, method, trainer, ctx.cameras, predictor), ctx.labels.flatten(0, 1)
            )
    if target.instances is not None and name == "fhgs" and prompt_grid:
        feats = at_teacher_scale(method.features(trainer, cams)[0], teacher_scale(trainer.data.teacher[method.teacher]))
        h, w = target.images.shape[-2:]
        decoder = predictor.prompt_decoder
        size = decoder.output_size(h, w) if hasattr(decoder, "output_size") else feats.shape[-2:]
        feats = torch.nn.functional.interpolate(feats, size=size, mode="bilinear", align_corners=False)
        points = grid_prompt_points(prompt_grid, (h, w)).to(feats)
        for v in range(len(feats)):
            masks = decoder.decode(feats[v : v + 1], points[None], image_size=(h, w))[0][0]
            meters["prompt"].update(masks, target.instances[0, v], points)
    if target.instances is not None and name == "protosaga":
        scalars["gaga_miou"] = float(
            instance_metrics(method.predict_ids(trainer, cams)[0], target.instances[0])["miou"]
        )
    return scalars


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def run_baseline(name: str, predictor, root: str | Path, split: str, index: dict[str, list[dict]], setting: str,
                 cfg: SceneConfig, prompt_grid: int = 32, dense_views: int = 16, max_examples: int | None = None,
                 progress: bool = False, init: str = "sfm", supervision: str = "teacher",
                 init_cfg: InitConfig | None = None, mask_cfg: MaskConfig | None = None, ssim_variant: str = "skimage",
                 lpips_vgg_path: str | None = None, source_views: bool = True,
                 iterations: int | None = None) -> dict:  # fmt: skip
    """Fit ``name`` on every index entry and return averaged target-view metrics, time and memory.

    ``init`` / ``supervision`` choose the initial Gaussians and the training signal (module doc);
    ``iterations`` (if given) overrides ``cfg.iterations`` and ``cfg.method_iterations``.
    """
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")
    if setting not in ("sparse", "dense"):
        raise ValueError(f"setting must be sparse or dense, got {setting!r}")
    from dataclasses import replace

    steps = iterations if iterations is not None else cfg.method_iterations.get(name, cfg.iterations)
    cfg = replace(cfg, iterations=steps)
    init_cfg = replace(
        init_cfg or InitConfig(),
        opacity=cfg.init_opacity,
        sh_degree=cfg.sh_degree,
        stride=cfg.init_stride,
        seed=cfg.seed,
    )
    lpips = checked_lpips(lpips_vgg_path).to(predictor.device) if lpips_vgg_path else None
    used = dense_index(root, split, index, dense_views) if setting == "dense" else index
    roles = {role: spec["name"] for role, spec in predictor.cfg.roles.items()}
    meters = {"seg": SegmentationMeter(num_classes=len(EVAL_CLASSES)), "source_seg": SegmentationMeter(num_classes=len(EVAL_CLASSES)),
              "prompt": PromptableMeter()}  # fmt: skip
    sums: dict[str, float] = {}
    recon, evaluation, count, gaussians, init_points = 0.0, 0.0, 0, 0, 0
    init_names: set[str] = set()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cuda = torch.device(predictor.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(predictor.device)
    for example in EvalIndexDataset(root, split, used):
        if max_examples is not None and count >= max_examples:
            break
        example = example.to(predictor.device)
        _sync(predictor.device)
        start = time.perf_counter()
        torch.manual_seed(cfg.seed)
        fields = SUPERVISED_FIELDS.get(name, ())
        data = supervised_views(supervision, example.context, predictor, roles, mask_cfg, fields)
        start_gaussians, info = initial_gaussians(init, data, predictor, init_cfg)
        method = BASELINES[name](roles, example).to(predictor.device)
        trainer = SceneTrainer(cfg, data, method, init=start_gaussians)
        trainer.fit(progress=progress)
        _sync(predictor.device)
        mid = time.perf_counter()
        for k, v in score(
            name, trainer, method, example, predictor, meters, prompt_grid, ssim_variant, lpips, source_views
        ).items():
            sums[k] = sums.get(k, 0.0) + v
        _sync(predictor.device)
        recon += mid - start
        evaluation += time.perf_counter() - mid
        gaussians += trainer.num_gaussians
        init_points += info["init_points"]
        init_names.add(info["init"])
        count += 1
    result = {k: v / max(count, 1) for k, v in sums.items()}
    for prefix in ("seg", "source_seg"):
        if int(meters[prefix].confusion.sum()):
            seg = meters[prefix].compute()
            key = "target" if prefix == "seg" else "source"
            result.update({f"{key}_miou": float(seg["miou"]), f"{key}_acc": float(seg["acc"])})
    prompt = meters["prompt"].compute()
    if prompt["points"]:
        result["promptable_iou"] = float(prompt["iou"])
    from ffsplat.baselines.initialisation import ORACLE_INITIALISATIONS

    result.update(
        method=name, setting=setting, examples=count, iterations=cfg.iterations,
        init="/".join(sorted(init_names)) or init,
        supervision=f"{supervision} {'/'.join(SUPERVISED_FIELDS[name])}" if name in SUPERVISED_FIELDS else SIGNAL.get(name, "rgb"),
        oracle=init in ORACLE_INITIALISATIONS or (supervision in ORACLE_SUPERVISIONS and name in SUPERVISED_FIELDS),
        ssim_variant=ssim_variant, init_points=init_points / max(count, 1),
        reconstruction_s=recon / max(count, 1), evaluation_s=evaluation / max(count, 1),
        gaussians=gaussians / max(count, 1),
        peak_rss_growth_mb=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024,
    )  # fmt: skip
    if cuda:
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(predictor.device) / 2**20
    return result


TABLE_COLUMNS = ["target_miou", "target_acc", "source_miou", "source_acc", "psnr", "ssim", "lpips", "depth_abs_rel",
                 "depth_delta_1.25", "promptable_iou", "gaga_miou", "reconstruction_s", "evaluation_s", "peak_gpu_mb",
                 "peak_rss_growth_mb"]  # fmt: skip
"""Metric columns of the comparison table (per scene: ``*_s`` seconds, ``peak_*`` MB)."""


def write_table(results: list[dict], path: Path) -> str:
    """Markdown table of all rows (feed-forward and baselines): method, setting, what it was
    initialised and supervised with (``ORACLE`` when ground truth was used), then the metrics."""
    cols = TABLE_COLUMNS
    lines = [
        "| method | setting | init | supervision | " + " | ".join(cols) + " |",
        "|---|---|---|---|" + "---|" * len(cols),
    ]
    for r in results:
        cells = [f"{r[c]:.4g}" if isinstance(r.get(c), (int, float)) else "-" for c in cols]
        name = f"{r['method']} (ORACLE)" if r.get("oracle") else r["method"]
        lines.append(
            f"| {name} | {r.get('setting', '-')} | {r.get('init', '-')} | {r.get('supervision', '-')} | "
            + " | ".join(cells)
            + " |"
        )
    ssim_names = sorted({r["ssim_variant"] for r in results if r.get("ssim_variant")})
    text = "\n".join(lines) + "\n"
    if ssim_names:
        text += f"\nSSIM variant: {', '.join(ssim_names)} (ffsplat.objectives.metrics.SSIM_VARIANTS).\n"
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
