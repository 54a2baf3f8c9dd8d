"""Semantic latent per Gaussian and the two semantic fields (SemanticSplat sec. 3.3-3.5).

* :class:`SemanticTrunk`: per-pixel latent ``f`` from [fused latent map (upsampled), normalised
  depth, view-aware refinement features] and, when set, the features of a
  :class:`SemanticImageEncoder` (``semantic.image_encoder``) and/or the class probabilities of a
  frozen pretrained :class:`PretrainedSegmenter` (``semantic.segmenter``) of the context image.
* :class:`FieldHead`: ``f -> f^S`` (segmentation) or ``f -> f^L`` (language), low-dimensional
  per-Gaussian features that are *rendered*.
* :class:`FieldDecoder`: rendered low-dimensional maps -> teacher space (SAM 256-d, LSeg 512-d)
  with a small CNN, after resizing to the teacher's grid (Feature 3DGS's speed-up module); the
  reduction to a coarser grid is antialiased (area-weighted), so every rendered pixel gets gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ffsplat.model.backbone import IMAGENET_MEAN, IMAGENET_STD


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
        image_encoder: widths of a :class:`SemanticImageEncoder` (one stride-2 stage each) whose
            features of each context image join the semantic trunk's input; empty (the paper) = none,
            the semantic latent then sees the image only through the fused latent map (where the
            SAM/LSeg conditioning carries the semantics). Meant for RGB-only models (no
            conditioning), whose fused latent is shared with depth (16 channels in the small
            model). BENCHMARKS.md ("Real-data benchmark") says what it did for the CPU demo model.
        segmenter: registry name (:data:`SEGMENTERS`) of a pretrained 2D segmenter whose per-pixel
            class probabilities of each context image join the semantic trunk's input (through the
            same zero-initialised projection as ``image_encoder``, or directly with
            ``trunk_geometry: false``); empty = none. ``espnetv2``:
            ESPNetv2-PASCAL (21 classes). The segmenter is **frozen** (its weights are buffers: no
            stage trains them) and part of the model, so ``model.pt`` carries them and inference
            needs no other file. It plays the role the paper gives SAM/LSeg conditioning (sec. 3.2),
            for a closed-vocabulary teacher, at per-pixel resolution and without the geometry: the
            semantic fields then have to carry its 2D predictions into 3D, not learn the classes.
        segmenter_size: ``(H, W)`` the segmenter runs at (multiples of 16; ESPNetv2's published
            weights were trained at 256x256 and 384x384); its output is resized back.
        segmenter_checkpoint: local file of the segmenter's published weights, loaded strictly when
            training builds the model (``ffsplat.training``; never downloaded). Not read at
            inference: the weights are in ``model.pt``. May be empty when ``stage.init_from`` is a
            model that already has them.
        trunk_geometry: feed the geometry-side maps (fused latent, normalised depth, refinement
            features) to the semantic trunk (the paper). ``false``: the trunk sees only the image
            encoder's and/or segmenter's features of each pixel (one of them is required), so the
            fields' semantics come from the 2D network alone; trained on one scene, a trunk that
            also sees the geometry features can memorise where that scene's objects are instead of
            reading the segmenter (the demo model did: BENCHMARKS.md, "Real-data benchmark").
    """

    latent_dim: int = 64
    seg_dim: int = 64
    lang_dim: int = 128
    seg_teacher_dim: int = 256
    lang_teacher_dim: int = 512
    decoder_hidden: int = 256
    image_encoder: tuple[int, ...] = ()
    segmenter: str = ""
    segmenter_size: tuple[int, int] = (256, 256)
    segmenter_checkpoint: str = ""
    trunk_geometry: bool = True

    def __post_init__(self) -> None:
        self.image_encoder = tuple(int(c) for c in self.image_encoder)
        if self.image_encoder and (len(self.image_encoder) < 2 or min(self.image_encoder) < 1):
            raise ValueError(
                f"semantic.image_encoder: expected [] or at least two positive widths, got {list(self.image_encoder)}"
            )
        if self.segmenter and self.segmenter not in SEGMENTERS:
            raise ValueError(f"semantic.segmenter: {self.segmenter!r} is not a known segmenter; choose one of "
                             f"{sorted(SEGMENTERS)} or '' (none)")  # fmt: skip
        size = self.segmenter_size
        size = (size, size) if isinstance(size, (int, float)) else tuple(size)
        if len(size) != 2 or any(int(v) != v or v < 16 or v % 16 for v in size):
            raise ValueError(
                f"semantic.segmenter_size: expected [H, W], positive multiples of 16, got {self.segmenter_size!r}"
            )
        self.segmenter_size = (int(size[0]), int(size[1]))
        if not self.trunk_geometry and not (self.image_encoder or self.segmenter):
            raise ValueError("semantic.trunk_geometry=false needs semantic.image_encoder or semantic.segmenter "
                             "(the trunk would have no input)")  # fmt: skip


