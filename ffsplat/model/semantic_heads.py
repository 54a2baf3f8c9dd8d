"""Semantic latent per Gaussian and the two semantic fields (SemanticSplat sec. 3.3-3.5).

* :class:`SemanticTrunk`: per-pixel latent ``f`` from [fused latent map (upsampled), normalised
  depth, view-aware refinement features].
* :class:`FieldHead`: ``f -> f^S`` (segmentation) or ``f -> f^L`` (language), low-dimensional
  per-Gaussian features that are *rendered*.
* :class:`FieldDecoder`: rendered low-dimensional maps -> teacher space (SAM 256-d, LSeg 512-d)
  with a small CNN, after resizing to the teacher's grid (Feature 3DGS's speed-up module); the
  reduction to a coarser grid is antialiased (area-weighted), so every rendered pixel gets gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


@dataclass
class SemanticConfig:
    """Semantic fields.

    Attributes:
        latent_dim: channels of the per-Gaussian semantic latent ``f``.
        seg_dim: rendered channels of the segmentation field ``f^S``.
        lang_dim: rendered channels of the language field ``f^L``.
        seg_teacher_dim: channels of the segmentation teacher's space, which the segmentation decoder
            expands to (SAM: 256). Was ``sam_dim``.
        lang_teacher_dim: channels of the language teacher's space, which the language decoder
            expands to (LSeg: 512). Was ``lseg_dim``.
        decoder_hidden: hidden channels of the expanding decoders.
    """

    latent_dim: int = 64
    seg_dim: int = 64
    lang_dim: int = 128
    seg_teacher_dim: int = 256
    lang_teacher_dim: int = 512
    decoder_hidden: int = 256


class SemanticTrunk(nn.Module):
    def __init__(self, in_ch: int, latent_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, latent_dim, 3, padding=1), nn.GELU(), nn.Conv2d(latent_dim, latent_dim, 3, padding=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[N, in_ch, H, W] -> [N, latent_dim, H, W]``."""
        return self.net(x)


class FieldHead(nn.Module):
    """Per-Gaussian ``f -> field`` (two 1x1 layers, i.e. an MLP on each Gaussian)."""

    def __init__(self, latent_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU(), nn.Linear(latent_dim, out_dim))

    def forward(self, f: Tensor) -> Tensor:
        """``[..., latent_dim] -> [..., out_dim]``."""
        return self.net(f)


class FieldDecoder(nn.Module):
    """Rendered ``[B, V, d, H, W]`` -> teacher space ``[B, V, out_dim, h', w']``."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_dim, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, out_dim, 1))

    def forward(self, rendered: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """``size``: the teacher grid ``(h', w')``; None keeps the rendered size."""
        b = rendered.shape[0]
        x = rearrange(rendered, "b v c h w -> (b v) c h w")
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = resize_field(x, size)
        return rearrange(self.net(x), "(b v) c h w -> b v c h w", b=b)


def resize_field(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ``[N, C, H, W]`` maps to ``size``: antialiased bilinear (a triangle filter as wide as
    the reduction, i.e. area-weighted) where the grid gets coarser, plain bilinear where it gets
    finer. Plain bilinear reduction by 4 would read only 4 of every 16 rendered pixels (75% of the
    field would get no gradient)."""
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
