"""Training config choices are validated when the config is converted to the typed dataclasses (as
``train.py`` does), with one error naming the key, the bad value and the choices, not at the first
training step that uses them."""

from __future__ import annotations

import re

import pytest

from ffsplat.core.config import CONFIG_DIR, group_file, to_dataclass
from ffsplat.core.errors import InputError
from ffsplat.training.config import TrainConfig

BAD = [
    # override, the error (regex)
    ({"stage": {"name": "colour"}}, r"stage\.name='colour'; choose one of \['geometry', 'lang', 'seg', 'semantic'\]"),
    ({"model": {"name": "nerf"}}, r"model\.name='nerf'; choose one of mvsplat, semanticsplat"),
    ({"teachers": {"prompt_decoder": "clip"}}, r"teachers\.prompt_decoder='clip'; choose one of auto, sam, similarity"),
    ({"teachers": {"masks": "slic"}}, r"teachers\.masks='slic'; choose one of auto, cached, sam, labels, none"),
    ({"teachers": {"source": "disk"}}, r"teachers\.source='disk'; choose one of cached, online"),
    (
        {"teachers": {"segmentation": {"name": "sam2"}}},
        r"teachers\.segmentation\.name='sam2'; choose one of espnetv2, espnetv2_seg, label_lang, label_seg, lseg, sam",
    ),
    ({"teachers": {"language": {"name": "clip"}}}, r"teachers\.language\.name='clip'; choose one of espnetv2, "),
    ({"logging": {"wandb_mode": "cloud"}}, r"logging\.wandb_mode='cloud'; choose one of offline, online, disabled"),
    # choices valid on their own, impossible together
    ({"teachers": {"prompt_decoder": "sam"}}, r"teachers\.prompt_decoder=sam needs teachers\.segmentation\.name=sam"),
]


@pytest.mark.parametrize("override,message", BAD, ids=[re.sub(r"\W+", "_", str(o))[:40] for o, _ in BAD])
def test_a_bad_choice_fails_at_load_naming_key_value_and_choices(override, message):
    with pytest.raises(InputError, match=message):
        to_dataclass(TrainConfig, override)


@pytest.mark.parametrize(
    "override",
    [
        {"stage": {"name": "lang"}},
        {"stage": {"name": "geometry"}},
        {"teachers": {"segmentation": {"name": "sam"}, "masks": "sam", "prompt_decoder": "sam"}},
        {"teachers": {"segmentation": {"name": "sam"}, "masks": "sam"}},  # auto resolves to SAM's decoder
        {"teachers": {"masks": "labels", "prompt_decoder": "similarity", "source": "online"}},
        {"model": {"name": "mvsplat"}, "logging": {"wandb_mode": "disabled"}},
    ],
)
def test_good_choices_load(override):
    cfg = to_dataclass(TrainConfig, override)
    assert isinstance(cfg, TrainConfig)


@pytest.mark.parametrize("group,name", [("teacher", "real"), ("teacher", "labels"), ("teacher", "espnetv2")])
def test_every_shipped_teacher_group_loads(group, name):
    from omegaconf import OmegaConf

    cfg = to_dataclass(TrainConfig, {"teachers": OmegaConf.to_container(OmegaConf.load(group_file(group, name)))})
    assert cfg.teachers.segmentation.name and cfg.teachers.language.name


def test_the_train_command_reports_a_bad_choice_as_one_error_line(capsys):
    from ffsplat.training.cli import main

    with pytest.raises(SystemExit) as done:
        main.__wrapped__(to_omegaconf({"teachers": {"masks": "slic"}}))
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: config: teachers.masks='slic'; choose one of"), err


def to_omegaconf(override):
    from omegaconf import OmegaConf

    return OmegaConf.merge(OmegaConf.structured(TrainConfig), override)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")))
def test_every_shipped_experiment_composes_and_validates(experiment):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = to_dataclass(TrainConfig, compose("train", overrides=[f"experiment={experiment}"]))
    assert cfg.stage.name in ("geometry", "seg", "semantic", "lang")


def test_a_bad_hydra_override_fails_at_load():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        raw = compose("train", overrides=["experiment=synthetic_seg", "teachers.prompt_decoder=sam2"])
    with pytest.raises(InputError, match=r"teachers\.prompt_decoder='sam2'; choose one of auto, sam, similarity"):
        to_dataclass(TrainConfig, raw)


def test_the_demo_recipe_chains_its_stages():
    """examples/train_demo.sh: seg -> semantic -> lang, each stage starting from the previous one's
    model.pt with the same architecture (the segmenter's weights travel in model.pt, so only the
    stage that adds it names its file, and the script points that at $ESPNET)."""
    from dataclasses import asdict

    from hydra import compose, initialize_config_dir

    script = (CONFIG_DIR.parent / "examples" / "train_demo.sh").read_text()
    experiments = re.findall(r"python train\.py experiment=(\w+)", script)
    assert experiments == ["real_demo_seg", "real_demo_semantic", "real_demo_lang"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfgs = [to_dataclass(TrainConfig, compose("train", overrides=[f"experiment={e}"])) for e in experiments]
    assert [c.stage.name for c in cfgs] == ["seg", "semantic", "lang"]
    for before, after in zip(cfgs, cfgs[1:]):
        assert after.stage.init_from == f"checkpoints/{before.run_name}/model.pt"
    seg, semantic, lang = (c.model for c in cfgs)
    assert semantic.semantic.segmenter == "espnetv2" and semantic.semantic.segmenter_checkpoint
    assert re.search(
        r"experiment=real_demo_semantic [^\n]*\\\n\s+model\.semantic\.segmenter_checkpoint=\"\$ESPNET\"", script
    )

    def without(model, *keys):
        out = asdict(model)
        for key in keys:
            del out["semantic"][key]
        return out

    assert without(lang, "segmenter_checkpoint") == without(semantic, "segmenter_checkpoint")
    assert not semantic.semantic.trunk_geometry  # semantics from the segmenter alone (see the experiment)
    assert semantic.semantic.fields == "classes"  # every class the segmenter knows reaches the fields
    added = ("segmenter", "segmenter_checkpoint", "trunk_geometry", "fields", "seg_dim", "lang_dim")
    assert without(seg, *added) == without(semantic, *added)  # the geometry stage 2 loads is stage 1's
