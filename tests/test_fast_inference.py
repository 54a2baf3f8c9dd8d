"""The network's inference mode (ffsplat.inference.fast) on CPU: the same code path the GPU
benchmark compiles, checked for equality (float32), shapes/dtypes (bf16) and option errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ffsplat.inference.fast import FastInferenceConfig, inference_forward
from ffsplat.model.network import build_model
from tests.test_infer import checkpoint, inputs, room_views  # noqa: F401  (fixtures)
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


def test_predictor_and_load_take_the_fast_path(tmp_path):
    """``Predictor(fast=...)`` / ``ffsplat.load(bf16=..., compile=...)`` run the network through
    ``inference_forward``; float32 without compile equals the eager predictor exactly."""
    import ffsplat
    from ffsplat.core.config import DEMO_CHECKPOINT
    from ffsplat.inference.predictor import Predictor

    views = make_views(1, 2, 32, 32)
    eager = Predictor(DEMO_CHECKPOINT)
    fast = Predictor(DEMO_CHECKPOINT, fast=FastInferenceConfig())
    a, b = eager(views), fast(views)
    torch.testing.assert_close(b.gaussians.means, a.gaussians.means, rtol=0, atol=0)
    assert b.gaussians.means.is_inference() and not a.gaussians.means.is_inference()
    model = ffsplat.load(device="cpu", bf16=True)
    assert model.predictor.fast == FastInferenceConfig(bf16=True)
    assert ffsplat.load(device="cpu").predictor.fast is None


@pytest.mark.slow
def test_compiled_network_matches_eager_on_cpu():
    """torch.compile's graph capture of the whole network (aot_eager backend: the same Dynamo/AOT
    graphs inductor compiles, without generating kernels) gives the eager outputs. The inductor backend
    itself takes ~4 minutes to compile the small model on a 2-core CPU: set FFSPLAT_TEST_INDUCTOR=1 to
    run it too (the GPU check times and compares it on CUDA)."""
    import os

    torch.manual_seed(0)
    model = build_model(small_config()).eval()
    views = make_views(1, 2, 32, 32)
    cond = conditions_for(views)
    with torch.no_grad():
        ref = model(views, cond)
    backends = ["aot_eager"] + (["inductor"] if os.environ.get("FFSPLAT_TEST_INDUCTOR") == "1" else [])
    for backend in backends:
        torch._dynamo.reset()
        out = inference_forward(model, FastInferenceConfig(compile=True, compile_backend=backend))(views, cond)
        torch.testing.assert_close(out.gaussians.means, ref.gaussians.means, rtol=0, atol=1e-4)
        for k in ref.gaussians.features:
            torch.testing.assert_close(out.gaussians.features[k], ref.gaussians.features[k], rtol=0, atol=1e-4)


def test_infer_bf16_and_compile_options_reach_the_predictor(tmp_path, checkpoint, inputs, monkeypatch):  # noqa: F811
    import infer
    from ffsplat.inference import predictor as predictor_module

    seen = []
    real = predictor_module.Predictor.__init__

    def recording(self, *args, fast=None, **kw):
        seen.append(fast)
        real(self, *args, fast=fast, **kw)

    monkeypatch.setattr(predictor_module.Predictor, "__init__", recording)
    views, cams = inputs
    base = ["--views", *map(str, views), "--cameras", str(cams), "--checkpoint", str(checkpoint), "--device", "cpu"]
    assert infer.main(base + ["--out", str(tmp_path / "a.ply"), "--bf16"]) == 0
    assert infer.main(base + ["--out", str(tmp_path / "b.ply")]) == 0
    assert seen == [FastInferenceConfig(bf16=True), None]


def test_eager_forward_bypasses_the_fast_path():
    """``Predictor(..., eager=True)`` (the memory probes of infer.py) never runs the compiled network."""
    from ffsplat.core.config import DEMO_CHECKPOINT
    from ffsplat.inference.predictor import Predictor

    predictor = Predictor(DEMO_CHECKPOINT, fast=FastInferenceConfig(compile=True))

    def compiled(*_):
        raise AssertionError("the compiled network ran")

    predictor._network = compiled
    views = make_views(1, 2, 32, 32)
    out = predictor(views, eager=True)
    assert out.gaussians.means.shape[1] == 2 * 32 * 32
    with pytest.raises(AssertionError, match="compiled network ran"):
        predictor(views)
