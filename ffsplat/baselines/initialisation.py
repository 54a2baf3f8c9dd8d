"""Initial Gaussians for the per-scene baselines, from what a user of those methods would have.

Registry :data:`INITIALISATIONS` (name -> ``(views, predictor, cfg) -> (Gaussians, info)``):

* ``sfm`` (default): SfM points of the training views with their known poses -- COLMAP's SIFT
  (``pycolmap``) on each view, mutual-nearest-neighbour matching with Lowe's ratio test (COLMAP's
  ``max_ratio = 0.8``, ``max_distance = 0.7``) between every pair of views, linear (DLT) triangulation
  with the known cameras, kept when in front of both cameras, reprojection error ``<= 4`` px
  (COLMAP's ``tri_complete_max_reproj_error``) and triangulation angle ``>= 1.5`` deg (COLMAP's
  ``tri_min_angle``); colour from the first view's pixel. With fewer than ``sfm_min_points`` points
  the set is topped up to that count with ``random`` points (recorded in ``info``), as a user with a
  failed SfM would have to. The default count is Inria's random initialisation
  (:data:`PAPER_INITIAL_GAUSSIANS`): the two sparse views of a synthetic room give a few dozen SfM
  points, and a 64-point model is not the method the papers describe.
* ``random``: ``random_points`` (default 100,000, Inria's ``num_pts`` without SfM) points uniform in the training views' frustums between the clip's
  near and far planes (pixel and view uniform, depth uniform), coloured by their pixel.
* ``predicted``: the feed-forward model's depth: for every training view the model runs on that
  view and its nearest other training view (camera distance) and its rendered depth at the view
  is unprojected per pixel (every ``init_stride``-th), as :func:`gaussians_from_rgbd`.
* ``sensor`` (**oracle**): the training views' sensor depth unprojected per pixel; on synthetic
  rooms this is exact geometry, so rows using it are marked oracle.

Point sets get Inria's scale rule: the root of the mean squared distance to the 3 nearest other
points, isotropic, identity rotation; opacity ``init_opacity``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ffsplat.core.geometry import project_points
from ffsplat.core.sh import num_sh_bases, rgb_to_sh_dc
from ffsplat.core.types import Gaussians, Views
from ffsplat.render.init import gaussians_from_rgbd

PAPER_INITIAL_GAUSSIANS = 100_000
"""Initial Gaussians of Inria 3DGS without SfM points (``dataset_readers.py``: ``num_pts = 100_000``
random points; gsplat's ``init_num_pts``), the trainer every baseline here builds on (Feature 3DGS,
semantic logits, FHGS, Proto-SaGa). No baseline's default setup starts with fewer."""

DEFAULT_INIT = "sfm"
"""The baselines' default initialisation (SfM topped up with random points to
:data:`PAPER_INITIAL_GAUSSIANS`)."""

ORACLE_INITIALISATIONS = frozenset({"sensor"})
"""Initialisations that use ground-truth geometry (their rows are marked oracle)."""


@dataclass
class InitConfig:
    """Initialisation settings.

    Attributes:
        sfm_min_points: fewer SfM points are topped up to this count with random frustum points
            (recorded in ``info``).
        random_points: number of points of the ``random`` initialisation.
        match_ratio, match_max_distance: Lowe's ratio and the descriptor distance limit (COLMAP 0.8, 0.7).
        max_reproj_error: pixels (COLMAP ``tri_complete_max_reproj_error`` 4).
        min_tri_angle: degrees (COLMAP ``tri_min_angle`` 1.5).
        opacity: initial opacity; sh_degree: SH degree of the Gaussians; stride: pixel stride of
            the per-pixel (``predicted`` / ``sensor``) initialisations.
        seed: RNG seed of the random points.
    """

    sfm_min_points: int = PAPER_INITIAL_GAUSSIANS
    random_points: int = PAPER_INITIAL_GAUSSIANS
    match_ratio: float = 0.8
    match_max_distance: float = 0.7
    max_reproj_error: float = 4.0
    min_tri_angle: float = 1.5
    opacity: float = 0.1
    sh_degree: int = 3
    stride: int = 1
    seed: int = 0


