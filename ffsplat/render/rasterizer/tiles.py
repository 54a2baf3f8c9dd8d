"""Pure-torch tile rasterizer with gsplat 1.5's compositing rules (runs on any device).

Per pixel, front to back over Gaussians sorted by camera depth:
``alpha = min(0.999, o * exp(-sigma))`` with ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy`` at the
pixel centre; skipped when ``sigma < 0`` or ``alpha < 1/255``; compositing stops *before* the
Gaussian that would take the transmittance ``T`` to ``<= 1e-4``; ``C = sum alpha_i T_i c_i + T bg``,
rendered alpha ``1 - T``.

Work is dense per tile: each tile gathers the depth-sorted Gaussians whose bounding boxes touch
it and composites them front to back in slabs of :data:`SLAB` Gaussians, evaluating all (pixel,
Gaussian) pairs of a slab at once with a cumulative product (the stop rule is a prefix test on
it) and carrying the transmittance to the next slab. A tile is dropped once all its pixels have
stopped (early termination), so opaque surfaces cost a few slabs, not their whole lists. Tiles are processed in chunks sorted by how many
Gaussians they hold, so padding stays small, and a chunk holds at most ``max_chunk_elements``
(pixel, Gaussian) pairs so that its intermediates stay in cache.

The backward pass is hand-written (:class:`_CompositeTiles`, gsplat's scheme): the forward pass
saves nothing per (pixel, Gaussian) pair (only the flat attribute tables and the per-tile index
lists it was given); the backward pass recomputes each chunk's alphas and transmittances and
accumulates the suffix sums ``sum_{j>i} alpha_j T_j c_j`` back to front. Memory for a
forward+backward is therefore the outputs (O(pixels x channels)) plus one chunk, instead of ~15
dense ``[tiles, P, K]`` tensors per chunk held by autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ffsplat.render.rasterizer.projection import ALPHA_THRESHOLD, Projected

MAX_ALPHA = 0.999
MIN_TRANSMITTANCE = 1e-4


def tile_intersections(
    proj: Projected, width: int, height: int, tile_size: int, cull: bool = False
) -> tuple[Tensor, Tensor, Tensor, int, int]:
    """Depth-sorted (tile, Gaussian) pairs.

    A Gaussian is listed in every tile its bounding box (``proj.radii``) touches. With ``cull``,
    pairs where no pixel centre of the tile can reach ``alpha >= 1/255`` are dropped: the
    minimum of ``sigma`` over the tile's rectangle of pixel centres (a convex quadratic, minimised
    exactly on the rectangle, in the projection's dtype) exceeds ``ln(255 o)`` (plus a margin of 0.01 for rounding). Those
    pairs contribute nothing, so the images are unchanged while the bounding-box corners of
    elongated or tile-straddling Gaussians are not evaluated (about 40% of the pairs of a
    per-scene 3DGS fit at 48x48).

    Returns:
        ``gauss_ids``: ``[M]`` flat Gaussian index ``image * N + n`` per pair, ordered by tile then
        depth; ``tile_ids``: ``[M]`` flat tile index ``image * tiles_y * tiles_x + ty * tiles_x + tx``;
        ``counts``: ``[I * tiles_y * tiles_x]`` pairs per tile; ``tiles_x``, ``tiles_y``.
    """
    num_images, n = proj.depths.shape
    device = proj.depths.device
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    with torch.no_grad():
        mean = proj.means2d.detach()
        rad = proj.radii.to(mean.dtype)
        tx0 = torch.floor((mean[..., 0] - rad[..., 0]) / tile_size).clamp(0, tiles_x).long()
        tx1 = torch.ceil((mean[..., 0] + rad[..., 0]) / tile_size).clamp(0, tiles_x).long()
        ty0 = torch.floor((mean[..., 1] - rad[..., 1]) / tile_size).clamp(0, tiles_y).long()
        ty1 = torch.ceil((mean[..., 1] + rad[..., 1]) / tile_size).clamp(0, tiles_y).long()
        span_x = tx1 - tx0
        n_tiles = (span_x * (ty1 - ty0)) * proj.valid  # [I, N]

        # Visit Gaussians in (image, depth) order so pairs come out depth-sorted per tile after a
        # stable sort by tile id.
        order = torch.argsort(proj.depths.detach(), dim=1, stable=True)  # [I, N]
        flat_order = (order + torch.arange(num_images, device=device)[:, None] * n).reshape(-1)
        per_gauss = n_tiles.reshape(-1)[flat_order]
        gauss_ids = torch.repeat_interleave(flat_order, per_gauss)
        starts = torch.cumsum(per_gauss, 0) - per_gauss
        local = torch.arange(gauss_ids.numel(), device=device) - torch.repeat_interleave(starts, per_gauss)
        sx = span_x.reshape(-1)[gauss_ids]
        tile_x = tx0.reshape(-1)[gauss_ids] + local % sx.clamp_min(1)
        tile_y = ty0.reshape(-1)[gauss_ids] + local // sx.clamp_min(1)
        image = gauss_ids // n
        if cull and gauss_ids.numel():
            live = _tile_reaches_threshold(proj, gauss_ids, tile_x, tile_y, tile_size)
            gauss_ids, tile_x, tile_y, image = gauss_ids[live], tile_x[live], tile_y[live], image[live]
        tile_ids = image * (tiles_x * tiles_y) + tile_y * tiles_x + tile_x
        tile_ids, perm = torch.sort(tile_ids, stable=True)
        gauss_ids = gauss_ids[perm]
        counts = torch.bincount(tile_ids, minlength=num_images * tiles_x * tiles_y)
    return gauss_ids, tile_ids, counts, tiles_x, tiles_y


def _tile_reaches_threshold(
    proj: Projected, gauss_ids: Tensor, tile_x: Tensor, tile_y: Tensor, tile_size: int
) -> Tensor:
    """``[M]`` bool: some pixel centre of tile ``(tile_x, tile_y)`` may get ``alpha >= 1/255`` from
    flat Gaussian ``gauss_ids`` (exact minimum of ``sigma`` over the tile's pixel-centre rectangle,
    in the projection's dtype, with a 0.01 margin)."""
    mean = proj.means2d.detach().reshape(-1, 2)[gauss_ids]
    a, b, c = proj.conics.detach().reshape(-1, 3)[gauss_ids].unbind(-1)
    opac = proj.opacities.detach().reshape(-1)[gauss_ids]
    # dx = pixel - mean over the tile's pixel centres: [dx0, dx1] x [dy0, dy1].
    dx0 = tile_x.to(mean.dtype) * tile_size + 0.5 - mean[:, 0]
    dy0 = tile_y.to(mean.dtype) * tile_size + 0.5 - mean[:, 1]
    dx1, dy1 = dx0 + (tile_size - 1), dy0 + (tile_size - 1)

    def sigma(dx: Tensor, dy: Tensor) -> Tensor:
        return 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy

    # Convex (a, c > 0, ac > b^2): the minimum is 0 if the mean's centre lies inside, else on an
    # edge, where the 1D minimum is the stationary point clamped to the edge.
    inside = (dx0 <= 0) & (dx1 >= 0) & (dy0 <= 0) & (dy1 >= 0)
    c_safe, a_safe = c.clamp_min(1e-30), a.clamp_min(1e-30)
    edges = [sigma(dx, torch.minimum(torch.maximum(-b * dx / c_safe, dy0), dy1)) for dx in (dx0, dx1)]
    edges += [sigma(torch.minimum(torch.maximum(-b * dy / a_safe, dx0), dx1), dy) for dy in (dy0, dy1)]
    min_sigma = torch.where(inside, 0.0, torch.stack(edges).amin(0))
    return min_sigma <= torch.log(opac.clamp_min(1e-30) / ALPHA_THRESHOLD) + 0.01


def blend_weights(pixels: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor) -> tuple[Tensor, Tensor]:
    """Blend weights ``alpha_i T_i`` of padded, depth-sorted Gaussian lists for a chunk of tiles,
    with gsplat's rules (the one implementation the compositor and per-pixel losses share).

    Args:
        pixels: ``[T, P, 2]`` pixel centres of each tile.
        means2d, conics: ``[T, K, 2]``, ``[T, K, 3]`` (padding entries have opacity 0).
        opacities: ``[T, K]``.
    Returns:
        ``weights``: ``[T, P, K]``; ``transmittance``: ``[T, P]`` left after the last contributor.
    """
    dx = pixels[:, :, None, 0] - means2d[:, None, :, 0]  # [T, P, K]
    dy = pixels[:, :, None, 1] - means2d[:, None, :, 1]
    a, b, c = conics[:, None, :, 0], conics[:, None, :, 1], conics[:, None, :, 2]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(opacities[:, None, :] * torch.exp(-sigma), MAX_ALPHA)
    with torch.no_grad():
        keep = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
        # gsplat stops before the Gaussian whose inclusion would leave T <= 1e-4. T only
        # decreases, so "kept" is a prefix test on the running product.
        running = torch.cumprod(torch.where(keep, 1.0 - alpha, torch.ones_like(alpha)), dim=-1)
        keep &= running > MIN_TRANSMITTANCE
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    trans_incl = torch.cumprod(1.0 - alpha, dim=-1)
    trans_excl = torch.cat([torch.ones_like(trans_incl[..., :1]), trans_incl[..., :-1]], dim=-1)
    return alpha * trans_excl, trans_incl[..., -1]


def composite_tiles(
    pixels: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor
) -> tuple[Tensor, Tensor]:
    """Front-to-back composite of padded, depth-sorted Gaussian lists for a chunk of tiles.

    Args:
        pixels, means2d, conics, opacities: as :func:`blend_weights`.
        colors: ``[T, K, D]``.
    Returns:
        ``colors``: ``[T, P, D]`` without background; ``transmittance``: ``[T, P]`` left after the
        last contributing Gaussian.
    """
    weights, transmittance = blend_weights(pixels, means2d, conics, opacities)
    return torch.bmm(weights, colors), transmittance


def _slab_forward(pixels: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor, t_in: Tensor, stopped: Tensor):
    """Per-pair quantities of one slab of consecutive Gaussians (no autograd), given the
    transmittance ``t_in`` ``[T, P]`` left by the earlier slabs and which pixels have already
    ``stopped`` ``[T, P]`` (bool): everything the forward and backward passes share.

    Shapes as :func:`blend_weights` with ``K`` the slab length. Returns ``dx, dy`` ``[T, P, K]``,
    ``gauss`` (``exp(-sigma)``), ``raw`` (``o exp(-sigma)``), ``alpha`` (clamped, 0 where the pair
    does not contribute), ``keep`` (bool), ``one_minus`` (``1 - alpha``), ``trans_excl`` (``T_i``
    before each Gaussian), ``trans`` ``[T, P]`` (after the slab) and ``stopped`` ``[T, P]`` (after
    the slab). Written with few passes and in-place ops: it runs twice per render step (forward,
    and recomputed in backward).
    """
    dx = pixels[:, :, None, 0] - means2d[:, None, :, 0]  # [T, P, K]
    dy = pixels[:, :, None, 1] - means2d[:, None, :, 1]
    half_a, b, half_c = (0.5 * conics[:, None, :, 0], conics[:, None, :, 1], 0.5 * conics[:, None, :, 2])
    sigma = torch.addcmul(b * dy, half_a, dx).mul_(dx).addcmul_(half_c * dy, dy)  # a/2 dx^2 + b dx dy + c/2 dy^2
    gauss = sigma.neg().exp_()
    raw = gauss * opacities[:, None, :]
    keep = (sigma >= 0).logical_and_(raw >= ALPHA_THRESHOLD)  # alpha >= 1/255 <=> raw >= 1/255
    keep.logical_and_(~stopped[:, :, None])
    alpha = torch.where(keep, raw.clamp_max(MAX_ALPHA), 0.0)
    one_minus = torch.rsub(alpha, 1.0)
    trans_incl = torch.cumprod(one_minus, dim=-1).mul_(t_in[:, :, None])
    # gsplat stops before the Gaussian whose inclusion would leave T <= 1e-4; T only decreases,
    # so the pairs before the stop are a prefix (and a pixel stops in this slab iff its last T is
    # <= 1e-4): drop the rest and recompute the product.
    stops_here = trans_incl[..., -1] <= MIN_TRANSMITTANCE
    if bool(stops_here.any()):
        keep.logical_and_(trans_incl > MIN_TRANSMITTANCE)
        alpha.masked_fill_(~keep, 0.0)
        one_minus = torch.rsub(alpha, 1.0)
        trans_incl = torch.cumprod(one_minus, dim=-1).mul_(t_in[:, :, None])
    trans_excl = torch.cat([t_in[:, :, None], trans_incl[..., :-1]], dim=-1)
    return dx, dy, gauss, raw, alpha, keep, one_minus, trans_excl, trans_incl[..., -1], stopped | stops_here


SLAB = 32
"""Gaussians per tile composited at once. A tile stops being evaluated once all its pixels have
stopped (early termination, as gsplat's per-pixel loop): with opaque surfaces most tiles stop
within the first slabs of a list of hundreds."""


class _CompositeTiles(torch.autograd.Function):
    """Composite all chunks of tiles; saves O(pixels), recomputes per-pair terms in backward.

    Inputs are the flat attribute tables (one zero padding row last) ``means_t [M+1, 2]``,
    ``conics_t [M+1, 3]``, ``opac_t [M+1]``, ``colors_t [M+1, D]`` and a ``plan``: a list of
    ``(tiles [t], idx [t, k], pixels [t, P, 2], lengths [t])`` chunks. Each chunk is composited
    front to back in slabs of :data:`SLAB` Gaussians, carrying the transmittance; a tile leaves the
    chunk once its list is exhausted or all its pixels have stopped. Returns
    ``colors [num_tiles, P, D]`` (without background) and ``transmittance [num_tiles, P]``.

    Saved for backward, per chunk and slab: the active tiles and their pixels' transmittance and
    stop flags at the slab's start (O(pixels) per slab), plus the final transmittance.
    """

    @staticmethod
    def forward(ctx, means_t, conics_t, opac_t, colors_t, plan, num_tiles: int, pix_per_tile: int):
        out_colors = colors_t.new_zeros(num_tiles, pix_per_tile, colors_t.shape[-1])
        out_trans = colors_t.new_ones(num_tiles, pix_per_tile)
        schedule = []
        for tiles, idx, pixels, lengths in plan:
            t = tiles.numel()
            color = colors_t.new_zeros(t, pix_per_tile, colors_t.shape[-1])
            trans = colors_t.new_ones(t, pix_per_tile)
            stopped = torch.zeros(t, pix_per_tile, dtype=torch.bool, device=colors_t.device)
            active = torch.arange(t, device=colors_t.device)
            slabs = []
            for s0 in range(0, idx.shape[1], SLAB):
                if s0:
                    active = active[(lengths[active] > s0) & ~stopped[active].all(dim=1)]
                if active.numel() == 0:
                    break
                sl = idx[active, s0 : s0 + SLAB]
                t_in, st_in = trans[active], stopped[active]
                *_, alpha, _, _, trans_excl, t_out, st_out = _slab_forward(
                    pixels[active], means_t[sl], conics_t[sl], opac_t[sl], t_in, st_in
                )
                color.index_add_(0, active, torch.bmm(alpha.mul_(trans_excl), colors_t[sl]))
                trans.index_copy_(0, active, t_out)
                stopped.index_copy_(0, active, st_out)
                slabs.append((s0, active, t_in, st_in))
            out_colors.index_copy_(0, tiles, color)
            out_trans.index_copy_(0, tiles, trans)
            schedule.append((slabs, trans))
        ctx.plan, ctx.schedule = plan, schedule
        ctx.save_for_backward(means_t, conics_t, opac_t, colors_t)
        return out_colors, out_trans

    @staticmethod
    def backward(ctx, grad_colors, grad_trans):
        means_t, conics_t, opac_t, colors_t = ctx.saved_tensors
        need = ctx.needs_input_grad
        g_means = torch.zeros_like(means_t)
        g_conics = torch.zeros_like(conics_t)
        g_opac = torch.zeros_like(opac_t)
        g_colors = torch.zeros_like(colors_t)
        for (tiles, idx, pixels, _), (slabs, final_trans) in zip(ctx.plan, ctx.schedule):
            g_c_chunk = grad_colors[tiles]  # [t, P, D]
            # Suffix sum over everything after the current slab: sum_j alpha_j T_j (dL/dC . c_j) + dL/dT T.
            suffix = grad_trans[tiles] * final_trans  # [t, P]
            for s0, active, t_in, st_in in reversed(slabs):
                sl = idx[active, s0 : s0 + SLAB]
                flat_idx = sl.reshape(-1)
                means, conics, opac, cols = means_t[sl], conics_t[sl], opac_t[sl], colors_t[sl]
                dx, dy, gauss, raw, alpha, keep, one_minus, trans_excl, _, _ = _slab_forward(
                    pixels[active], means, conics, opac, t_in, st_in
                )
                weights = alpha * trans_excl  # [a, P, k]
                g_c = g_c_chunk[active]  # [a, P, D]
                if need[3]:
                    g_colors.index_add_(0, flat_idx, torch.bmm(weights.transpose(1, 2), g_c).flatten(0, 1))
                if not (need[0] or need[1] or need[2]):
                    continue
                # dC/dalpha_i = T_i c_i - sum_{j>i} alpha_j T_j c_j / (1 - alpha_i); dT/dalpha_i = -T / (1 - alpha_i).
                gc = torch.bmm(g_c, cols.transpose(1, 2))  # [a, P, k] (dL/dC . c_i)
                later = torch.cumsum(weights.mul_(gc), -1)  # prefix sums of alpha_j T_j (dL/dC . c_j)
                slab_total = later[..., -1]
                total = slab_total + suffix[active]
                suffix.index_add_(0, active, slab_total)
                later.neg_().add_(total[..., None]).div_(one_minus)  # (sum over j > i + dL/dT T) / (1 - alpha_i)
                g_raw = gc.mul_(trans_excl).sub_(later)  # dL/dalpha_i
                g_raw.masked_fill_(~keep.logical_and_(raw <= MAX_ALPHA), 0.0)  # where(keep) and the clamp
                if need[2]:
                    g_opac.index_add_(0, flat_idx, (g_raw * gauss).sum(1).flatten())
                if not (need[0] or need[1]):
                    continue
                g_sigma = g_raw.mul_(raw)  # minus dL/dsigma, [a, P, k]
                gx, gy = g_sigma * dx, g_sigma.mul_(dy)
                a, b, c = conics.unbind(-1)  # [a, k]
                if need[0]:
                    sx, sy = gx.sum(1), gy.sum(1)  # dsigma/dmx = -(a dx + b dy); a, b, c constant per Gaussian
                    g_means.index_add_(0, flat_idx, torch.stack([a * sx + b * sy, c * sy + b * sx], -1).flatten(0, 1))
                if need[1]:
                    g_abc = torch.stack(
                        [-0.5 * (gx * dx).sum(1), -(gx.mul_(dy)).sum(1), -0.5 * (gy.mul_(dy)).sum(1)], -1
                    )
                    g_conics.index_add_(0, flat_idx, g_abc.flatten(0, 1))
        return g_means, g_conics, g_opac, g_colors, None, None, None


def rasterize_tiles(
    proj: Projected,
    colors: Tensor,
    width: int,
    height: int,
    *,
    tile_size: int = 16,
    backgrounds: Tensor | None = None,
    max_chunk_elements: int = 1 << 18,
) -> tuple[Tensor, Tensor]:
    """Rasterize projected Gaussians.

    Args:
        proj: output of :func:`project_gaussians` for ``I`` images.
        colors: ``[I, N, D]`` per-image colours/features (any D >= 1).
        width, height: image size.
        backgrounds: ``[I, D]`` or None (zeros).
        max_chunk_elements: cap on ``tiles x pixels x slab Gaussians`` evaluated at once (memory
            and cache bound; 2**18 keeps a slab's float32 intermediates at 1 MB each).
    Returns:
        ``colors``: ``[I, H, W, D]`` and ``alphas``: ``[I, H, W]``.
    """
    num_images, n = proj.depths.shape
    d = colors.shape[-1]
    device, dtype = colors.device, colors.dtype
    gauss_ids, tile_ids, counts, tiles_x, tiles_y = tile_intersections(proj, width, height, tile_size, cull=True)
    num_tiles = num_images * tiles_x * tiles_y
    pix_per_tile = tile_size * tile_size

    # Flat attribute tables with one padding row (opacity 0 -> never contributes) at index I*N.
    pad = num_images * n
    means_t = torch.cat([proj.means2d.reshape(-1, 2), proj.means2d.new_zeros(1, 2)])
    conics_t = torch.cat([proj.conics.reshape(-1, 3), proj.conics.new_zeros(1, 3)])
    opac_t = torch.cat([proj.opacities.reshape(-1), proj.opacities.new_zeros(1)])
    colors_t = torch.cat([colors.reshape(-1, d), colors.new_zeros(1, d)])

    # Pixel centres per tile (local), offset by each tile's origin below.
    ly, lx = torch.meshgrid(
        torch.arange(tile_size, device=device), torch.arange(tile_size, device=device), indexing="ij"
    )
    local_pix = torch.stack([lx.reshape(-1), ly.reshape(-1)], dim=-1).to(dtype) + 0.5  # [P, 2]

    tile_order = torch.argsort(counts, descending=True)
    nonempty = int((counts > 0).sum())
    tile_order = tile_order[:nonempty]
    starts = torch.cumsum(counts, 0) - counts
    counts_cpu = counts[tile_order].tolist()
    plan = []
    begin = 0
    while begin < nonempty:
        k = max(counts_cpu[begin], 1)
        chunk = max(1, min(nonempty - begin, max_chunk_elements // (pix_per_tile * min(k, SLAB))))
        tiles = tile_order[begin : begin + chunk]
        slot = torch.arange(k, device=device)
        pos = starts[tiles][:, None] + slot[None, :]  # [t, k]
        in_list = slot[None, :] < counts[tiles][:, None]
        idx = torch.where(in_list, gauss_ids[pos.clamp_max(max(gauss_ids.numel() - 1, 0))], pad)
        local_tile = tiles % (tiles_x * tiles_y)
        origin = torch.stack([local_tile % tiles_x, local_tile // tiles_x], dim=-1).to(dtype) * tile_size
        plan.append((tiles, idx, origin[:, None, :] + local_pix[None], counts[tiles]))  # pixels [t, P, 2]
        begin += chunk
    # With nothing visible the outputs still depend on the inputs (zero gradients), as gsplat's,
    # so a training step whose Gaussians are all culled still backpropagates.
    out_colors, out_trans = _CompositeTiles.apply(means_t, conics_t, opac_t, colors_t, plan, num_tiles, pix_per_tile)

    if backgrounds is not None:
        image_of_tile = torch.arange(num_tiles, device=device) // (tiles_x * tiles_y)
        out_colors = out_colors + out_trans[..., None] * backgrounds[image_of_tile][:, None, :]

    # [I*ty*tx, ts*ts, D] -> [I, ty*ts, tx*ts, D] -> crop to the image.
    img = out_colors.reshape(num_images, tiles_y, tiles_x, tile_size, tile_size, d)
    img = img.permute(0, 1, 3, 2, 4, 5).reshape(num_images, tiles_y * tile_size, tiles_x * tile_size, d)
    alpha = (1.0 - out_trans).reshape(num_images, tiles_y, tiles_x, tile_size, tile_size)
    alpha = alpha.permute(0, 1, 3, 2, 4).reshape(num_images, tiles_y * tile_size, tiles_x * tile_size)
    return img[:, :height, :width], alpha[:, :height, :width]
