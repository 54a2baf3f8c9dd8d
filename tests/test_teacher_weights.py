"""A conditioned model finds its teacher's local weights: relative paths stored in ``model.pt`` resolve
from the working directory or from the model file's folders (a checkout's model stores
``../shared/weights/...`` relative to the repository root, and runs from any directory); weights
found nowhere give one error naming the override flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import infer
from ffsplat.core.config import group_file, to_dataclass
from ffsplat.inference.predictor import resolve_weight_paths
from ffsplat.model.network import ModelConfig
from ffsplat.training.config import TeacherRole, TrainConfig
from tests.test_infer import inputs, room_views  # noqa: F401  (fixtures)


def export(root: Path, conditioned: bool, weights: str) -> Path:
    """A small untrained model with the ESPNetv2 vocabulary at ``root/checkpoints/m/model.pt``;
    its teachers' stored weight path is ``weights`` (relative to ``root``)."""
    from ffsplat.training.module import SemanticSplatModule, export_slim

    cfg = TrainConfig()
    cfg.model = to_dataclass(ModelConfig, group_file("model", "small"))
    cfg.model.conditioning.use_seg_teacher = cfg.model.conditioning.use_lang_teacher = conditioned
    cfg.teachers.segmentation = TeacherRole("espnetv2_seg", {"checkpoint": weights})
    cfg.teachers.language = TeacherRole("espnetv2", {"checkpoint": weights})
    torch.manual_seed(0)
    module = SemanticSplatModule(cfg)
    module.image_size = 64
    (root / "checkpoints" / "m").mkdir(parents=True, exist_ok=True)
    return export_slim(module, root / "checkpoints" / "m" / "model.pt")


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """``tmp/repo`` with random ESPNetv2 weights at ``tmp/shared/espnet.pth`` (= ``../shared/espnet.pth``
    from the repo root); the working directory is somewhere else."""
    from ffsplat.teachers.espnetv2 import ESPNetv2Seg

    (tmp_path / "shared").mkdir()
    torch.save(ESPNetv2Seg().state_dict(), tmp_path / "shared" / "espnet.pth")
    (tmp_path / "elsewhere" / "deeper").mkdir(parents=True)  # ../shared does not exist from here
    monkeypatch.chdir(tmp_path / "elsewhere" / "deeper")
    (tmp_path / "repo" / "checkpoints" / "m").mkdir(parents=True)
    return tmp_path / "repo"


def test_relative_weight_paths_resolve_from_the_model_folders(repo):
    model = repo / "checkpoints" / "m" / "model.pt"
    found = resolve_weight_paths({"checkpoint": "../shared/espnet.pth", "dim": 512}, model)
    assert Path(found["checkpoint"]).resolve() == (repo.parent / "shared" / "espnet.pth").resolve()
    assert found["dim"] == 512
    absolute = str(repo / "nowhere.pth")
    assert resolve_weight_paths({"checkpoint": absolute}, model) == {"checkpoint": absolute}
    assert resolve_weight_paths({"checkpoint": "../shared/missing.pth"}, model) == {
        "checkpoint": "../shared/missing.pth"
    }


def test_a_conditioned_model_runs_from_another_directory(repo, inputs):  # noqa: F811
    import ffsplat

    path = export(repo, conditioned=True, weights="../shared/espnet.pth")
    model = ffsplat.load(path, device="cpu")
    assert model.predictor.conditioned
    scene = model.predict(inputs[0], cameras=inputs[1], size=64)
    assert scene.gaussians.num_gaussians == 2 * 64 * 64 and torch.isfinite(scene.gaussians.means).all()


def test_infer_names_the_override_flags_when_teacher_weights_are_missing(repo, inputs, tmp_path, capsys):  # noqa: F811
    views, cams = inputs
    model = export(repo, conditioned=True, weights="../shared/gone.pth")
    out = tmp_path / "out" / "scene.ply"
    code = infer.main([str(a) for a in ("--views", *views, "--cameras", cams, "--checkpoint", model, "--out", out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1
    assert "the model is conditioned on a teacher whose weights are missing" in err and "--lseg-checkpoint" in err
    assert not out.parent.exists()
