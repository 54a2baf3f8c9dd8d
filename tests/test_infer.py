"""infer.py: photos -> semantic .ply end to end, pose estimation, the cameras JSON, and every kind of
bad input (one clear message, non-zero exit, no output file)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import infer
from ffsplat.inference.cameras import CameraFile, CameraView, read_cameras, write_cameras
from ffsplat.synthetic import SyntheticConfig, make_scene, render_frame
from ffsplat.render.ply import read_ply


def rotation_angle_deg(r: np.ndarray) -> float:
    return math.degrees(math.acos(np.clip((np.trace(r) - 1) / 2, -1, 1)))


@pytest.fixture(scope="module")
def room_views():
    """Frames 0 and 6 of a synthetic room at 256x256 with their exact cameras."""
    cfg = SyntheticConfig(height=256, width=256, frames=12)
    room, poses, k = make_scene(7, cfg)
    images = [render_frame(room, poses[i], k, 256, 256)[0] for i in (0, 6)]
    return images, k, poses[[0, 6]]


def test_cameras_json_round_trip(tmp_path):
    views = [CameraView(np.array([[100.0, 0, 32], [0, 101.0, 24], [0, 0, 1]]), np.eye(4), 48, 64, "a.png")]
    c2w = np.eye(4)
    c2w[:3, 3] = [0.1, -0.2, 0.3]
    views.append(CameraView(views[0].k * np.array([[1.1], [1.1], [1]]), c2w, 48, 64))
    write_cameras(tmp_path / "c.json", CameraFile(views, 0.4, 9.0))
    back = read_cameras(tmp_path / "c.json")
    assert len(back.views) == 2 and (back.near, back.far) == (0.4, 9.0) and back.views[0].image == "a.png"
    for a, b in zip(views, back.views):
        np.testing.assert_array_equal(a.k, b.k)
        np.testing.assert_array_equal(a.c2w, b.c2w)
        assert (a.height, a.width) == (b.height, b.width)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained small model without conditioning, exported like training does."""
    from ffsplat.core.config import group_file, to_dataclass
    from ffsplat.model.network import ModelConfig
    from ffsplat.training.module import SemanticSplatModule, export_slim
    from ffsplat.training.config import TrainConfig

    cfg = TrainConfig()
    cfg.model = to_dataclass(ModelConfig, group_file("model", "small"))
    cfg.model.conditioning.use_seg_teacher = cfg.model.conditioning.use_lang_teacher = False
    torch.manual_seed(0)
    module = SemanticSplatModule(cfg)
    module.image_size = 64
    return export_slim(module, tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, room_views) -> tuple[list[Path], Path]:
    """Two PNGs (one non-square, to exercise resize + crop with intrinsics) and their cameras JSON."""
    folder = tmp_path_factory.mktemp("inputs")
    images, k, poses = room_views
    paths, views = [], []
    for i, (image, pose) in enumerate(zip(images, poses)):
        crop = image[:, 16:240] if i == 1 else image  # 256x224: K's cx shifts by 16
        kk = k.copy()
        if i == 1:
            kk[0, 2] -= 16
        path = folder / f"view_{i}.png"
        Image.fromarray(crop).save(path)
        paths.append(path)
        views.append(CameraView(kk, pose, crop.shape[0], crop.shape[1], path.name))
    write_cameras(folder / "cameras.json", CameraFile(views, 0.3, 8.0))
    return paths, folder / "cameras.json"


def run_infer(*args) -> int:
    return infer.main([str(a) for a in args])


def test_infer_writes_semantic_ply_renders_and_queries(tmp_path, checkpoint, inputs, capsys):
    views, cams = inputs
    out = tmp_path / "out" / "scene.ply"
    code = run_infer("--views", *views, "--cameras", cams, "--checkpoint", checkpoint, "--out", out, "--render",
                     "--query", "chair", "--device", "cpu")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    printed = captured.out
    assert "[1/8]" in printed and "done in" in printed
    assert "the language field was never trained" in captured.err  # a stage-seg export (issue 29.6)
    gaussians, extra = read_ply(out)
    assert gaussians.num_gaussians == 2 * 64 * 64  # V x H x W at the model's training size
    for t in (gaussians.means, gaussians.scales, gaussians.rotations, gaussians.opacities, gaussians.sh):
        assert torch.isfinite(t).all()
    assert set(gaussians.features) == {"seg", "lang"}
    assert extra["class_id"].min() >= 1 and extra["class_id"].max() <= 8
    assert ((extra["class_conf"] > 0) & (extra["class_conf"] <= 1)).all()
    summary = json.loads((tmp_path / "out" / "scene.json").read_text())
    assert summary["gaussians"] == 8192 and len(summary["renders"]) == 6 and "chair" in summary["queries"]
    assert all(Path(p).is_file() for p in summary["renders"] + summary["queries"]["chair"]["relevance_maps"])


