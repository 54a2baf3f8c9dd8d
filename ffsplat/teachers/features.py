"""Teacher features for clips, computed the same way whether cached in shards or computed online.

Teachers see exactly what the training loader yields: the shard writer passes the JPEG-decoded
images (not the pre-compression pixels) so cached features equal online ones up to float16.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffsplat.core.errors import InputError, one_line
from ffsplat.teachers.base import build_teacher


class TeacherLoadError(InputError):
    """A teacher that cannot be built from its options: unknown or wrong options, missing, unsafe or
    mismatching weights. One line naming the teacher and its options."""


class TeacherWeightsNotFound(FileNotFoundError):
    """A teacher's weights file or folder does not exist (a FileNotFoundError, as before, naming the teacher)."""


def load_teachers(specs: dict[str, dict], device: str | torch.device = "cpu") -> dict[str, nn.Module]:
    """Build teachers from ``{name: config kwargs}``; a teacher that cannot be built raises
    :class:`TeacherLoadError` naming it (the error contract: one line, never a traceback)."""
    teachers = {}
    for name, kwargs in specs.items():
        try:
            teachers[name] = build_teacher(name, **kwargs).to(device).eval()
        except (TypeError, ValueError, KeyError, OSError, RuntimeError) as exc:  # InputError is a ValueError
            options = ",".join(f"{k}={v}" for k, v in kwargs.items())
            error = TeacherWeightsNotFound if isinstance(exc, FileNotFoundError) else TeacherLoadError
            raise error(f"teacher {name}{':' + options if options else ''}: {one_line(exc)}") from exc
    return teachers


@torch.no_grad()
def teacher_features(
    teachers: dict[str, nn.Module],
    images: Tensor,
    labels: Tensor | None = None,
    instances: Tensor | None = None,
    size: tuple[int, int] | None = None,
    batch_size: int = 8,
) -> dict[str, Tensor]:
    """Features of every teacher for a stack of frames.

    Args:
        images: ``[N, 3, H, W]`` RGB in ``[0, 1]``; labels/instances: ``[N, H, W]`` or None.
        size: resize every teacher's output to this ``(h, w)`` (area interpolation); None keeps
            each teacher's native grid.
    Returns:
        name -> ``[N, C, h, w]`` float32 on the images' device.
    """
    out: dict[str, Tensor] = {}
    for name, teacher in teachers.items():
        chunks = []
        for start in range(0, len(images), batch_size):
            sl = slice(start, start + batch_size)
            feats = teacher.encode(
                images[sl],
                labels=None if labels is None else labels[sl],
                instances=None if instances is None else instances[sl],
            ).float()
            if size is not None and tuple(feats.shape[-2:]) != tuple(size):
                feats = F.interpolate(feats, size=size, mode="area")
            chunks.append(feats)
        out[name] = torch.cat(chunks)
    return out


def is_mask_teacher(teacher: nn.Module) -> bool:
    """Whether a loaded teacher produces three-scale masks (``masks``) instead of features (``encode``)."""
    return getattr(teacher, "produces", "features") == "masks"


def clip_teacher_features(
    teachers: dict[str, nn.Module],
    images: np.ndarray,
    labels: np.ndarray | None,
    instances: np.ndarray | None,
    size: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """``[L, H, W, 3]`` uint8 clip frames (+ labels/instances) -> name -> ``[L, C, h, w]`` float16
    (feature teachers only: mask teachers are left to :func:`clip_teacher_masks`)."""
    teachers = {name: t for name, t in teachers.items() if not is_mask_teacher(t)}
    if not teachers:
        return {}
    device = next(
        (b.device for t in teachers.values() for b in list(t.parameters()) + list(t.buffers())), torch.device("cpu")
    )
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(device)

    def as_long(a):
        return None if a is None else torch.from_numpy(a.astype(np.int64)).to(device)

    feats = teacher_features(teachers, tensor, as_long(labels), as_long(instances), size)
    return {k: v.cpu().numpy().astype(np.float16) for k, v in feats.items()}


@torch.no_grad()
def clip_teacher_masks(teachers: dict[str, nn.Module], images: np.ndarray, batch_size: int = 8) -> dict | None:
    """Three-scale masks of the (single) mask teacher among ``teachers`` for ``[L, H, W, 3]`` uint8
    clip frames, as the :class:`~ffsplat.data.clip.Clip` ``masks`` arrays (``segments [L, 3, H, W]``,
    ``tables [L, 3, U, K]``, ``counts [L, 3]``, see :class:`~ffsplat.core.types.SegmentMasks`);
    None when no teacher produces masks."""
    from ffsplat.core.types import SegmentMasks

    masked = [t for t in teachers.values() if is_mask_teacher(t)]
    if not masked:
        return None
    if len(masked) > 1:
        raise ValueError(
            f"--teacher: at most one mask teacher, got {[n for n, t in teachers.items() if is_mask_teacher(t)]}"
        )
    teacher = masked[0]
    device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(device)
    masks = [
        m for start in range(0, len(tensor), batch_size) for m in teacher.masks(tensor[start : start + batch_size])
    ]
    packed = SegmentMasks.from_masks([{k: v.cpu() for k, v in m.items()} for m in masks])
    return {
        "segments": packed.segments.numpy(),
        "tables": packed.tables.numpy(),
        "counts": packed.counts.numpy(),
    }
