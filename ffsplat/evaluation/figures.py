"""Images for logs and reports: feature PCA, depth and class-map colouring."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

CLASS_PALETTE = torch.tensor(
    [
        [0, 0, 0],        # 0 ignored
        [174, 199, 232],  # wall
        [152, 223, 138],  # floor
        [247, 182, 210],  # ceiling
        [214, 39, 40],    # chair
        [255, 127, 14],   # table
        [31, 119, 180],   # sofa
        [148, 103, 189],  # bed
        [127, 127, 127],  # other
        # ids 9..20: the rest of a 20-class vocabulary (ESPNetv2's PASCAL classes)
        [188, 189, 34],
        [23, 190, 207],
        [140, 86, 75],
        [227, 119, 194],
        [255, 187, 120],
        [44, 160, 44],
        [197, 176, 213],
        [196, 156, 148],
        [219, 219, 141],
        [158, 218, 229],
        [255, 152, 150],
        [57, 59, 121],
    ],
    dtype=torch.float32,
) / 255.0  # fmt: skip


def feature_pca(features: Tensor, basis: Tensor | None = None) -> Tensor:
    """``[C, H, W]`` features -> ``[3, H, W]`` in ``[0, 1]`` from their first three principal
    components (pass ``basis`` ``[C, 3]`` to colour several maps consistently)."""
    c, h, w = features.shape
    x = features.reshape(c, -1).T.float()
    x = x - x.mean(0, keepdim=True)
    if basis is None:
        _, _, v = torch.pca_lowrank(x, q=min(3, c), center=False)
        basis = v[:, :3]
    y = x @ basis
    lo, hi = y.quantile(0.01, dim=0), y.quantile(0.99, dim=0)
    y = ((y - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    if y.shape[1] < 3:
        y = torch.cat([y, y.new_zeros(y.shape[0], 3 - y.shape[1])], 1)
    return y.T.reshape(3, h, w)


def colorize_depth(depth: Tensor) -> Tensor:
    """``[H, W]`` depth -> ``[3, H, W]`` gray inverse depth (near = bright, 0 = black)."""
    inv = torch.where(depth > 0, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))
    inv = inv / inv.max().clamp_min(1e-6)
    return inv[None].expand(3, -1, -1)


def colorize_labels(labels: Tensor) -> Tensor:
    """``[H, W]`` class ids 0..20 (0 black: ignored / unlabelled) -> ``[3, H, W]`` colours."""
    return CLASS_PALETTE.to(labels.device)[labels.long().clamp(0, len(CLASS_PALETTE) - 1)].permute(2, 0, 1)


def to_uint8(image: Tensor) -> Tensor:
    """``[3, H, W]`` float in [0, 1] -> ``[H, W, 3]`` uint8 (for PNG writers and wandb)."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu()


@torch.no_grad()
def example_panels(predictor, example) -> dict[str, Tensor]:
    """Images for the first target view of ``example``: context, target, render, depth, class maps
    (ground truth when labelled, predicted) and PCA of both feature fields, each ``[3, H, W]``.

    ``predictor`` is a training module or a :class:`ffsplat.inference.predictor.Predictor`.
    """
    from ffsplat.objectives.metrics import classify_by_embeddings
    from ffsplat.model.network import LANG, SEG
    from ffsplat.render.renderer import render

    conditioned = predictor.conditioned
    out = predictor(example.context, predictor.teacher_maps(example.context) if conditioned else None)
    target = example.target
    rendered = render(out.gaussians[:1], target.cameras[:1, :1], features=[SEG, LANG])
    h, w = target.images.shape[-2:]
    decoded = predictor.model.decode_fields(rendered.features, {"sam": (h, w), "lseg": (h, w)})
    panels = {
        "context": example.context.images[0, 0],
        "target": target.images[0, 0],
        "render": rendered.rgb[0, 0].clamp(0, 1),
        "depth": colorize_depth(rendered.depth[0, 0]),
    }
    if target.labels is not None:
        panels["gt_classes"] = colorize_labels(target.labels[0, 0])
    background = getattr(predictor, "background_embedding", None)
    panels["classes"] = colorize_labels(
        classify_by_embeddings(decoded["lseg"][0], predictor.class_embeddings, background)[0]
    )
    panels["seg_pca"] = feature_pca(decoded["sam"][0, 0])
    panels["lang_pca"] = feature_pca(decoded["lseg"][0, 0])
    return {k: p.float().cpu() for k, p in panels.items()}


def figure_row(panels: dict[str, Tensor], class_names: list[str] | tuple[str, ...], scale: int = 1) -> np.ndarray:
    """One labelled figure: each ``[3, H, W]`` panel (float in [0, 1]) under its name, side by side,
    and below them a legend of the class colours (:data:`CLASS_PALETTE`) with ``class_names`` (ids 1..K).

    Returns:
        ``[H', W', 3]`` uint8 (``scale`` enlarges small panels by pixel repetition for legibility).
    """
    from PIL import Image, ImageDraw

    tiles = [to_uint8(p).numpy() for p in panels.values()]
    if scale > 1:
        tiles = [t.repeat(scale, axis=0).repeat(scale, axis=1) for t in tiles]
    title, gap = 14, 2
    h = max(t.shape[0] for t in tiles)
    width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
    swatch, per_row = 12, max(1, width // 90)
    legend_rows = -(-len(class_names) // per_row)
    canvas = Image.new("RGB", (max(width, 90), title + h + 4 + legend_rows * (swatch + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for name, tile in zip(panels, tiles):
        canvas.paste(Image.fromarray(tile), (x, title))
        draw.text((x + 1, 1), name, fill=(0, 0, 0))
        x += tile.shape[1] + gap
    top = title + h + 4
    for i, name in enumerate(class_names):
        col, row = i % per_row, i // per_row
        x0, y0 = col * 90, top + row * (swatch + 4)
        colour = tuple(int(round(c * 255)) for c in CLASS_PALETTE[i + 1].tolist())
        draw.rectangle([x0 + 2, y0, x0 + 2 + swatch, y0 + swatch], fill=colour, outline=(0, 0, 0))
        draw.text((x0 + swatch + 5, y0), name, fill=(0, 0, 0))
    return np.asarray(canvas)
