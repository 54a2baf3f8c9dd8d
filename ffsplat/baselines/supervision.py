"""What the per-scene baselines are supervised with: the teachers by default, ground truth as oracle.

Registry :data:`SUPERVISIONS` (name -> ``(views, predictor, roles, cfg) -> views``): the training
views with ``labels`` and ``instances`` replaced by the signal the methods learn from.

* ``teacher`` (default; what the feed-forward model is distilled from):

  - ``labels``: the language teacher's per-pixel argmax over the class embeddings (its features
    bilinearly resized to the image, classified by cosine, as the evaluation classifies rendered
    features), the signal semantic logits trains on;
  - ``instances``: per-view automatic masks of the segmentation teacher (:func:`automatic_mask_ids`,
    SAM's automatic mask generator on the teacher's embeddings through the prompt decoder), ids
    not consistent across views, for Proto-SaGa.

  Feature 3DGS and FHGS read teacher feature maps in both modes.
* ``oracle``: the shards' ground-truth labels and instances (instances are already consistent
  across views, which no 2D teacher provides); rows using it are marked oracle.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ffsplat.core.types import Views
from ffsplat.objectives.metrics import classify_by_embeddings
from ffsplat.objectives.prompting import grid_prompt_points

ORACLE_SUPERVISIONS = frozenset({"oracle"})


@dataclass
class MaskConfig:
    """Automatic masks from the segmentation teacher (SAM's ``SamAutomaticMaskGenerator`` defaults
    where they apply to a generic decoder).

    Attributes:
        points_per_side: prompt grid per side (SAM: 32).
        score_thresh: keep masks whose decoder score exceeds this (SAM: ``pred_iou_thresh`` 0.88 for
            SAM's IoU head; the stand-in decoder's score is a mean cosine, so 0 by default).
        nms_thresh: box NMS IoU (SAM: 0.7).
        min_area: minimum mask area in pixels.
    """

    points_per_side: int = 32
    score_thresh: float = 0.0
    nms_thresh: float = 0.7
    min_area: int = 4


def _boxes(masks: Tensor) -> Tensor:
    """``[M, H, W]`` bool -> ``[M, 4]`` (x0, y0, x1, y1) boxes (zeros for empty masks)."""
    h, w = masks.shape[-2:]
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    rows, cols = masks.any(2), masks.any(1)
    big = torch.tensor(10**9, device=masks.device)
    y0 = torch.where(rows, ys, big).min(1).values
    y1 = torch.where(rows, ys, -1).max(1).values
    x0 = torch.where(cols, xs, big).min(1).values
    x1 = torch.where(cols, xs, -1).max(1).values
    return torch.stack([x0, y0, x1, y1], 1).float().clamp_min(0)


@torch.no_grad()
def automatic_mask_ids(decoder, embeddings: Tensor, image_size: tuple[int, int], cfg: MaskConfig | None = None,
                       chunk: int = 64) -> Tensor:  # fmt: skip
    """One integer mask-id map per view from grid prompts on the teacher's embeddings.

    A ``points_per_side^2`` grid of point prompts, three masks each (``logits > 0``), kept by score
    and area, box NMS by score, then painted largest first so that smaller masks stay visible
    (Gaga's ``get_raw_mask``). Ids ``1..M`` per view, 0 where no mask; not consistent across views.

    Args:
        decoder: a prompt decoder (``decode(embeddings, points, image_size=...)``).
        embeddings: ``[V, C, h, w]`` segmentation-teacher features of the views.
        image_size: ``(H, W)`` of the maps.

    Returns:
        ``[V, H, W]`` int64.
    """
    from torchvision.ops import batched_nms

    cfg = cfg or MaskConfig()
    h, w = image_size
    points = grid_prompt_points(cfg.points_per_side, (h, w)).to(embeddings)
    out = torch.zeros(len(embeddings), h, w, dtype=torch.long, device=embeddings.device)
    for v in range(len(embeddings)):
        masks, scores = [], []
        for pts in points.split(chunk):
            logits, score, _ = decoder.decode(embeddings[v : v + 1], pts[None], image_size=(h, w))
            m, s = logits[0].flatten(0, 1) > 0, score[0].flatten()
            keep = (m.flatten(1).sum(1) >= cfg.min_area) & (s > cfg.score_thresh)
            masks.append(m[keep])
            scores.append(s[keep])
        masks, scores = torch.cat(masks), torch.cat(scores).float()
        if not len(masks):
            continue
        keep = batched_nms(_boxes(masks), scores, torch.zeros_like(scores, dtype=torch.long), cfg.nms_thresh)
        masks = masks[keep]
        for i in masks.flatten(1).sum(1).argsort(descending=True, stable=True).tolist():
            out[v][masks[i]] = i + 1
        # renumber 1..M in order of appearance of surviving ids
        ids = torch.unique(out[v])
        ids = ids[ids > 0]
        remap = torch.zeros(int(out[v].max()) + 1, dtype=torch.long, device=out.device)
        remap[ids] = torch.arange(1, len(ids) + 1, device=out.device)
        out[v] = remap[out[v]]
    return out


def teacher_labels(features: Tensor, class_embeddings: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Language-teacher argmax labels ``[V, H, W]`` (1..K) from ``[V, C, h, w]`` features."""
    f = features.float()
    if tuple(f.shape[-2:]) != tuple(image_size):
        f = F.interpolate(f, size=image_size, mode="bilinear", align_corners=False)
    return classify_by_embeddings(f, class_embeddings)


def supervise_teacher(views: Views, predictor, roles: dict[str, str], cfg: MaskConfig | None = None,
                      fields: tuple[str, ...] = ("labels", "instances")) -> Views:  # fmt: skip
    image_size = tuple(views.images.shape[-2:])
    maps = {role: views.teacher[name] for role, name in roles.items() if name in views.teacher}
    if len(maps) < 2:
        maps = predictor.teacher_maps(views)
    labels = instances = None
    if "labels" in fields:
        labels = teacher_labels(maps["language"][0], predictor.class_embeddings, image_size)[None]
    if "instances" in fields:
        instances = automatic_mask_ids(predictor.prompt_decoder, maps["segmentation"][0].float(), image_size, cfg)[None]
    return replace(views, labels=labels, instances=instances)


def supervise_oracle(views: Views, predictor, roles: dict[str, str], cfg: MaskConfig | None = None,
                     fields: tuple[str, ...] = ("labels", "instances")) -> Views:  # fmt: skip
    missing = [f for f in fields if getattr(views, f) is None]
    if missing:
        raise ValueError(f"supervision 'oracle': the training views have no ground-truth {' / '.join(missing)}")
    return replace(views, labels=views.labels if "labels" in fields else None,
                   instances=views.instances if "instances" in fields else None)  # fmt: skip


SUPERVISIONS: dict[str, Callable[..., Views]] = {"teacher": supervise_teacher, "oracle": supervise_oracle}
"""Supervision name -> ``(views [1, V], predictor, teacher names by role, MaskConfig) -> views``."""


def supervised_views(name: str, views: Views, predictor, roles: dict[str, str], cfg: MaskConfig | None = None,
                     fields: tuple[str, ...] = ("labels", "instances")) -> Views:  # fmt: skip
    """The training views with the ``fields`` (``labels`` / ``instances``) of supervision ``name``;
    the other of the two is dropped (None), so a method cannot read a signal it was not given."""
    if name not in SUPERVISIONS:
        raise ValueError(f"unknown supervision {name!r}; choose one of {sorted(SUPERVISIONS)}")
    return SUPERVISIONS[name](views, predictor, roles, cfg, fields)
