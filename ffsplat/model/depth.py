"""Depth from the cost volume: a 2D U-Net over [cost volume, features, latent], softmax over the
candidates, soft-argmax in inverse depth, then upsampling to full resolution with a refinement
U-Net (MVSplat's depth predictor, SemanticSplat sec. 3.1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ffsplat.model.unet import UNet2D


@dataclass
class DepthConfig:
    """Depth head.

    Attributes:
        num_candidates: depth candidates D, uniform in inverse depth between near and far.
        unet_channels: widths of the cost-volume U-Net (1/4 resolution), finest first.
        refine_channels: widths of the full-resolution refinement U-Net, finest first.
        feature_proj: channels of the transformer features projected and upsampled for refinement.
        cost_volume_neighbors: match each view against its this many nearest context views
            (camera-centre distance) in the cost volume; 0 = all other views.
        cost_volume_depth_chunk: depth candidates warped at once in the cost volume (peak memory;
            results do not depend on it).
    """

    num_candidates: int = 128
    unet_channels: tuple[int, ...] = (128, 128, 128)
    refine_channels: tuple[int, ...] = (32, 64, 128)
    feature_proj: int = 64
    cost_volume_neighbors: int = 0
    cost_volume_depth_chunk: int = 16

    def __post_init__(self) -> None:
        if self.cost_volume_neighbors < 0:
            raise ValueError(
                f"depth.cost_volume_neighbors must be >= 0 (0 = all views), got {self.cost_volume_neighbors}"
            )
        if self.cost_volume_depth_chunk < 1:
            raise ValueError(f"depth.cost_volume_depth_chunk must be >= 1, got {self.cost_volume_depth_chunk}")


@dataclass
class DepthOutput:
    """Depth predictions for ``B x V`` views.

    Attributes:
        depth: ``[B, V, H, W]`` full-resolution z-depth.
        confidence: ``[B, V, H, W]`` max of the candidate distribution (upsampled).
        coarse_depth: ``[B, V, h, w]`` soft-argmax depth at the cost-volume resolution.
        probabilities: ``[B, V, D, h, w]`` softmax over candidates.
        refine_features: ``[B, V, R, H, W]`` full-resolution features of the refinement U-Net.
        projected_features: ``[B, V, P, H, W]`` transformer features projected and upsampled.
        disparity_range: ``([B], [B])`` = (1/far, 1/near) used for normalisation.
    """

    depth: Tensor
    confidence: Tensor
    coarse_depth: Tensor
    probabilities: Tensor
    refine_features: Tensor
    projected_features: Tensor
    disparity_range: tuple[Tensor, Tensor]


class DepthHead(nn.Module):
    """Cost volume + features + latent -> per-view full-resolution depth and refinement features."""

    def __init__(self, cfg: DepthConfig, feature_ch: int, latent_ch: int):
        super().__init__()
        d = cfg.num_candidates
        self.cost_unet = UNet2D(d + feature_ch + latent_ch, d, cfg.unet_channels)
        self.proj = nn.Conv2d(feature_ch, cfg.feature_proj, 1)
        # Refinement input: image (3) + projected features + normalised disparity (1) + confidence (1).
        self.refine = UNet2D(3 + cfg.feature_proj + 2, cfg.refine_channels[0], cfg.refine_channels)
        self.to_delta = nn.Conv2d(cfg.refine_channels[0], 1, 3, padding=1)
        nn.init.zeros_(self.to_delta.weight)
        nn.init.zeros_(self.to_delta.bias)
        self.refine_channels = cfg.refine_channels[0]

    def forward(
        self,
        images: Tensor,
        cost: Tensor,
        features: Tensor,
        latent: Tensor | None,
        candidates: Tensor,
        near: Tensor,
        far: Tensor,
    ) -> DepthOutput:
        """
        Args:
            images: ``[B, V, 3, H, W]``.
            cost: ``[B, V, D, h, w]``; features: ``[B, V, C, h, w]``; latent: ``[B, V, L, h, w]`` or None.
            candidates: ``[B, V, D]`` depths; near, far: ``[B]``.
        """
        b, v = images.shape[:2]
        height, width = images.shape[-2:]
        parts = [cost, features] + ([latent] if latent is not None else [])
        x = rearrange(torch.cat(parts, dim=2), "b v c h w -> (b v) c h w")
        # The U-Net may run in bf16 (autocast); the distribution and soft-argmax are float32.
        logits = rearrange(cost, "b v d h w -> (b v) d h w").float() + self.cost_unet(x).float()
        prob = torch.softmax(logits, dim=1)  # [(b v), D, h, w]
        disp_cand = rearrange(1.0 / candidates.float(), "b v d -> (b v) d 1 1")
        coarse_disp = (prob * disp_cand).sum(dim=1, keepdim=True)
        confidence = prob.max(dim=1, keepdim=True).values

        lo = rearrange(1.0 / far, "b -> b 1 1 1 1").expand(b, v, 1, 1, 1).reshape(b * v, 1, 1, 1)
        hi = rearrange(1.0 / near, "b -> b 1 1 1 1").expand(b, v, 1, 1, 1).reshape(b * v, 1, 1, 1)
        up = dict(size=(height, width), mode="bilinear", align_corners=False)
        disp_full = F.interpolate(coarse_disp, **up)
        conf_full = F.interpolate(confidence, **up)
        feat_full = F.interpolate(self.proj(rearrange(features, "b v c h w -> (b v) c h w")), **up)
        norm_disp = (disp_full - lo) / (hi - lo)
        refine = self.refine(
            torch.cat([rearrange(images, "b v c h w -> (b v) c h w"), feat_full, norm_disp, conf_full], 1)
        )
        # The residual is predicted in normalised disparity units (zero at initialisation).
        disp = torch.minimum(torch.maximum(disp_full + self.to_delta(refine).float() * (hi - lo), lo), hi)

        def split(t: Tensor) -> Tensor:
            return rearrange(t, "(b v) c h w -> b v c h w", b=b)

        return DepthOutput(
            depth=split(1.0 / disp)[:, :, 0],
            confidence=split(conf_full)[:, :, 0],
            coarse_depth=split(1.0 / coarse_disp)[:, :, 0],
            probabilities=split(prob),
            refine_features=split(refine),
            projected_features=split(feat_full),
            disparity_range=(1.0 / far, 1.0 / near),
        )
