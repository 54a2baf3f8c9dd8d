"""A plain per-pixel reference compositor for testing the tile rasterizer.

No tiles, no bounding boxes, no padding: every pixel walks all valid Gaussians of its image in
depth order and applies gsplat's rules literally (skip sigma < 0 or alpha < 1/255, stop before
the Gaussian that would leave T <= 1e-4). Vectorised over pixels only, looped over Gaussians,
so it is slow and only for small scenes. Differentiable through autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ffsplat.render.rasterizer.projection import Projected


def reference_rasterize(proj: Projected, colors: Tensor, width: int, height: int, backgrounds: Tensor | None):
    """Same contract as ``rasterize_tiles``: returns ``[I, H, W, D]`` colours and ``[I, H, W]`` alphas."""
    num_images, n = proj.depths.shape
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    px = xs.to(colors.dtype).reshape(-1) + 0.5
    py = ys.to(colors.dtype).reshape(-1) + 0.5
    images, alphas = [], []
    for i in range(num_images):
        out = colors.new_zeros(height * width, colors.shape[-1])
        trans = colors.new_ones(height * width)
        done = torch.zeros(height * width, dtype=torch.bool)
        for g in torch.argsort(proj.depths[i].detach(), stable=True).tolist():
            if not bool(proj.valid[i, g]):
                continue
            dx = px - proj.means2d[i, g, 0]
            dy = py - proj.means2d[i, g, 1]
            a, b, c = proj.conics[i, g]
            sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
            alpha = torch.clamp_max(proj.opacities[i, g] * torch.exp(-sigma), 0.999)
            use = (~done) & (sigma >= 0) & (alpha >= 1.0 / 255.0)
            next_t = trans * (1 - alpha)
            stop = use & (next_t <= 1e-4)
            done = done | stop
            use = use & ~stop
            out = out + torch.where(use[:, None], (alpha * trans)[:, None] * colors[i, g], 0.0)
            trans = torch.where(use, next_t, trans)
        if backgrounds is not None:
            out = out + trans[:, None] * backgrounds[i]
        images.append(out.reshape(height, width, -1))
        alphas.append((1 - trans).reshape(height, width))
    return torch.stack(images), torch.stack(alphas)
