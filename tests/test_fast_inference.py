"""The network's inference mode (ffsplat.inference.fast) on CPU: the same code path the GPU
benchmark compiles, checked for equality (float32), shapes/dtypes (bf16) and option errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ffsplat.inference.fast import FastInferenceConfig, inference_forward
from ffsplat.model.network import build_model
from tests.test_model import conditions_for, make_views, small_config


def test_inference_forward_float32_equals_the_eager_model():
    torch.manual_seed(0)
    model = build_model(small_config()).train()
    views = make_views(1, 2, 32, 32)
    cond = conditions_for(views)
    fast = inference_forward(model, FastInferenceConfig())
    out = fast(views, cond)
    assert not model.training
    with torch.no_grad():
        ref = model(views, cond)
    g, r = out.gaussians, ref.gaussians
    for a, b in [(g.means, r.means), (g.scales, r.scales), (g.opacities, r.opacities), (g.sh, r.sh)] + [
        (g.features[k], r.features[k]) for k in r.features
    ]:
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert g.means.is_inference()


def test_inference_forward_bf16_shapes_and_no_conditioning():
    torch.manual_seed(0)
    model = build_model(small_config(use_seg_teacher=False, use_lang_teacher=False))
    views = make_views(1, 2, 32, 32)
    out = inference_forward(model, FastInferenceConfig(bf16=True))(views, None)
    g = out.gaussians
    assert g.means.shape == (1, 2 * 32 * 32, 3) and g.features["seg"].shape[:2] == (1, 2048)
    for t in (g.means, g.scales, g.opacities, g.sh):
        assert torch.isfinite(t.float()).all()
    with torch.no_grad():
        ref = model(views, None).gaussians
    torch.testing.assert_close(g.means.float(), ref.means, rtol=0.1, atol=0.1)


def test_fast_inference_config_rejects_unknown_compile_mode():
    with pytest.raises(ValueError, match="compile_mode"):
        FastInferenceConfig(compile=True, compile_mode="fastest")


def test_model_benchmark_inference_case_runs_on_cpu():
    """benchmarks/model.py's eager inference case (the non-compiled twin of its --compile cases)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.model import run_case

    row = run_case("small", 32, 2, "forward_inference_nocond", "cpu", 1)
    assert row["mode"] == "forward_inference_nocond" and row["seconds"] > 0 and "compile_s" in row
