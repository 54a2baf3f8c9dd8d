"""evaluate.py with a model whose classes are not the dataset's (issue 30, point 5): refused in one
line on a labelled synthetic room unless a class mapping is given; the shipped pascal-scannet mapping
scores exactly what the same predictions collapsed by hand score, and report.json records it."""

from __future__ import annotations

import json

import pytest
import torch

import evaluate
from ffsplat.checkpoint import _checksum_items, tensor_checksum
from ffsplat.core.vocabulary import EVAL_CLASSES
from ffsplat.evaluation.class_mapping import ClassMappingError, resolve_class_mapping
from ffsplat.teachers.espnetv2 import PASCAL_CLASSES
from tests.test_evaluation import setup  # noqa: F401  (fixture)

PASCAL = list(PASCAL_CLASSES[1:])
# PASCAL rows carrying an evaluation class's embedding: under pascal-scannet the first four (and
# every other unmapped row) become "other", chair / dining table / sofa keep their meaning.
ROWS = {"aeroplane": "wall", "bicycle": "floor", "bird": "ceiling", "boat": "bed", "bottle": "other",
        "chair": "chair", "dining table": "table", "sofa": "sofa"}  # fmt: skip
COLLAPSE = {"wall": "other", "floor": "other", "ceiling": "other", "bed": "other", "other": "other",
            "chair": "chair", "table": "table", "sofa": "sofa"}  # fmt: skip


def pascal_checkpoint(slim, path):
    blob = torch.load(slim, weights_only=True, map_location="cpu")
    table = blob["class_embeddings"]
    rows = [table[EVAL_CLASSES.index(ROWS.get(name, "other"))] for name in PASCAL]
    blob["class_names"], blob["class_embeddings"] = PASCAL, torch.stack(rows)
    blob["checksum"] = {"algorithm": "sha256", "tensors": tensor_checksum(_checksum_items(blob))}
    torch.save(blob, path)
    return path


def cli(slim, shards, tmp, out, *extra):
    return evaluate.main(["--checkpoint", str(slim), "--shards", str(shards), "--split", "val", "--index", str(tmp / "index.json"),
                          "--out", str(out), "--prompt-grid", "0", "--figures", "0", "--device", "cpu", *extra])  # fmt: skip


@pytest.mark.slow
def test_pascal_model_is_refused_without_mapping_and_mapped_with_it(tiny_shards, setup, tmp_path, capsys):  # noqa: F811
    _, slim, _, tmp = setup
    pascal = pascal_checkpoint(slim, tmp_path / "pascal.pt")
    refused = tmp_path / "refused"
    assert cli(pascal, tiny_shards, tmp, refused) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [e for e in err if e.startswith("error:")] == [err[-1]] and "--class-mapping" in err[-1]
    assert "20 classes" in err[-1] and not refused.exists()

    collapse = tmp_path / "collapse.json"
    collapse.write_text(json.dumps(COLLAPSE))
    assert cli(slim, tiny_shards, tmp, tmp_path / "by_hand", "--class-mapping", str(collapse)) == 0
    assert cli(pascal, tiny_shards, tmp, tmp_path / "mapped", "--class-mapping", "pascal-scannet") == 0
    assert "cannot predict the dataset classes wall, floor, ceiling, bed" in capsys.readouterr().err
    by_hand = json.loads((tmp_path / "by_hand" / "report.json").read_text())
    mapped = json.loads((tmp_path / "mapped" / "report.json").read_text())
    assert mapped["class_mapping"]["name"] == "pascal-scannet"
    assert mapped["class_mapping"]["dataset_classes_not_predictable"] == ["wall", "floor", "ceiling", "bed"]
    assert mapped["class_mapping"]["model_to_dataset"]["dining table"] == "table"
    assert mapped["class_mapping"]["model_to_dataset"]["person"] == "other"
    for key in ("target_miou", "target_acc", "source_miou"):
        assert mapped["results"]["model"][key] == pytest.approx(by_hand["results"]["model"][key], abs=1e-9), key
    assert "Class mapping:** pascal-scannet" in (tmp_path / "mapped" / "report.md").read_text()

    identity = tmp_path / "identity"
    assert cli(slim, tiny_shards, tmp, identity) == 0  # evaluation classes need no mapping
    assert json.loads((identity / "report.json").read_text())["class_mapping"]["name"] == "identity"


def test_mapping_files_are_checked():
    with pytest.raises(ClassMappingError, match="pascal-scannet maps PASCAL VOC classes"):
        resolve_class_mapping(["wall", "lamp"], "pascal-scannet")
    m = resolve_class_mapping(PASCAL, "pascal-scannet")
    assert m.lookup(PASCAL).tolist()[PASCAL.index("dining table") + 1] == EVAL_CLASSES.index("table") + 1
    assert m.lookup(PASCAL).tolist()[0] == 0


def test_bad_mapping_file_is_one_error_line(tiny_shards, setup, tmp_path, capsys):  # noqa: F811
    _, slim, _, tmp = setup
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({c: "lamp" for c in EVAL_CLASSES}))
    out = tmp_path / "out"
    assert cli(slim, tiny_shards, tmp, out, "--class-mapping", str(bad)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --class-mapping:") and "['lamp'] are not evaluation classes" in err[-1]
    assert not out.exists()
    assert cli(slim, tiny_shards, tmp, out, "--class-mapping", str(tmp_path / "missing.json")) == 2
    assert "--class-mapping" in capsys.readouterr().err