def test_infer_estimates_the_pose_without_cameras(tmp_path, checkpoint, room_views, capsys):
    images, _, _ = room_views
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"v{i}.png")
        Image.fromarray(image).save(paths[-1])
    code = run_infer(
        "--views", *paths, "--checkpoint", checkpoint, "--out", tmp_path / "s.ply", "--fov", "60", "--device", "cpu"
    )
    assert code == 0, capsys.readouterr().err
    assert "COLMAP two-view geometry" in capsys.readouterr().out
    assert read_ply(tmp_path / "s.ply")[0].num_gaussians == 8192


def bad_case(tmp_path: Path, inputs, kind: str) -> tuple[list, str]:
    views, cams = inputs
    base = ["--views", *views, "--cameras", cams]
    if kind == "unreadable":
        junk = tmp_path / "junk.png"
        junk.write_bytes(b"not an image")
        return ["--views", junk, views[1], "--cameras", cams], "cannot read image"
    if kind == "channels":
        two = tmp_path / "cmyk.jpg"  # (gray+alpha is read as RGB now: issue 28)
        Image.fromarray(np.zeros((32, 32, 4), np.uint8), mode="CMYK").save(two)
        return ["--views", two, views[1]], "channels (mode CMYK)"
    data = json.loads(Path(cams).read_text())
    if kind == "count":
        data["views"] = data["views"][:1]
    elif kind == "singular":
        data["views"][1]["c2w"] = [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    elif kind == "nan":
        data["views"][0]["c2w"][0][3] = float("nan")
    if kind in ("count", "singular", "nan"):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(data))
        message = {"count": "1 views but 2 images", "singular": "not a proper rotation", "nan": "NaN"}[kind]
        return ["--views", *views, "--cameras", bad], message
    if kind == "missing_checkpoint":
        return base + ["--checkpoint", tmp_path / "nope.pt"], "checkpoint not found"
    if kind == "wrong_checkpoint":
        torch.save({"state_dict": {}}, tmp_path / "last.ckpt")
        return base + ["--checkpoint", tmp_path / "last.ckpt"], "not an ffsplat model file"
    if kind == "unwritable":
        (tmp_path / "afile").write_text("x")
        return base + ["--out", tmp_path / "afile" / "scene.ply"], "not a directory"
    if kind == "one_view":
        return ["--views", views[0]], "at least 2 images"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "unreadable",
        "channels",
        "count",
        "singular",
        "nan",
        "missing_checkpoint",
        "wrong_checkpoint",
        "unwritable",
        "one_view",
    ],
)
def test_bad_input_gives_one_clear_error_and_no_output(tmp_path, checkpoint, inputs, capsys, kind):
    args, message = bad_case(tmp_path, inputs, kind)
    if "--checkpoint" not in args:
        args += ["--checkpoint", checkpoint]
    out = tmp_path / "result" / "scene.ply"
    if "--out" not in args:
        args += ["--out", out]
    code = run_infer(*args, "--device", "cpu")
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists() and not (tmp_path / "result").exists()


def test_render_at_context_cameras_reuses_the_semantics_render(tmp_path, checkpoint, inputs, capsys, monkeypatch):
    """--render at the input views renders once (the semantics render is reused) and writes the
    same PNGs as rendering those cameras afresh via --render-cameras."""
    from ffsplat.render import renderer

    views, cams = inputs
    calls = []
    real = renderer.render
    monkeypatch.setattr(renderer, "render", lambda *a, **k: calls.append(k.get("features")) or real(*a, **k))
    out = tmp_path / "a" / "scene.ply"
    assert (
        run_infer(
            "--views",
            *views,
            "--cameras",
            cams,
            "--checkpoint",
            checkpoint,
            "--out",
            out,
            "--render",
            "--device",
            "cpu",
        )
        == 0
    )
    assert calls == [["lang"]], calls  # one render, of the one field the step decodes
    summary = json.loads((tmp_path / "a" / "scene.json").read_text())
    size = summary["cameras"]["size"]
    same = [
        CameraView(np.array(k), np.array(c2w), size, size)
        for k, c2w in zip(summary["cameras"]["K"], summary["cameras"]["c2w"])
    ]
    write_cameras(tmp_path / "same.json", CameraFile(same, 0.3, 8.0))
    out_b = tmp_path / "b" / "scene.ply"
    assert run_infer("--views", *views, "--cameras", cams, "--checkpoint", checkpoint, "--out", out_b,
                     "--render-cameras", tmp_path / "same.json", "--device", "cpu") == 0  # fmt: skip
    assert len(calls) == 3  # semantics + the novel-camera render
    fresh = json.loads((tmp_path / "b" / "scene.json").read_text())["renders"]
    assert len(fresh) == len(summary["renders"]) == 6
    for a, b in zip(summary["renders"], fresh):
        assert Path(a).name == Path(b).name
        pa, pb = np.asarray(Image.open(a), dtype=np.int16), np.asarray(Image.open(b), dtype=np.int16)
        assert np.abs(pa - pb).max() <= 1, a  # float32 K round trip through JSON: at most one grey level
