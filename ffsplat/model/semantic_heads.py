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
* ``semantic.fields: classes`` replaces the last two with :class:`ClassFieldHead` (each Gaussian
  carries its pixel's segmenter class distribution, refined by a learned residual) and
  :class:`ClassTableDecoder` (the teacher's fixed class table expands the rendered distribution).
* :class:`SemanticBranch`: builds these modules on a network and runs them (both networks use it).
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


SEG, LANG = "seg", "lang"
"""Keys of the per-Gaussian semantic fields (segmentation, language) in ``Gaussians.features``."""


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
        fields: what the rendered fields carry (:data:`FIELD_KINDS`). ``features`` (the paper):
            learned ``seg_dim``/``lang_dim`` features per Gaussian, expanded to the teachers' spaces
            by learned decoders (``decoder_hidden``). ``classes``: each Gaussian carries the
            ``segmenter``'s class distribution of its pixel, refined by a learned residual in logit
            space that starts at zero (:class:`ClassFieldHead`); the rendered distributions are
            expanded to the teachers' spaces by the teachers' own fixed class tables
            (:class:`ClassTableDecoder`, set by training from ``teachers.*``; closed-vocabulary
            teachers over the segmenter's classes, e.g. ``espnetv2``/``espnetv2_seg``). Every class
            the segmenter knows reaches the fields, also classes the training frames hardly show
            (a learned decoder only carries the classes it was trained on: BENCHMARKS.md,
            "Real-data benchmark"). Needs ``segmenter`` and ``seg_dim = lang_dim`` = its number of
            classes; ``decoder_hidden`` is then unused.
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
    fields: str = "features"

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
        if self.fields not in FIELD_KINDS:
            raise ValueError(f"semantic.fields: expected one of {list(FIELD_KINDS)}, got {self.fields!r}")
        if self.fields == "classes":
            if not self.segmenter:
                raise ValueError(
                    "semantic.fields=classes needs semantic.segmenter (the class distributions it carries)"
                )
            k = SEGMENTERS[self.segmenter]().num_classes
            if self.seg_dim != k or self.lang_dim != k:
                raise ValueError(f"semantic.fields=classes: seg_dim and lang_dim must be the {self.segmenter} "
                                 f"segmenter's {k} classes, got seg_dim={self.seg_dim}, lang_dim={self.lang_dim}")  # fmt: skip


FIELD_KINDS = ("features", "classes")
"""``semantic.fields`` values: learned features + learned decoders, or class distributions +
the teachers' class tables."""


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
    H, W] in [0, 1], size) -> [N, num_classes, H, W]``, ``load(path, key) -> net`` (strict) and
    ``background``, the index of its "none of the classes" class (None: it has none)."""

    build: Callable[[], nn.Module]
    num_classes: int
    logits: Callable[[nn.Module, Tensor, tuple[int, int]], Tensor]
    load: Callable[[str | Path, str], nn.Module]
    background: int | None = None


def _espnetv2() -> SegmenterSpec:
    from ffsplat.teachers.espnetv2 import PASCAL_CLASSES, ESPNetv2Seg, espnetv2_logits, load_espnetv2

    return SegmenterSpec(ESPNetv2Seg, len(PASCAL_CLASSES), espnetv2_logits, load_espnetv2, background=0)


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
        return self.encode(x, images)[0]

    def encode(self, x: Tensor, images: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """As :meth:`forward`, also returning the segmenter's class probabilities ``[N, K, H, W]``
        (float32; None without a segmenter)."""
        if self.image_encoder is None and self.segmenter is None:
            return self.net(x), None
        if images is None or images.shape[0] != x.shape[0] or images.shape[-2:] != x.shape[-2:]:
            got = None if images is None else tuple(images.shape)
            raise ValueError(f"semantic trunk with an image encoder or segmenter needs images [N={x.shape[0]}, 3, "
                             f"{x.shape[-2]}, {x.shape[-1]}], got {got}")  # fmt: skip
        probs = self.segmenter(images) if self.segmenter is not None else None
        parts = [self.image_encoder(images)] if self.image_encoder is not None else []
        features = torch.cat([p.to(x.dtype) for p in parts + ([probs] if probs is not None else [])], dim=1)
        first = self.net[0](x) + self.image_proj(features) if self.geometry else self.net[0](features)
        return self.net[2](self.net[1](first)), probs


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


CLASS_PROB_FLOOR = 1e-6
"""Smallest class probability :class:`ClassFieldHead` takes the log of (a class the segmenter
rules out stays reachable by the residual)."""


class ClassFieldHead(nn.Module):
    """Per-Gaussian class distribution ``softmax(log p + r(f))``: the segmenter's probabilities ``p``
    of the Gaussian's pixel, refined by a residual ``r`` (a :class:`FieldHead`) whose last layer
    starts at zero, so an untrained head carries ``p`` unchanged for every class."""

    def __init__(self, latent_dim: int, num_classes: int):
        super().__init__()
        self.residual = FieldHead(latent_dim, num_classes)
        nn.init.zeros_(self.residual.net[-1].weight)
        nn.init.zeros_(self.residual.net[-1].bias)

    def forward(self, f: Tensor, probs: Tensor) -> Tensor:
        """``f [..., latent_dim]``, ``probs [..., K]`` -> ``[..., K]`` float32, summing to 1."""
        logits = torch.log(probs.float().clamp_min(CLASS_PROB_FLOOR)) + self.residual(f).float()
        return torch.softmax(logits, dim=-1)


class ClassTableDecoder(nn.Module):
    """Rendered class distributions ``[B, V, K, H, W]`` -> teacher space ``[B, V, C, h', w']``:
    resized to the teacher's grid (as :class:`FieldDecoder`), then ``sum_k r_k table[k]``, the
    mixture a closed-vocabulary teacher (``espnetv2``) makes of its own probabilities (it then
    normalises; the cosine losses and classification are scale-free). ``table [K, C]`` is a
    persistent buffer, no parameter: training sets it from the teacher (:meth:`set_table`) and
    ``model.pt`` carries it; decoding before either raises (a zero table would decode silently to
    zero vectors).

    A rendered distribution sums to the pixel's opacity; the mass the Gaussians leave
    (``1 - sum_k r_k``, where they do not cover the pixel) goes to ``empty_class`` (the
    segmenter's "none of the classes", PASCAL's background), so an empty pixel decodes to
    background rather than to a near-zero vector of arbitrary direction. None: no such class.
    """

    def __init__(self, num_classes: int, out_dim: int, empty_class: int | None = None):
        super().__init__()
        self.empty_class = empty_class
        self.register_buffer("table", torch.zeros(num_classes, out_dim))
        self.table_set = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        self.table_set = self.table_set or prefix + "table" in state_dict  # e.g. from model.pt
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_table(self, table: Tensor) -> None:
        """Copy the teacher's ``[K, C]`` class table in (shapes must match)."""
        if tuple(table.shape) != tuple(self.table.shape):
            raise ValueError(f"class table {tuple(table.shape)} does not fit the decoder's {tuple(self.table.shape)}")
        self.table.copy_(table.to(self.table))
        self.table_set = True

    def forward(self, rendered: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """``size``: the teacher grid ``(h', w')``; None keeps the rendered size."""
        if not self.table_set:
            raise RuntimeError("semantic.fields=classes: the decoder's class table is not set (training sets it "
                               "from teachers.*, model.pt carries it; set_class_tables sets it by hand)")  # fmt: skip
        b = rendered.shape[0]
        x = rearrange(rendered, "b v k h w -> (b v) k h w")
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = resize_field(x, size)
        x = x.float()
        if self.empty_class is not None:
            empty = (1 - x.sum(dim=1, keepdim=True)).clamp_min(0)
            x = x.index_add(1, torch.tensor([self.empty_class], device=x.device), empty)
        out = torch.einsum("nkhw,kc->nchw", x, self.table.float())
        return rearrange(out, "(b v) c h w -> b v c h w", b=b)


class SemanticBranch:
    """Mixin of the networks' semantic branch: ``semantic_trunk``, ``seg_head``, ``lang_head``,
    ``seg_decoder``, ``lang_decoder`` (these state-dict names), per ``semantic.fields``."""

    def build_semantic_branch(self, sem: SemanticConfig, in_ch: int) -> None:
        """Create the branch's modules; ``in_ch``: channels of the trunk's geometry-side maps."""
        self.semantic_trunk = SemanticTrunk(
            in_ch, sem.latent_dim, sem.image_encoder, sem.segmenter, sem.segmenter_size, sem.trunk_geometry
        )
        if sem.fields == "classes":
            k, empty = self.semantic_trunk.segmenter.num_classes, self.semantic_trunk.segmenter.spec.background
            self.seg_head, self.lang_head = ClassFieldHead(sem.latent_dim, k), ClassFieldHead(sem.latent_dim, k)
            self.seg_decoder = ClassTableDecoder(k, sem.seg_teacher_dim, empty)
            self.lang_decoder = ClassTableDecoder(k, sem.lang_teacher_dim, empty)
        else:
            self.seg_head = FieldHead(sem.latent_dim, sem.seg_dim)
            self.lang_head = FieldHead(sem.latent_dim, sem.lang_dim)
            self.seg_decoder = FieldDecoder(sem.seg_dim, sem.seg_teacher_dim, sem.decoder_hidden)
            self.lang_decoder = FieldDecoder(sem.lang_dim, sem.lang_teacher_dim, sem.decoder_hidden)

    def semantic_features(self, trunk_in: Tensor, images: Tensor, batch: int) -> dict[str, Tensor]:
        """``trunk_in [B*V, in_ch, H, W]``, ``images [B*V, 3, H, W]`` -> per-Gaussian fields
        ``{"seg": [B, V*H*W, seg_dim], "lang": [B, V*H*W, lang_dim]}`` (Gaussians in view, row,
        column order, as the geometry heads emit them)."""
        f, probs = self.semantic_trunk.encode(trunk_in, images)
        per_gaussian = lambda t: rearrange(t, "(b v) c h w -> b (v h w) c", b=batch)
        f = per_gaussian(f)
        if isinstance(self.seg_head, ClassFieldHead):
            probs = per_gaussian(probs)
            return {SEG: self.seg_head(f, probs), LANG: self.lang_head(f, probs)}
        return {SEG: self.seg_head(f), LANG: self.lang_head(f)}

    def decode_fields(
        self, rendered: dict[str, Tensor], sizes: dict[str, tuple[int, int]] | None = None
    ) -> dict[str, Tensor]:
        """Expand rendered fields to teacher space: ``{"seg": [B,V,seg_dim,H,W]}`` -> ``{"sam": [B,V,256,h,w]}``,
        ``{"lang": ...}`` -> ``{"lseg": [B,V,512,h,w]}``; ``sizes`` gives the teacher grids (default: rendered size)."""
        sizes = sizes or {}
        out = {}
        if SEG in rendered:
            out["sam"] = self.seg_decoder(rendered[SEG], sizes.get("sam"))
        if LANG in rendered:
            out["lseg"] = self.lang_decoder(rendered[LANG], sizes.get("lseg"))
        return out

    def semantic_groups(self) -> dict[str, list[nn.Parameter]]:
        """The branch's parameters: ``segmentation`` (trunk, seg head and decoder), ``language``."""
        return {
            "segmentation": [p for m in (self.semantic_trunk, self.seg_head, self.seg_decoder) for p in m.parameters()],
            "language": [p for m in (self.lang_head, self.lang_decoder) for p in m.parameters()],
        }

    def set_class_tables(self, seg: Tensor | None, lang: Tensor | None) -> None:
        """``semantic.fields: classes``: the segmentation and language teachers' ``[K, C]`` class
        tables (None: that teacher has none, an error)."""
        for name, table, decoder in (("segmentation", seg, self.seg_decoder), ("language", lang, self.lang_decoder)):
            if table is None:
                raise ValueError(f"semantic.fields=classes needs a closed-vocabulary {name} teacher (a class table)")
            decoder.set_table(table)


def resize_field(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ``[N, C, H, W]`` maps to ``size``: antialiased bilinear (a triangle filter as wide as
    the reduction, i.e. area-weighted) where the grid gets coarser, plain bilinear where it gets
    finer. Plain bilinear reduction by 4 would read only 4 of every 16 rendered pixels (75% of the
    field would get no gradient)."""
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
