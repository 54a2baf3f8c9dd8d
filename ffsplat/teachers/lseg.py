"""LSeg (Li et al., "Language-driven Semantic Segmentation", ICLR 2022): the language teacher.

Architecture of the published ``demo_e200.ckpt`` model (backbone ``clip_vitl16_384``)::

    image (normalised with mean = std = 0.5) ─ ViT-L/16 (timm vit_large_patch16_384, position
      embedding bilinearly resampled to the input grid) ─ tokens after blocks 5, 11, 17, 23
    ─ reassemble: readout projection (cat(patch, cls) -> Linear + GELU), 1x1 conv to 256/512/1024/1024
      channels, resample to strides 4/8/16/32 (4x / 2x transposed conv, identity, 3x3 stride-2 conv)
    ─ scratch.layer{1..4}_rn (3x3 convs to ``features`` = 256)
    ─ scratch.refinenet4..1 (DPT fusion blocks: residual conv units with BatchNorm, 2x bilinear up)
    ─ scratch.head1 (1x1 conv to 512) ─► pixel features at H/2 x W/2, L2-normalised
    logits = logit_scale * <pixel, CLIP ViT-B/32 text embedding>,   logit_scale = 1 / 0.07

(The official net then upsamples the logits 2x; :meth:`LSegTeacher.encode` returns the H/2 features.)

**Checkpoint key map.** Our modules carry the official names, so an official key loads after
stripping ``net.`` with no renaming (:data:`KEY_MAP` is empty): ``pretrained.model.*`` is the timm
ViT (including its unused final ``norm`` and 1000-class ``head``, kept so the key set matches
strictly), ``pretrained.act_postprocess{i}.{0,3,4}`` the reassemble layers (indices 1 and 2 are the
official parameter-free Transpose/Unflatten, kept as placeholders), ``scratch.*`` the decoder.
Dropped on load (:data:`IGNORED_PREFIXES`): ``net.clip_pretrained.*`` -- the frozen OpenAI CLIP
ViT-B/32 the official net keeps inside (its text tower is the one :mod:`clip_text` loads from
``teachers.language.kwargs.clip_path``) -- and the Lightning module's metric/criterion states. ``logit_scale`` is
not in the official state dict (the official code stores it as a plain tensor, ``.exp()`` of a
Parameter); ours is a non-persistent buffer. Any other extra, missing or mis-shaped key raises.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffsplat.teachers.base import register_teacher, require_file
from ffsplat.teachers.clip_text import LSEG_TEMPLATE, ClipTextEncoder

CHECKPOINT_KEY = "teachers.language.kwargs.checkpoint"
LSEG_MEAN = (0.5, 0.5, 0.5)
LSEG_STD = (0.5, 0.5, 0.5)
LOGIT_SCALE = 1.0 / 0.07
OFFICIAL_PREFIX = "net."
KEY_MAP: dict[str, str] = {}
"""Official key (``net.`` stripped) prefix -> our prefix. Empty: our modules use the official names."""
IGNORED_PREFIXES = ("net.clip_pretrained.", "train_accuracy.", "val_accuracy.", "criterion.")
"""Official checkpoint keys that are not part of the pixel network (see module docstring)."""
BACKBONES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "vit_large_patch16_384": ((5, 11, 17, 23), (256, 512, 1024, 1024)),  # LSeg clip_vitl16_384 (demo)
    "vit_base_patch32_384": ((2, 5, 8, 11), (96, 192, 384, 768)),  # LSeg clip_vitb32_384
}
"""timm backbone -> (hooked block indices, reassembled channels per level), as in LSeg/DPT."""


class ProjectReadout(nn.Module):
    """DPT "project" readout: ``[B, 1+P, C]`` tokens -> ``[B, P, C]`` = GELU(Linear(cat(patch, cls)))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, tokens: Tensor) -> Tensor:
        patches = tokens[:, 1:]
        return self.project(torch.cat([patches, tokens[:, :1].expand_as(patches)], dim=-1))


