"""The comparison path: every baseline fits on an evaluation index entry and is scored with the same
references as the feed-forward model; `python -m ffsplat.baselines compare` writes one table."""

from __future__ import annotations

import json

import pytest
import torch

from ffsplat.baselines.__main__ import main as baselines_main
from ffsplat.baselines.compare import BASELINES, dense_index, run_baseline
from ffsplat.baselines.trainer import SceneConfig
from ffsplat.core.config import group_file, to_dataclass
from ffsplat.data.shards import scene_frame_ids
from ffsplat.data.sampling import ViewSamplerConfig, build_eval_index, save_eval_index
from ffsplat.model.network import ModelConfig
from ffsplat.inference.predictor import Predictor
from ffsplat.training.module import SemanticSplatModule, export_slim
from ffsplat.training.config import TrainConfig


@pytest.fixture(scope="module")
def setup(tiny_shards, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    cfg = TrainConfig()
    cfg.model = to_dataclass(ModelConfig, group_file("model", "small"))
    torch.manual_seed(0)
    slim = export_slim(SemanticSplatModule(cfg), tmp / "model.pt")
    index = build_eval_index(scene_frame_ids(tiny_shards, "val"), ViewSamplerConfig(num_context=2, num_target=1, min_gap=2, max_gap=4), seed=0)
    save_eval_index(tmp / "index.json", index)
    return slim, index, tmp


EXPECTED = {
    "3dgs": set(),
    "feature3dgs": {"target_miou", "target_acc"},
    "semlogits": {"target_miou", "target_acc"},
    "fhgs": {"promptable_iou"},
    "protosaga": {"instance_miou"},
}


@pytest.mark.parametrize("method", sorted(BASELINES))
def test_every_baseline_is_scored_on_the_index(tiny_shards, setup, method):
    slim, index, _ = setup
    cfg = SceneConfig(iterations=5, sh_degree=0, densify=False)
    result = run_baseline(method, Predictor(slim), tiny_shards, "val", index, "sparse", cfg, prompt_grid=2)
    assert result["examples"] == 1 and result["seconds_per_scene"] > 0
    assert {"psnr", "ssim", "depth_abs_rel"} | EXPECTED[method] <= set(result), result.keys()
    assert 0 < result["psnr"] < 60


def test_dense_setting_trains_on_all_other_keyframes(tiny_shards, setup):
    _, index, _ = setup
    dense = dense_index(tiny_shards, "val", index, max_views=100)
    frames = scene_frame_ids(tiny_shards, "val")
    for scene, entries in dense.items():
        target = set(entries[0]["target"])
        assert set(entries[0]["context"]) == set(frames[scene]) - target


def test_compare_cli_writes_one_table(tiny_shards, setup):
    slim, _, tmp = setup
    code = baselines_main(["compare", "--checkpoint", str(slim), "--shards", str(tiny_shards), "--split", "val",
                           "--index", str(tmp / "index.json"), "--out", str(tmp / "report"), "--iterations", "3",
                           "--methods", "3dgs", "--settings", "sparse", "--prompt-grid", "2"])  # fmt: skip
    assert code == 0
    report = json.loads((tmp / "report" / "compare.json").read_text())
    assert [r["method"] for r in report["results"]] == ["feed-forward", "3dgs"]
    assert report["time_ratio_vs_feed_forward"]["3dgs_sparse"] > 0
    assert "| 3dgs | sparse |" in (tmp / "report" / "compare.md").read_text()
