"""The stage registry against a literal table (SemanticSplat sec. 3.6, written out here, not derived
from the registry), and the training module's total as the sum of the stage's weighted terms."""

from __future__ import annotations

import pytest
import torch

from ffsplat.core.errors import InputError
from ffsplat.training.config import LossConfig
from ffsplat.training.stages import STAGES, Stage, get_stage

# stage -> (trained parameter groups, loss terms, rendered fields, target teacher role)
TABLE = {
    "geometry": ({"geometry"}, ("rgb", "depth"), (), None),
    "seg": ({"geometry", "segmentation"}, ("rgb", "depth", "seg", "mask"), ("seg",), "segmentation"),
    "semantic": ({"segmentation"}, ("seg", "mask"), ("seg",), "segmentation"),
    "lang": ({"language"}, ("lang",), ("lang",), "language"),
}


def test_the_registry_holds_exactly_the_stages_of_the_table():
    assert set(STAGES) == set(TABLE)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_each_stage_declares_the_groups_terms_and_teachers_of_the_table(name):
    stage = get_stage(name)
    trains, losses, fields, teacher = TABLE[name]
    assert stage.name == name
    assert set(stage.trains) == trains
    assert stage.losses == losses
    assert stage.fields == fields
    assert stage.target_teacher == teacher
    assert stage.photometric == ("rgb" in losses)


def test_an_unknown_stage_names_the_key_and_the_choices():
    with pytest.raises(
        InputError, match=r"stage\.name='colour'; choose one of \['geometry', 'lang', 'seg', 'semantic'\]"
    ):
        get_stage("colour")


def test_a_stage_with_an_unknown_term_group_or_teacher_is_refused():
    with pytest.raises(ValueError, match="losses"):
        Stage("x", trains=("geometry",), losses=("rgb", "colour"))
    with pytest.raises(ValueError, match="losses"):
        Stage("x", trains=("geometry",), losses=("seg", "rgb"))  # out of the summing order
    with pytest.raises(ValueError, match="trains"):
        Stage("x", trains=("decoder",), losses=("rgb",))
    with pytest.raises(ValueError, match="target_teacher"):
        Stage("x", trains=("geometry",), losses=("rgb",), target_teacher="sam")


@pytest.mark.parametrize(
    "name,depth,mask,expected_active,expected_total",
    [
        # terms: rgb=1, depth=2, seg=3, mask=4, lang=5 (see `values`)
        ("geometry", 0.0, 0.2, ("rgb",), 1.0),
        ("geometry", 0.5, 0.2, ("rgb", "depth"), 1.0 + 0.5 * 2),
        ("seg", 0.0, 0.3, ("rgb", "seg", "mask"), 1.0 + 3 + 0.3 * 4),
        ("seg", 0.5, 0.0, ("rgb", "depth", "seg"), 1.0 + 0.5 * 2 + 3),
        ("semantic", 0.5, 0.3, ("seg", "mask"), 3 + 0.3 * 4),
        ("seg", 0.5, 0.3, ("rgb", "depth", "seg", "mask"), 1.0 + 0.5 * 2 + 3 + 0.3 * 4),
        ("lang", 0.5, 0.3, ("lang",), 5.0),
    ],
)
def test_the_total_is_the_sum_of_the_active_weighted_terms(name, depth, mask, expected_active, expected_total):
    loss = LossConfig(depth_weight=depth, mask_weight=mask)
    stage = get_stage(name)
    assert stage.active_terms(loss) == expected_active
    values = {"rgb": 1.0, "depth": 2.0, "seg": 3.0, "mask": 4.0, "lang": 5.0}
    total = stage.total({t: torch.tensor(values[t]) for t in expected_active}, loss)
    assert float(total) == pytest.approx(expected_total)
    with pytest.raises(KeyError, match="expected"):  # a term computed but not declared (or missing) is an error
        stage.total({t: torch.tensor(v) for t, v in values.items()}, loss)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_the_module_total_is_the_weighted_sum_of_its_computed_terms(tiny_shards, tmp_path, name):
    from tests.test_training import tiny_config
    from tests.test_training_glue import first_batch

    from ffsplat.training.module import SemanticSplatModule

    torch.manual_seed(0)
    cfg = tiny_config(tiny_shards, tmp_path, name, loss__depth_weight=0.5, loss__mask_weight=0.3)
    module = SemanticSplatModule(cfg)
    batch = first_batch(module, tiny_shards)
    terms, _ = module.loss_terms(batch)
    assert set(terms) == set(TABLE[name][1])  # every declared term is computed (weights are not 0 here)
    weights = {"rgb": 1.0, "depth": 0.5, "seg": 1.0, "mask": 0.3, "lang": 1.0}
    expected = sum(weights[t] * terms[t] for t in TABLE[name][1])
    module.loss_terms = lambda b: (terms, {})  # the same term values, composed by compute_losses
    total, logs = module.compute_losses(batch)
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(logs["total"], total)
