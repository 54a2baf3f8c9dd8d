"""Shared pytest fixtures and markers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ffsplat  # noqa: F401  (installs the torchvision CPU shim before any test imports timm/SAM)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def shared_data(relative: str) -> Path:
    """Path under ../shared/data, or skip the test with the reason if it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared test data not found at {path}")
    return path


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """Three tiny synthetic rooms (32x32) as shards (train: 2, val: 1) with both label teachers cached."""
    from ffsplat.data.shard_writer import ShardConfig, write_shards
    from ffsplat.synthetic import SyntheticConfig, write_synthetic_scene

    root = tmp_path_factory.mktemp("train_data")
    for i in range(3):
        write_synthetic_scene(root / "scenes" / f"room{i}", 10 + i, SyntheticConfig(height=32, width=32, frames=16))
    cfg = ShardConfig(size=32, clip_length=8, min_clip_length=8, keyframe_translation=0.0,
                      teachers={"label_seg": {}, "label_lang": {}}, teacher_size=(8, 8))  # fmt: skip
    scenes = {"train": [root / "scenes" / "room0", root / "scenes" / "room1"], "val": [root / "scenes" / "room2"]}
    write_shards(scenes, root / "shards", cfg, shared_data("scannet/scannetv2-labels.combined.tsv"), progress=False)
    return root / "shards"
