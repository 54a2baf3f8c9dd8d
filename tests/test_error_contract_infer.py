"""infer.py's error contract for options and queries (issues 13/19): every numeric option is range
checked, impossible camera setups and unknown devices are refused with one ``error:`` line naming the
option, exit code 2 and nothing written; a query that fails leaves no outputs behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import infer
import ffsplat.inference.cli as infer_cli
from ffsplat.core.errors import InputError, check_device, check_number, one_line
from tests.test_infer import checkpoint, inputs, room_views  # noqa: F401  (fixtures)


def run_infer(*args) -> int:
    return infer.main([str(a) for a in args])


def assert_contract(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


OPTION_CASES = {
    "fov_180": (["--fov", "180"], "--fov: expected a value >= 1 and <= 170"),
    "fov_0": (["--fov", "0"], "--fov"),
    "fov_nan": (["--fov", "nan"], "--fov: expected a finite number"),
    "focal_negative": (["--focal", "-5"], "--focal"),
    "baseline_0": (["--baseline", "0"], "--baseline: expected a value > 0"),
    "baseline_negative": (["--baseline", "-1"], "--baseline"),
    "size_0": (["--size", "0"], "--size: expected a value >= 16"),
    "size_negative": (["--size", "-8"], "--size"),
    "size_not_multiple": (["--size", "66"], "--size: expected a multiple of 4"),
    "near_0": (["--near", "0"], "--near: expected a value > 0"),
    "near_after_far": (["--near", "5", "--far", "2"], "--near/--far"),
    "device_tpu": (["--device", "tpu"], "--device"),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_numeric_options_and_device_are_range_checked(tmp_path, case, capsys):
    extra, message = OPTION_CASES[case]
    views = [tmp_path / "a.png", tmp_path / "b.png"]
    for v in views:
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(v)
    out = tmp_path / "res" / "scene.ply"
    argv = ["--views", *views, "--out", out, "--checkpoint", tmp_path / "unused.pt"] + extra
    if "--device" not in extra:
        argv += ["--device", "cpu"]
    code = run_infer(*argv)
    assert_contract(code, capsys.readouterr().err, message)
    assert not (tmp_path / "res").exists()


def test_cuda_device_without_gpu_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InputError, match="no CUDA GPU"):
        check_device("--device", "cuda")
    assert check_device("--device", "cpu") == "cpu"


def test_check_number_edges():
    check_number("--x", 0.5, low=0, low_open=True)
    check_number("--x", None, low=1)
    with pytest.raises(InputError, match="--x: expected a value > 0, got 0"):
        check_number("--x", 0, low=0, low_open=True)
    with pytest.raises(InputError, match="integer"):
        check_number("--x", 2.5, integer=True)
    assert one_line("a\nb") == "a b"


def _bad_setup(tmp_path: Path, inputs, kind: str):  # noqa: F811
    views, cams = inputs
    data = json.loads(Path(cams).read_text())
    if kind == "identical_poses":
        data["views"][1]["c2w"] = data["views"][0]["c2w"]
        bad = tmp_path / "same.json"
        bad.write_text(json.dumps(data))
        return ["--views", *views, "--cameras", bad], "zero baseline"
    if kind == "tiny_image":
        tiny = tmp_path / "tiny.png"
        Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
        return ["--views", tiny, views[1]], "is 1x1; images need at least 16 pixels"
    if kind == "unknown_query":
        return ["--views", *views, "--cameras", cams, "--query", "spaceship"], "--query 'spaceship'"
    if kind == "bad_clip_path":
        return [
            "--views",
            *views,
            "--cameras",
            cams,
            "--query",
            "spaceship",
            "--clip-path",
            tmp_path / "noclip",
        ], "--clip-path"
    if kind == "bad_render_cameras":
        novel = dict(data)
        novel["views"] = [dict(data["views"][0]), dict(data["views"][1])]
        novel["views"][1]["width"] = 100
        path = tmp_path / "novel.json"
        path.write_text(json.dumps(novel))
        return ["--views", *views, "--cameras", cams, "--render-cameras", path], "--render-cameras"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["identical_poses", "tiny_image", "unknown_query", "bad_clip_path", "bad_render_cameras"]
)
def test_impossible_setups_and_failing_queries_write_nothing(tmp_path, checkpoint, inputs, capsys, kind):  # noqa: F811
    args, message = _bad_setup(tmp_path, inputs, kind)
    out = tmp_path / "result" / "scene.ply"
    code = run_infer(*args, "--checkpoint", checkpoint, "--out", out, "--device", "cpu")
    assert_contract(code, capsys.readouterr().err, message)
    assert not (tmp_path / "result").exists()


def test_a_failure_after_the_ply_was_written_removes_this_runs_outputs(
    tmp_path,
    checkpoint,  # noqa: F811  (fixture)
    inputs,  # noqa: F811  (fixture)
    capsys,
    monkeypatch,
):
    views, cams = inputs
    out = tmp_path / "result" / "scene.ply"

    def broken(*_args, **_kw):
        raise InputError("--query: simulated failure after the .ply was written")

    monkeypatch.setattr(infer_cli, "write_queries", broken)
    code = run_infer("--views", *views, "--cameras", cams, "--checkpoint", checkpoint, "--out", out, "--query", "chair",
                     "--render", "--device", "cpu")  # fmt: skip
    assert_contract(code, capsys.readouterr().err, "simulated failure")
    assert not (tmp_path / "result").exists()


def test_a_query_that_matches_nothing_writes_nothing_and_says_so(tmp_path, checkpoint, inputs, capsys, monkeypatch):  # noqa: F811
    views, cams = inputs
    out = tmp_path / "result" / "scene.ply"

    def duplicate(args, predictor):
        # a text embedding equal to class 0's: argmax ties go to class 0, so the query never wins
        return {"spaceship": predictor.class_embeddings[0].clone()}

    monkeypatch.setattr(infer_cli, "query_embeddings", duplicate)
    code = run_infer("--views", *views, "--cameras", cams, "--checkpoint", checkpoint, "--out", out, "--query", "chair",
                     "--device", "cpu")  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "query 'spaceship': no Gaussian matched" in captured.out
    summary = json.loads((tmp_path / "result" / "scene.json").read_text())
    assert summary["queries"]["spaceship"] == {"relevance_maps": [], "ply": None, "gaussians": 0}
    assert not list((tmp_path / "result").glob("scene_spaceship*"))
