"""ESPNetv2 semantic segmentation (Mehta et al., CVPR 2019) as a closed-vocabulary language teacher.

The network is ESPNetv2 at width scale ``s = 2.0`` with the EdgeNets segmentation decoder for
PASCAL VOC (21 classes, background included), written here so that its state dict matches the
published ``espnetv2_s_2.0_pascal_{256x256,384x384}.pth`` files key for key (they load with
``strict=True``). Its logits were compared with the public EdgeNets implementation on real frames
(see BENCHMARKS.md, "ESPNetv2 teacher").

**This is not LSeg.** It knows only PASCAL VOC's 20 object classes plus background: no wall, floor
or ceiling, and no open vocabulary. :class:`ESPNetv2Teacher` turns its per-pixel class
probabilities into language-space features through a fixed class-embedding table (the mechanism
of the ``label_lang`` stand-in, but driven by a real network's predictions instead of ground
truth), so the language field, ``--query`` with PASCAL class names and per-Gaussian classes work
with the indoor classes chair, sofa, dining table, tv/monitor, potted plant, bottle and person.

Architecture (channels for ``s = 2.0``: 32, 128, 256, 512):

* encoder: a strided 3x3 conv-BN-PReLU (1/2), then down-samplers to 1/4, 1/8 (+3 EESP units) and
  1/16 (+7 EESP units). An EESP unit is a grouped 1x1 reduction, ``k = 4`` depth-wise dilated 3x3
  branches whose outputs are summed hierarchically, BN-PReLU, a grouped 1x1 expansion, a residual
  and PReLU; a down-sampler concatenates a 3x3 average pool with a stride-2 EESP and adds a
  projection of the average-pooled input image ("input reinforcement").
* decoder: an efficient pyramid pooling module (projection, depth-wise convs at scales 2, 1.5, 1,
  0.5, 0.1, channel shuffle, grouped fusion) at each of 1/16, 1/8, 1/4, 1/2, merged with the
  encoder features through squeeze-excited grouped 3x3 convs, 2x bilinear upsampling between
  levels, and a final bilinear resize to the input size.

Input: RGB in ``[0, 1]`` normalised with ImageNet mean/std, resized to ``input_size`` (the
resolution the weights were trained at).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffsplat.core.weights import mismatch, read_weights, state_dict_of
from ffsplat.teachers.base import register_class_table, register_teacher, require_file
from ffsplat.teachers.label_teachers import _unit_table

PASCAL_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv/monitor",
)  # fmt: skip
"""The 21 PASCAL VOC classes in the network's output order (0 = background)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ESPNETV2_CHANNELS = (32, 128, 256, 512)
"""Encoder channels at 1/2, 1/4, 1/8, 1/16 for width scale 2.0."""


def _conv(
    cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, dilation: int = 1, bias: bool = False
) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2 * dilation, dilation=dilation, groups=groups, bias=bias)


