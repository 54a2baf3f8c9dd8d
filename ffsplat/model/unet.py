"""A light 2D U-Net (conv blocks with GroupNorm + SiLU, strided-conv down, bilinear up, skips)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convs with GroupNorm and SiLU."""
    groups = max(1, min(8, cout // 4))
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.GroupNorm(groups, cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(groups, cout),
        nn.SiLU(),
    )


class UNet2D(nn.Module):
    """``[N, in_ch, H, W] -> [N, out_ch, H, W]`` for any H, W (padded to a multiple of ``2^levels``).

    Args:
        in_ch, out_ch: input / output channels.
        channels: width of each level, finest first (``len(channels) - 1`` downsamplings).
    """

    def __init__(self, in_ch: int, out_ch: int, channels: tuple[int, ...] = (64, 128, 256)):
        super().__init__()
        self.inp = conv_block(in_ch, channels[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), conv_block(b, b))
            for a, b in zip(channels, channels[1:])
        )
        self.up = nn.ModuleList(conv_block(b + a, a) for a, b in zip(channels[:-1], channels[1:]))
        self.out = nn.Conv2d(channels[0], out_ch, 1)
        self.multiple = 2 ** (len(channels) - 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        x = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        skips = [self.inp(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in reversed(self.up):
            skip = skips.pop()
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = up(torch.cat([y, skip], dim=1))
        return self.out(y)[..., :h, :w]
