"""Mapping a model's class vocabulary onto the dataset's evaluation classes before scoring.

Ground-truth labels are the 8 evaluation classes (:data:`ffsplat.core.vocabulary.EVAL_CLASSES`,
ids 1..8). A model whose language field classifies into another vocabulary (the ESPNetv2 teacher's
20 PASCAL VOC classes) predicts ids that mean something else: scoring them directly against the
labels compares unrelated classes. :func:`resolve_class_mapping` therefore refuses such a model
unless a mapping is given:

* ``pascal-scannet`` (shipped, :data:`PASCAL_TO_SCANNET`): chair -> chair, sofa -> sofa,
  dining table -> table, every other PASCAL class -> other. PASCAL has no wall, floor, ceiling or
  bed: those dataset classes cannot be predicted, and the report says so.
* a JSON file ``{"model class": "evaluation class", ...}`` naming every model class.

Open-vocabulary models (CLIP / LSeg language fields) are queried with the evaluation class names
themselves (the text embeddings of ``wall``, ``floor``, ...), as LSM does, so their classes are the
evaluation classes and no mapping is needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ffsplat.core.vocabulary import EVAL_CLASSES

PASCAL_TO_SCANNET = {"chair": "chair", "sofa": "sofa", "dining table": "table"}
"""The shipped ``pascal-scannet`` mapping: these PASCAL classes keep their meaning, the rest -> ``other``."""

BUILTIN_MAPPINGS = ("pascal-scannet",)


class ClassMappingError(ValueError):
    """The model's classes cannot be scored against the evaluation classes as given."""


@dataclass
class ClassMapping:
    """A model-class -> evaluation-class mapping.

    Attributes:
        name: ``identity``, ``pascal-scannet`` or the JSON file it was read from.
        model_to_dataset: model class name -> evaluation class name, for every model class.
    """

    name: str
    model_to_dataset: dict[str, str]

    def lookup(self, model_classes: list[str]) -> Tensor:
        """``[K + 1]`` int64: model id (1..K, 0 = background/none) -> evaluation id (0 stays 0)."""
        ids = [0] + [EVAL_CLASSES.index(self.model_to_dataset[c]) + 1 for c in model_classes]
        return torch.tensor(ids, dtype=torch.int64)

    def unpredictable(self) -> list[str]:
        """Evaluation classes no model class maps to (their IoU can only be 0)."""
        hit = set(self.model_to_dataset.values())
        return [c for c in EVAL_CLASSES if c not in hit]

    def report(self) -> dict:
        """What ``report.json`` records under ``class_mapping``."""
        return {"name": self.name, "model_to_dataset": dict(self.model_to_dataset),
                "dataset_classes_not_predictable": self.unpredictable()}  # fmt: skip


def pascal_scannet(model_classes: list[str]) -> ClassMapping:
    """The shipped mapping; every model class must be a PASCAL VOC class."""
    from ffsplat.teachers.espnetv2 import PASCAL_CLASSES

    unknown = [c for c in model_classes if c not in PASCAL_CLASSES]
    if unknown:
        raise ClassMappingError(f"pascal-scannet maps PASCAL VOC classes, but the model has classes {unknown}")
    return ClassMapping("pascal-scannet", {c: PASCAL_TO_SCANNET.get(c, "other") for c in model_classes})


def read_mapping_file(path: Path, model_classes: list[str]) -> ClassMapping:
    """A JSON object ``{"model class": "evaluation class"}`` covering every model class."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClassMappingError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ClassMappingError(f'{path}: expected a JSON object {{"model class": "evaluation class"}}')
    missing = [c for c in model_classes if c not in table]
    if missing:
        raise ClassMappingError(f"{path}: no evaluation class given for model classes {missing}")
    bad = sorted({v for v in table.values() if v not in EVAL_CLASSES})
    if bad:
        raise ClassMappingError(f"{path}: {bad} are not evaluation classes (expected one of {list(EVAL_CLASSES)})")
    return ClassMapping(str(path), {c: table[c] for c in model_classes})


def resolve_class_mapping(model_classes: list[str], option: str | Path | None) -> ClassMapping:
    """The mapping to score ``model_classes`` against the evaluation classes, or :class:`ClassMappingError`.

    ``option`` None: identity when the model's classes are the evaluation classes (same names, same
    order), else a refusal that names the difference. ``pascal-scannet``: the shipped mapping.
    Anything else: a JSON mapping file.
    """
    model_classes = list(model_classes)
    if option is None:
        if model_classes == list(EVAL_CLASSES):
            return ClassMapping("identity", {c: c for c in model_classes})
        shown = ", ".join(model_classes[:6]) + (", ..." if len(model_classes) > 6 else "")
        raise ClassMappingError(f"the model's {len(model_classes)} classes ({shown}) are not the dataset's evaluation classes "
                         f"({', '.join(EVAL_CLASSES)}); give a class mapping (pascal-scannet or a JSON file)")  # fmt: skip
    if str(option) == "pascal-scannet":
        return pascal_scannet(model_classes)
    return read_mapping_file(Path(option), model_classes)