class ConvBNAct(nn.Module):
    """conv -> BN -> PReLU (keys ``conv``, ``bn``, ``act``), or conv -> BN when ``act=False``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = _conv(cin, cout, k, stride, groups)
        self.bn = nn.BatchNorm2d(cout)
        if act:
            self.act = nn.PReLU(cout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return self.act(x) if hasattr(self, "act") else x


class BNAct(nn.Module):
    """BN -> PReLU (keys ``bn``, ``act``)."""

    def __init__(self, ch: int):
        super().__init__()
        self.bn, self.act = nn.BatchNorm2d(ch), nn.PReLU(ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(x))


class _Dilated(nn.Module):
    """Depth-wise dilated 3x3 conv (key ``conv``)."""

    def __init__(self, ch: int, stride: int, dilation: int):
        super().__init__()
        self.conv = _conv(ch, ch, 3, stride, groups=ch, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class EESP(nn.Module):
    """Extremely efficient spatial pyramid unit: reduce, split into ``k`` dilated depth-wise
    branches fused hierarchically, merge. ``stride=2`` returns the pre-activation merge (the
    down-sampler activates it after concatenation)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, k: int = 4, r_lim: int = 7):
        super().__init__()
        width = cout // k
        if width * k != cout:
            raise ValueError(f"EESP: {cout} output channels do not split into {k} branches")
        self.stride = stride
        self.proj_1x1 = ConvBNAct(cin, width, 1, groups=k)
        # Branch i would have a (3 + 2i)-wide receptive field; past r_lim it falls back to 3 (dilation 1).
        sizes = sorted(3 + 2 * i if 3 + 2 * i <= r_lim else 3 for i in range(k))
        self.spp_dw = nn.ModuleList(_Dilated(width, stride, (size - 1) // 2) for size in sizes)
        self.conv_1x1_exp = ConvBNAct(cout, cout, 1, groups=k, act=False)
        self.br_after_cat = BNAct(cout)
        self.module_act = nn.PReLU(cout)

    def forward(self, x: Tensor) -> Tensor:
        reduced = self.proj_1x1(x)
        branches = [self.spp_dw[0](reduced)]
        for layer in self.spp_dw[1:]:
            branches.append(layer(reduced) + branches[-1])  # hierarchical feature fusion
        merged = self.conv_1x1_exp(self.br_after_cat(torch.cat(branches, 1)))
        if self.stride == 2:
            return merged
        if merged.shape == x.shape:
            merged = merged + x
        return self.module_act(merged)


class DownSampler(nn.Module):
    """Stride-2 block: ``[avgpool(x), EESP_s2(x)]`` + projection of the input image pooled to the
    same size, then PReLU."""

    def __init__(self, cin: int, cout: int, k: int = 4, r_lim: int = 9):
        super().__init__()
        self.eesp = EESP(cin, cout - cin, stride=2, k=k, r_lim=r_lim)
        self.inp_reinf = nn.Sequential(ConvBNAct(3, 3, 3), ConvBNAct(3, cout, 1, act=False))
        self.act = nn.PReLU(cout)

    def forward(self, x: Tensor, image: Tensor) -> Tensor:
        pooled = F.avg_pool2d(x, 3, stride=2, padding=1)
        out = torch.cat([pooled, self.eesp(x)], 1)
        while image.shape[-1] > pooled.shape[-1]:
            image = F.avg_pool2d(image, 3, stride=2, padding=1)
        if image.shape[-2:] != pooled.shape[-2:]:
            raise ValueError(
                f"ESPNetv2: input image pools to {tuple(image.shape[-2:])}, features are {tuple(pooled.shape[-2:])}"
            )
        return self.act(out + self.inp_reinf(image))


class Encoder(nn.Module):
    """ESPNetv2 (EESPNet) levels 1-4; keys as the published ``base_net``."""

    def __init__(self, channels: tuple[int, int, int, int] = ESPNETV2_CHANNELS):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.level1 = ConvBNAct(3, c1, 3, stride=2)
        self.level2_0 = DownSampler(c1, c2, r_lim=13)
        self.level3_0 = DownSampler(c2, c3, r_lim=11)
        self.level3 = nn.ModuleList(EESP(c3, c3, r_lim=9) for _ in range(3))
        self.level4_0 = DownSampler(c3, c4, r_lim=9)
        self.level4 = nn.ModuleList(EESP(c4, c4, r_lim=7) for _ in range(7))

    def forward(self, image: Tensor) -> list[Tensor]:
        """``[N, 3, H, W]`` normalised -> features at 1/2, 1/4, 1/8, 1/16."""
        l1 = self.level1(image)
        l2 = self.level2_0(l1, image)
        l3 = self.level3_0(l2, image)
        for layer in self.level3:
            l3 = layer(l3)
        l4 = self.level4_0(l3, image)
        for layer in self.level4:
            l4 = layer(l4)
        return [l1, l2, l3, l4]


class _Seq(nn.Module):
    """conv -> BN -> PReLU under the key ``cbr.{0,1,2}`` (the decoder's naming)."""

    def __init__(self, cin: int, cout: int, k: int, groups: int = 1):
        super().__init__()
        self.cbr = nn.Sequential(_conv(cin, cout, k, groups=groups), nn.BatchNorm2d(cout), nn.PReLU(cout))

    def forward(self, x: Tensor) -> Tensor:
        return self.cbr(x)


class _BR(nn.Module):
    """BN -> PReLU under the key ``br.{0,1}``."""

    def __init__(self, ch: int):
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(ch), nn.PReLU(ch))

    def forward(self, x: Tensor) -> Tensor:
        return self.br(x)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """``[N, G*C, H, W]`` -> channels interleaved across the ``G`` groups."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class PyramidPool(nn.Module):
    """Efficient pyramid pooling: project, depth-wise 3x3 at several scales (at least 5x5), shuffle,
    grouped 3x3 fusion, 1x1 to ``cout`` (+ BN-PReLU unless it is the classifier)."""

    SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)

    def __init__(self, cin: int, proj: int, cout: int, last_br: bool = True):
        super().__init__()
        n = len(self.SCALES)
        self.projection_layer = _Seq(cin, proj, 1)
        self.stages = nn.ModuleList(_conv(proj, proj, 3, groups=proj) for _ in self.SCALES)
        self.merge_layer = nn.Sequential(
            _BR(proj * n), nn.Identity(), _Seq(proj * n, proj, 3, groups=proj), _conv(proj, cout, 1, bias=not last_br)
        )
        if last_br:
            self.br = _BR(cout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.projection_layer(x)
        h, w = x.shape[-2:]
        outs = []
        for scale, stage in zip(self.SCALES, self.stages):
            size = (max(5, math.ceil(h * scale)), max(5, math.ceil(w * scale)))
            if scale > 1.0:
                y = F.interpolate(x, size, mode="bilinear", align_corners=True)
                outs.append(F.adaptive_avg_pool2d(stage(y), (h, w)))
            elif scale < 1.0:
                y = stage(F.adaptive_avg_pool2d(x, size))
                outs.append(F.interpolate(y, (h, w), mode="bilinear", align_corners=True))
            else:
                outs.append(stage(x))
        y = self.merge_layer[0](torch.cat(outs, 1))
        y = channel_shuffle(y, len(self.SCALES))
        y = self.merge_layer[3](self.merge_layer[2](y))
        return self.br(y) if hasattr(self, "br") else y


class SqueezeMerge(nn.Module):
    """Encoder-to-decoder merge: grouped 3x3 conv-BN-PReLU scaled by a sigmoid channel gate."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv(cin, cout, 1), nn.Sigmoid())
        self.expansion_layer = _Seq(cin, cout, 3, groups=math.gcd(cin, cout))

    def forward(self, x: Tensor) -> Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)


