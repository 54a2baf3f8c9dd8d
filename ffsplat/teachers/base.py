"""The teacher interface and registry.

A teacher turns images into dense feature maps that the semantic fields are distilled from (and
that condition the network). Real teachers (SAM, LSeg) load pretrained weights from local paths;
label-derived stand-ins (for benchmarks without weights) read ground-truth labels instead of
pixels. All share :class:`Teacher`, and configs pick them by name from :data:`TEACHERS`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Protocol

from torch import Tensor, nn


class Teacher(Protocol):
    """Dense image features from a (frozen) model.

    Attributes:
        name: registry name (``"sam"``, ``"lseg"``, ``"label_seg"``, ``"label_lang"``).
        dim: feature channels (SAM 256, LSeg 512).
        needs_labels: True for label-derived stand-ins (``encode`` then needs ``labels`` / ``instances``).
    """

    name: str
    dim: int
    needs_labels: bool

    def encode(self, images: Tensor, labels: Tensor | None = None, instances: Tensor | None = None) -> Tensor:
        """``images [N, 3, H, W]`` RGB in ``[0, 1]`` -> features ``[N, dim, h, w]`` covering the image.

        ``labels``/``instances`` (``[N, H, W]`` int) are only used by label-derived teachers.
        """
        ...

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of :meth:`encode`'s features for ``H x W`` input."""
        ...


TeacherFactory = Callable[..., nn.Module]
TEACHERS: dict[str, TeacherFactory] = {}
"""Teacher name -> factory taking the teacher's config keyword arguments."""

BUILTIN_TEACHER_MODULES = (
    "ffsplat.teachers.sam",
    "ffsplat.teachers.lseg",
    "ffsplat.teachers.label_teachers",
    "ffsplat.teachers.espnetv2",
)
"""Modules whose import registers the built-in teachers (imported on first use of the registry)."""


MASK_TEACHERS: set[str] = set()
"""Registered teachers that produce three-scale masks (``masks(images)``) rather than features
(``encode``): ``make_shards --teacher`` caches them as ``masks.npz`` (e.g. ``sam_masks``)."""


def register_teacher(name: str, produces: str = "features") -> Callable[[TeacherFactory], TeacherFactory]:
    """Register a teacher factory; ``produces`` is ``"features"`` (``encode``) or ``"masks"`` (``masks``)."""
    if produces not in ("features", "masks"):
        raise ValueError(f"register_teacher({name!r}): produces={produces!r}; choose features or masks")

    def decorator(factory: TeacherFactory) -> TeacherFactory:
        TEACHERS[name] = factory
        if produces == "masks":
            MASK_TEACHERS.add(name)
        return factory

    return decorator


ClassTableFactory = Callable[..., Tensor]
CLASS_TABLES: dict[str, ClassTableFactory] = {}
"""Closed-vocabulary teacher name -> ``f(**config kwargs) -> [K, C]`` unit embeddings of every class
the teacher can output (background included): its features are mixtures of these rows. Built
without the teacher's weights, so training on cached features can use them (``loss.class_balance``)."""


def register_class_table(name: str) -> Callable[[ClassTableFactory], ClassTableFactory]:
    """Register the class table of closed-vocabulary teacher ``name`` (see :data:`CLASS_TABLES`)."""

    def decorator(factory: ClassTableFactory) -> ClassTableFactory:
        CLASS_TABLES[name] = factory
        return factory

    return decorator


def teacher_class_table(name: str, kwargs: dict | None = None) -> Tensor | None:
    """``[K, C]`` class table of teacher ``name`` with config ``kwargs``; None for teachers without a
    closed vocabulary (SAM, LSeg)."""
    for module in BUILTIN_TEACHER_MODULES:
        importlib.import_module(module)
    factory = CLASS_TABLES.get(name)
    return None if factory is None else factory(**(kwargs or {}))


def mask_teacher_names() -> set[str]:
    """Names of the registered mask-producing teachers (built-ins imported first)."""
    for module in BUILTIN_TEACHER_MODULES:
        importlib.import_module(module)
    return set(MASK_TEACHERS)


def teacher_names() -> list[str]:
    """The registered teacher names (the built-in ones are registered on first use)."""
    for module in BUILTIN_TEACHER_MODULES:
        importlib.import_module(module)
    return sorted(TEACHERS)


def build_teacher(name: str, **kwargs) -> nn.Module:
    """Instantiate teacher ``name`` with its config (e.g. ``checkpoint=...``)."""
    if name not in TEACHERS:
        for module in BUILTIN_TEACHER_MODULES:
            importlib.import_module(module)
    if name not in TEACHERS:
        raise KeyError(f"unknown teacher {name!r}; choose one of {sorted(TEACHERS)}")
    return TEACHERS[name](**kwargs)


def require_file(path: str | Path | None, key: str, directory: bool = False) -> Path:
    """The local weights at ``path`` (a file, or a directory if ``directory``), or a
    FileNotFoundError naming the config ``key`` and the path."""
    what = "model directory" if directory else "checkpoint file"
    if not path:
        raise FileNotFoundError(
            f"{key} is not set: give the local path of the pretrained weights (no downloads at run time)"
        )
    p = Path(path).expanduser()
    if not (p.is_dir() if directory else p.is_file()):
        raise FileNotFoundError(f"{key}: no {what} at {p} (weights are never downloaded at run time)")
    return p
