"""Monocular semantic conditioning (SemanticSplat sec. 3.2): SAM and/or LSeg features resized to
the cost-volume grid, concatenated with the cost volume and transformer features, fused by a light
2D U-Net into a latent map."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ffsplat.model.unet import UNet2D


@dataclass
class ConditioningConfig:
    """Which teacher features condition the network, and the fusion U-Net.

    Attributes:
        use_seg_teacher: condition on the segmentation teacher's features (SAM image-encoder
            features or a stand-in; ``conditions["sam"]``). Was ``use_sam``.
        use_lang_teacher: condition on the language teacher's features (LSeg pixel features or a
            stand-in; ``conditions["lseg"]``). Was ``use_lseg``.
        seg_teacher_dim: channels of the segmentation teacher's features (SAM: 256). Was ``sam_dim``.
        lang_teacher_dim: channels of the language teacher's features (LSeg: 512). Was ``lseg_dim``.
        latent_dim: channels of the fused latent map.
        unet_channels: widths of the fusion U-Net, finest first.
    """

    use_seg_teacher: bool = True
    use_lang_teacher: bool = True
    seg_teacher_dim: int = 256
    lang_teacher_dim: int = 512
    latent_dim: int = 64
    unet_channels: tuple[int, ...] = (64, 128)

    @property
    def names(self) -> list[str]:
        return [name for name, used in (("sam", self.use_seg_teacher), ("lseg", self.use_lang_teacher)) if used]


class ConditioningFusion(nn.Module):
    """``[cost, features, SAM?, LSeg?] -> latent [B, V, latent_dim, h, w]``.

    Teacher features are bilinearly resized to the cost-volume grid and L2-normalised per pixel
    (SAM's raw embedding norms vary widely across images).
    """

    def __init__(self, cfg: ConditioningConfig, cost_ch: int, feature_ch: int):
        super().__init__()
        self.cfg = cfg
        extra = (cfg.seg_teacher_dim if cfg.use_seg_teacher else 0) + (
            cfg.lang_teacher_dim if cfg.use_lang_teacher else 0
        )
        self.unet = UNet2D(cost_ch + feature_ch + extra, cfg.latent_dim, cfg.unet_channels)

    def forward(self, cost: Tensor, features: Tensor, conditions: dict[str, Tensor] | None) -> Tensor:
        b, v, _, h, w = features.shape
        parts = [cost, features]
        for name in self.cfg.names:
            if conditions is None or name not in conditions:
                key = "use_seg_teacher" if name == "sam" else "use_lang_teacher"
                raise KeyError(
                    f"model is configured with conditioning.{key}=true but no {name!r} features were "
                    f"given (conditions: {sorted(conditions or {})})"
                )
            expected = self.cfg.seg_teacher_dim if name == "sam" else self.cfg.lang_teacher_dim
            feat = conditions[name]
            if feat.shape[:3] != (b, v, expected):
                raise ValueError(
                    f"conditions[{name!r}] must be [B={b}, V={v}, {expected}, h, w], got {tuple(feat.shape)}"
                )
            flat = F.interpolate(
                rearrange(feat, "b v c h w -> (b v) c h w").to(features.dtype),
                size=(h, w),
                mode="bilinear",
                align_corners=False,
            )
            parts.append(rearrange(F.normalize(flat, dim=1), "(b v) c h w -> b v c h w", b=b))
        latent = self.unet(rearrange(torch.cat(parts, dim=2), "b v c h w -> (b v) c h w"))
        return rearrange(latent, "(b v) c h w -> b v c h w", b=b)
