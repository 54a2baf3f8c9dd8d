"""MVSplat's multi-view depth predictor (``DepthPredictorMultiView``), same parameter tree:
plane-sweep correlation cost volume, correlation-refinement U-Net with a residual 1x1 projection,
softmax depth regressor, CNN-feature upsampler and full-resolution depth-refinement U-Net, and the
convolutional heads for raw Gaussian parameters and the disparity residual + density.

Conventions, as MVSplat: intrinsics normalised by image width/height; the cost-volume warp treats
feature-map pixel ``(i, j)`` as coordinate ``(j, i)`` (``align_corners=True`` sampling);
candidates uniform in disparity from ``1/far`` to ``1/near``. ``B`` scenes, ``V`` views, ``D``
candidates, ``C`` feature channels, ``h x w = H/4 x W/4``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ffsplat.core.geometry import float32_geometry
from ffsplat.model.mvsplat.config import MVSplatConfig
from ffsplat.model.mvsplat.unet import RefineUNet


def relative_poses(extrinsics: Tensor) -> list[Tensor]:
    """For each offset ``o = 1..V-1``: ``[B, V, 4, 4]`` transforms from view ``i`` to view
    ``(i + o) % V`` (``inv(c2w[(i+o)%V]) @ c2w[i]``), computed as MVSplat does (for ``V = 2`` the
    second transform is the inverse of the first)."""
    v = extrinsics.shape[1]
    e = extrinsics.detach()
    if v == 2:
        pose = e[:, 1].inverse() @ e[:, 0]
        return [torch.stack([pose, pose.inverse()], dim=1)]
    out = []
    for o in range(1, v):
        order = [(i + o) % v for i in range(v)]
        out.append(e[:, order].inverse() @ e)
    return out


def warp_features(features: Tensor, intrinsics: Tensor, pose: Tensor, depth: Tensor) -> Tensor:
    """Sample ``features`` (of the other view) at the reprojection of every pixel and candidate depth.

    Args:
        features: ``[N, C, h, w]``; intrinsics: ``[N, 3, 3]`` in feature-map pixels;
        pose: ``[N, 4, 4]`` reference -> other camera; depth: ``[N, D]``.
    Returns:
        ``[N, C, D, h, w]`` (zeros outside the other view).
    """
    n, c, h, w = features.shape
    d = depth.shape[1]
    with torch.no_grad(), float32_geometry(features.device):  # the warp grid in float32, also under autocast
        intrinsics, pose, depth = intrinsics.float(), pose.float(), depth.float()
        ys, xs = torch.meshgrid(
            torch.arange(h, device=features.device), torch.arange(w, device=features.device), indexing="ij"
        )
        grid = torch.stack([xs, ys, torch.ones_like(xs)], dim=0).to(torch.float32).reshape(1, 3, h * w)
        rays = torch.inverse(intrinsics) @ grid  # [N, 3, hw]
        points = (pose[:, :3, :3] @ rays)[:, :, None, :] * depth[:, None, :, None] + pose[
            :, :3, 3:, None
        ]  # [N, 3, D, hw]
        pix = (intrinsics @ points.reshape(n, 3, -1)).reshape(n, 3, d, h * w)
        xy = pix[:, :2] / pix[:, 2:].clamp(min=1e-3)
        grid = torch.stack([2 * xy[:, 0] / (w - 1) - 1, 2 * xy[:, 1] / (h - 1) - 1], dim=-1)  # [N, D, hw, 2]
    warped = F.grid_sample(  # float32, as CUDA autocast runs grid_sample: a bf16 grid would move samples by ~0.05 px
        features.float(),
        grid.view(n, d * h, w, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )
    return warped.view(n, c, d, h, w)


def disparity_candidates(near: Tensor, far: Tensor, count: int) -> Tensor:
    """``[B, V, D]`` float32 candidates uniform in disparity from ``1/far`` to ``1/near`` (MVSplat's),
    computed with autocast disabled whatever dtype the features have."""
    with float32_geometry(near.device):
        lo, hi = 1.0 / far.float(), 1.0 / near.float()
        steps = torch.linspace(0.0, 1.0, count, device=near.device, dtype=torch.float32)
        return lo[..., None] + steps * (hi - lo)[..., None]


@dataclass
class MVSplatDepth:
    """Outputs of :class:`DepthPredictor` (``N = B * V``, view index fastest).

    Attributes:
        depth: ``[N, 1, H, W]`` the network's depth (MVSplat uses it as distance along the pixel ray).
        density: ``[N, 1, H, W]`` sigmoid density (-> opacity).
        raw_gaussians: ``[N, 2 + 7 + 3 K, H, W]`` offset, scale, rotation and SH features.
        pdf: ``[N, D, h, w]`` softmax over candidates; pdf_max: ``[N, 1, H, W]`` (nearest upsampled).
        coarse_disparity: ``[N, 1, h, w]``; refine_features: ``[N, F, H, W]``;
        upsampled_features: ``[N, C, H, W]``.
    """

    depth: Tensor
    density: Tensor
    raw_gaussians: Tensor
    pdf: Tensor
    pdf_max: Tensor
    coarse_disparity: Tensor
    refine_features: Tensor
    upsampled_features: Tensor


class DepthPredictor(nn.Module):
    """Cost volume -> depth, density and raw Gaussian parameters (MVSplat's module names)."""

    def __init__(self, cfg: MVSplatConfig, raw_channels: int):
        super().__init__()
        c, d = cfg.d_feature, cfg.num_depth_candidates
        self.num_candidates = d
        in_ch = d + c
        width = cfg.costvolume_unet_feat_dim
        self.corr_refine_net = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, 1, 1),
            nn.GroupNorm(8, width),
            nn.GELU(),
            RefineUNet(
                width, width, width, tuple(cfg.costvolume_unet_channel_mult), tuple(cfg.costvolume_unet_attn_res)
            ),
            nn.Conv2d(width, d, 3, 1, 1),
        )
        self.regressor_residual = nn.Conv2d(in_ch, d, 1)
        self.depth_head_lowres = nn.Sequential(nn.Conv2d(d, 2 * d, 3, 1, 1), nn.GELU(), nn.Conv2d(2 * d, d, 3, 1, 1))
        self.upsampler = nn.Sequential(
            nn.Conv2d(2 * c, c, 3, 1, 1), nn.Upsample(scale_factor=4, mode="bilinear", align_corners=True), nn.GELU()
        )
        f = cfg.depth_unet_feat_dim
        self.proj_feature = nn.Conv2d(c, f, 3, 1, 1)
        self.refine_unet = nn.Sequential(
            nn.Conv2d(3 + f + 2, f, 3, 1, 1),
            nn.GroupNorm(4, f),
            nn.GELU(),
            RefineUNet(f, f, f, tuple(cfg.depth_unet_channel_mult), tuple(cfg.depth_unet_attn_res)),
        )
        self.to_gaussians = nn.Sequential(
            nn.Conv2d(f + 3 + c, 2 * raw_channels, 3, 1, 1),
            nn.GELU(),
            nn.Conv2d(2 * raw_channels, raw_channels, 3, 1, 1),
        )
        self.to_disparity = nn.Sequential(nn.Conv2d(f, 2 * f, 3, 1, 1), nn.GELU(), nn.Conv2d(2 * f, 2, 3, 1, 1))

    def cost_volume(self, features: Tensor, intrinsics: Tensor, extrinsics: Tensor, disparities: Tensor) -> Tensor:
        """``[B, V, C, h, w]`` -> ``[(B V), D + C, h, w]``: correlation with every other view averaged
        over the other views, concatenated with the view's own features."""
        v, c, h, w = features.shape[1:]
        with float32_geometry(features.device):  # camera geometry in float32 (also under autocast)
            k = intrinsics[..., :3, :3].float().clone()
            k[..., 0, :] *= float(w)
            k[..., 1, :] *= float(h)
            k = rearrange(k, "b v i j -> (b v) i j")
            depth = rearrange(1.0 / disparities.float(), "b v d -> (b v) d")
            poses = relative_poses(extrinsics.float())
        ref = rearrange(features, "b v c h w -> (b v) c h w")
        corrs = []
        for o, pose in enumerate(poses, start=1):
            order = [(i + o) % v for i in range(v)]
            other = rearrange(features[:, order], "b v c h w -> (b v) c h w")
            warped = warp_features(other, k, rearrange(pose.float(), "b v i j -> (b v) i j"), depth)
            corrs.append((ref[:, :, None] * warped).sum(1) / c**0.5)
        return torch.cat([torch.stack(corrs, 0).mean(0), ref], dim=1)

    def forward(
        self, features: Tensor, cnn_features: Tensor, images: Tensor, intrinsics: Tensor, extrinsics: Tensor,
        near: Tensor, far: Tensor, injection: Tensor | None = None, cost_volume: Tensor | None = None,
    ) -> MVSplatDepth:  # fmt: skip
        """
        Args:
            features, cnn_features: ``[B, V, C, h, w]``; images: ``[B, V, 3, H, W]`` in [0, 1];
            intrinsics: ``[B, V, 3, 3]`` normalised; extrinsics: ``[B, V, 4, 4]`` c2w;
            near, far: ``[B, V]``; injection: ``[(B V), width, h, w]`` added after the first conv
                of the correlation-refinement net (semantic conditioning), or None;
            cost_volume: :meth:`cost_volume` of these inputs if already computed.
        """
        v = features.shape[1]
        disparities = disparity_candidates(near, far, self.num_candidates)  # [B, V, D] float32
        lo, hi = 1.0 / far.float(), 1.0 / near.float()
        cv_in = (
            cost_volume if cost_volume is not None else self.cost_volume(features, intrinsics, extrinsics, disparities)
        )

        x = self.corr_refine_net[0](cv_in)
        if injection is not None:
            x = x + injection
        x = self.corr_refine_net[2](self.corr_refine_net[1](x))
        x = self.corr_refine_net[4](self.corr_refine_net[3](x, v))
        correlation = x + self.regressor_residual(cv_in)

        pdf = torch.softmax(self.depth_head_lowres(correlation).float(), dim=1)  # float32, as CUDA autocast gives
        disp_flat = rearrange(disparities, "b v d -> (b v) d 1 1")
        coarse = (disp_flat * pdf).sum(1, keepdim=True)  # float32 soft-argmax over float32 candidates
        pdf_max = F.interpolate(pdf.max(1, keepdim=True).values, scale_factor=4)
        full = F.interpolate(coarse, scale_factor=4, mode="bilinear", align_corners=True)

        flat = lambda t: rearrange(t, "b v ... -> (b v) ...")
        ups = self.upsampler(torch.cat([flat(features), flat(cnn_features)], dim=1))
        refine = self.refine_unet[2](
            self.refine_unet[1](
                self.refine_unet[0](torch.cat([flat(images), self.proj_feature(ups), full, pdf_max], 1))
            )
        )
        refine = self.refine_unet[3](refine, v)
        raw = self.to_gaussians(torch.cat([refine, flat(images), ups], dim=1))
        delta, density = self.to_disparity(refine).float().split(1, dim=1)
        fine = torch.maximum(torch.minimum(full + delta, flat(hi)[:, None, None, None]), flat(lo)[:, None, None, None])
        return MVSplatDepth(
            depth=1.0 / fine, density=torch.sigmoid(density), raw_gaussians=raw, pdf=pdf, pdf_max=pdf_max,
            coarse_disparity=coarse, refine_features=refine, upsampled_features=ups,
        )  # fmt: skip
