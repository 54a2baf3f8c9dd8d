"""UniMatch's CNN and MVSplat's multi-view transformer, parameter-for-parameter.

* :class:`CNNEncoder`: ``conv1`` (7x7, stride 2) + instance norm, ``layer1``-``layer3`` (two
  residual blocks each, strides 1, 2, 1 -> 1/4 resolution), ``conv2`` (1x1 to ``d_feature``).
* :class:`MultiViewTransformer`: blocks of window self-attention then window cross-attention to all
  other views followed by an FFN on ``[x, message]``; single head, bias-free q/k/v/merge,
  post-norm (LayerNorm on the message), odd blocks on half-window-shifted windows (Swin).
* :func:`window_position_encoding`: DETR's sine encoding computed per attention window (every
  window gets the same normalised positions), as MVSplat adds it before the transformer.

Shapes: ``B`` scenes, ``V`` views, ``C`` channels, ``h x w`` the 1/4-resolution grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResidualBlock(nn.Module):
    """Two 3x3 convs (no bias) with instance norm + ReLU; 1x1 projection when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm2d(out_ch)
        self.norm2 = nn.InstanceNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride), nn.InstanceNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu(x + y)


class CNNEncoder(nn.Module):
    """``[N, 3, H, W]`` (ImageNet-normalised) -> ``[N, out_ch, H/4, W/4]``."""

    def __init__(self, out_ch: int, channels: tuple[int, int, int] = (64, 96, 128)):
        super().__init__()
        c0, c1, c2 = channels
        self.conv1 = nn.Conv2d(3, c0, 7, stride=2, padding=3, bias=False)
        self.norm1 = nn.InstanceNorm2d(c0)
        self.layer1 = nn.Sequential(ResidualBlock(c0, c0, 1), ResidualBlock(c0, c0, 1))
        self.layer2 = nn.Sequential(ResidualBlock(c0, c1, 2), ResidualBlock(c1, c1, 1))
        self.layer3 = nn.Sequential(ResidualBlock(c1, c2, 1), ResidualBlock(c2, c2, 1))
        self.conv2 = nn.Conv2d(c2, out_ch, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


def sine_position_encoding(h: int, w: int, channels: int, device=None) -> Tensor:
    """DETR's normalised sine encoding of an ``h x w`` grid: ``[channels, h, w]`` (y half, then x half)."""
    half = channels // 2
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + eps) * scale
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + eps) * scale
    dim_t = torch.arange(half, dtype=torch.float32, device=device)
    dim_t = 10000.0 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)

    def encode(p: Tensor) -> Tensor:  # [L] -> [L, half] with sin on even, cos on odd channels
        a = p[:, None] / dim_t
        return torch.stack((a[:, 0::2].sin(), a[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(h, w, half)
    pos_x = encode(x)[None, :, :].expand(h, w, half)
    return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1)


def window_position_encoding(h: int, w: int, channels: int, splits: int, device=None) -> Tensor:
    """The sine encoding of one ``(h/splits) x (w/splits)`` window, tiled over the map: ``[C, h, w]``."""
    return sine_position_encoding(h // splits, w // splits, channels, device).repeat(1, splits, splits)


def shifted_window_mask(h: int, w: int, splits: int, device=None) -> Tensor:
    """Swin's mask for shifted windows: ``[K*K, L, L]`` (``K = splits``, ``L = h*w/K^2``) with
    -100 between positions that came from different regions before the roll, else 0."""
    wh, ww = h // splits, w // splits
    sh, sw = wh // 2, ww // 2
    img = torch.zeros(h, w, device=device)
    cnt = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            img[hs, ws] = cnt
            cnt += 1
    win = rearrange(img, "(ky hk) (kx wk) -> (ky kx) (hk wk)", ky=splits, kx=splits)
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, torch.full_like(diff, -100.0), torch.zeros_like(diff))


def window_attention(q: Tensor, k: Tensor, v: Tensor, h: int, w: int, splits: int, mask: Tensor | None) -> Tensor:
    """Single-head attention inside ``splits x splits`` windows, to the same window of ``M`` maps.

    Args:
        q: ``[N, h*w, C]``; k, v: ``[N, M, h*w, C]`` (``M = 1`` for self-attention, ``V - 1`` for
            cross-attention).
        mask: :func:`shifted_window_mask` for shifted windows (then everything is rolled by half a
            window first and back after), None for plain windows.
    Returns:
        ``[N, h*w, C]``.

    Keys are ordered pixel-major (views fastest) while the shift mask is tiled view-major, exactly
    as UniMatch/MVSplat do it for ``M > 1``; kept so that released checkpoints behave as trained.
    """
    n, m, _, c = k.shape
    q = q.view(n, h, w, c)
    k = k.view(n, m, h, w, c)
    v = v.view(n, m, h, w, c)
    sh, sw = (h // splits) // 2, (w // splits) // 2
    if mask is not None:
        q = torch.roll(q, shifts=(-sh, -sw), dims=(1, 2))
        k = torch.roll(k, shifts=(-sh, -sw), dims=(2, 3))
        v = torch.roll(v, shifts=(-sh, -sw), dims=(2, 3))
    pattern = "n (ky hk) (kx wk) c -> (n ky kx) (hk wk) c"
    qw = rearrange(q, pattern, ky=splits, kx=splits)
    kv_pattern = "n m (ky hk) (kx wk) c -> (n ky kx) (hk wk m) c"
    kw = rearrange(k, kv_pattern, ky=splits, kx=splits)
    vw = rearrange(v, kv_pattern, ky=splits, kx=splits)
    scores = qw @ kw.transpose(1, 2) / c**0.5  # [N*K*K, L, L*M]
    if mask is not None:
        scores = scores + mask.repeat(n, 1, m)
    out = torch.softmax(scores, dim=-1) @ vw
    out = rearrange(out, "(n ky kx) (hk wk) c -> n (ky hk) (kx wk) c", n=n, ky=splits, kx=splits, hk=h // splits)
    if mask is not None:
        out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
    return out.reshape(n, h * w, c)


class TransformerLayer(nn.Module):
    """``x + norm2(FFN([x, norm1(merge(attn(x, targets)))]))`` (no FFN: ``x + norm1(merge(...))``)."""

    def __init__(self, d_model: int, ffn_expansion: int, with_ffn: bool):
        super().__init__()
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.merge = nn.Linear(d_model, d_model, bias=False)
        self.norm1 = nn.LayerNorm(d_model)
        self.with_ffn = with_ffn
        if with_ffn:
            hidden = 2 * d_model * ffn_expansion
            self.mlp = nn.Sequential(
                nn.Linear(2 * d_model, hidden, bias=False), nn.GELU(), nn.Linear(hidden, d_model, bias=False)
            )
            self.norm2 = nn.LayerNorm(d_model)

    def forward(self, source: Tensor, target: Tensor, h: int, w: int, splits: int, mask: Tensor | None) -> Tensor:
        """source: ``[N, L, C]``; target: ``[N, M, L, C]``."""
        message = window_attention(self.q_proj(source), self.k_proj(target), self.v_proj(target), h, w, splits, mask)
        return self._finish(source, message)

    def cross_views(self, source: Tensor, views: Tensor, h: int, w: int, splits: int, mask: Tensor | None) -> Tensor:
        """Every view attends to all the other views: source ``[V, B, L, C]`` (queries), views
        ``[V, B, L, C]`` (keys/values) -> ``[V*B, L, C]``; equal to :meth:`forward` with the target
        of view ``i`` the stack of ``views[j]``, ``j != i`` in order.

        Keys/values are projected once per view (not once per (view, other view) pair) and no
        ``[V, V-1, ...]`` copy is kept: two views swap; with more, each view attends in turn to a
        transient stack of the others, checkpointed under autograd so that backward keeps only the
        ``V``-sized projections.
        """
        v = views.shape[0]
        q, k, val = self.q_proj(source), self.k_proj(views), self.v_proj(views)
        if v == 2:
            k, val = (y.flip(0).flatten(0, 1)[:, None] for y in (k, val))
            message = window_attention(q.flatten(0, 1), k, val, h, w, splits, mask)
        else:

            def one_view(qi: Tensor, k: Tensor, val: Tensor, others: list[int]) -> Tensor:
                kt, vt = (y[others].transpose(0, 1).contiguous() for y in (k, val))  # [B, V-1, L, C]
                return window_attention(qi, kt, vt, h, w, splits, mask)

            grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, val))
            messages = []
            for i in range(v):
                args = (q[i], k, val, [j for j in range(v) if j != i])
                messages.append(checkpoint(one_view, *args, use_reentrant=False) if grad else one_view(*args))
            message = torch.cat(messages)
        return self._finish(source.flatten(0, 1), message)

    def _finish(self, source: Tensor, message: Tensor) -> Tensor:
        message = self.norm1(self.merge(message))
        if self.with_ffn:
            message = self.norm2(self.mlp(torch.cat([source, message], dim=-1)))
        return source + message


class TransformerBlock(nn.Module):
    """Self-attention (no FFN), then cross-attention to the other views + FFN."""

    def __init__(self, d_model: int, ffn_expansion: int):
        super().__init__()
        self.self_attn = TransformerLayer(d_model, ffn_expansion, with_ffn=False)
        self.cross_attn_ffn = TransformerLayer(d_model, ffn_expansion, with_ffn=True)


class MultiViewTransformer(nn.Module):
    """``[B, V, C, h, w]`` -> ``[B, V, C, h, w]`` for any ``V >= 2``."""

    def __init__(self, d_model: int, num_layers: int, ffn_expansion: int):
        super().__init__()
        self.layers = nn.ModuleList(TransformerBlock(d_model, ffn_expansion) for _ in range(num_layers))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, features: Tensor, splits: int) -> Tensor:
        b, v, c, h, w = features.shape
        if v < 2:
            raise ValueError(f"the multi-view transformer needs V >= 2 context views, got {v}")
        mask = shifted_window_mask(h, w, splits, features.device).to(features.dtype)
        x = rearrange(features, "b v c h w -> v b (h w) c")
        for idx, block in enumerate(self.layers):
            shift = mask if idx % 2 == 1 else None
            flat = x.reshape(v * b, h * w, c)
            flat = block.self_attn(flat, flat[:, None], h, w, splits, shift)
            # Every view attends to all other views (in their original order) as they entered the
            # block, i.e. before this block's self-attention (as MVSplat).
            flat = block.cross_attn_ffn.cross_views(flat.view(v, b, h * w, c), x, h, w, splits, shift)
            x = flat.view(v, b, h * w, c)
        return rearrange(x, "v b (h w) c -> b v c h w", h=h)


class MultiViewBackboneMVSplat(nn.Module):
    """MVSplat's ``BackboneMultiview``: images ``[B, V, 3, H, W]`` in [0, 1] -> (transformer
    features, CNN features), both ``[B, V, C, H/4, W/4]``."""

    def __init__(self, d_feature: int, cnn_channels: tuple[int, int, int], num_layers: int, ffn_expansion: int):
        super().__init__()
        self.d_feature = d_feature
        self.backbone = CNNEncoder(d_feature, tuple(cnn_channels))
        self.transformer = MultiViewTransformer(d_feature, num_layers, ffn_expansion)

    def forward(self, images: Tensor, splits: int) -> tuple[Tensor, Tensor]:
        b = images.shape[0]
        mean = images.new_tensor(IMAGENET_MEAN)[:, None, None]
        std = images.new_tensor(IMAGENET_STD)[:, None, None]
        cnn = self.backbone(rearrange((images - mean) / std, "b v c h w -> (b v) c h w"))
        cnn = rearrange(cnn, "(b v) c h w -> b v c h w", b=b)
        h, w = cnn.shape[-2:]
        if h % splits or w % splits:
            raise ValueError(f"the 1/4-resolution grid {h}x{w} must be divisible by model.mvsplat.attn_splits={splits}")
        pos = window_position_encoding(h, w, self.d_feature, splits, images.device).to(cnn.dtype)
        return self.transformer(cnn + pos, splits), cnn
