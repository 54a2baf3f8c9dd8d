"""MVSplat's refinement U-Net (its trimmed latent-diffusion ``UNetModel`` with ``postnorm=True``,
``num_res_blocks=1``, ``num_head_channels=32`` and cross-view self-attention), same parameter tree.

Layout (``input_blocks`` / ``middle_block`` / ``output_blocks`` / ``out``):

* ``input_blocks.0.0``: 3x3 conv in -> width; then per level one :class:`ResBlock` (``.0``, plus
  an :class:`AttentionBlock` ``.1`` at downsample rates listed in ``attn_res``) and, except on the
  last level, a strided-conv :class:`Downsample`;
* ``middle_block.0`` / ``middle_block.2``: two ResBlocks (``.1`` is parameter-free);
* ``output_blocks``: per level (coarsest first) two ResBlocks on ``[x, skip]`` (+ attention), the
  second followed by a nearest x2 :class:`Upsample` + conv except on the finest level;
* ``out``: 3x3 conv, group norm, SiLU.

Attention attends over all positions of all ``V`` views of a scene (``[(B V), C, T] -> [B, C, V T]``).
Group norms run in float32 like the original.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class GroupNorm32(nn.GroupNorm):
    """Group norm computed in float32 (8 groups, or 4 when channels are not divisible by 8)."""

    def __init__(self, channels: int):
        super().__init__(8 if channels % 8 == 0 else 4, channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


class ResBlock(nn.Module):
    """Post-norm residual block: ``skip(x) + SiLU(GN(conv(SiLU(GN(conv(x))))))``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.in_layers = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), GroupNorm32(out_ch), nn.SiLU())
        self.out_layers = nn.Sequential(nn.Conv2d(out_ch, out_ch, 3, padding=1), GroupNorm32(out_ch), nn.SiLU())
        nn.init.zeros_(self.out_layers[1].weight)  # the block starts as its skip connection
        nn.init.zeros_(self.out_layers[1].bias)
        self.skip_connection = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, views: int) -> Tensor:
        return self.skip_connection(x) + self.out_layers(self.in_layers(x))


class AttentionBlock(nn.Module):
    """Post-norm multi-head self-attention over all views: ``x + GN(proj(attn(qkv(x))))``."""

    def __init__(self, channels: int, head_channels: int = 32):
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"U-Net attention needs channels ({channels}) divisible by {head_channels}")
        self.num_heads = channels // head_channels
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        self.norm = GroupNorm32(channels)
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x: Tensor, views: int) -> Tensor:
        n, c, h, w = x.shape
        flat = x.reshape(n, c, h * w)
        qkv = rearrange(self.qkv(flat), "(b v) n t -> b n (v t)", v=views)
        bs, width, length = qkv.shape
        ch = width // (3 * self.num_heads)
        q, k, v = qkv.reshape(bs * self.num_heads, 3 * ch, length).split(ch, dim=1)  # heads first, then q/k/v
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)
        a = rearrange(a, "b n (v t) -> (b v) n t", v=views)
        return (flat + self.norm(self.proj_out(a))).reshape(n, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, views: int) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, views: int) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Seq(nn.ModuleList):
    def forward(self, x: Tensor, views: int) -> Tensor:
        for layer in self:
            x = layer(x, views) if not isinstance(layer, nn.Conv2d | nn.Identity) else layer(x)
        return x


class RefineUNet(nn.Module):
    """``[(B V), in_ch, H, W] -> [(B V), out_ch, H, W]``; ``H`` and ``W`` divisible by
    ``2 ** (len(channel_mult) - 1)``."""

    def __init__(self, in_ch: int, width: int, out_ch: int, channel_mult: tuple[int, ...], attn_res: tuple[int, ...]):
        super().__init__()
        self.levels = len(channel_mult)
        self.input_blocks = nn.ModuleList([_Seq([nn.Conv2d(in_ch, width, 3, padding=1)])])
        chans, ch, ds = [width], width, 1
        for level, mult in enumerate(channel_mult):
            layers: list[nn.Module] = [ResBlock(ch, mult * width)]
            ch = mult * width
            if ds in attn_res:
                layers.append(AttentionBlock(ch))
            self.input_blocks.append(_Seq(layers))
            chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(_Seq([Downsample(ch)]))
                chans.append(ch)
                ds *= 2
        self.middle_block = _Seq([ResBlock(ch, ch), nn.Identity(), ResBlock(ch, ch)])
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(2):
                layers = [ResBlock(ch + chans.pop(), width * mult)]
                ch = width * mult
                if ds in attn_res:
                    layers.append(AttentionBlock(ch))
                if level and i == 1:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(_Seq(layers))
        self.out = nn.Sequential(nn.Conv2d(width, out_ch, 3, padding=1), GroupNorm32(out_ch), nn.SiLU())

    def forward(self, x: Tensor, views: int) -> Tensor:
        factor = 2 ** (self.levels - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"U-Net input {tuple(x.shape[-2:])} must be divisible by {factor} ({self.levels} levels)")
        skips = []
        for block in self.input_blocks:
            x = block(x, views)
            skips.append(x)
        x = self.middle_block(x, views)
        for block in self.output_blocks:
            x = block(torch.cat([x, skips.pop()], dim=1), views)
        return self.out(x)
