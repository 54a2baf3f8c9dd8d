"""The real-data demo recipe's glue: its configs compose, the sensor-depth loss enters the geometry
loss only when asked, the ESPNetv2 vocabulary reaches the training module and the slim export, the
hold-out keeps the sequence tail out of the shards, and the real-data benchmark evaluates only
held-out frames."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ffsplat.core.config import to_dataclass
from ffsplat.data.sequence import RGBDSequence
from ffsplat.synthetic import SyntheticConfig, write_synthetic_scene
from ffsplat.training.config import TrainConfig
from tests.test_training import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def compose(*overrides: str) -> TrainConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return to_dataclass(TrainConfig, hydra_compose("train", overrides=list(overrides)))


def test_real_demo_experiments_compose():
    seg = compose("experiment=real_demo_seg")
    assert seg.stage.name == "seg" and seg.loss.depth_weight > 0 and seg.data.name == "real_demo"
    assert (seg.teachers.segmentation.name, seg.teachers.language.name) == ("espnetv2_seg", "espnetv2")
    assert seg.teachers.masks == "none" and not seg.model.conditioning.names
    assert seg.model.gaussians.scale_min >= 0.5
    semantic = compose("experiment=real_demo_semantic")
    assert semantic.stage.name == "semantic" and semantic.stage.init_from == "checkpoints/real_demo_seg/model.pt"
    assert semantic.stage.init_groups == ("geometry",) and semantic.data.scenes == ["hololens-office"]
    assert semantic.model.semantic.segmenter == "espnetv2" and not semantic.model.semantic.trunk_geometry
    assert semantic.model.semantic.fields == "classes"  # every PASCAL class reaches the fields
    assert semantic.loss.class_ce == 0 and semantic.loss.class_balance == 0  # they biased the residual (see the yaml)
    lang = compose("experiment=real_demo_lang", "trainer=gpu")
    assert lang.stage.name == "lang" and lang.stage.init_from == "checkpoints/real_demo_semantic/model.pt"
    assert lang.trainer.accelerator == "gpu"
    assert lang.model.conditioning == semantic.model.conditioning == seg.model.conditioning  # each loads the last


def test_depth_loss_is_added_only_with_a_weight(tiny_shards, tmp_path):
    from ffsplat.data.shards import ClipExamples, collate_examples, manifest_shards
    from ffsplat.training.module import SemanticSplatModule

    losses = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        module = SemanticSplatModule(tiny_config(tiny_shards, tmp_path, "geometry", loss__depth_weight=weight))
        data = ClipExamples(manifest_shards(tiny_shards, "train"), module.cfg.data.sampler, shuffle_buffer=0)
        batch = collate_examples([next(iter(data))])
        module._move_helpers()
        losses[weight] = module.compute_losses(batch)
    assert not {"depth_context", "depth_target"} & set(losses[0.0][1])
    total, logs = losses[1.0]
    assert logs["depth_context"] > 0 and logs["depth_target"] > 0
    torch.testing.assert_close(total, losses[0.0][0] + logs["depth_context"] + logs["depth_target"])


def test_espnetv2_vocabulary_reaches_training_and_export(tiny_shards, tmp_path):
    from ffsplat.inference.predictor import Predictor
    from ffsplat.teachers.espnetv2 import PASCAL_CLASSES, ESPNetv2Seg, ESPNetv2Teacher
    from ffsplat.training.module import SemanticSplatModule, export_slim

    ckpt = tmp_path / "espnet.pth"
    torch.save(ESPNetv2Seg().state_dict(), ckpt)
    cfg = tiny_config(tiny_shards, tmp_path, "lang")
    cfg.teachers.language.name, cfg.teachers.language.kwargs = "espnetv2", {"checkpoint": str(ckpt)}
    cfg.model.conditioning.use_seg_teacher = cfg.model.conditioning.use_lang_teacher = False
    module = SemanticSplatModule(cfg)
    assert module.class_names == list(PASCAL_CLASSES[1:])
    torch.testing.assert_close(module.class_embeddings, ESPNetv2Teacher(checkpoint=ckpt).class_embeddings())
    predictor = Predictor(export_slim(module, tmp_path / "model.pt"))
    assert predictor.class_names[8] == "chair" and predictor.class_embeddings.shape == (20, 512)
    # PASCAL's background row: where the field is closest to it, no class (id 0)
    torch.testing.assert_close(predictor.background_embedding, ESPNetv2Teacher(checkpoint=ckpt).table[0])


def test_frame_range_holds_out_the_tail(tmp_path):
    write_synthetic_scene(tmp_path / "room", 5, SyntheticConfig(height=16, width=16, frames=12))
    assert RGBDSequence(tmp_path / "room").frame_ids() == list(range(12))
    assert RGBDSequence(tmp_path / "room", frame_range=(0, 8)).frame_ids() == list(range(8))
    sys.path.insert(0, str(ROOT))
    from benchmarks.real import HOLDOUT_START, pairs

    chosen = pairs(HOLDOUT_START, 259, [4, 8, 16], 12)
    assert chosen and all(min(a, b, *t) >= HOLDOUT_START and max(a, b, *t) <= 259 for a, b, t in chosen)
    assert {b - a for a, b, _ in chosen} == {4, 8, 16} and all(a < t < b for a, b, ts in chosen for t in ts)


def test_make_shards_rejects_a_bad_frame_range(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    from data_prep.make_shards import main

    code = main(["--scene", str(tmp_path), "--out", str(tmp_path / "out"), "--frame-range", "10", "5"])
    assert code == 2 and "error: --frame-range" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_real_benchmark_scores_ssim_with_a_named_variant():
    """benchmarks/real.py's SSIM is one of the named variants (issue 30, point 7), not a third one."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.real import Scores
    from ffsplat.objectives.metrics import image_ssim

    g = torch.Generator().manual_seed(0)
    gt = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 24, 24, generator=g), 3, 1, 1)
    rgb = (gt + 0.1 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    depth = torch.ones(2, 24, 24)
    for variant in ("skimage", "torchmetrics"):
        scores = Scores(21, variant)
        scores.add(rgb, depth, gt, depth)
        assert scores.result()["ssim"] == pytest.approx(float(image_ssim(rgb, gt, variant).mean()), abs=1e-6), variant


def test_warp_labels_carries_context_maps_by_depth():
    """The real benchmark's warped-teacher reference rows (issue 30, point 4): a target at a context
    camera gets that view's labels back; pixels without depth or outside every view get 0."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.real import warp_labels
    from ffsplat.core.types import Cameras

    k = torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]])
    c2w = torch.eye(4).expand(2, 4, 4).clone()
    c2w[1, 0, 3] = 100.0  # far away: nothing lands there
    ctx = Cameras(k.expand(1, 2, 3, 3), c2w[None], (16, 16))
    labels = torch.randint(1, 22, (2, 16, 16), generator=torch.Generator().manual_seed(0))
    depth = torch.full((16, 16), 2.0)
    depth[0, 0] = 0.0
    out = warp_labels(labels, depth, ctx[0, 0], ctx[0], [1, 0])
    expected = labels[0].clone()
    expected[0, 0] = 0
    assert torch.equal(out, expected)
    shifted = Cameras(k[None, None], c2w[None, 1:], (16, 16))
    assert (warp_labels(labels, depth, shifted[0, 0], ctx[0], [0]) == 0).all()
