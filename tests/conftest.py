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
