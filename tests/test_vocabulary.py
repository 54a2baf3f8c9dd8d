"""One vocabulary for the semantic fields (CONTRIBUTING.md, "Vocabulary"): config keys that named a
field by its teacher (``use_sam``, ``sam_dim``...) were renamed; a config using an old key is refused
with an error naming the new key, and model files written before the rename (the shipped demo
checkpoint among them) load with the keys mapped."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from ffsplat.checkpoint import load_model, save_model
from ffsplat.core.config import check_renamed_keys, group_file, to_dataclass, upgrade_renamed_keys
from ffsplat.core.errors import InputError
from ffsplat.model.network import ModelConfig, build_model
from ffsplat.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]

# old dotted key -> new dotted key, written out
RENAMES = {
    "model.conditioning.use_sam": "model.conditioning.use_seg_teacher",
    "model.conditioning.use_lseg": "model.conditioning.use_lang_teacher",
    "model.conditioning.sam_dim": "model.conditioning.seg_teacher_dim",
    "model.conditioning.lseg_dim": "model.conditioning.lang_teacher_dim",
    "model.semantic.sam_dim": "model.semantic.seg_teacher_dim",
    "model.semantic.lseg_dim": "model.semantic.lang_teacher_dim",
}


def nested(dotted: str, value) -> dict:
    tree = value
    for part in reversed(dotted.split(".")):
        tree = {part: tree}
    return tree


@pytest.mark.parametrize("old,new", sorted(RENAMES.items()))
def test_an_old_key_is_refused_naming_the_new_one(old, new):
    with pytest.raises(InputError, match=re.escape(f"{old} -> {new}")):
        to_dataclass(TrainConfig, nested(old, 1))


def test_an_old_key_in_a_hydra_override_is_refused():
    from hydra import compose, initialize_config_dir

    from ffsplat.core.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        raw = compose("train", overrides=["experiment=synthetic_seg", "+model.conditioning.use_sam=false"])
    with pytest.raises(InputError, match=r"model\.conditioning\.use_sam -> model\.conditioning\.use_seg_teacher"):
        to_dataclass(TrainConfig, raw)


def test_the_new_keys_reach_the_model():
    cfg = to_dataclass(ModelConfig, group_file("model", "small"), nested("conditioning.use_seg_teacher", False))
    assert cfg.conditioning.use_seg_teacher is False and cfg.conditioning.use_lang_teacher is True
    assert cfg.conditioning.names == ["lseg"]
    check_renamed_keys(asdict(cfg))  # the current tree has no old key


def test_upgrade_maps_every_old_key_and_leaves_the_rest():
    old = {
        "name": "semanticsplat",
        "conditioning": {"use_sam": False, "use_lseg": True, "sam_dim": 256, "lseg_dim": 512, "latent_dim": 16},
        "semantic": {"seg_dim": 8, "sam_dim": 256, "lseg_dim": 512},
        "depth": {"sam_dim": 3},  # not a renamed section: untouched
    }
    new = upgrade_renamed_keys(old)
    assert new == {
        "name": "semanticsplat",
        "conditioning": {
            "use_seg_teacher": False,
            "use_lang_teacher": True,
            "seg_teacher_dim": 256,
            "lang_teacher_dim": 512,
            "latent_dim": 16,
        },
        "semantic": {"seg_dim": 8, "seg_teacher_dim": 256, "lang_teacher_dim": 512},
        "depth": {"sam_dim": 3},
    }
    assert "use_sam" in old["conditioning"]  # the input is not modified


def test_a_model_file_with_the_old_keys_loads_and_predicts_the_same(tmp_path):
    cfg = to_dataclass(ModelConfig, group_file("model", "small"))
    cfg.conditioning.use_seg_teacher = False
    cfg.conditioning.use_lang_teacher = True
    model = build_model(cfg)
    stored = asdict(cfg)
    c, s = stored["conditioning"], stored["semantic"]
    c["use_sam"], c["use_lseg"] = c.pop("use_seg_teacher"), c.pop("use_lang_teacher")
    c["sam_dim"], c["lseg_dim"] = c.pop("seg_teacher_dim"), c.pop("lang_teacher_dim")
    s["sam_dim"], s["lseg_dim"] = s.pop("seg_teacher_dim"), s.pop("lang_teacher_dim")
    teachers = {"segmentation": {"name": "label_seg", "kwargs": {}}, "language": {"name": "label_lang", "kwargs": {}}}
    path = save_model(tmp_path / "old.pt", model_config=stored, state_dict=model.state_dict(), teachers=teachers,
                      class_names=["a"], class_embeddings=torch.zeros(1, 512), stage="seg")  # fmt: skip
    loaded = to_dataclass(ModelConfig, load_model(path)["model_config"])
    assert loaded.conditioning.use_seg_teacher is False and loaded.conditioning.use_lang_teacher is True
    assert asdict(loaded) == asdict(cfg)


def test_the_shipped_demo_checkpoint_still_loads():
    from ffsplat.inference.predictor import Predictor

    blob = torch.load(ROOT / "checkpoints" / "demo" / "model.pt", map_location="cpu", weights_only=True)
    predictor = Predictor(ROOT / "checkpoints" / "demo" / "model.pt")
    stored = blob["model_config"]["conditioning"]
    old = "use_sam" in stored  # written before or after the rename: both load
    expected = stored["use_sam" if old else "use_seg_teacher"]
    assert predictor.cfg.model.conditioning.use_seg_teacher == expected