def _reassemble(vit_dim: int, channels: int, patch: int, stride: int) -> nn.Sequential:
    """Official ``act_postprocess`` layout: readout, (Transpose), (Unflatten), 1x1 conv, resample to ``stride``."""
    layers: list[nn.Module] = [ProjectReadout(vit_dim), nn.Identity(), nn.Identity(), nn.Conv2d(vit_dim, channels, 1)]
    if patch > stride:
        layers.append(nn.ConvTranspose2d(channels, channels, kernel_size=patch // stride, stride=patch // stride))
    elif patch < stride:
        layers.append(nn.Conv2d(channels, channels, kernel_size=3, stride=stride // patch, padding=1))
    return nn.Sequential(*layers)


class ViTBackbone(nn.Module):
    """timm ViT (``model``) + four reassemble branches (``act_postprocess1..4``).

    ``forward``: ``[N, 3, H, W]`` (H, W multiples of 32) -> maps at strides 4, 8, 16, 32.
    """

    def __init__(
        self, backbone: str, hooks: Sequence[int], channels: Sequence[int], vit_kwargs: Mapping | None = None
    ) -> None:
        super().__init__()
        import timm

        self.model = timm.create_model(backbone, pretrained=False, **dict(vit_kwargs or {}))
        if getattr(self.model, "cls_token", None) is None or self.model.num_prefix_tokens != 1:
            raise ValueError(
                f"LSeg needs a ViT with exactly one class token; {backbone} has {self.model.num_prefix_tokens}"
            )
        self.hooks = tuple(int(h) for h in hooks)
        if len(self.hooks) != 4 or len(channels) != 4 or max(self.hooks) >= len(self.model.blocks):
            raise ValueError(
                f"need 4 hooks < depth {len(self.model.blocks)} and 4 channel counts, got {hooks}, {channels}"
            )
        self.patch = int(self.model.patch_embed.patch_size[0])
        dim = int(self.model.embed_dim)
        for i, (c, stride) in enumerate(zip(channels, (4, 8, 16, 32)), start=1):
            self.add_module(f"act_postprocess{i}", _reassemble(dim, c, self.patch, stride))

    def forward(self, x: Tensor) -> list[Tensor]:
        m, (n, _, h, w) = self.model, x.shape
        gh, gw = h // self.patch, w // self.patch
        tokens = m.patch_embed.norm(m.patch_embed.proj(x).flatten(2).transpose(1, 2))
        pos_cls, pos = m.pos_embed[:, :1], m.pos_embed[:, 1:]
        side = math.isqrt(pos.shape[1])
        if (gh, gw) != (side, side):  # official _resize_pos_embed: bilinear, align_corners=False
            grid = pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
            pos = F.interpolate(grid, size=(gh, gw), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        tokens = torch.cat([m.cls_token.expand(n, -1, -1), tokens], dim=1) + torch.cat([pos_cls, pos], dim=1)
        tokens = m.norm_pre(m.pos_drop(tokens))
        outs = []
        for i, block in enumerate(m.blocks[: max(self.hooks) + 1]):
            tokens = block(tokens)
            if i in self.hooks:
                post = getattr(self, f"act_postprocess{len(outs) + 1}")
                feat = post[0](tokens).transpose(1, 2).reshape(n, -1, gh, gw)
                outs.append(post[3:](feat))
        return outs


class ResidualConvUnit(nn.Module):
    """``x + BN(conv(ReLU(BN(conv(ReLU(x))))))`` (DPT ``ResidualConvUnit_custom``, bn=True: no conv bias)."""

    def __init__(self, features: int, use_bn: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=not use_bn)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=not use_bn)
        self.bn1 = nn.BatchNorm2d(features) if use_bn else nn.Identity()
        self.bn2 = nn.BatchNorm2d(features) if use_bn else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(F.relu(x))))))


