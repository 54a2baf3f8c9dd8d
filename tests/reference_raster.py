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


def autograd_rasterize_tiles(
    proj: Projected, colors: Tensor, width: int, height: int, *, tile_size: int = 16,
    backgrounds: Tensor | None = None, max_chunk_elements: int = 1 << 24,
):  # fmt: skip
    """The tile rasterizer as it was before the custom-autograd compositor: dense per-chunk
    ``blend_weights`` + ``bmm`` with autograd saving every ``[tiles, P, K]`` intermediate. Kept as
    the reference that ``rasterize_tiles`` (values and gradients) must equal."""
    from ffsplat.render.rasterizer.tiles import blend_weights, tile_intersections

    num_images, n = proj.depths.shape
    d = colors.shape[-1]
    device, dtype = colors.device, colors.dtype
    gauss_ids, _, counts, tiles_x, tiles_y = tile_intersections(proj, width, height, tile_size)
    num_tiles = num_images * tiles_x * tiles_y
    pix_per_tile = tile_size * tile_size
    pad = num_images * n
    means_t = torch.cat([proj.means2d.reshape(-1, 2), proj.means2d.new_zeros(1, 2)])
    conics_t = torch.cat([proj.conics.reshape(-1, 3), proj.conics.new_zeros(1, 3)])
    opac_t = torch.cat([proj.opacities.reshape(-1), proj.opacities.new_zeros(1)])
    colors_t = torch.cat([colors.reshape(-1, d), colors.new_zeros(1, d)])
    ly, lx = torch.meshgrid(
        torch.arange(tile_size, device=device), torch.arange(tile_size, device=device), indexing="ij"
    )
    local_pix = torch.stack([lx.reshape(-1), ly.reshape(-1)], dim=-1).to(dtype) + 0.5
    out_colors = colors.new_zeros(num_tiles, pix_per_tile, d)
    out_trans = colors.new_ones(num_tiles, pix_per_tile)
    tile_order = torch.argsort(counts, descending=True)
    nonempty = int((counts > 0).sum())
    tile_order = tile_order[:nonempty]
    starts = torch.cumsum(counts, 0) - counts
    counts_cpu = counts[tile_order].tolist()
    pieces_c, pieces_t, pieces_idx = [], [], []
    begin = 0
    while begin < nonempty:
        k = max(counts_cpu[begin], 1)
        chunk = max(1, min(nonempty - begin, max_chunk_elements // (pix_per_tile * k)))
        tiles = tile_order[begin : begin + chunk]
        slot = torch.arange(k, device=device)
        pos = starts[tiles][:, None] + slot[None, :]
        in_list = slot[None, :] < counts[tiles][:, None]
        idx = torch.where(in_list, gauss_ids[pos.clamp_max(max(gauss_ids.numel() - 1, 0))], pad)
        local_tile = tiles % (tiles_x * tiles_y)
        origin = torch.stack([local_tile % tiles_x, local_tile // tiles_x], dim=-1).to(dtype) * tile_size
        pixels = origin[:, None, :] + local_pix[None]
        w, t = blend_weights(pixels, means_t[idx], conics_t[idx], opac_t[idx])
        pieces_c.append(torch.bmm(w, colors_t[idx]))
        pieces_t.append(t)
        pieces_idx.append(tiles)
        begin += chunk
    if pieces_idx:
        tiles_done = torch.cat(pieces_idx)
        out_colors = out_colors.index_copy(0, tiles_done, torch.cat(pieces_c))
        out_trans = out_trans.index_copy(0, tiles_done, torch.cat(pieces_t))
    else:
        attach = colors_t[:0].sum() + means_t[:0].sum() + conics_t[:0].sum() + opac_t[:0].sum()
        out_colors = out_colors + attach
        out_trans = out_trans + attach
    if backgrounds is not None:
        image_of_tile = torch.arange(num_tiles, device=device) // (tiles_x * tiles_y)
        out_colors = out_colors + out_trans[..., None] * backgrounds[image_of_tile][:, None, :]
    img = out_colors.reshape(num_images, tiles_y, tiles_x, tile_size, tile_size, d)
    img = img.permute(0, 1, 3, 2, 4, 5).reshape(num_images, tiles_y * tile_size, tiles_x * tile_size, d)
    alpha = (1.0 - out_trans).reshape(num_images, tiles_y, tiles_x, tile_size, tile_size)
    alpha = alpha.permute(0, 1, 3, 2, 4).reshape(num_images, tiles_y * tile_size, tiles_x * tile_size)
    return img[:, :height, :width], alpha[:, :height, :width]
