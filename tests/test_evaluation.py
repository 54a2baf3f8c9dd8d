"""evaluate.py: a slim checkpoint scored through Predictor gives exactly the numbers of the training
module it came from (so evaluation reproduces the learning benchmark), and the CLI writes its report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import evaluate
from ffsplat.core.config import group_file, to_dataclass
from ffsplat.data.shards import EvalIndexDataset, scene_frame_ids
from ffsplat.data.sampling import ViewSamplerConfig, build_eval_index, save_eval_index
from ffsplat.evaluation.evaluate import EvalConfig, evaluate_model, evaluate_teacher
from ffsplat.model.network import ModelConfig
from ffsplat.inference.predictor import Predictor
from ffsplat.training.module import SemanticSplatModule, export_slim
from ffsplat.training.config import TrainConfig


@pytest.fixture(scope="module")
def setup(tiny_shards, tmp_path_factory):
    cfg = TrainConfig()
    cfg.model = to_dataclass(ModelConfig, group_file("model", "small"))  # conditioned on the label teachers
    torch.manual_seed(0)
    module = SemanticSplatModule(cfg)
    tmp = tmp_path_factory.mktemp("eval")
    slim = export_slim(module, tmp / "model.pt")
    index = build_eval_index(
        scene_frame_ids(tiny_shards, "val"),
        ViewSamplerConfig(num_context=2, num_target=2, min_gap=3, max_gap=5),
        seed=0,
        entries_per_scene=2,
    )
    save_eval_index(tmp / "index.json", index)
    return module, slim, index, tmp


def test_predictor_reproduces_the_training_module_numbers(tiny_shards, setup):
    module, slim, index, _ = setup
    cfg = EvalConfig(prompt_grid=4)
    a = evaluate_model(module, EvalIndexDataset(tiny_shards, "val", index), cfg)
    b = evaluate_model(Predictor(slim), EvalIndexDataset(tiny_shards, "val", index), cfg)
    keys = ["psnr", "ssim", "depth_abs_rel", "target_miou", "target_acc", "source_miou", "promptable_iou"]
    assert all(k in a for k in keys) and a["examples"] == 2
    for k in keys:
        assert a[k] == pytest.approx(b[k], abs=1e-6), k
    teacher = evaluate_teacher(module, EvalIndexDataset(tiny_shards, "val", index), cfg)
    assert teacher["target_miou"] > a["target_miou"]  # the untrained field is worse than its teacher


def test_evaluate_cli_writes_report_and_figures(tiny_shards, setup, capsys):
    _, slim, _, tmp = setup
    out = tmp / "report"
    code = evaluate.main(["--checkpoint", str(slim), "--shards", str(tiny_shards), "--split", "val", "--index", str(tmp / "index.json"),
                          "--out", str(out), "--prompt-grid", "4", "--figures", "1", "--teacher-baseline", "--device", "cpu"])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "[eval model] example 1 " in err and "[eval model] example 2 " in err and "[eval teacher] example 2 " in err
    report = json.loads((out / "report.json").read_text())
    assert {"model", "teacher_2d (stand-in: label-derived)"} <= set(report["results"])  # label teachers are marked
    assert "| teacher_2d (stand-in: label-derived) |" in (out / "report.md").read_text()
    assert 0 <= report["results"]["model"]["target_miou"] <= 1
    assert "| model |" in (out / "report.md").read_text()
    figures = list((out / "figures").glob("*.png"))
    assert len(figures) == 1
    from PIL import Image

    figure = np.asarray(Image.open(figures[0]))
    assert figure.shape[0] > 128 + 14  # panels (enlarged to >= 128 px) under titles, class legend below
    assert evaluate.main(["--checkpoint", str(tmp / "missing.pt"), "--shards", str(tiny_shards), "--index", str(tmp / "index.json"),
                          "--out", str(out)]) == 2  # fmt: skip


@pytest.mark.slow
def test_evaluation_reports_lpips_with_local_vgg_weights(tiny_shards, setup, tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    module, _, index, _ = setup
    trunk = make_layers(cfgs["D"])  # torchvision VGG16 feature layout (random weights)
    torch.save({f"features.{k}": v for k, v in trunk.state_dict().items()}, tmp_path / "vgg16.pth")
    data = EvalIndexDataset(tiny_shards, "val", index)
    with pytest.raises(ValueError, match="not torchvision's VGG16"):  # random weights are refused ...
        evaluate_model(module, data, EvalConfig(prompt_grid=0, lpips_vgg_path=str(tmp_path / "vgg16.pth")))
    import hashlib

    prefix = hashlib.sha256((tmp_path / "vgg16.pth").read_bytes()).hexdigest()[:8]  # ... unless expected
    result = evaluate_model(
        module, data, EvalConfig(prompt_grid=0, lpips_vgg_path=str(tmp_path / "vgg16.pth"), lpips_sha256_prefix=prefix)
    )
    assert "lpips" in result and result["lpips"] > 0
    assert result["reconstruction_s"] > 0 and result["evaluation_s"] > 0 and result["ssim_variant"] == "skimage"