# ------------------------------------------------------------------------------ point sets
def knn_scales(points: Tensor, k: int = 3, max_elements: int = 1 << 24) -> Tensor:
    """Inria's initial scale: ``sqrt(mean of the squared distances to the k nearest other points)``
    (``[N, 3]`` -> ``[N]``, at least 1e-7; a lone point gets 0.01). Exact: a k-d tree (SciPy) for
    more than ``max_elements ** 0.5`` points (100k points in about a second, where Inria uses its
    CUDA simple-knn), else the distance matrix."""
    n = len(points)
    if n <= 1:
        return points.new_full((n,), 0.01)
    kk = min(k, n - 1)
    if n * n > max_elements:
        from scipy.spatial import cKDTree

        pts = points.detach().double().cpu().numpy()
        dist, _ = cKDTree(pts).query(pts, k=kk + 1)  # the first neighbour is the point itself
        d2 = torch.from_numpy(dist[:, 1:]).square()
        return d2.mean(1).sqrt().to(points).clamp_min(1e-7)
    d2 = torch.cdist(points, points).square()
    d2[torch.arange(n), torch.arange(n)] = float("inf")
    return d2.topk(kk, dim=1, largest=False).values.mean(1).sqrt().clamp_min(1e-7)


def gaussians_from_points(points: Tensor, colors: Tensor, opacity: float = 0.1, sh_degree: int = 3) -> Gaussians:
    """Unbatched Gaussians at ``points [N, 3]`` coloured ``colors [N, 3]`` (Inria point-cloud init)."""
    n = len(points)
    sh = points.new_zeros(n, num_sh_bases(sh_degree), 3)
    sh[:, 0] = rgb_to_sh_dc(colors.clamp(0, 1))
    quats = points.new_zeros(n, 4)
    quats[:, 0] = 1
    return Gaussians(means=points, scales=knn_scales(points)[:, None].expand(n, 3).clone(), rotations=quats,
                     opacities=points.new_full((n,), opacity), sh=sh)  # fmt: skip


def _pixel_colors(images: Tensor, view: Tensor, uv: Tensor) -> Tensor:
    """``images [V, 3, H, W]``, per point view ``[N]`` and pixel ``(x, y)`` ``[N, 2]`` -> ``[N, 3]``."""
    h, w = images.shape[-2:]
    x = uv[:, 0].floor().long().clamp(0, w - 1)
    y = uv[:, 1].floor().long().clamp(0, h - 1)
    return images[view, :, y, x]


