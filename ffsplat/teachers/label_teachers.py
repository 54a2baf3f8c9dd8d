"""Label-derived stand-in teachers, for learning benchmarks where no SAM/LSeg weights exist.

These are **not** SAM or LSeg. They turn ground-truth labels into feature maps with the properties
that matter for distillation, so the whole pipeline can be trained and measured on synthetic rooms:

* :class:`LabelLanguageTeacher` (``"label_lang"``, 512-d, like LSeg): a fixed unit embedding per
  class, then *per-view* random class flips of whole regions (so, like LSeg, the teacher disagrees
  with itself across views), boundary blur, Gaussian noise, L2 normalisation, at half resolution.
  :meth:`LabelLanguageTeacher.class_embeddings` plays the role of CLIP text embeddings.
* :class:`LabelSegmentationTeacher` (``"label_seg"``, 256-d, like SAM's grid): a fixed unit embedding
  per instance id plus noise, average-pooled to a stride-4 grid (SAM's 64x64 grid for 256x256).

Randomness (flips, noise) is drawn from a generator seeded per call, so a frame gets the same
features whenever they are computed (cached in shards or online).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffsplat.core.vocabulary import EVAL_CLASSES
from ffsplat.teachers.base import register_class_table, register_teacher


def _unit_table(count: int, dim: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(count, dim, generator=gen), dim=-1)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` (replicate padding)."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _seeds(labels: Tensor, seed: int) -> list[int]:
    """One deterministic seed per image, from its labels (so a frame always gets the same draw)."""
    return [(seed * 1_000_003 + int(_label_hash(item))) % (2**31) for item in labels]


def _label_hash(item: Tensor) -> Tensor:
    """0-d int64 hash of a label map, computed on the map's own device (CPU or CUDA)."""
    values = item.flatten()[:: max(1, item.numel() // 4096)].to(torch.int64)
    return (values * torch.arange(1, len(values) + 1, device=values.device)).sum()


class LabelLanguageTeacher(nn.Module):
    """Language-feature stand-in: class embeddings with per-view flips, blur and noise.

    Args:
        num_classes: evaluation classes (1..num_classes; 0 = unlabelled gets its own embedding).
        dim: feature channels (512, as LSeg).
        flip_rate: probability that a region (an instance, or a class region when no instances are
            given) takes a random other class in a given view.
        blur_sigma: boundary blur in input pixels.
        noise_std: standard deviation of Gaussian noise added per channel before normalising.
        stride: output stride (2: half resolution, as LSeg).
        seed: seed of the class table and of the per-frame randomness.
    """

    name = "label_lang"
    needs_labels = True

    def __init__(self, num_classes: int = len(EVAL_CLASSES), dim: int = 512, flip_rate: float = 0.1,
                 blur_sigma: float = 1.5, noise_std: float = 0.02, stride: int = 2, seed: int = 0):  # fmt: skip
        super().__init__()
        self.dim, self.num_classes, self.flip_rate = dim, num_classes, flip_rate
        self.blur_sigma, self.noise_std, self.stride, self.seed = blur_sigma, noise_std, stride, seed
        self.register_buffer("table", _unit_table(num_classes + 1, dim, seed), persistent=False)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.stride, width // self.stride

    def class_embeddings(self, class_ids: list[int] | None = None) -> Tensor:
        """``[K, dim]`` unit embeddings of classes ``class_ids`` (default 1..num_classes)."""
        ids = list(range(1, self.num_classes + 1)) if class_ids is None else class_ids
        return self.table[ids]

    def flipped_labels(self, labels: Tensor, instances: Tensor | None, seeds: list[int]) -> Tensor:
        """``[N, H, W]`` labels after per-view region flips."""
        out = labels.clone()
        for i, (lab, seed) in enumerate(zip(labels, seeds)):
            gen = torch.Generator().manual_seed(seed)
            regions = instances[i] if instances is not None else lab
            for region in torch.unique(regions).tolist():
                if torch.rand((), generator=gen) >= self.flip_rate:
                    continue
                mask = regions == region
                current = int(lab[mask][0])
                if current == 0:
                    continue
                choice = int(torch.randint(1, self.num_classes, (), generator=gen))
                out[i][mask & (lab > 0)] = choice if choice < current else choice + 1  # any class but the true one
        return out

    @torch.no_grad()
    def encode(self, images: Tensor, labels: Tensor | None = None, instances: Tensor | None = None) -> Tensor:
        """``labels [N, H, W]`` (8-class, 0 = unlabelled) -> ``[N, dim, H/stride, W/stride]`` unit features."""
        if labels is None:
            raise ValueError("the label_lang teacher needs ground-truth labels (it is a benchmark stand-in for LSeg)")
        seeds = _seeds(labels, self.seed)
        flipped = self.flipped_labels(labels.cpu(), None if instances is None else instances.cpu(), seeds).to(
            labels.device
        )
        # Blur and pooling are linear, so apply them to the one-hot classes (K+1 channels) and
        # embed afterwards: identical to blurring the 512-d embeddings, ~50x cheaper.
        onehot = F.one_hot(flipped.clamp(0, self.num_classes), self.num_classes + 1).permute(0, 3, 1, 2).to(self.table)
        onehot = _gaussian_blur(onehot, self.blur_sigma)
        if self.stride > 1:
            onehot = F.avg_pool2d(onehot, self.stride)
        feats = torch.einsum("nkhw,kc->nchw", onehot, self.table)
        if self.noise_std > 0:
            noise = torch.stack(
                [torch.randn(feats.shape[1:], generator=torch.Generator().manual_seed(s + 1)) for s in seeds]
            )
            feats = feats + self.noise_std * noise.to(feats)
        return F.normalize(feats, dim=1)


class LabelSegmentationTeacher(nn.Module):
    """Segmentation-feature stand-in: a unit embedding per instance id plus noise, on a stride-4 grid.

    Args:
        dim: feature channels (256, as SAM).
        noise_std: Gaussian noise per channel before normalising.
        stride: output stride (4: SAM's 64x64 grid for 256x256 images).
        max_instances: size of the instance embedding table (ids are taken modulo it).
        seed: seed of the table and of the per-frame noise.
    """

    name = "label_seg"
    needs_labels = True

    def __init__(
        self, dim: int = 256, noise_std: float = 0.05, stride: int = 4, max_instances: int = 4096, seed: int = 1
    ):
        super().__init__()
        self.dim, self.noise_std, self.stride, self.seed = dim, noise_std, stride, seed
        self.register_buffer("table", _unit_table(max_instances, dim, seed), persistent=False)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.stride, width // self.stride

    @torch.no_grad()
    def encode(self, images: Tensor, labels: Tensor | None = None, instances: Tensor | None = None) -> Tensor:
        """``instances [N, H, W]`` -> ``[N, dim, H/stride, W/stride]`` unit features."""
        if instances is None:
            raise ValueError("the label_seg teacher needs instance ids (it is a benchmark stand-in for SAM)")
        feats = self.table[instances.long() % len(self.table)].permute(0, 3, 1, 2)
        if self.stride > 1:
            feats = F.avg_pool2d(feats, self.stride)
        if self.noise_std > 0:
            seeds = _seeds(instances, self.seed)
            noise = torch.stack(
                [torch.randn(feats.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds]
            )
            feats = feats + self.noise_std * noise.to(feats)
        return F.normalize(feats, dim=1)


@register_class_table("label_lang")
def label_lang_class_table(num_classes: int = len(EVAL_CLASSES), dim: int = 512, seed: int = 0, **_: object) -> Tensor:
    """``[num_classes + 1, dim]``: the ``label_lang`` stand-in's table (row 0: unlabelled)."""
    return _unit_table(int(num_classes) + 1, int(dim), int(seed))


@register_teacher("label_lang")
def build_label_language_teacher(**kwargs) -> LabelLanguageTeacher:
    return LabelLanguageTeacher(**kwargs)


@register_teacher("label_seg")
def build_label_segmentation_teacher(**kwargs) -> LabelSegmentationTeacher:
    return LabelSegmentationTeacher(**kwargs)