class SemanticImageEncoder(nn.Module):
    """Multi-scale CNN on the context image for the semantic latent: ``[N, 3, H, W]`` in ``[0, 1]`` ->
    ``[N, out_dim, H, W]``.

    The input is standardised with ImageNet statistics. Stage ``i`` (width ``widths[i]``) is two
    3x3 convolutions with per-image instance norm (as the backbone: batch statistics would couple
    views) at ``1/2^(i+1)`` resolution; the stages from
    1/4 down are upsampled to 1/4, concatenated, mixed by a 1x1 convolution to ``out_dim`` and
    upsampled to the input size. The coarse stages give each pixel the context (a desk, a room)
    that a class needs.
    """

    def __init__(self, widths: tuple[int, ...], out_dim: int):
        super().__init__()
        stages, cin = [], 3
        for width in widths:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(cin, width, 3, 2, 1),
                    nn.InstanceNorm2d(width, affine=True),
                    nn.GELU(),
                    nn.Conv2d(width, width, 3, 1, 1),
                    nn.InstanceNorm2d(width, affine=True),
                    nn.GELU(),
                )
            )
            cin = width
        self.stages = nn.ModuleList(stages)
        self.mix = nn.Conv2d(sum(widths[1:]), out_dim, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        scales = []
        for stage in self.stages:
            x = stage(x)
            scales.append(x)
        quarter = scales[1].shape[-2:]
        fused = torch.cat([scales[1]] + [_upsample(s, quarter) for s in scales[2:]], dim=1)
        return _upsample(self.mix(fused), (height, width))


def _upsample(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SegmenterSpec(NamedTuple):
    """A pretrained segmenter: ``build() -> net``, its ``num_classes``, ``logits(net, images [N, 3,
    H, W] in [0, 1], size) -> [N, num_classes, H, W]`` and ``load(path, key) -> net`` (strict)."""

    build: Callable[[], nn.Module]
    num_classes: int
    logits: Callable[[nn.Module, Tensor, tuple[int, int]], Tensor]
    load: Callable[[str | Path, str], nn.Module]


def _espnetv2() -> SegmenterSpec:
    from ffsplat.teachers.espnetv2 import PASCAL_CLASSES, ESPNetv2Seg, espnetv2_logits, load_espnetv2

    return SegmenterSpec(ESPNetv2Seg, len(PASCAL_CLASSES), espnetv2_logits, load_espnetv2)


SEGMENTERS: dict[str, Callable[[], SegmenterSpec]] = {"espnetv2": _espnetv2}
"""``semantic.segmenter`` names -> their :class:`SegmenterSpec` (built lazily)."""


class PretrainedSegmenter(nn.Module):
    """Frozen pretrained 2D segmenter: ``[N, 3, H, W]`` in ``[0, 1]`` -> class probabilities ``[N, K, H, W]``.

    Its weights are registered as (persistent) buffers, not parameters: no optimiser, parameter
    group or gradient ever sees them, and ``state_dict()`` keys are the network's own. Batch norm
    always uses its running statistics (:meth:`train` keeps the network in eval mode).
    """

    def __init__(self, name: str, size: tuple[int, int] = (256, 256)):
        super().__init__()
        self.name, self.size = name, tuple(size)
        self.spec = SEGMENTERS[name]()
        self.num_classes = self.spec.num_classes
        self.net = _as_buffers(self.spec.build()).eval()

    def train(self, mode: bool = True) -> PretrainedSegmenter:
        super().train(mode)
        self.net.eval()
        return self

    def load_weights(self, path: str | Path, key: str = "model.semantic.segmenter_checkpoint") -> None:
        """Load the published weights from a local ``path`` (strict; errors name ``key``)."""
        self.net.load_state_dict(self.spec.load(path, key).state_dict(), strict=True)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return torch.softmax(self.spec.logits(self.net, images, self.size).float(), dim=1)


def _as_buffers(module: nn.Module) -> nn.Module:
    """Re-register every parameter of ``module`` as a persistent buffer of the same name (frozen weights)."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                del sub._parameters[name]
                sub.register_buffer(name, param.detach())
    return module


class SemanticTrunk(nn.Module):
    """Per-pixel semantic latent: two 3x3 convolutions on ``x``, the first one's output plus a 3x3
    projection of the image features when there is an image encoder and/or a segmenter.

    The sum is a convolution of ``[x, image features]`` split in two; the projection starts at zero,
    so a trained model without them gains them (``stage.init_from`` of a ``semantic`` stage) with
    its outputs unchanged at the first step.

    Args:
        in_ch: channels of ``x`` (the network's geometry-side maps).
        latent_dim: channels of ``f``.
        image_encoder: widths of the optional :class:`SemanticImageEncoder` (empty: none); it gives
            ``2 * latent_dim`` channels.
        segmenter: name of the optional frozen :class:`PretrainedSegmenter` (empty: none), run at
            ``segmenter_size``; it gives its ``num_classes`` class probabilities.
        ``image_proj`` maps the concatenated image features (encoder first) to ``latent_dim``.
        geometry: use ``x`` (``semantic.trunk_geometry``); without it the first convolution takes
            the image features directly (no ``image_proj``) and ``x`` is ignored.
    """

    def __init__(self, in_ch: int, latent_dim: int, image_encoder: tuple[int, ...] = (), segmenter: str = "",
                 segmenter_size: tuple[int, int] = (256, 256), geometry: bool = True):  # fmt: skip
        super().__init__()
        self.image_encoder = self.segmenter = self.image_proj = None
        image_ch = 0
        if image_encoder:
            self.image_encoder = SemanticImageEncoder(tuple(image_encoder), 2 * latent_dim)
            image_ch += 2 * latent_dim
        if segmenter:
            self.segmenter = PretrainedSegmenter(segmenter, segmenter_size)
            image_ch += self.segmenter.num_classes
        if not geometry and not image_ch:
            raise ValueError("a semantic trunk without geometry inputs needs an image encoder or a segmenter")
        self.geometry = geometry
        self.net = nn.Sequential(
            nn.Conv2d(in_ch if geometry else image_ch, latent_dim, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(latent_dim, latent_dim, 3, padding=1),
        )
        if image_ch and geometry:
            self.image_proj = nn.Conv2d(image_ch, latent_dim, 3, padding=1)
            nn.init.zeros_(self.image_proj.weight)
            nn.init.zeros_(self.image_proj.bias)

    def forward(self, x: Tensor, images: Tensor | None = None) -> Tensor:
        """``x [N, in_ch, H, W]``, ``images [N, 3, H, W]`` in ``[0, 1]`` (needed with an image
        encoder or a segmenter, ignored without) -> ``[N, latent_dim, H, W]``."""
        if self.image_encoder is None and self.segmenter is None:
            return self.net(x)
        if images is None or images.shape[0] != x.shape[0] or images.shape[-2:] != x.shape[-2:]:
            got = None if images is None else tuple(images.shape)
            raise ValueError(f"semantic trunk with an image encoder or segmenter needs images [N={x.shape[0]}, 3, "
                             f"{x.shape[-2]}, {x.shape[-1]}], got {got}")  # fmt: skip
        parts = [m(images).to(x.dtype) for m in (self.image_encoder, self.segmenter) if m is not None]
        features = torch.cat(parts, dim=1)
        first = self.net[0](x) + self.image_proj(features) if self.geometry else self.net[0](features)
        return self.net[2](self.net[1](first))


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