class ESPNetv2Seg(nn.Module):
    """ESPNetv2 segmentation network: ``[N, 3, H, W]`` normalised -> logits ``[N, classes, H, W]``.

    ``H`` and ``W`` must be multiples of 16 (the decoder upsamples by exact factors of 2).
    """

    def __init__(self, num_classes: int = len(PASCAL_CLASSES), decoder_base: int = 16):
        super().__init__()
        c1, c2, c3, c4 = ESPNETV2_CHANNELS
        d1, d2, d3 = 4 * decoder_base, 3 * decoder_base, 2 * decoder_base
        proj = min(num_classes // 2, decoder_base)
        self.base_net = Encoder()
        self.bu_dec_l1 = PyramidPool(c4, proj, d1)
        self.bu_dec_l2 = PyramidPool(d1, proj, d2)
        self.bu_dec_l3 = PyramidPool(d2, proj, d3)
        self.bu_dec_l4 = PyramidPool(d3, proj, num_classes, last_br=False)
        self.merge_enc_dec_l2 = SqueezeMerge(c3, d1)
        self.merge_enc_dec_l3 = SqueezeMerge(c2, d2)
        self.merge_enc_dec_l4 = SqueezeMerge(c1, d3)
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(d1), nn.PReLU(d1))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(d2), nn.PReLU(d2))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(d3), nn.PReLU(d3))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % 16 or w % 16:
            raise ValueError(f"ESPNetv2: input {h}x{w} must be a multiple of 16 on each side")
        l1, l2, l3, l4 = self.base_net(x)

        def up(t: Tensor) -> Tensor:
            return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=True)

        y = self.bu_dec_l1(l4)
        y = self.bu_dec_l2(self.bu_br_l2(up(y) + self.merge_enc_dec_l2(l3)))
        y = self.bu_dec_l3(self.bu_br_l3(up(y) + self.merge_enc_dec_l3(l2)))
        y = self.bu_dec_l4(self.bu_br_l4(up(y) + self.merge_enc_dec_l4(l1)))
        return F.interpolate(y, (h, w), mode="bilinear", align_corners=True)


