"""Images for logs and reports: per-example panels and figure rows (colour maps: :mod:`ffsplat.render.colormap`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ffsplat.render.colormap import CLASS_PALETTE, colorize_depth, colorize_labels, feature_pca, to_uint8


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