def random_frustum_points(views: Views, count: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``count`` points uniform in the views' frustums between the scene's near and far planes.

    Args: ``views`` of one scene (batch ``[1, V]``). Returns: points ``[count, 3]``, colours ``[count, 3]``.
    """
    gen = torch.Generator().manual_seed(seed)
    v = views.images.shape[1]
    h, w = views.images.shape[-2:]
    view = torch.randint(v, (count,), generator=gen)
    uv = torch.rand(count, 2, generator=gen) * torch.tensor([w, h])
    near, far = float(views.near.reshape(-1)[0]), float(views.far.reshape(-1)[0])
    z = near + torch.rand(count, generator=gen) * (far - near)
    device = views.images.device
    view, uv, z = view.to(device), uv.to(device), z.to(device)
    cams = views.cameras[0]
    k_inv = torch.linalg.inv(cams.intrinsics[view].double())
    rays = (k_inv @ torch.cat([uv.double(), torch.ones_like(z.double())[:, None]], -1)[..., None])[..., 0]
    cam_pts = rays * z.double()[:, None]
    c2w = cams.extrinsics[view].double()
    world = (c2w[:, :3, :3] @ cam_pts[..., None])[..., 0] + c2w[:, :3, 3]
    return world.to(views.images.dtype), _pixel_colors(views.images[0], view, uv)


def _sift(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP SIFT on one ``[H, W]`` float32 grey image: keypoints ``[K, 2]`` (x, y) and unit descriptors."""
    import pycolmap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        sift = pycolmap.Sift()
    kp, desc = sift.extract(np.ascontiguousarray(image, dtype=np.float32))
    desc = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
    return kp[:, :2].astype(np.float64), desc.astype(np.float32)


def match_descriptors(d1: np.ndarray, d2: np.ndarray, ratio: float = 0.8, max_distance: float = 0.7) -> np.ndarray:
    """Mutual nearest neighbours passing Lowe's ratio test and the distance limit (COLMAP's
    ``max_ratio`` / ``max_distance`` on unit descriptors). Returns ``[M, 2]`` index pairs."""
    if len(d1) < 2 or len(d2) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    dist = np.sqrt(np.maximum(2 - 2 * d1 @ d2.T, 0))
    best12 = np.argsort(dist, axis=1)[:, :2]
    best21 = dist.argmin(0)
    i = np.arange(len(d1))
    first, second = dist[i, best12[:, 0]], dist[i, best12[:, 1]]
    keep = (first < ratio * second) & (first <= max_distance) & (best21[best12[:, 0]] == i)
    return np.stack([i[keep], best12[keep, 0]], 1)


def triangulate(uv1: Tensor, uv2: Tensor, p1: Tensor, p2: Tensor) -> Tensor:
    """Linear (DLT) triangulation of ``[M, 2]`` pixel pairs with ``[3, 4]`` projection matrices -> ``[M, 3]``."""
    rows = torch.stack([uv1[:, :1] * p1[2] - p1[0], uv1[:, 1:] * p1[2] - p1[1],
                        uv2[:, :1] * p2[2] - p2[0], uv2[:, 1:] * p2[2] - p2[1]], 1)  # [M, 4, 4]  # fmt: skip
    x = torch.linalg.svd(rows).Vh[:, -1]
    return x[:, :3] / x[:, 3:]


def sfm_points(views: Views, cfg: InitConfig) -> tuple[Tensor, Tensor]:
    """Triangulated SIFT matches of every pair of the views with their known cameras (module doc).

    Returns: points ``[N, 3]`` and colours ``[N, 3]`` (possibly ``N = 0``).
    """
    images = views.images[0]
    cams = views.cameras[0]
    grey = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).detach().cpu().numpy()
    feats = [_sift(g) for g in grey]
    k = cams.intrinsics.double().cpu()
    w2c = cams.w2c.double().cpu()
    proj = k @ w2c[:, :3, :]  # [V, 3, 4]
    centers = cams.centers.double().cpu()
    points, colors = [], []
    for a in range(len(feats)):
        for b in range(a + 1, len(feats)):
            m = match_descriptors(feats[a][1], feats[b][1], cfg.match_ratio, cfg.match_max_distance)
            if not len(m):
                continue
            uv1 = torch.from_numpy(feats[a][0][m[:, 0]])
            uv2 = torch.from_numpy(feats[b][0][m[:, 1]])
            x = triangulate(uv1, uv2, proj[a], proj[b])
            ok = torch.ones(len(x), dtype=torch.bool)
            for view, uv in ((a, uv1), (b, uv2)):
                pix, z = project_points(x[None], k[view : view + 1], w2c[view : view + 1])
                ok &= (z[0] > 0) & ((pix[0] - uv).norm(dim=-1) <= cfg.max_reproj_error)
            r1, r2 = x - centers[a], x - centers[b]
            cos = (r1 * r2).sum(-1) / (r1.norm(dim=-1) * r2.norm(dim=-1)).clamp_min(1e-12)
            ok &= cos.clamp(-1, 1).arccos() >= math.radians(cfg.min_tri_angle)
            points.append(x[ok])
            colors.append(_pixel_colors(images.cpu(), torch.full((int(ok.sum()),), a), uv1[ok].float()))
    device, dtype = views.images.device, views.images.dtype
    if not points:
        return torch.zeros(0, 3, device=device, dtype=dtype), torch.zeros(0, 3, device=device, dtype=dtype)
    return torch.cat(points).to(device, dtype), torch.cat(colors).to(device, dtype)


# ------------------------------------------------------------------------------ registry
InitFn = Callable[[Views, object, InitConfig], tuple[Gaussians, dict]]


def _per_pixel(views: Views, depths: Tensor, cfg: InitConfig) -> Gaussians:
    g = gaussians_from_rgbd(views.images, depths, views.cameras, opacity=cfg.opacity, sh_degree=cfg.sh_degree)[0]
    keep = torch.zeros(g.num_gaussians, dtype=torch.bool, device=g.means.device)
    keep[:: cfg.stride] = True
    return g.select(keep & (g.opacities > 0))