def load_espnetv2(checkpoint: str | Path, key: str = "teachers.language.kwargs.checkpoint") -> ESPNetv2Seg:
    """ESPNetv2-PASCAL from a published state-dict file, loaded strictly (eval mode); errors name ``key``."""
    what = "ESPNetv2-PASCAL (s = 2.0) state dict"
    path = require_file(checkpoint, key)
    state = state_dict_of(read_weights(path, key, what), key, path, what)
    model = ESPNetv2Seg()
    ours = model.state_dict()
    shapes = [k for k, v in state.items() if k in ours and tuple(v.shape) != tuple(ours[k].shape)]
    missing, unexpected = [k for k in ours if k not in state], [k for k in state if k not in ours]
    if missing or unexpected or shapes:
        raise mismatch(key, path, what, missing, unexpected, shapes)
    model.load_state_dict(state, strict=True)
    return model.eval()


def espnetv2_logits(net: ESPNetv2Seg, images: Tensor, input_size: tuple[int, int]) -> Tensor:
    """``images [N, 3, H, W]`` in ``[0, 1]`` -> logits ``[N, 21, H, W]``: ImageNet-standardised and
    resized to ``input_size`` (multiples of 16) for the network, the logits resized back bilinearly."""
    h, w = images.shape[-2:]
    x = F.interpolate(images, tuple(input_size), mode="bilinear", align_corners=False)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    logits = net((x - mean) / std)
    return F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)


