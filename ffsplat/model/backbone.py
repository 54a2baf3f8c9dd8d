"""Multi-view feature backbone (SemanticSplat sec. 3.1, following MVSplat / UniMatch).

A residual CNN maps every view to 1/4 resolution; a 1x1 projection and a 2D sine positional
encoding feed a transformer whose layers do (1) window self-attention within each view,
(2) window cross-attention from each view to the same window of *all other* views and (3) an FFN.
Windows follow UniMatch: the (padded) feature map is split into ``splits x splits`` windows, and
odd layers shift them by half a window (Swin), with a mask that keeps tokens from attending across
the wrap-around seam. Nothing depends on a view index, so the backbone is permutation-equivariant
over views and works for any number of views (``V == 1``: cross-attention is skipped).

Shapes: ``B`` batch, ``V`` views, ``h, w = ceil(H / 4), ceil(W / 4)`` feature size,
``nW = splits ** 2`` windows, ``T`` tokens per window.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BackboneConfig:
    """Configuration of :class:`MultiViewBackbone`.

    Attributes:
        cnn_channels: channels of the CNN stem followed by one stage per entry (two residual blocks
            each). The stem (7x7 conv) and the second stage have stride 2, so the output stride is
            4; at least two entries. ``cnn_channels[-1]`` is the channel count of the returned CNN
            features (``MultiViewBackbone.cnn_out_channels``).
        d_model: transformer width, i.e. channels of the returned transformer features; a multiple
            of 4 (sine encoding) and of ``num_heads``.
        num_layers: transformer layers, each window self-attention + window cross-attention to the
            other views + FFN (pre-norm, residual). Odd layers (1, 3, ...) use shifted windows.
        num_heads: attention heads (self- and cross-attention).
        ffn_expansion: FFN hidden width = ``ffn_expansion * d_model``.
        window_splits: the padded feature map is split into ``window_splits x window_splits``
            windows (UniMatch's ``attn_splits``); 1 means global attention and no shifting.
    """

    cnn_channels: tuple[int, ...] = (64, 96, 128)
    d_model: int = 128
    num_layers: int = 6
    num_heads: int = 1
    ffn_expansion: int = 4
    window_splits: int = 2

    def __post_init__(self) -> None:
        if len(self.cnn_channels) < 2:
            raise ValueError("cnn_channels needs at least two entries (stem + stride-2 stage)")
        if self.d_model % 4 or self.d_model % self.num_heads:
            raise ValueError("d_model must be a multiple of 4 and of num_heads")
        if self.window_splits < 1:
            raise ValueError("window_splits must be >= 1")


# ---------------------------------------------------------------------------------------------
# CNN


def _norm(channels: int) -> nn.Module:
    # Per-sample, per-view statistics (no BatchNorm: batch statistics would couple views).
    return nn.InstanceNorm2d(channels, affine=True)


class ResidualBlock(nn.Module):
    """``relu(skip(x) + norm(conv(relu(norm(conv(x))))))``; ``[N, cin, H, W] -> [N, cout, H/s, W/s]``."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = _norm(cout)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.skip(x) + self.norm2(self.conv2(y)))


class CNNEncoder(nn.Module):
    """Residual encoder to 1/4 resolution: ``[N, 3, H, W] -> [N, channels[-1], ceil(H/4), ceil(W/4)]``."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels[0], 7, 2, 3, bias=False), _norm(channels[0]), nn.ReLU())
        stages, cin = [], channels[0]
        for i, c in enumerate(channels):
            stages += [ResidualBlock(cin, c, stride=2 if i == 1 else 1), ResidualBlock(c, c)]
            cin = c
        self.stages = nn.Sequential(*stages)

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))


# ---------------------------------------------------------------------------------------------
# Windows, masks, positional encoding


def sine_positional_encoding(
    h: int, w: int, dim: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """DETR-style normalised 2D sine encoding, ``[dim, h, w]`` (first half: y, second half: x).

    Positions are normalised to ``(0, 2*pi]`` over the (unpadded) feature map.
    """
    npf = dim // 2
    dim_t = 10000.0 ** (2 * (torch.arange(npf, device=device) // 2) / npf)

    def enc(n: int) -> Tensor:  # [n, npf]
        p = (torch.arange(n, device=device, dtype=torch.float32) + 1) / n * (2 * math.pi)
        p = p[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=-1).flatten(-2)

    pe = torch.cat((enc(h)[:, None, :].expand(h, w, npf), enc(w)[None, :, :].expand(h, w, npf)), dim=-1)
    return pe.permute(2, 0, 1).to(dtype)


def window_partition(x: Tensor, splits: int) -> Tensor:
    """``[..., Hp, Wp, C] -> [..., splits**2, (Hp/splits)*(Wp/splits), C]`` (row-major windows and tokens)."""
    hp, wp = x.shape[-3:-1]
    x = x.unflatten(-3, (splits, hp // splits)).unflatten(-2, (splits, wp // splits))  # [..., sy, wh, sx, ww, C]
    return x.transpose(-4, -3).flatten(-5, -4).flatten(-3, -2)


def window_reverse(x: Tensor, splits: int, hp: int, wp: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``[..., nW, T, C] -> [..., Hp, Wp, C]``."""
    x = x.unflatten(-2, (hp // splits, wp // splits)).unflatten(-4, (splits, splits))  # [..., sy, sx, wh, ww, C]
    return x.transpose(-4, -3).flatten(-5, -4).flatten(-3, -2)


def window_attention_mask(
    padded_hw: tuple[int, int],
    valid_hw: tuple[int, int],
    splits: int,
    shift_hw: tuple[int, int] = (0, 0),
    device: torch.device | None = None,
) -> Tensor | None:
    """Boolean attention mask of the windows of a map rolled by ``-shift`` (True = may attend).

    The map is ``padded_hw``, of which the top-left ``valid_hw`` is real; it has been rolled by
    ``torch.roll(x, (-sy, -sx))`` so rolled position ``r`` holds original position ``(r + s) % P``.
    A query may attend to a key iff the key is real and both lie in the same pre-shift region
    (Swin: the wrapped-around strips of the last window row/column are separate regions).
    Padded queries may attend to everything (their outputs are discarded; this avoids empty rows).

    Returns:
        ``[nW, T, T]`` bool, or ``None`` when nothing is masked (no shift and no padding).
    """
    (hp, wp), (h, w) = padded_hw, valid_hw
    if shift_hw == (0, 0) and (hp, wp) == (h, w):
        return None

    def regions(size: int, valid: int, shift: int) -> tuple[Tensor, Tensor]:
        r = torch.arange(size, device=device)
        label = (r >= size - size // splits).long() + (r >= size - shift).long()
        return label, (r + shift) % size < valid

    ly, vy = regions(hp, h, shift_hw[0])
    lx, vx = regions(wp, w, shift_hw[1])
    label = window_partition((ly[:, None] * 3 + lx[None, :])[..., None], splits)[..., 0]  # [nW, T]
    valid = window_partition((vy[:, None] & vx[None, :])[..., None], splits)[..., 0]  # [nW, T]
    mask = (label[:, :, None] == label[:, None, :]) & valid[:, None, :]
    return mask | ~valid[:, :, None]


@functools.lru_cache(maxsize=16)
def attention_masks(
    padded_hw: tuple[int, int],
    valid_hw: tuple[int, int],
    splits: int,
    shift_hw: tuple[int, int],
    views: int,
    device: torch.device,
) -> tuple[list[Tensor | None], list[Tensor | None], Tensor | None]:
    """Masks and view indices of one feature-map shape, built once and cached (they depend only on
    shapes): ``masks`` ``[plain, shifted]`` (``[nW, T, T]`` or None), the cross-view masks repeated
    for the ``V - 1`` other views (``[nW, T, (V-1) T]`` or None) and ``others`` ``[V, V-1]`` (all
    views except ``i``; None for one view). Built outside inference mode so that a model first run
    under ``torch.inference_mode`` can still be trained with the cached tensors.
    """
    with torch.inference_mode(False):
        masks = [window_attention_mask(padded_hw, valid_hw, splits, sh, device) for sh in ((0, 0), shift_hw)]
        others = None
        if views > 1:  # others[i] = all views except i
            idx = torch.arange(views, device=device)
            others = idx.repeat(views, 1)[idx[:, None] != idx[None, :]].view(views, views - 1)
        cross_masks = [m.repeat(1, 1, views - 1) if m is not None and views > 1 else None for m in masks]
    return masks, cross_masks, others


# ---------------------------------------------------------------------------------------------
# Transformer


class WindowAttention(nn.Module):
    """Multi-head attention over window tokens, either within a view or to the other views."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor, others: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """
        Args:
            x: ``[B, V, nW, T, C]`` (normalised) tokens.
            others: ``[V, V-1]`` view indices; if given, the keys/values of view ``v`` are the tokens
                of the same window in views ``others[v]`` (concatenated, ``S = (V-1) T``), else
                of its own window (``S = T``).
            mask: ``[nW, T, S]`` bool (True = attend) or None.
        Returns:
            ``[B, V, nW, T, C]``.

        Keys and values are projected once per view, and no ``[V, V-1, ...]`` copy of them is
        kept: with two views the other view is a swap (``V``-sized); with more, each view attends
        in turn to the concatenation of the others' keys (a transient ``(V-1) T`` copy), and under
        autograd each view's attention is checkpointed, so what is saved for backward is the
        ``V``-sized projected queries/keys/values, not ``V (V-1)`` gathered copies. Outputs equal
        attention to the gathered copies (the key order within a softmax does not matter).
        """
        v = x.shape[1]
        q, k, val = self.q(x), self.k(x), self.v(x)
        if others is None:
            out = self._attend(q, k, val, mask)
        elif v == 2:  # the other view of each view: a swap
            out = self._attend(q, k.flip(1), val.flip(1), mask)
        else:
            outs = []
            for i in range(v):
                args = (q[:, i : i + 1], k, val, others[i], mask)
                if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, val)):
                    outs.append(checkpoint(self._attend_others, *args, use_reentrant=False))
                else:
                    outs.append(self._attend_others(*args))
            out = torch.cat(outs, dim=1)
        return self.out(out)

    def _attend_others(self, q: Tensor, k: Tensor, val: Tensor, idx: Tensor, mask: Tensor | None) -> Tensor:
        """One view's cross-attention: ``q [B, 1, nW, T, C]`` to the tokens of views ``idx [V-1]`` of
        ``k, val [B, V, nW, T, C]`` (concatenated per window) -> ``[B, 1, nW, T, C]``."""
        k, val = (y[:, idx].transpose(1, 2).flatten(2, 3)[:, None] for y in (k, val))  # [B, 1, nW, (V-1) T, C]
        return self._attend(q, k, val, mask)

    def _attend(self, q: Tensor, k: Tensor, val: Tensor, mask: Tensor | None) -> Tensor:
        """Multi-head attention per window: ``q [B, V, nW, T, C]``, ``k, val [B, V, nW, S, C]``,
        ``mask [nW, T, S]`` or None -> ``[B, V, nW, T, C]`` (heads merged, before ``out``)."""
        b, v, nw, t, c = q.shape
        q, k, val = (y.unflatten(-1, (self.heads, c // self.heads)).transpose(-2, -3) for y in (q, k, val))
        # q, k, val: [B, V, nW, heads, T|S, dh]; 4D inputs so that fused kernels apply.
        if mask is None:
            out = F.scaled_dot_product_attention(q.flatten(0, 2), k.flatten(0, 2), val.flatten(0, 2))
            out = out.unflatten(0, (b, v, nw))
        else:  # window-major [nW, B*V*heads, T, dh], so the [nW, 1, T, S] mask broadcasts without a copy
            q, k, val = (y.movedim(2, 0).flatten(1, 3) for y in (q, k, val))
            out = F.scaled_dot_product_attention(q, k, val, mask[:, None])
            out = out.unflatten(1, (b, v, self.heads)).movedim(0, 2)
        return out.transpose(-2, -3).flatten(-2)


class TransformerLayer(nn.Module):
    """Pre-norm window self-attention, cross-attention to the other views, and FFN (all residual)."""

    def __init__(self, dim: int, heads: int, ffn_expansion: int) -> None:
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = WindowAttention(dim, heads)
        self.cross_attn = WindowAttention(dim, heads)
        self.ffn = nn.Sequential(nn.Linear(dim, dim * ffn_expansion), nn.GELU(), nn.Linear(dim * ffn_expansion, dim))

    def forward(self, x: Tensor, self_mask: Tensor | None, cross_mask: Tensor | None, others: Tensor | None) -> Tensor:
        """``x [B, V, nW, T, C] -> [B, V, nW, T, C]``; cross-attention is skipped when ``others`` is None (V == 1)."""
        x = x + self.self_attn(self.norm_self(x), mask=self_mask)
        if others is not None:
            x = x + self.cross_attn(self.norm_cross(x), others, cross_mask)
        return x + self.ffn(self.norm_ffn(x))


class MultiViewTransformer(nn.Module):
    """Stack of :class:`TransformerLayer` over windows; odd layers use windows shifted by half a window."""

    def __init__(self, dim: int, num_layers: int, heads: int, ffn_expansion: int, splits: int) -> None:
        super().__init__()
        self.splits = splits
        self.layers = nn.ModuleList(TransformerLayer(dim, heads, ffn_expansion) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, V, C, h, w] -> [B, V, C, h, w]``; zero-pads to a multiple of ``splits`` and crops back."""
        h, w = x.shape[-2:]
        s = self.splits
        x = F.pad(x, (0, -w % s, 0, -h % s))
        return self.forward_padded(x, (h, w))[..., :h, :w]

    def forward_padded(self, x: Tensor, valid_hw: tuple[int, int]) -> Tensor:
        """``x [B, V, C, Hp, Wp]`` (``Hp, Wp`` multiples of ``splits``) whose top-left ``valid_hw`` is real.

        Padded positions are masked out as keys, so outputs at real positions do not depend on the
        padding values; outputs at padded positions are meaningless.
        """
        b, v, c, hp, wp = x.shape
        s = self.splits
        shift = (hp // s // 2, wp // s // 2) if s > 1 else (0, 0)
        masks, cross_masks, others = attention_masks((hp, wp), tuple(valid_hw), s, shift, v, x.device)

        x = x.permute(0, 1, 3, 4, 2)  # [B, V, Hp, Wp, C]
        for i, layer in enumerate(self.layers):
            shifted = i % 2 == 1 and shift != (0, 0)
            if shifted:
                x = torch.roll(x, (-shift[0], -shift[1]), dims=(2, 3))
            t = layer(window_partition(x, s), masks[shifted], cross_masks[shifted], others)
            x = window_reverse(t, s, hp, wp)
            if shifted:
                x = torch.roll(x, shift, dims=(2, 3))
        return self.norm(x).permute(0, 1, 4, 2, 3)


# ---------------------------------------------------------------------------------------------
# Backbone


class MultiViewBackbone(nn.Module):
    """CNN + multi-view window transformer (MVSplat's backbone).

    Attributes:
        cnn_out_channels: channels of the returned CNN features (``cfg.cnn_channels[-1]``).
        d_model: channels of the returned transformer features.

    Under bf16 autocast both outputs are finite and come back as whatever autocast produces (on
    CPU with torch 2.13 both are bfloat16; LayerNorm/softmax statistics are computed in float32
    internally); cast if a fixed dtype is needed.
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.cnn_out_channels = cfg.cnn_channels[-1]
        self.d_model = cfg.d_model
        self.cnn = CNNEncoder(cfg.cnn_channels)
        self.proj = nn.Conv2d(self.cnn_out_channels, cfg.d_model, 1)
        self.transformer = MultiViewTransformer(
            cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.ffn_expansion, cfg.window_splits
        )
        for m in self.cnn.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            images: ``[B, V, 3, H, W]`` in [0, 1].
        Returns:
            ``(cnn_features [B, V, cnn_out_channels, h, w], transformer_features [B, V, d_model, h, w])``
            with ``h, w = ceil(H / 4), ceil(W / 4)``.
        """
        b, v = images.shape[:2]
        cnn = self.cnn((images.flatten(0, 1) - self.mean) / self.std)  # [B*V, Ccnn, h, w]
        feat = self.proj(cnn)
        h, w = feat.shape[-2:]
        feat = feat + sine_positional_encoding(h, w, self.d_model, feat.device, feat.dtype)
        return cnn.unflatten(0, (b, v)), self.transformer(feat.unflatten(0, (b, v)))
