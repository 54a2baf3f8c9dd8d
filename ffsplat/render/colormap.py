"""Colour maps for images a person looks at: class palette, depth, feature PCA, uint8 conversion.

Used by inference (``infer.py --render``), evaluation figures, training logs and the viewer, so it
sits in the render layer below all of them.
"""

from __future__ import annotations

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
