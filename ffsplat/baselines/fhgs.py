"""FHGS: Feature-Homogenized Gaussian Splatting (seed 002; ``../shared/BASELINES.md``).

Each Gaussian carries a *frozen* unit-norm SAM feature ``f_i``; the features are never optimised,
so the feature losses move geometry only, through the blend weights ``w_i = a_i T_i``:

* External potential (per pixel): ``L_gt = sum_i w_i (1 - f_gt . f_i)``, computed exactly as
  ``A - f_gt . F`` from one ordinary render of the frozen features (``A``: accumulated alpha,
  ``F = sum_i w_i f_i``; ``f_gt``: the teacher's SAM feature bilinearly upsampled to the render
  resolution and L2-normalised).
* Internal clustering (per pixel): ``L_cf = sum_i sigma_i w_i (W_far,i - F_far,i . f_i)``, with
  ``W_far,i`` / ``F_far,i`` the weight / weighted-feature sums of the Gaussians *behind* ``i`` on
  the ray and ``sigma_i = 1 / (1 + exp(k (cos(f_i, f_gt) - lambda)))`` (``lambda = 0.5``,
  ``k = 20``). It needs per-pixel depth-ordered contributor lists: :func:`ordered_contributions`
  builds them differentiably as padded ``[P, K]`` lists: on CPU from ffsplat's torch rasterizer
  (projection + tile intersection + the compositor's exact alpha / stopping rules, evaluated a
  bounded number of tile x pixel x Gaussian elements at a time); on CUDA
  (:func:`ordered_contributions_gsplat`) from gsplat's ``rasterize_to_indices_in_range`` (which
  Gaussians hit which pixel, in depth order, batch by batch) with the alphas recomputed in torch
  so that gradients reach the geometry. The loss itself (:func:`internal_clustering_chunked`) runs
  over bounded pixel chunks under activation checkpointing, so the ``pixels x contributors x C``
  tensor (about 5 GB at 256x256 with SAM's 256 channels) never exists at once.
* ``L = L_rgb + l1 L_gt + l2 L_cf``. ``l1`` and ``l2`` are unpublished; our defaults are
  ``l1 = 1.0``, ``l2 = 0.1`` (each loss is a per-pixel sum averaged over the pixels of the view).

Choices of this re-implementation (BASELINES.md allows / asks to state them):

* Base renderer: 3DGS (the shared trainer), not the paper's 2DGS.
* Feature assignment: the paper samples ``f_i`` at the Gaussian's projection in one (random) view
  where the SfM point is visible. We project each initial centre into every training view and use
  the first in-image view where it is visible: where the *rendered* depth of the initial Gaussians
  (:func:`visible_depths`, never the sensor's) is within :data:`VISIBLE_TOLERANCE` of the centre's
  depth (else the view that agrees best), then bilinearly sample the teacher map there and
  L2-normalise. Sensor depth is not read: a
  method that sees it would be an oracle row.
* Frozen features live in ``trainer.params["sam"]`` with learning rate 0 (and are detached when
  rendered), so gsplat's densification clones / splits / prunes them with the other attributes.
* Metrics: ``FE`` = mean per-pixel ``L_gt`` over views; ``FL1`` = mean absolute difference between
  the rendered feature ``F`` and the unit-normalised teacher feature (at render resolution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ffsplat.baselines.trainer import SceneMethod, SceneTrainer
from ffsplat.core.geometry import project_points
from ffsplat.render.rasterizer.projection import project_gaussians
from ffsplat.render.rasterizer.tiles import blend_weights, tile_intersections
from ffsplat.render.renderer import RasterSettings, RenderOutput, render
from ffsplat.core.types import Cameras, Gaussians, Views


# ---------------------------------------------------------------------------- ordered contributions
def ordered_contributions(
    gaussians: Gaussians,
    cameras: Cameras,
    settings: RasterSettings | None = None,
    max_chunk_elements: int = 1 << 22,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pixel, depth-ordered blend weights ``w_i = a_i T_i`` of the contributing Gaussians.

    Uses ffsplat's torch rasterizer (projection, tile intersection, compositing rules of
    :func:`ffsplat.render.rasterizer.tiles.composite_tiles`: alpha clamp 0.999, skip below 1/255, stop
    before ``T <= 1e-4``), so ``weights.sum(-1)`` is the rendered alpha and ``weights @ colors``
    the rendered colour. Differentiable with respect to the geometry (through autograd).

    Args:
        gaussians: one scene, unbatched or batch ``[1]``.
        cameras: ``[V]`` or ``[1, V]`` cameras sharing ``image_size = (H, W)``.
        settings: rasterization settings (near/far, eps2d, radius clip, antialiasing, tile size).
        max_chunk_elements: bound on ``tiles x pixels x Gaussians`` evaluated at once.
    Returns:
        ``weights`` ``[P, K]`` (``P = V * H * W``, pixels in view-major, row-major order; ``K`` the
        largest number of contributors of any pixel; front to back, zero-padded),
        ``gaussian_ids`` ``[P, K]`` int64 Gaussian indices (0 at padding) and ``valid`` ``[P, K]``.
    """
    s = settings or RasterSettings()
    if gaussians.means.dim() == 2:
        gaussians = Gaussians(gaussians.means[None], gaussians.scales[None], gaussians.rotations[None],
                              gaussians.opacities[None], gaussians.sh[None])  # fmt: skip
    cams = cameras if len(cameras.batch_shape) == 2 else cameras.reshape(1, -1)
    height, width = cams.image_size
    n = gaussians.num_gaussians
    dtype, device = gaussians.means.dtype, gaussians.device
    proj = project_gaussians(
        gaussians.means, gaussians.rotations, gaussians.scales, gaussians.opacities,
        cams.w2c.to(dtype), cams.intrinsics.to(dtype), width, height,
        near_plane=s.near_plane, far_plane=s.far_plane, eps2d=s.eps2d,
        radius_clip=s.radius_clip, antialiased=s.rasterize_mode == "antialiased",
    )  # fmt: skip
    num_images = proj.depths.shape[0]
    ts = s.torch_tile_size
    gauss_ids, _, counts, tiles_x, tiles_y = tile_intersections(proj, width, height, ts)
    pad = num_images * n
    means_t = torch.cat([proj.means2d.reshape(-1, 2), proj.means2d.new_zeros(1, 2)])
    conics_t = torch.cat([proj.conics.reshape(-1, 3), proj.conics.new_zeros(1, 3)])
    opac_t = torch.cat([proj.opacities.reshape(-1), proj.opacities.new_zeros(1)])
    ly, lx = torch.meshgrid(torch.arange(ts, device=device), torch.arange(ts, device=device), indexing="ij")
    local = torch.stack([lx.reshape(-1), ly.reshape(-1)], dim=-1)  # [ts*ts, 2] integer offsets

    starts = torch.cumsum(counts, 0) - counts
    tile_order = torch.argsort(counts, descending=True)[: int((counts > 0).sum())]
    counts_cpu = counts[tile_order].tolist()
    pieces: list[tuple[Tensor, Tensor, Tensor]] = []
    begin = 0
    while begin < len(tile_order):
        k = max(counts_cpu[begin], 1)
        chunk = max(1, min(len(tile_order) - begin, max_chunk_elements // (ts * ts * k)))
        tiles = tile_order[begin : begin + chunk]
        begin += chunk
        slot = torch.arange(k, device=device)
        pos = (starts[tiles][:, None] + slot).clamp_max(max(gauss_ids.numel() - 1, 0))
        idx = torch.where(slot < counts[tiles][:, None], gauss_ids[pos], pad)  # [t, k]
        local_tile = tiles % (tiles_x * tiles_y)
        origin = torch.stack([local_tile % tiles_x, local_tile // tiles_x], dim=-1) * ts
        pix = origin[:, None, :] + local  # [t, P, 2] integer pixel coordinates
        w, _ = blend_weights(pix.to(dtype) + 0.5, means_t[idx], conics_t[idx], opac_t[idx])  # [t, P, k]
        keep = w > 0
        inside = (pix[..., 0] < width) & (pix[..., 1] < height)
        flat_pix = (tiles // (tiles_x * tiles_y))[:, None] * (height * width) + pix[..., 1] * width + pix[..., 0]
        # Compact each pixel's list to its contributors, keeping the depth order.
        kc = max(int(keep.sum(-1).max()), 1)
        order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[..., :kc]
        w_c = torch.gather(w, -1, order)
        ids_c = torch.gather(idx[:, None, :].expand(-1, w.shape[1], -1), -1, order)
        pieces.append((flat_pix[inside], w_c[inside], ids_c[inside] % max(n, 1)))

    total = num_images * height * width
    kmax = max([p[1].shape[-1] for p in pieces], default=1)
    weights = gaussians.means.new_zeros(total, kmax)
    ids = torch.zeros(total, kmax, dtype=torch.long, device=device)
    if pieces:
        rows = torch.cat([p[0] for p in pieces])
        weights = weights.index_copy(0, rows, torch.cat([F.pad(p[1], (0, kmax - p[1].shape[-1])) for p in pieces]))
        ids = ids.index_copy(0, rows, torch.cat([F.pad(p[2], (0, kmax - p[2].shape[-1])) for p in pieces]))
    valid = weights.detach() > 0
    return weights, torch.where(valid, ids, torch.zeros_like(ids)), valid


# ---------------------------------------------------------------------------- losses
def clustering_sigma(cos: Tensor, lam: float = 0.5, k: float = 20.0) -> Tensor:
    """FHGS gate ``sigma = 1 / (1 + exp(k (cos - lambda)))``: ~1 for features unlike ``f_gt``."""
    return torch.sigmoid(-k * (cos - lam))


def external_potential(alpha: Tensor, features: Tensor, target: Tensor) -> Tensor:
    """Per-pixel ``L_gt = A - f_gt . F`` (= ``sum_i w_i (1 - f_gt . f_i)`` for unit ``f_i``).

    Args: ``alpha`` ``[..., H, W]``, rendered frozen ``features`` and unit ``target`` ``[..., C, H, W]``.
    """
    return alpha - (target * features).sum(-3)


def internal_clustering(
    weights: Tensor, ids: Tensor, feats: Tensor, target: Tensor | None, lam: float = 0.5, k: float = 20.0
) -> Tensor:
    """Per-pixel ``L_cf = sum_i sigma_i w_i (W_far,i - F_far,i . f_i)`` from ordered contributions.

    Args:
        weights, ids: ``[P, K]`` from :func:`ordered_contributions` (front to back).
        feats: ``[N, C]`` unit per-Gaussian features.
        target: ``[P, C]`` unit teacher features for ``sigma``; None for ``sigma = 1`` (then the
            result equals ``(A^2 - |F|^2) / 2``).
    Returns:
        ``[P]``.
    """
    f = feats[ids]  # [P, K, C]
    wf = weights[..., None] * f
    w_far = weights.sum(-1, keepdim=True) - weights.cumsum(-1)  # sum over j behind i
    f_far = wf.sum(-2, keepdim=True) - wf.cumsum(-2)
    pair = weights * (w_far - (f_far * f).sum(-1))
    if target is not None:
        pair = pair * clustering_sigma((f * target[:, None, :]).sum(-1), lam, k)
    return pair.sum(-1)


def internal_clustering_chunked(
    weights: Tensor,
    ids: Tensor,
    feats: Tensor,
    target: Tensor | None,
    lam: float = 0.5,
    k: float = 20.0,
    max_elements: int = 1 << 24,
) -> Tensor:
    """:func:`internal_clustering` over pixel chunks of at most ``max_elements`` (``pixels x K x C``)
    elements, each under activation checkpointing when gradients are needed: autograd keeps only
    the chunk's inputs (``[p, K]`` weights and ids) and recomputes the ``[p, K, C]`` gather in the
    backward pass, so memory is bounded by the chunk, not the image. Same values and gradients."""
    from torch.utils.checkpoint import checkpoint

    p, kk = ids.shape
    chunk = max(1, max_elements // max(kk * feats.shape[-1], 1))
    grad = torch.is_grad_enabled() and (weights.requires_grad or feats.requires_grad)
    out = []
    for lo in range(0, p, chunk):
        args = (
            weights[lo : lo + chunk],
            ids[lo : lo + chunk],
            feats,
            None if target is None else target[lo : lo + chunk],
            lam,
            k,
        )
        out.append(checkpoint(internal_clustering, *args, use_reentrant=False) if grad else internal_clustering(*args))
    return torch.cat(out) if out else weights.new_zeros(0)


def ordered_from_pairs(
    pixel_ids: Tensor, gauss_ids: Tensor, alphas: Tensor, num_pixels: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Blend weights of (pixel, Gaussian) pairs listed front to back per pixel -> padded ``[P, K]``.

    ``T_i = prod_{j < i} (1 - a_j)`` within each pixel's list, ``w_i = a_i T_i``; a pair is dropped
    once ``T_i (1 - a_i) <= 1e-4`` (gsplat's / the compositor's stopping rule). Differentiable in
    ``alphas``.

    Args:
        pixel_ids, gauss_ids: ``[M]`` int64; the pairs of each pixel appear in depth order.
        alphas: ``[M]`` alphas (already clamped to 0.999 and >= 1/255).
        num_pixels: ``P``.
    Returns:
        ``weights [P, K]``, ``gaussian_ids [P, K]`` and ``valid [P, K]`` as :func:`ordered_contributions`.
    """
    order = torch.argsort(pixel_ids, stable=True)
    pix, gid, a = pixel_ids[order], gauss_ids[order], alphas[order]
    counts = torch.bincount(pix, minlength=num_pixels)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(pix), device=pix.device) - starts[pix]
    log_t = torch.log1p(-a)
    csum = torch.cumsum(log_t, 0)
    seg_start = torch.where(starts[pix] > 0, csum[(starts[pix] - 1).clamp_min(0)], torch.zeros_like(csum))
    before = csum - log_t - seg_start  # exclusive sum within the pixel
    t = torch.exp(before)
    keep = (t * (1 - a)).detach() > 1e-4
    w = torch.where(keep, a * t, torch.zeros_like(a))
    kmax = max(int(counts.max()) if len(counts) else 1, 1)
    weights = alphas.new_zeros(num_pixels, kmax).index_put((pix, rank), w)
    ids = torch.zeros(num_pixels, kmax, dtype=torch.long, device=pix.device).index_put(
        (pix, rank), torch.where(keep, gid, 0)
    )
    valid = weights.detach() > 0
    return weights, torch.where(valid, ids, torch.zeros_like(ids)), valid


class GsplatIndices:
    """The two gsplat CUDA calls :func:`ordered_contributions_gsplat` makes (swappable in tests)."""

    def isect(self, means2d: Tensor, radii: Tensor, depths: Tensor, tile_size: int, tiles_x: int, tiles_y: int):
        from gsplat.cuda._wrapper import isect_offset_encode, isect_tiles

        _, isect_ids, flatten_ids = isect_tiles(means2d, radii, depths, tile_size, tiles_x, tiles_y)
        return isect_offset_encode(isect_ids, means2d.shape[0], tiles_x, tiles_y), flatten_ids

    def indices_in_range(self, start: int, end: int, transmittances: Tensor, means2d: Tensor, conics: Tensor,
                         opacities: Tensor, width: int, height: int, tile_size: int, isect_offsets: Tensor,
                         flatten_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        from gsplat.cuda._wrapper import rasterize_to_indices_in_range

        return rasterize_to_indices_in_range(start, end, transmittances, means2d, conics, opacities, width, height,
                                             tile_size, isect_offsets, flatten_ids)  # fmt: skip


def ordered_contributions_gsplat(
    gaussians: Gaussians,
    cameras: Cameras,
    settings: RasterSettings | None = None,
    batch: int = 8,
    backend: GsplatIndices | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`ordered_contributions` on CUDA through gsplat's ``rasterize_to_indices_in_range``.

    Projection is ffsplat's differentiable torch projection; gsplat sorts the tile intersections
    and, ``batch`` blocks of ``tile_size^2`` Gaussians of each tile's depth-sorted list at a time
    (gsplat's ``range_start`` / ``range_end`` count such blocks), returns the (Gaussian,
    pixel, image) triples whose alpha passes and whose pixel has not yet saturated (given the
    running transmittances, updated here after every batch). Alphas are recomputed in torch from
    the projected means, conics and opacities (``min(0.999, o exp(-sigma))``, kept when
    ``>= 1/255`` and ``sigma >= 0``), then :func:`ordered_from_pairs` gives the weights.

    Args: as :func:`ordered_contributions`; ``backend`` replaces the gsplat calls (tests).
    Returns: ``weights [P, K]``, ``gaussian_ids [P, K]`` int64, ``valid [P, K]`` (``P = V H W``).
    """
    s = settings or RasterSettings()
    backend = backend or GsplatIndices()
    if gaussians.means.dim() == 2:
        gaussians = Gaussians(gaussians.means[None], gaussians.scales[None], gaussians.rotations[None],
                              gaussians.opacities[None], gaussians.sh[None])  # fmt: skip
    cams = cameras if len(cameras.batch_shape) == 2 else cameras.reshape(1, -1)
    height, width = cams.image_size
    n = gaussians.num_gaussians
    proj = project_gaussians(
        gaussians.means, gaussians.rotations, gaussians.scales, gaussians.opacities,
        cams.w2c.to(gaussians.means.dtype), cams.intrinsics.to(gaussians.means.dtype), width, height,
        near_plane=s.near_plane, far_plane=s.far_plane, eps2d=s.eps2d,
        radius_clip=s.radius_clip, antialiased=s.rasterize_mode == "antialiased",
    )  # fmt: skip
    images = proj.means2d.shape[0]
    ts = s.tile_size
    tiles_x, tiles_y = -(-width // ts), -(-height // ts)
    means2d = proj.means2d.detach().float().contiguous()
    conics = proj.conics.detach().float().contiguous()
    opac = proj.opacities.detach().float().contiguous()
    offsets, flatten_ids = backend.isect(
        means2d, proj.radii.int().contiguous(), proj.depths.detach().float().contiguous(), ts, tiles_x, tiles_y
    )
    counts = torch.diff(torch.cat([offsets.flatten(), offsets.new_tensor([len(flatten_ids)])]))
    longest = int(counts.max()) if counts.numel() else 0
    blocks = -(-longest // (ts * ts))  # gsplat's ranges count blocks of tile_size^2 Gaussians
    trans = torch.ones(images, height, width, device=means2d.device, dtype=torch.float32)
    pairs_g, pairs_p = [], []
    for start in range(0, blocks, batch):
        g, pix, img = backend.indices_in_range(
            start, start + batch, trans, means2d, conics, opac, width, height, ts, offsets, flatten_ids
        )
        if not len(g):
            continue
        g, flat = g.long(), img.long() * (height * width) + pix.long()
        a = _pair_alphas(proj, g, img.long(), pix.long(), width).detach()
        # running transmittance per pixel (pairs of one pixel within a batch are in depth order)
        trans.mul_(
            torch.zeros(trans.numel(), device=trans.device)
            .index_add_(0, flat, torch.log1p(-a.float()))
            .exp()
            .view_as(trans)
        )
        pairs_g.append(g)
        pairs_p.append(flat)
    if not pairs_g:
        zeros = gaussians.means.new_zeros(images * height * width, 1)
        return zeros, zeros.long(), zeros.bool()
    g, flat = torch.cat(pairs_g), torch.cat(pairs_p)
    alphas = _pair_alphas(proj, g, flat // (height * width), flat % (height * width), width)  # differentiable
    ok = alphas >= 1 / 255
    weights, ids, valid = ordered_from_pairs(flat[ok], g[ok], alphas[ok], images * height * width)
    return weights, ids % max(n, 1), valid


def _pair_alphas(proj, g: Tensor, img: Tensor, pix: Tensor, width: int) -> Tensor:
    """``min(0.999, o exp(-sigma))`` (0 where ``sigma < 0``) of Gaussians ``g`` at pixel centres."""
    xy = torch.stack([pix % width, pix // width], -1).to(proj.means2d.dtype) + 0.5
    d = xy - proj.means2d[img, g]
    c = proj.conics[img, g]
    sigma = 0.5 * (c[:, 0] * d[:, 0] ** 2 + c[:, 2] * d[:, 1] ** 2) + c[:, 1] * d[:, 0] * d[:, 1]
    a = (proj.opacities[img, g] * torch.exp(-sigma)).clamp_max(0.999)
    return torch.where(sigma >= 0, a, torch.zeros_like(a))


def unit_teacher(teacher: Tensor, size: tuple[int, int]) -> Tensor:
    """Teacher map(s) ``[..., C, h, w]`` bilinearly resized to ``size`` and L2-normalised over C."""
    lead = teacher.shape[:-3]
    t = teacher.reshape(-1, *teacher.shape[-3:])
    t = t if t.dtype in (torch.float32, torch.float64) else t.float()
    if tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return F.normalize(t, dim=1).reshape(*lead, t.shape[1], *size)


VISIBLE_TOLERANCE = 0.05
"""A centre counts as visible in a view when its depth is within 5 % of the view's depth at its pixel."""


def sample_source_features(means: Tensor, cameras: Cameras, teacher: Tensor, depths: Tensor | None = None) -> Tensor:
    """Unit teacher feature at each point's projection in its source view (see module doc).

    Args:
        means: ``[N, 3]`` world points. cameras: ``[V]`` (or ``[1, V]``).
        teacher: ``[V, C, h, w]`` (or ``[1, V, C, h, w]``). depths: ``[V, H, W]`` (0: unknown;
            :func:`visible_depths` in :class:`FHGS`) or None (the first in-image view).
    Returns:
        ``[N, C]`` unit features.
    """
    cams = cameras.reshape(-1)
    teacher = teacher.reshape(-1, *teacher.shape[-3:])
    height, width = cams.image_size
    pts = means[None].to(cams.extrinsics.dtype).expand(cams.batch_shape[0], -1, -1)
    uv, z = project_points(pts, cams.intrinsics, cams.w2c)  # [V, N, 2], [V, N]
    inside = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)
    score = torch.zeros_like(z)
    if depths is not None:
        d = depths.reshape(-1, height, width)
        px = uv[..., 0].floor().long().clamp(0, width - 1)
        py = uv[..., 1].floor().long().clamp(0, height - 1)
        sensed = torch.gather(d.reshape(len(d), -1), 1, py * width + px)
        score = torch.where(sensed > 0, (z - sensed).abs() / z.abs().clamp_min(1e-8), torch.full_like(z, 1e3))
        score = torch.where(score < VISIBLE_TOLERANCE, torch.zeros_like(score), score)  # visible: first such view
    score = torch.where(inside, score, score + 1e6)  # prefer in-image views; else the least bad
    view = score.argmin(0)  # [N] (first minimum on ties)
    pt = uv.gather(0, view[None, :, None].expand(1, -1, 2))[0]  # [N, 2]
    grid = torch.stack([pt[:, 0] / width, pt[:, 1] / height], -1) * 2 - 1
    out = means.new_zeros(len(means), teacher.shape[1])
    for v in view.unique().tolist():
        sel = view == v
        g = grid[sel].to(teacher.dtype)[None, None]  # [1, 1, n, 2]
        sampled = F.grid_sample(teacher[v : v + 1], g, mode="bilinear", padding_mode="border", align_corners=False)
        out[sel] = sampled[0, :, 0].T.to(out.dtype)
    return F.normalize(out, dim=-1)


@torch.no_grad()
def visible_depths(init: Gaussians, cameras: Cameras) -> Tensor:
    """``[V, H, W]`` z-buffer of the initial Gaussians' centres in each view (the nearest centre that
    projects into each pixel; 0 where none does): depth from the model being fitted, never the
    sensor's. A centre is visible in a view when it is (within :data:`VISIBLE_TOLERANCE`) that
    nearest one at its pixel."""
    cams = cameras.reshape(-1)
    height, width = cams.image_size
    pts = init.means[None].to(cams.extrinsics.dtype).expand(cams.batch_shape[0], -1, -1)
    uv, z = project_points(pts, cams.intrinsics, cams.w2c)  # [V, N, 2], [V, N]
    inside = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)
    pix = uv[..., 1].floor().long().clamp(0, height - 1) * width + uv[..., 0].floor().long().clamp(0, width - 1)
    far = torch.full_like(z, float("inf"))
    buf = far.new_full((len(z), height * width), float("inf"))
    buf = buf.scatter_reduce(1, pix, torch.where(inside, z, far), reduce="amin")
    return torch.where(torch.isfinite(buf), buf, torch.zeros_like(buf)).reshape(len(z), height, width)


# ---------------------------------------------------------------------------- the method
class FHGS(SceneMethod):
    """FHGS on the shared 3DGS trainer (see the module docstring).

    Args:
        teacher: name of the SAM teacher in ``data.teacher`` (``[1, V, C, h, w]``).
        l1, l2: weights of ``L_gt`` and ``L_cf`` (unpublished; our choice 1.0 and 0.1).
        lam, k: the clustering gate's ``lambda`` and ``k`` (paper: 0.5 and 20).
    """

    name = "fhgs"
    KEY = "sam"

    def __init__(self, teacher: str = "sam", l1: float = 1.0, l2: float = 0.1, lam: float = 0.5, k: float = 20.0):
        super().__init__()
        self.teacher, self.l1, self.l2, self.lam, self.k = teacher, l1, l2, lam, k

    def per_gaussian(self, init: Gaussians, data: Views) -> dict[str, tuple[Tensor, float]]:
        if self.teacher not in data.teacher:
            raise KeyError(f"FHGS: teacher {self.teacher!r} not in data.teacher (have {list(data.teacher)})")
        depths = visible_depths(init, data.cameras[0])  # from the initial Gaussians, not the sensor (no oracle)
        feats = sample_source_features(init.means, data.cameras[0], data.teacher[self.teacher][0], depths)
        return {self.KEY: (feats, 0.0)}  # lr 0: frozen, but densified with the rest

    def frozen(self, trainer: SceneTrainer) -> Tensor:
        return trainer.params[self.KEY].detach()

    def render(self, trainer: SceneTrainer, cameras: Cameras) -> RenderOutput:
        g = trainer.gaussians(features={self.KEY: self.frozen(trainer)})
        bg = list(trainer.cfg.background)
        return render(g, cameras, features=[self.KEY], background=bg, settings=trainer.cfg.render)

    def target(self, trainer: SceneTrainer, views: slice | list[int] | int, size: tuple[int, int]) -> Tensor:
        """Unit teacher features ``[1, V', C, H, W]`` of training views at the render size."""
        t = trainer.data.teacher[self.teacher][:, views]
        return unit_teacher(t if t.dim() == 5 else t[:, None], size)

    def loss(self, trainer: SceneTrainer, out: RenderOutput, view: int, step: int) -> tuple[Tensor, dict[str, float]]:
        size = tuple(out.alpha.shape[-2:])
        fgt = self.target(trainer, view, size)  # [1, 1, C, H, W]
        l_gt = external_potential(out.alpha, out.features[self.KEY], fgt).mean()
        total, logs = self.l1 * l_gt, {"gt": l_gt.item()}
        if self.l2 > 0:
            contributions = ordered_contributions_gsplat if out.alpha.is_cuda else ordered_contributions
            w, ids, _ = contributions(trainer.gaussians(), trainer.view(view), trainer.cfg.render)
            fpix = fgt[0, 0].flatten(1).T  # [H*W, C]
            l_cf = internal_clustering_chunked(w, ids, self.frozen(trainer), fpix, self.lam, self.k).mean()
            total = total + self.l2 * l_cf
            logs["cf"] = l_cf.item()
        return total, logs

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def features(self, trainer: SceneTrainer, cameras: Cameras) -> Tensor:
        """Rendered frozen features ``[1, V, C, H, W]`` (``sum_i w_i f_i``, not normalised)."""
        return self.render(trainer, cameras).features[self.KEY]

    @torch.no_grad()
    def feature_metrics(self, trainer: SceneTrainer, views: Views | None = None) -> dict[str, float]:
        """``FE`` (mean per-pixel ``L_gt``) and ``FL1`` (mean ``|F - f_gt|``) over ``views``
        (default: the training views), one view at a time."""
        views = trainer.data if views is None else views
        fe, fl1 = [], []
        for v in range(views.images.shape[1]):
            out = self.render(trainer, views.cameras[:, v : v + 1])
            fgt = unit_teacher(views.teacher[self.teacher][:, v : v + 1], tuple(out.alpha.shape[-2:]))
            fe.append(external_potential(out.alpha, out.features[self.KEY], fgt).mean().item())
            fl1.append((out.features[self.KEY] - fgt).abs().mean().item())
        return {"FE": sum(fe) / len(fe), "FL1": sum(fl1) / len(fl1)}