class FusionBlock(nn.Module):
    """DPT fusion: ``out_conv(up2(rcu2(x + rcu1(skip))))`` (bilinear, align_corners=True)."""

    def __init__(self, features: int, use_bn: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features, use_bn)  # official spelling; unused in refinenet4
        self.resConfUnit2 = ResidualConvUnit(features, use_bn)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = F.interpolate(self.resConfUnit2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    """DPT decoder + LSeg head: four stride-4..32 maps -> ``[N, out_dim, H/2, W/2]`` (un-normalised)."""

    def __init__(self, channels: Sequence[int], features: int, out_dim: int, use_bn: bool = True) -> None:
        super().__init__()
        for i, c in enumerate(channels, start=1):
            self.add_module(f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
        for i in range(1, 5):
            self.add_module(f"refinenet{i}", FusionBlock(features, use_bn))
        self.head1 = nn.Conv2d(features, out_dim, 1)

    def forward(self, layers: Sequence[Tensor]) -> Tensor:
        l1, l2, l3, l4 = (getattr(self, f"layer{i}_rn")(x) for i, x in enumerate(layers, start=1))
        path = self.refinenet4(l4)
        path = self.refinenet3(path, l3)
        path = self.refinenet2(path, l2)
        return self.head1(self.refinenet1(path, l1))


class LSegNet(nn.Module):
    """LSeg's image side. ``forward``: normalised ``[N, 3, H, W]`` (H, W multiples of 32) ->
    un-normalised pixel features ``[N, out_dim, H/2, W/2]``.

    Args:
        backbone: timm ViT name (``vit_large_patch16_384`` for the published model).
        features: decoder width (256).
        hooks, channels: hooked blocks and reassembled channels; defaults from :data:`BACKBONES`.
        out_dim: pixel/text embedding size (512 for CLIP ViT-B/32).
        use_bn: BatchNorm in the fusion blocks (True in ``LSegNet``).
        vit_kwargs: extra ``timm.create_model`` arguments (e.g. a small ``depth``/``embed_dim`` for tests).
    """

    def __init__(self, backbone: str = "vit_large_patch16_384", features: int = 256, hooks: Sequence[int] | None = None,
                 channels: Sequence[int] | None = None, out_dim: int = 512, use_bn: bool = True,
                 vit_kwargs: Mapping | None = None) -> None:  # fmt: skip
        super().__init__()
        if hooks is None or channels is None:
            if backbone not in BACKBONES:
                raise KeyError(
                    f"no default hooks/channels for backbone {backbone!r}; give them or use one of {sorted(BACKBONES)}"
                )
            hooks, channels = hooks or BACKBONES[backbone][0], channels or BACKBONES[backbone][1]
        self.out_dim = out_dim
        self.pretrained = ViTBackbone(backbone, hooks, channels, vit_kwargs)
        self.scratch = Scratch(channels, features, out_dim, use_bn)
        self.register_buffer("logit_scale", torch.tensor(LOGIT_SCALE), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.scratch(self.pretrained(x))


def official_state_dict(net: LSegNet) -> dict[str, Tensor]:
    """Our weights under the official ``demo_e200.ckpt`` key names (``net.`` + inverse :data:`KEY_MAP`)."""
    inverse = {ours: theirs for theirs, ours in KEY_MAP.items()}
    return {OFFICIAL_PREFIX + _rename(k, inverse): v for k, v in net.state_dict().items()}


def _rename(key: str, mapping: Mapping[str, str]) -> str:
    for src, dst in mapping.items():
        if key.startswith(src):
            return dst + key[len(src) :]
    return key


def _read_checkpoint(path: Path, allow_pickle: bool = False) -> Mapping[str, Tensor]:
    """The state dict of an LSeg checkpoint, read with ``weights_only=True``.

    The official ``demo_e200.ckpt`` is a Lightning checkpoint whose pickled hyper-parameters may
    need a full unpickle, which can run arbitrary code from the file. That is done only with
    ``allow_pickle=True`` (teacher kwarg ``allow_pickle``, off by default), for a file you trust;
    otherwise a clear error says how to opt in.
    """
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - Lightning pickles hyper-parameters
        if not allow_pickle:
            raise ValueError(
                f"{CHECKPOINT_KEY}: {path} cannot be read with weights_only=True ({type(err).__name__}); it needs a full "
                "unpickle, which can run code from the file. If you trust it, opt in with the lseg teacher kwarg "
                "allow_pickle=true (e.g. teachers.language.kwargs.allow_pickle=true, or --teacher lseg:...,allow_pickle=true)"
            ) from err
        warnings.warn(
            f"{CHECKPOINT_KEY}: {path} needs full unpickling ({type(err).__name__}); allow_pickle=true: loading with weights_only=False",
            stacklevel=2,
        )
        blob = torch.load(path, map_location="cpu", weights_only=False)
    state = blob.get("state_dict", blob) if isinstance(blob, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{CHECKPOINT_KEY}: {path} holds no state dict (expected a Lightning checkpoint with 'state_dict')"
        )
    return state


def load_lseg_weights(net: LSegNet, state: Mapping[str, Tensor], source: str = "state dict") -> None:
    """Load an official-layout state dict (``net.``-prefixed keys; :data:`IGNORED_PREFIXES` dropped) strictly.

    Raises:
        KeyError listing missing and unexpected keys; ValueError listing shape mismatches.
    """
    ours = net.state_dict()
    mapped: dict[str, Tensor] = {}
    source_key: dict[str, str] = {}
    unexpected = []
    for key, value in state.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        name = _rename(key[len(OFFICIAL_PREFIX) :], KEY_MAP) if key.startswith(OFFICIAL_PREFIX) else None
        if name is None or name not in ours:
            unexpected.append(key)
        else:
            mapped[name], source_key[name] = value, key
    missing = sorted(OFFICIAL_PREFIX + k for k in set(ours) - set(mapped))
    if missing or unexpected:
        raise KeyError(f"{CHECKPOINT_KEY}: {source} does not match the LSeg layout: {len(missing)} missing keys "
                       f"{missing[:10]}, {len(unexpected)} unexpected keys {sorted(unexpected)[:10]}")  # fmt: skip
    shapes = [
        (source_key[k], tuple(v.shape), tuple(ours[k].shape)) for k, v in mapped.items() if v.shape != ours[k].shape
    ]
    if shapes:
        raise ValueError(
            f"{CHECKPOINT_KEY}: {source}: {len(shapes)} shape mismatches (key, checkpoint, model): {shapes[:10]}"
        )
    net.load_state_dict(mapped, strict=True)


class LSegTeacher(nn.Module):
    """Frozen LSeg as a :class:`~ffsplat.teachers.base.Teacher` (512-d language features at half resolution).

    Args:
        net: the pixel network (weights already loaded).
        text: CLIP text encoder for :meth:`class_logits` (optional for :meth:`encode`).
    """

    name = "lseg"
    needs_labels = False

    def __init__(self, net: LSegNet, text: ClipTextEncoder | None = None) -> None:
        super().__init__()
        if text is not None and text.dim != net.out_dim:
            raise ValueError(f"CLIP text dim {text.dim} != LSeg pixel dim {net.out_dim}")
        self.net = net.eval().requires_grad_(False)
        self.text = text
        self.dim = net.out_dim
        self.register_buffer("mean", torch.tensor(LSEG_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(LSEG_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> LSegTeacher:
        return super().train(False)  # frozen teacher: BatchNorm always uses running statistics

    @property
    def logit_scale(self) -> Tensor:
        return self.net.logit_scale

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return (height + 1) // 2, (width + 1) // 2

    @torch.no_grad()
    def encode(self, images: Tensor, labels: Tensor | None = None, instances: Tensor | None = None) -> Tensor:
        """``images [N, 3, H, W]`` RGB in [0, 1] -> unit-norm pixel features ``[N, 512, ceil(H/2), ceil(W/2)]``.

        Inputs are normalised with mean = std = 0.5 and padded bottom/right to multiples of 32 with
        black (as LSeg's evaluation pads); the padding is cropped from the output.
        """
        h, w = images.shape[-2:]
        x = (images.to(self.mean) - self.mean) / self.std
        x = F.pad(x, (0, -w % 32, 0, -h % 32), value=-1.0)  # -mean/std: black
        feats = self.net(x)[..., : (h + 1) // 2, : (w + 1) // 2]
        return F.normalize(feats, dim=1)

    def text_features(self, label_names: Sequence[str]) -> Tensor:
        """``K`` class names -> unit-norm CLIP text embeddings ``[K, 512]``."""
        if self.text is None:
            raise FileNotFoundError(
                "teachers.language.kwargs.clip_path is not set: LSeg class logits need the CLIP ViT-B/32 text model"
            )
        return self.text(label_names)

    def class_logits(self, images: Tensor, label_names: Sequence[str]) -> Tensor:
        """``[N, 3, H, W]`` in [0, 1] + K names -> ``logit_scale * cos(pixel, text)``, ``[N, K, ceil(H/2), ceil(W/2)]``."""
        return self.logits_from_features(self.encode(images), self.text_features(label_names))

    def logits_from_features(self, features: Tensor, text: Tensor) -> Tensor:
        """Unit-norm ``features [N, 512, h, w]`` and ``text [K, 512]`` -> logits ``[N, K, h, w]``."""
        return self.net.logit_scale * torch.einsum("nchw,kc->nkhw", features, text.to(features))


@register_teacher("lseg")
def build_lseg_teacher(checkpoint: str | Path | None = None, clip_path: str | Path | None = None,
                       backbone: str = "vit_large_patch16_384", features: int = 256, hooks: Sequence[int] | None = None,
                       channels: Sequence[int] | None = None, vit_kwargs: Mapping | None = None,
                       prompt_template: str = LSEG_TEMPLATE, text_cache_dir: str | Path | None = None,
                       device: str | torch.device = "cpu", allow_pickle: bool = False) -> LSegTeacher:  # fmt: skip
    """LSeg from the official ``demo_e200.ckpt`` at ``checkpoint`` (``teachers.language.kwargs.checkpoint``) and,
    if ``clip_path`` (``teachers.language.kwargs.clip_path``) is given, the CLIP ViT-B/32 text tower for class logits.
    ``allow_pickle``: permit a full unpickle of the checkpoint (see :func:`_read_checkpoint`); off by default."""
    path = require_file(checkpoint, CHECKPOINT_KEY)
    text = None
    if clip_path is not None:
        text = ClipTextEncoder.from_pretrained(clip_path, template=prompt_template, cache_dir=text_cache_dir)
    net = LSegNet(backbone, features, hooks, channels, vit_kwargs=vit_kwargs)
    load_lseg_weights(net, _read_checkpoint(path, allow_pickle), source=str(path))
    return LSegTeacher(net, text).to(device)