def init_sensor(views: Views, predictor, cfg: InitConfig) -> tuple[Gaussians, dict]:
    if views.depths is None:
        raise ValueError("init 'sensor': the training views have no sensor depth")
    g = _per_pixel(views, views.depths, cfg)
    return g, {"init": "sensor", "init_points": g.num_gaussians}


def init_random(views: Views, predictor, cfg: InitConfig) -> tuple[Gaussians, dict]:
    pts, rgb = random_frustum_points(views, cfg.random_points, cfg.seed)
    return gaussians_from_points(pts, rgb, cfg.opacity, cfg.sh_degree), {"init": "random", "init_points": len(pts)}


def init_sfm(views: Views, predictor, cfg: InitConfig) -> tuple[Gaussians, dict]:
    pts, rgb = sfm_points(views, cfg)
    info = {"init": "sfm", "init_points": len(pts), "sfm_points": len(pts)}
    if len(pts) < cfg.sfm_min_points:
        extra, extra_rgb = random_frustum_points(views, cfg.sfm_min_points - len(pts), cfg.seed)
        pts, rgb = torch.cat([pts, extra]), torch.cat([rgb, extra_rgb])
        info.update(init="sfm+random", init_points=len(pts))
    return gaussians_from_points(pts, rgb, cfg.opacity, cfg.sh_degree), info


@torch.no_grad()
def predicted_depths(views: Views, predictor) -> Tensor:
    """``[1, V, H, W]`` depth of each training view rendered from the feed-forward model run on the
    view and its nearest other view (the model's own 2-view input)."""
    from ffsplat.render.renderer import render

    centers = views.cameras.centers[0]
    v = views.images.shape[1]
    conditioned = bool(predictor.cfg.model.conditioning.names)
    depths = []
    for i in range(v):
        dist = (centers - centers[i]).norm(dim=-1)
        dist[i] = float("inf")
        j = int(dist.argmin()) if v > 1 else i
        pair = select_views(views, [i, j])
        out = predictor(pair, predictor.teacher_maps(pair) if conditioned else None)
        depths.append(render(out.gaussians, views.cameras[:, i : i + 1]).depth[0, 0])
    return torch.stack(depths)[None]


def init_predicted(views: Views, predictor, cfg: InitConfig) -> tuple[Gaussians, dict]:
    if predictor is None:
        raise ValueError("init 'predicted' needs the feed-forward model (a predictor)")
    depths = predicted_depths(views, predictor)
    depths = torch.where(torch.isfinite(depths), depths, torch.zeros_like(depths))
    g = _per_pixel(views, depths, cfg)
    return g, {"init": "predicted", "init_points": g.num_gaussians}


INITIALISATIONS: dict[str, InitFn] = {
    "sfm": init_sfm,
    "random": init_random,
    "predicted": init_predicted,
    "sensor": init_sensor,
}
"""Initialisation name -> function ``(views [1, V], predictor or None, cfg) -> (unbatched Gaussians, info)``."""


def initial_gaussians(name: str, views: Views, predictor=None, cfg: InitConfig | None = None) -> tuple[Gaussians, dict]:
    """The initial Gaussians of ``name`` (see :data:`INITIALISATIONS`) and an info dict
    (``init``, ``init_points``, ``oracle``)."""
    if name not in INITIALISATIONS:
        raise ValueError(f"unknown initialisation {name!r}; choose one of {sorted(INITIALISATIONS)}")
    g, info = INITIALISATIONS[name](views, predictor, cfg or InitConfig())
    info["oracle"] = name in ORACLE_INITIALISATIONS
    return g, info


def select_views(views: Views, idx: list[int]) -> Views:
    """The views ``idx`` of a ``[B, V]`` Views (every per-view field, teacher maps included)."""
    from dataclasses import replace

    index = torch.as_tensor(idx, device=views.images.device)

    def pick(t):
        return None if t is None else t.index_select(1, index.to(t.device))

    return replace(
        views, images=pick(views.images), cameras=views.cameras[:, idx], depths=pick(views.depths),
        labels=pick(views.labels), instances=pick(views.instances), teacher={k: pick(t) for k, t in views.teacher.items()},
        frame_ids=pick(views.frame_ids),
    )  # fmt: skip