class ESPNetv2Teacher(nn.Module):
    """Closed-vocabulary language teacher: ESPNetv2 class probabilities embedded in a ``dim``-d space.

    ``features = normalize(sum_k softmax(logits / temperature)_k * table[k])`` at ``1/stride`` of the
    input resolution; ``table`` is a fixed unit embedding per PASCAL class (seeded), and
    :meth:`class_embeddings` returns its rows, which play the role of CLIP text embeddings.

    Args:
        checkpoint: local ``espnetv2_s_2.0_pascal_*.pth`` (loaded strictly; never downloaded).
        input_size: ``(H, W)`` the image is resized to for the network (multiples of 16; the
            published weights were trained at 256x256 or 384x384).
        dim: feature channels (512, as LSeg, so it takes the language role).
        stride: output stride relative to the input image (2: half resolution, as LSeg).
        temperature: softmax temperature of the logits (1 = the network's own probabilities).
        seed: seed of the class-embedding table.
        name: registry name (``espnetv2`` for the language role; ``espnetv2_seg`` is the same
            network with a 256-d table at stride 4, for the segmentation role where SAM is absent).
    """

    needs_labels = False
    class_names = PASCAL_CLASSES

    def __init__(self, checkpoint: str | Path | None = None, input_size: tuple[int, int] | list[int] | int = 256,
                 dim: int = 512, stride: int = 2, temperature: float = 1.0, seed: int = 7, name: str = "espnetv2"):  # fmt: skip
        super().__init__()
        self.name = name
        size = (
            (int(input_size), int(input_size))
            if isinstance(input_size, (int, float))
            else tuple(int(s) for s in input_size)
        )
        if len(size) != 2 or size[0] % 16 or size[1] % 16:
            raise ValueError(f"espnetv2.input_size: expected multiples of 16, got {input_size!r}")
        if temperature <= 0:
            raise ValueError(f"espnetv2.temperature: expected > 0, got {temperature}")
        role = "segmentation" if name == "espnetv2_seg" else "language"
        self.net = load_espnetv2(checkpoint, key=f"teachers.{role}.kwargs.checkpoint")
        self.net.requires_grad_(False)
        self.input_size, self.dim, self.stride, self.temperature = size, dim, stride, temperature
        self.register_buffer("table", _unit_table(len(PASCAL_CLASSES), dim, seed), persistent=False)

    def train(self, mode: bool = True) -> ESPNetv2Teacher:
        super().train(mode)
        self.net.eval()  # frozen BN statistics, always
        return self

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.stride, width // self.stride

    def class_embeddings(self, class_ids: list[int] | None = None) -> Tensor:
        """``[K, dim]`` unit embeddings of PASCAL classes ``class_ids`` (default 1..20, no background)."""
        ids = list(range(1, len(PASCAL_CLASSES))) if class_ids is None else class_ids
        return self.table[ids]

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        """``images [N, 3, H, W]`` in ``[0, 1]`` -> logits ``[N, 21, H, W]`` (network at ``input_size``)."""
        return espnetv2_logits(self.net, images.float(), self.input_size)

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """``[N, 21, H, W]`` class probabilities."""
        return torch.softmax(self.logits(images) / self.temperature, dim=1)

    @torch.no_grad()
    def encode(self, images: Tensor, labels: Tensor | None = None, instances: Tensor | None = None) -> Tensor:
        """``images [N, 3, H, W]`` in ``[0, 1]`` -> ``[N, dim, H/stride, W/stride]`` unit features."""
        probs = self.probabilities(images)
        if self.stride > 1:
            probs = F.avg_pool2d(probs, self.stride)
        return F.normalize(torch.einsum("nkhw,kc->nchw", probs, self.table), dim=1)


@register_teacher("espnetv2")
def build_espnetv2_teacher(**kwargs) -> ESPNetv2Teacher:
    return ESPNetv2Teacher(**kwargs)


@register_teacher("espnetv2_seg")
def build_espnetv2_segmentation_teacher(**kwargs) -> ESPNetv2Teacher:
    """ESPNetv2 in the SAM role: class probabilities in a 256-d table on a stride-4 grid. These are
    semantic, not instance, features (it does not separate two chairs); used where no SAM weights exist."""
    return ESPNetv2Teacher(**({"dim": 256, "stride": 4, "seed": 8} | kwargs), name="espnetv2_seg")


@register_class_table("espnetv2")
def espnetv2_class_table(dim: int = 512, seed: int = 7, **_: object) -> Tensor:
    """``[21, dim]``: the ``espnetv2`` teacher's table (PASCAL background + 20 classes)."""
    return _unit_table(len(PASCAL_CLASSES), int(dim), int(seed))


@register_class_table("espnetv2_seg")
def espnetv2_seg_class_table(dim: int = 256, seed: int = 8, **_: object) -> Tensor:
    """``[21, dim]``: the ``espnetv2_seg`` teacher's table (its defaults: 256-d, seed 8)."""
    return _unit_table(len(PASCAL_CLASSES), int(dim), int(seed))


def pascal_class_embeddings(dim: int = 512, seed: int = 7) -> Tensor:
    """``[20, dim]`` rows of :class:`ESPNetv2Teacher`'s class table for the 20 PASCAL object classes
    (no weights needed: the table depends only on ``dim`` and ``seed``)."""
    return espnetv2_class_table(dim, seed)[1:]


def pascal_background_embedding(dim: int = 512, seed: int = 7) -> Tensor:
    """``[dim]`` row of :class:`ESPNetv2Teacher`'s class table for PASCAL's background (class 0): where
    the language field is closest to it, nothing of the vocabulary is there (``background_embedding``
    in ``model.pt``)."""
    return espnetv2_class_table(dim, seed)[0]
