"""ScanNet label maps: raw category id -> nyu40 -> the 8 evaluation classes or ScanNet-20.

ScanNet's ``label-filt/<i>.png`` images hold *raw* category ids (the ``id`` column of
``scannetv2-labels.combined.tsv``, which every ScanNet download includes). Evaluation follows
LSM / Uni3R: 8 classes from the nyu40 class of each pixel.

=====  =========  ===========================================
index  class      nyu40 ids
=====  =========  ===========================================
0      (ignored)  raw id 0
1      wall       1
2      floor      2
3      ceiling    22
4      chair      5
5      table      7
6      sofa       6
7      bed        4
8      other      every other nyu40 id, and (as LSM's ``map_func``) every nonzero raw id that is
                  missing from the tsv or has no nyu40 class
=====  =========  ===========================================

ScanNet-20 uses the benchmark's 20 nyu40 ids (``classes_SemVoxLabel-nyu40id.txt``) as classes
1..20, everything else 0.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ffsplat.core.vocabulary import EVAL_CLASSES as EVAL_CLASSES  # re-exported: the 8 evaluation class names

_NYU40_TO_EVAL = {1: 1, 2: 2, 22: 3, 5: 4, 7: 5, 6: 6, 4: 7}
OTHER = 8

SCANNET20_NYU40_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
SCANNET20_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink",
    "bathtub", "otherfurniture",
)  # fmt: skip

NYU40_TO_EVAL = np.zeros(41, dtype=np.uint8)
"""Lookup table: nyu40 id (0..40) -> evaluation class (0..8)."""
NYU40_TO_EVAL[1:] = OTHER
for _nyu, _cls in _NYU40_TO_EVAL.items():
    NYU40_TO_EVAL[_nyu] = _cls

NYU40_TO_SCANNET20 = np.zeros(41, dtype=np.uint8)
"""Lookup table: nyu40 id (0..40) -> ScanNet-20 class (0 = not one of the 20)."""
for _i, _nyu in enumerate(SCANNET20_NYU40_IDS):
    NYU40_TO_SCANNET20[_nyu] = _i + 1


@dataclass(frozen=True)
class LabelMap:
    """Raw ScanNet category id -> nyu40 id, as a dense lookup table.

    Attributes:
        raw_to_nyu40: ``[max_raw_id + 1]`` uint8; ids absent from the tsv map to 0 (ignored).
        raw_names: raw id -> raw category name (for documentation and synthetic data).
    """

    raw_to_nyu40: np.ndarray
    raw_names: dict[int, str]

    @classmethod
    def from_tsv(cls, path: str | Path) -> LabelMap:
        """Read ``scannetv2-labels.combined.tsv`` (columns ``id``, ``raw_category``, ``nyu40id``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"ScanNet label map not found at {path}; pass the path of scannetv2-labels.combined.tsv "
                "from your ScanNet download"
            )
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        missing = {"id", "raw_category", "nyu40id"} - set(rows[0] if rows else {})
        if missing:
            raise ValueError(f"{path}: not a ScanNet label tsv, missing columns {sorted(missing)}")
        ids = [int(r["id"]) for r in rows]
        table = np.zeros(max(ids) + 1, dtype=np.uint8)
        for raw, row in zip(ids, rows):
            nyu = int(row["nyu40id"] or 0)
            if not 0 <= nyu <= 40:
                raise ValueError(f"{path}: raw id {raw} has nyu40id {nyu}, expected 0..40")
            table[raw] = nyu
        return cls(table, {raw: row["raw_category"] for raw, row in zip(ids, rows)})

    def nyu40(self, raw: np.ndarray) -> np.ndarray:
        """Raw id image (any int dtype) -> nyu40 id image (uint8); unknown ids -> 0."""
        raw = np.asarray(raw)
        inside = (raw >= 0) & (raw < len(self.raw_to_nyu40))
        return np.where(inside, self.raw_to_nyu40[np.clip(raw, 0, len(self.raw_to_nyu40) - 1)], 0).astype(np.uint8)

    def eval8(self, raw: np.ndarray) -> np.ndarray:
        """Raw id image -> 8-class evaluation labels: raw 0 -> 0 (ignored); any other raw id that is
        not one of the 7 named classes -> other (8), including ids missing from the tsv (LSM)."""
        raw = np.asarray(raw)
        out = NYU40_TO_EVAL[self.nyu40(raw)]
        return np.where((raw != 0) & (out == 0), OTHER, out).astype(np.uint8)

    def scannet20(self, raw: np.ndarray) -> np.ndarray:
        """Raw id image -> ScanNet-20 labels (0 ignored)."""
        return NYU40_TO_SCANNET20[self.nyu40(raw)]

    def raw_id_for(self, name: str) -> int:
        """Smallest raw id whose raw category is ``name`` (used to write synthetic labels)."""
        ids = [raw for raw, raw_name in self.raw_names.items() if raw_name == name]
        if not ids:
            raise KeyError(f"no raw ScanNet category named {name!r} in the label map")
        return min(ids)


SCENE_META = "synthetic.json"
"""File in each synthetic scene folder (``ffsplat.synthetic``) holding the seed, the config and the room
layout (written last); a scene folder with it brings its own label map (:func:`synthetic_label_map`)."""

SCANNET_RAW_IDS = {"wall": 1, "floor": 3, "ceiling": 41, "chair": 2, "table": 4, "sofa": 6, "bed": 11, "other": 26}
"""Evaluation class name -> the ScanNet raw category id written to ``label-filt`` (ids of
``scannetv2-labels.combined.tsv``): wall 1 (nyu40 1), floor 3 (nyu40 2), ceiling 41 (nyu40 22),
chair 2 (nyu40 5), table 4 (nyu40 7), sofa 6 (raw "couch", nyu40 6), bed 11 (nyu40 4),
other 26 (raw "box", nyu40 29, which evaluates as "other")."""

RAW_TO_NYU40 = {1: 1, 3: 2, 41: 22, 2: 5, 4: 7, 6: 6, 11: 4, 26: 29}
"""The rows of ``scannetv2-labels.combined.tsv`` that synthetic rooms use (raw id -> nyu40 id), shipped so
that synthetic scenes need no ScanNet download (:func:`synthetic_label_map`)."""


def synthetic_label_map():
    """The :class:`ffsplat.data.labels.LabelMap` of synthetic rooms' ``label-filt`` ids (no TSV needed)."""
    table = np.zeros(max(RAW_TO_NYU40) + 1, dtype=np.uint8)
    for raw, nyu40 in RAW_TO_NYU40.items():
        table[raw] = nyu40
    names = {raw: name for name, raw in SCANNET_RAW_IDS.items()}
    return LabelMap(table, names)
