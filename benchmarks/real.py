"""Real-data benchmark: held-out frames of the HoloLens office sequence, with their true cameras.

    python benchmarks/real.py                                   # defaults below, prints JSON
    python benchmarks/real.py --candidate checkpoints/demo_candidate/model.pt --gs-iterations 300

On the contiguous tail of the sequence that ``examples/train_demo.sh`` never trains on (frames
``>= --holdout-start``), context pairs ``(i, i + gap)`` for several gaps, targets at ``i + gap/4``,
``i + gap/2`` and ``i + 3 gap/4``. Every model gets the same two context images with their true
intrinsics and poses, at ``--size`` (resize to cover + centre crop), and near/far as ``infer.py``
picks them without a cameras file (``--near/--far``, else the model's recorded training depth range,
else 0.5 / 10); no sensor depth at inference. Reported per method, averaged over targets:

* ``psnr``, ``ssim`` of the rendered target view (SSIM of a named variant, ``--ssim-variant``:
  ``skimage``, MVSplat / SemanticSplat's, the default, or ``torchmetrics``, LSM's; recorded as
  ``ssim_variant``);
* ``depth_abs_rel``, ``depth_delta_1.25`` of the rendered depth against the sensor depth (pixels
  with a measurement, no scale alignment);
* ``teacher_miou``, ``teacher_object_miou``, ``teacher_acc``: agreement of the language field
  rendered at the target view with the ESPNetv2 teacher's argmax on the target image (SemanticSplat
  Table 3 reports this kind of teacher agreement). The field is classified against the model's
  class embeddings and its background embedding (the PASCAL background row), so a pixel can be
  background, as in the teacher's map. PASCAL VOC's protocol: 21 classes including background,
  IoU from the confusion matrix over all targets, ``teacher_miou`` the mean over the classes present
  in either map, ``teacher_object_miou`` the same mean over the object classes only (background's
  IoU, high for any model that says "background" everywhere, left out), ``teacher_acc`` the pixel
  accuracy. Only for models whose vocabulary is the ESPNetv2 one (null for the old label-stand-in
  demo model).
* ``seg_field_miou``, ``seg_field_object_miou``, ``seg_field_acc``: the same for the segmentation
  field (stage 1's, decoded to the ``espnetv2_seg`` teacher's space and classified against that
  teacher's class table with its background row); only for models whose segmentation teacher is
  ``espnetv2_seg``. Stage 2 learns the language field from the latent stage 1 trained, so this
  says whether stage 1 already separates the classes.

Reference rows (teacher agreement only, same targets, same run), what a 3D model must beat to show
that it does more than carry the teacher's context maps to the target, since the shipped model's
semantic branch *is* the teacher network (its fields are ESPNetv2's class distributions):

* ``ref_paste_nearest_context``: the teacher's map of the nearer context view (by frame number)
  pasted as the target's prediction (no geometry at all);
* ``ref_warp_predicted_depth``: every target pixel lifted with the *last candidate model's* rendered
  depth, projected into the nearer context view where it lands inside the image (else the other),
  and given the teacher's label there (nearest pixel; no occlusion test; 0 = no class where it
  lands in neither view). Shows what the model's geometry alone carries;
* ``ref_warp_sensor_depth_ORACLE``: the same with the target's *sensor* depth (pixels without a
  measurement: no class), an upper bound of carrying the context maps with the true geometry.

Methods: ``untrained`` (the first candidate's architecture at initialisation, seed 0, ESPNetv2
vocabulary; the small model without a candidate), ``old_demo``
(``--old``, the previously shipped synthetic-only model), ``candidate`` (``--candidate``, e.g. the
new demo model) and ``3dgs`` (per-scene 3DGS optimised on the same two views for
``--gs-iterations`` steps from ``--gs-init``: ``random`` (default, non-oracle: Inria's random frustum
points, ``--gs-init-points``) or ``sensor`` (**ORACLE**: the context views' sensor depth, which the
feed-forward models never see; the row is then named ``3dgs_ORACLE``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ffsplat.checkpoint import DEFAULT_DEPTH_RANGE, depth_range
from ffsplat.core.benchmarking import machine
from ffsplat.core.config import group_file, to_dataclass
from ffsplat.core.types import Cameras, Views
from ffsplat.data.image_ops import resample_nearest, resize_and_center_crop
from ffsplat.data.sequence import RGBDSequence
from ffsplat.inference.predictor import Predictor
from ffsplat.model.network import LANG, SEG, ModelConfig, build_model
from ffsplat.objectives.metrics import (
    SSIM_VARIANTS,
    SegmentationMeter,
    classify_by_embeddings,
    depth_metrics,
    image_ssim,
    psnr,
)
from ffsplat.render import render

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
HOLDOUT_START = 208
"""First held-out frame of the 260-frame HoloLens office sequence (examples/train_demo.sh trains on 0..207)."""


def load_frames(seq: RGBDSequence, ids: list[int], size: int) -> tuple[Tensor, Tensor, Cameras]:
    """Frames ``ids`` at ``size x size``: images ``[1, V, 3, S, S]``, sensor depth ``[1, V, S, S]``, cameras."""
    images, depths, ks, c2ws = [], [], [], []
    for i in ids:
        f = seq.read_frame(i, with_labels=False)
        rgb, k = resize_and_center_crop(f.color, f.color_intrinsics, (size, size))
        images.append(rgb)
        depths.append(resample_nearest(f.depth, f.depth_intrinsics, k, (size, size)))
        ks.append(k)
        c2ws.append(f.c2w)
    img = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)[None]
    cams = Cameras(
        torch.tensor(np.stack(ks), dtype=torch.float32)[None],
        torch.tensor(np.stack(c2ws), dtype=torch.float32)[None],
        (size, size),
    )
    return img, torch.from_numpy(np.stack(depths)).float()[None], cams


def pairs(holdout_start: int, last: int, gaps: list[int], stride: int) -> list[tuple[int, int, list[int]]]:
    """``(first, second, targets)`` context pairs inside ``[holdout_start, last]``."""
    out = []
    for gap in gaps:
        for first in range(holdout_start, last - gap + 1, stride):
            targets = sorted({first + gap // 4, first + gap // 2, first + (3 * gap) // 4} - {first, first + gap})
            out.append((first, first + gap, targets))
    return out


def untrained_checkpoint(path: Path, espnet: str, like: Path | None = None) -> Path:
    """A model at initialisation (seed 0) as a slim checkpoint with the ESPNetv2 vocabulary: the
    architecture of ``like`` (a model file), else the small model without conditioning."""
    from ffsplat.checkpoint import load_model, save_model
    from ffsplat.teachers.base import teacher_class_table
    from ffsplat.teachers.espnetv2 import PASCAL_CLASSES, pascal_background_embedding, pascal_class_embeddings

    if like is not None:
        cfg = to_dataclass(ModelConfig, load_model(like)["model_config"])
    else:
        cfg = to_dataclass(ModelConfig, group_file("model", "small"))
        cfg.conditioning.use_seg_teacher = cfg.conditioning.use_lang_teacher = False
    cfg.pretrained = None
    torch.manual_seed(0)
    model = build_model(cfg)
    teachers = {"segmentation": {"name": "espnetv2_seg", "kwargs": {"checkpoint": espnet}},
                "language": {"name": "espnetv2", "kwargs": {"checkpoint": espnet}}}  # fmt: skip
    if cfg.semantic.fields == "classes":  # the teachers' fixed class tables (as training sets them)
        model.set_class_tables(*(teacher_class_table(t["name"], t["kwargs"]) for t in teachers.values()))
    return save_model(path, model_config=asdict(cfg), state_dict=model.state_dict(), teachers=teachers,
                      class_names=list(PASCAL_CLASSES[1:]), class_embeddings=pascal_class_embeddings(),
                      background_embedding=pascal_background_embedding(), stage="untrained", trained_on=None,
                      image_size=None, global_step=0)  # fmt: skip


def seg_field_table(pred: Predictor) -> Tensor | None:
    """``[21, C]`` class table of the model's segmentation teacher when that is ``espnetv2_seg``
    (its ``dim``/``seed`` as stored), else None: the segmentation field is not scored."""
    from ffsplat.teachers.espnetv2 import espnetv2_seg_class_table

    role = pred.cfg.roles["segmentation"]
    if role["name"] != "espnetv2_seg":
        return None
    kwargs = role.get("kwargs", {})
    return espnetv2_seg_class_table(**{k: kwargs[k] for k in ("dim", "seed") if k in kwargs}).to(pred.device)


def warp_labels(labels: Tensor, depth: Tensor, target: Cameras, context: Cameras, order: list[int]) -> Tensor:
    """Context label maps ``[Vc, H, W]`` carried to one target view by its depth ``[H, W]`` (0:
    unknown): each pixel lifted, projected into the context views in ``order`` and labelled by the
    first view it lands inside (nearest pixel; no occlusion test); 0 where none (or no depth)."""
    from ffsplat.core.geometry import project_points, unproject_depth

    h, w = depth.shape
    world = unproject_depth(depth.float(), target.intrinsics.reshape(3, 3), target.extrinsics.reshape(4, 4)).reshape(
        -1, 3
    )
    out = torch.zeros(h * w, dtype=torch.long, device=labels.device)
    done = (depth.reshape(-1) <= 0) | ~torch.isfinite(depth.reshape(-1))
    ks, w2c = context.intrinsics.reshape(-1, 3, 3), context.w2c.reshape(-1, 4, 4)
    for v in order:
        uv, z = project_points(world, ks[v], w2c[v])
        x, y = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        inside = (z > 0) & (x >= 0) & (x < w) & (y >= 0) & (y < h) & ~done
        out[inside] = labels[v][y[inside], x[inside]]
        done |= inside
    return out.reshape(h, w)


class Scores:
    def __init__(self, num_classes: int, ssim_variant: str = "skimage"):
        self.ssim_variant = ssim_variant
        self.sums: dict[str, float] = {}
        self.count = 0
        self.seg = SegmentationMeter(num_classes=num_classes)  # language field vs the teacher
        self.seg_field = SegmentationMeter(num_classes=num_classes)  # segmentation field vs the teacher
        self.seconds = 0.0

    def add(self, rgb: Tensor, depth: Tensor, gt: Tensor, gt_depth: Tensor) -> None:
        """``rgb [V, 3, H, W]``, ``depth [V, H, W]`` rendered; ``gt``, ``gt_depth`` the same shapes."""
        rgb = rgb.clamp(0, 1)
        for v in range(len(rgb)):
            d = depth_metrics(depth[v], gt_depth[v])
            values = {"psnr": psnr(rgb[v : v + 1], gt[v : v + 1]).mean(), "ssim": image_ssim(rgb[v : v + 1], gt[v : v + 1], self.ssim_variant).mean(),
                      "depth_abs_rel": d["abs_rel"], "depth_delta_1.25": d["delta_1.25"]}  # fmt: skip
            for k, val in values.items():
                self.sums[k] = self.sums.get(k, 0.0) + float(val)
            self.count += 1

    def result(self) -> dict:
        out = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        out["targets"] = self.count
        out["seconds_per_pair"] = self.seconds
        for prefix, meter in (("teacher", self.seg), ("seg_field", self.seg_field)):
            if int(meter.confusion.sum()):
                seg = meter.compute()
                objects = seg["iou_per_class"][1:]  # meter class 1 is PASCAL's background
                out.update({f"{prefix}_miou": float(seg["miou"]), f"{prefix}_object_miou": float(objects.nanmean()),
                            f"{prefix}_acc": float(seg["acc"])})  # fmt: skip
            else:
                out.update({f"{prefix}_miou": None, f"{prefix}_object_miou": None, f"{prefix}_acc": None})
        return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED / "data" / "hololens-office")
    p.add_argument(
        "--espnet", type=Path, default=SHARED / "weights" / "espnetv2-pascal" / "espnetv2_s_2.0_pascal_256x256.pth"
    )
    p.add_argument(
        "--old",
        type=Path,
        default=ROOT / "checkpoints" / "demo_synthetic" / "model.pt",
        help="the earlier synthetic-only demo model",
    )
    p.add_argument("--candidate", type=Path, action="append", default=[], help="more models to score (repeatable)")
    p.add_argument("--holdout-start", type=int, default=HOLDOUT_START)
    p.add_argument("--gaps", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--stride", type=int, default=12, help="frames between the first context frames of pairs")
    p.add_argument("--size", type=int, default=128)
    p.add_argument(
        "--near",
        type=float,
        help="nearest depth for every model (default: each model's recorded training range, as infer.py)",
    )
    p.add_argument(
        "--far",
        type=float,
        help="farthest depth for every model (default: each model's recorded training range, as infer.py)",
    )
    p.add_argument("--gs-iterations", type=int, default=300, help="per-scene 3DGS steps (0: skip 3DGS)")
    p.add_argument("--gs-init", choices=["random", "sensor"], default="random",
                   help="3DGS initialisation: random frustum points (non-oracle) or sensor depth (ORACLE)")  # fmt: skip
    p.add_argument("--gs-init-points", type=int, default=100_000, help="random init points (Inria: 100,000)")
    p.add_argument("--max-pairs", type=int, help="use only the first N pairs (quick runs)")
    p.add_argument("--ssim-variant", choices=SSIM_VARIANTS, default="skimage",
                   help="SSIM as skimage (MVSplat / SemanticSplat) or torchmetrics (LSM) computes it")  # fmt: skip
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    for path, what in (
        (args.data / "pose", "--data"),
        (args.espnet, "--espnet"),
        *((c, "--candidate") for c in args.candidate),
    ):
        if not path.exists():
            print(f"error: {what}: {path} does not exist", file=sys.stderr)
            raise SystemExit(2)

    from ffsplat.teachers.espnetv2 import PASCAL_CLASSES, ESPNetv2Teacher

    torch.manual_seed(0)
    device = torch.device(args.device)
    seq = RGBDSequence(args.data)
    last = max(seq.frame_ids())
    chosen = pairs(args.holdout_start, last, args.gaps, args.stride)[: args.max_pairs]
    teacher = ESPNetv2Teacher(checkpoint=args.espnet).to(device)
    tmp = Path(tempfile.mkdtemp(prefix="ffsplat_real_"))
    like = args.candidate[0] if args.candidate else None
    models = {"untrained": untrained_checkpoint(tmp / "untrained.pt", str(args.espnet), like)}
    if args.old.is_file():
        models["old_demo"] = args.old
    for i, c in enumerate(args.candidate):
        models["candidate" if i == 0 else f"candidate{i + 1}"] = c
    predictors = {name: Predictor(path, device) for name, path in models.items()}
    # near/far as infer.py picks them without a cameras file: --near/--far, else the model's recorded
    # training depth range, else 0.5 / 10 (older model files).
    ranges = {
        name: (args.near or depth_range(p.meta)[0], args.far or depth_range(p.meta)[1])
        for name, p in predictors.items()
    }
    ranges["3dgs"] = (args.near or DEFAULT_DEPTH_RANGE[0], args.far or DEFAULT_DEPTH_RANGE[1])
    pascal = list(PASCAL_CLASSES[1:])
    seg_tables = {name: seg_field_table(p) for name, p in predictors.items()}
    # the meter's classes 1..21 are PASCAL's ids 0..20 shifted by one: background is scored as a class
    scores = {name: Scores(len(PASCAL_CLASSES), args.ssim_variant) for name in predictors}
    gs_row = "3dgs_ORACLE" if args.gs_init == "sensor" else "3dgs"
    if args.gs_iterations:
        scores[gs_row] = Scores(len(PASCAL_CLASSES), args.ssim_variant)
    refs = ["ref_paste_nearest_context", "ref_warp_predicted_depth", "ref_warp_sensor_depth_ORACLE"]
    for name in refs:
        scores[name] = Scores(len(PASCAL_CLASSES), args.ssim_variant)
    warp_model = list(predictors)[-1]  # the last candidate (else the old / untrained model)

    for first, second, targets in chosen:
        images, depths, cams = load_frames(seq, [first, second, *targets], args.size)
        images, depths, cams = images.to(device), depths.to(device), cams.to(device)
        contexts = {
            name: Views(
                images[:, :2], cams[:, :2], torch.tensor([near], device=device), torch.tensor([far], device=device)
            )
            for name, (near, far) in ranges.items()
        }
        ctx = contexts["3dgs"]
        tgt_cams, gt, gt_depth = cams[:, 2:], images[0, 2:], depths[0, 2:]
        teacher_labels = teacher.probabilities(gt).argmax(1) + 1  # [T, H, W], 1 = background
        context_labels = teacher.probabilities(images[0, :2]).argmax(1) + 1  # [2, H, W]
        model_depth = None
        for name, pred in predictors.items():
            start = time.perf_counter()
            ctx_m = contexts[name]
            out = pred(ctx_m, pred.teacher_maps(ctx_m) if pred.conditioned else None)
            table = seg_tables[name]
            rendered = render(out.gaussians, tgt_cams, features=[LANG] if table is None else [LANG, SEG])
            scores[name].seconds += time.perf_counter() - start
            scores[name].add(rendered.rgb[0], rendered.depth[0], gt, gt_depth)
            if name == warp_model:
                model_depth = rendered.depth[0]
            if pred.class_names == pascal:
                lang = pred.model.decode_fields({LANG: rendered.features[LANG]}, {"lseg": gt.shape[-2:]})["lseg"][0]
                ids = classify_by_embeddings(lang, pred.class_embeddings, pred.background_embedding)
                scores[name].seg.update(ids + 1, teacher_labels)
            if table is not None:
                sam = pred.model.decode_fields({SEG: rendered.features[SEG]}, {"sam": gt.shape[-2:]})["sam"][0]
                ids = classify_by_embeddings(sam, table[1:], table[0])
                scores[name].seg_field.update(ids + 1, teacher_labels)
        for t, frame in enumerate(targets):
            order = [0, 1] if abs(frame - first) <= abs(second - frame) else [1, 0]
            truth = teacher_labels[t : t + 1]
            scores["ref_paste_nearest_context"].seg.update(context_labels[order[0]][None], truth)
            for name, depth in (("ref_warp_predicted_depth", model_depth), ("ref_warp_sensor_depth_ORACLE", gt_depth)):
                if depth is not None:
                    warped = warp_labels(context_labels, depth[t], tgt_cams[0, t], cams[0, :2], order)
                    scores[name].seg.update(warped[None], truth)
        if args.gs_iterations:
            from ffsplat.baselines.initialisation import InitConfig, initial_gaussians
            from ffsplat.baselines.trainer import SceneConfig, SceneMethod, SceneTrainer

            start = time.perf_counter()
            ctx_d = Views(images[:, :2], cams[:, :2], ctx.near, ctx.far, depths=depths[:, :2])
            cfg = to_dataclass(SceneConfig, ROOT / "configs" / "baseline" / "quick.yaml")
            cfg.iterations = args.gs_iterations  # the Inria schedule scaled to the budget
            init, _ = initial_gaussians(
                args.gs_init, ctx_d, cfg=InitConfig(random_points=args.gs_init_points, sh_degree=cfg.sh_degree)
            )
            method = SceneMethod().to(device)
            trainer = SceneTrainer(cfg, ctx_d, method, init=init)
            trainer.fit(progress=False)
            with torch.no_grad():
                r = SceneMethod.render(method, trainer, tgt_cams)
            scores[gs_row].seconds += time.perf_counter() - start
            scores[gs_row].add(r.rgb[0], r.depth[0], gt, gt_depth)
        print(f"pair {first}-{second}: done", file=sys.stderr)

    results = {name: s.result() for name, s in scores.items()}
    for s in results.values():
        s["seconds_per_pair"] /= max(len(chosen), 1)
    print(json.dumps({
        "benchmark": "real", "data": str(args.data), "holdout_frames": [args.holdout_start, last],
        "pairs": [[a, b, t] for a, b, t in chosen], "size": args.size, "near_far": ranges, "ssim_variant": args.ssim_variant,
        "gs_iterations": args.gs_iterations, "gs_init": args.gs_init, "gs_init_points": args.gs_init_points,
        "warp_model": warp_model,
        "models": {k: str(v) for k, v in models.items() if k != "untrained"}, "machine": machine(), "results": results,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
