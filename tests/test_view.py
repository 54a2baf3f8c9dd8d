"""The browser viewer (ffsplat.view): a server on a free loopback port, checked through viser's Python
API (splats, frusta, GUI controls, the colours sent), the command's bad-input contract, ``infer.py
--view`` and a real headless-Chromium screenshot (slow; skipped without Chromium)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from ffsplat.core.types import Gaussians
from ffsplat.render.ply import read_ply, write_ply
from ffsplat.view import MODES, Viewer, class_palette, load_scene, main, ramp

ROOT = Path(__file__).resolve().parents[1]
N = 60
NAMES = ["unlabelled", "chair", "table", "sofa"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_scene(folder: Path, classes: bool = True, summary: bool = True) -> Path:
    g = torch.Generator().manual_seed(0)
    gaussians = Gaussians(
        means=torch.randn(N, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 2.0]),
        scales=torch.rand(N, 3, generator=g) * 0.05 + 0.01,
        rotations=torch.nn.functional.normalize(torch.randn(N, 4, generator=g), dim=-1),
        opacities=torch.linspace(0.05, 0.95, N),
        sh=torch.randn(N, 4, 3, generator=g) * 0.5,
        features={"lang": torch.randn(N, 4, generator=g)},
    )
    class_id = np.array([0] * 30 + [1] * 20 + [3] * 10, np.int32)  # table (2) never occurs
    class_conf = np.linspace(0.2, 1.0, N).astype(np.float32)
    ply = folder / "scene.ply"
    write_ply(ply, gaussians, extra={"class_id": class_id, "class_conf": class_conf} if classes else None)
    if summary:
        c2w = [np.eye(4).tolist(), np.eye(4).tolist()]
        c2w[1][0][3] = 0.5  # the second camera 0.5 m to the right
        k = [[100.0, 0.0, 32.0], [0.0, 100.0, 32.0], [0.0, 0.0, 1.0]]
        cams = {"K": [k, k], "c2w": c2w, "size": 64, "near": 0.5, "far": 5.0}
        (folder / "scene.json").write_text(json.dumps({"class_names": NAMES, "cameras": cams}))
    return ply


def sent_rgb(viewer: Viewer) -> np.ndarray:
    """``[M, 3]`` uint8 colours in the splat buffer sent to the browser (viser packs RGBA in word 7)."""
    return viewer.splats.buffer[:, 7].copy().view(np.uint8).reshape(-1, 4)[:, :3]


@pytest.fixture
def viewer(tmp_path):
    v = Viewer(load_scene(write_scene(tmp_path)), port=free_port())
    yield v
    v.stop()


def test_viewer_serves_splats_frusta_and_controls(viewer):
    assert viewer.url.startswith("http://127.0.0.1:")
    assert viewer.splats.buffer.shape == (N, 8)
    np.testing.assert_allclose(viewer.splats.centers, viewer.data.gaussians.means.numpy(), atol=1e-6)
    assert len(viewer.frusta) == 2
    np.testing.assert_allclose(viewer.frusta[1].position, [0.5, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(viewer.server.initial_camera.position, [0.0, 0.0, 0.0], atol=1e-6)
    assert viewer.server.initial_camera.look_at[2] > 1.0  # looks along the first camera's +z
    assert tuple(viewer.mode.options) == MODES
    assert sorted(viewer.class_boxes) == [0, 1, 3]  # classes present only
    assert {h.label for h in viewer.legend.values()} == {"unlabelled (30)", "chair (20)", "sofa (10)"}
    assert tuple(viewer.legend[1].value) == tuple(int(round(c * 255)) for c in class_palette(4)[1])
    rgb = (0.5 + 0.28209479177387814 * viewer.data.gaussians.sh[:, 0].numpy()).clip(0, 1)
    assert np.abs(sent_rgb(viewer).astype(int) - np.round(rgb * 255)).max() <= 1


def test_colour_modes_change_the_colours_sent(viewer):
    viewer.mode.value = "class"
    rgb = (0.5 + 0.28209479177387814 * viewer.data.gaussians.sh[:, 0].numpy()).clip(0, 1)
    grey = (rgb @ [0.299, 0.587, 0.114])[:, None].repeat(3, 1)  # unlabelled: the grey of its RGB
    expected = np.round(
        np.where(viewer.data.class_id[:, None] == 0, grey, class_palette(4)[viewer.data.class_id]) * 255
    )
    assert (expected[viewer.data.class_id == 1] == np.round(class_palette(4)[1] * 255)).all()
    assert np.abs(sent_rgb(viewer).astype(int) - expected).max() <= 1
    viewer.mode.value = "class confidence"
    expected = np.round(ramp(viewer.data.class_conf) * 255)
    assert np.abs(sent_rgb(viewer).astype(int) - expected).max() <= 1
    viewer.query_text.value = "sofa"
    assert viewer.mode.value == "query relevance"
    relevance = np.where(viewer.data.class_id == 3, viewer.data.class_conf, 0)
    assert np.abs(sent_rgb(viewer).astype(int) - np.round(ramp(relevance) * 255)).max() <= 1
    viewer.set_query("lamp")  # not a class, no model: a message, colours unchanged
    assert "not one of the classes" in viewer.status
    assert np.abs(sent_rgb(viewer).astype(int) - np.round(ramp(relevance) * 255)).max() <= 1


def test_filters_class_toggles_and_export(viewer, tmp_path):
    viewer.class_boxes[0].value = False
    assert viewer.splats.buffer.shape[0] == 30 and viewer.visible.sum() == 30
    viewer.min_opacity.value = 0.5
    keep = (viewer.data.class_id != 0) & (viewer.data.gaussians.opacities.numpy() >= 0.5)
    assert np.array_equal(viewer.visible, keep)
    assert viewer.splats.buffer.shape[0] == keep.sum()
    viewer.max_scale.value = 0.0
    assert viewer.visible.sum() == 0 and viewer.splats.buffer.shape[0] == 1  # one transparent stand-in
    viewer.max_scale.value = viewer.max_scale.max
    viewer.export_path.value = str(tmp_path / "out.ply")
    viewer._export_clicked()
    gaussians, extra = read_ply(tmp_path / "out.ply")
    assert gaussians.num_gaussians == keep.sum() and "exported" in viewer.status
    np.testing.assert_array_equal(extra["class_id"], viewer.data.class_id[keep])
    np.testing.assert_array_equal(gaussians.features["lang"], viewer.data.gaussians.features["lang"][keep])
    viewer.export_path.value = str(viewer.data.source)  # never over the scene being viewed
    before = viewer.data.source.read_bytes()
    viewer._export_clicked()
    assert "scene being viewed" in viewer.status and viewer.data.source.read_bytes() == before


def test_plain_ply_opens_in_rgb_mode_with_one_note(tmp_path):
    data = load_scene(write_scene(tmp_path, classes=False, summary=False))
    assert len(data.notes) == 2 and "class, class confidence and query modes are off" in data.notes[0]
    v = Viewer(data, port=free_port())
    try:
        assert tuple(v.mode.options) == ("RGB",) and v.class_boxes == {} and v.frusta == []
        assert v.splats.buffer.shape == (N, 8)
    finally:
        v.stop()


@pytest.mark.parametrize("kind", ["missing", "not_ply", "truncated", "bad_json", "bad_cameras", "bad_port"])
def test_bad_input_is_one_error_line(tmp_path, capsys, kind):
    ply = write_scene(tmp_path)
    args = [str(ply), "--port", str(free_port())]
    if kind == "missing":
        args[0] = str(tmp_path / "nope.ply")
    elif kind == "not_ply":
        ply.write_text("hello")
    elif kind == "truncated":
        ply.write_bytes(ply.read_bytes()[:-100])
    elif kind == "bad_json":
        (tmp_path / "scene.json").write_text("{")
    elif kind == "bad_cameras":
        (tmp_path / "scene.json").write_text(json.dumps({"class_names": NAMES, "cameras": {"K": [1, 2]}}))
    elif kind == "bad_port":
        args[2] = "70000"
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert ("--port" if kind == "bad_port" else "nope.ply" if kind == "missing" else "scene.") in err[0]


def test_console_script_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ffsplat-view"] == "ffsplat.cli:view"
    from ffsplat import cli

    assert callable(cli.view)


DEMO_VIEWS = [ROOT / "examples/demo_real/view_0.jpg", ROOT / "examples/demo_real/view_1.jpg"]
DEMO_CHECKPOINT = ROOT / "checkpoints/demo/model.pt"


@pytest.fixture(scope="module")
def demo_scene(tmp_path_factory) -> Path:
    if not DEMO_CHECKPOINT.is_file():
        pytest.skip("no checkpoints/demo/model.pt")
    from ffsplat.inference.cli import main as infer

    out = tmp_path_factory.mktemp("demo") / "scene.ply"
    args = ["--views", *map(str, DEMO_VIEWS), "--cameras", str(ROOT / "examples/demo_real/cameras.json")]
    assert infer([*args, "--out", str(out), "--device", "cpu"]) == 0
    return out


@pytest.mark.slow
def test_infer_view_opens_the_viewer_on_the_scene_it_wrote(demo_scene, tmp_path, monkeypatch):
    import ffsplat.inference.viewer
    from ffsplat.inference.cli import main as infer

    served = []
    monkeypatch.setattr(ffsplat.inference.viewer, "serve", lambda data, port=8080, **kw: served.append((data, port)))
    out = tmp_path / "scene.ply"
    args = ["--views", *map(str, DEMO_VIEWS), "--cameras", str(ROOT / "examples/demo_real/cameras.json")]
    assert infer([*args, "--out", str(out), "--device", "cpu", "--view", "--view-port", "8123"]) == 0
    ((data, port),) = served
    assert port == 8123 and data.source == out and data.has_classes and data.c2w.shape == (2, 4, 4)


def test_infer_view_port_is_checked_before_anything_runs(tmp_path, capsys):
    from ffsplat.inference.cli import main as infer

    out = tmp_path / "scene.ply"
    assert infer(["--views", "a.jpg", "b.jpg", "--out", str(out), "--view", "--view-port", "-1"]) == 2
    assert "--view-port" in capsys.readouterr().err and not out.exists()


def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def screenshot(url: str, path: Path, browser: str) -> None:
    """Headless Chromium (software WebGL) loads the page and screenshots it once the splats arrived."""
    cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu-sandbox", "--use-angle=swiftshader",
           "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist", "--hide-scrollbars", "--window-size=960,640",
           "--virtual-time-budget=20000", f"--screenshot={path}", url]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)


@pytest.mark.slow
def test_browser_shows_the_demo_scene(demo_scene, tmp_path):
    """Starts ``python -m ffsplat.view`` on the demo, opens the page in headless Chromium and checks the
    screenshot is not blank. Set FFSPLAT_SCREENSHOT=path to keep it (docs/viewer.png comes from here)."""
    import os

    from PIL import Image

    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ffsplat.view", str(demo_scene), "--port", str(port), "--mode", "class"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline, lines = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("viewer at") or proc.poll() is not None:
                break
        assert lines[-1].startswith(f"viewer at http://127.0.0.1:{port}"), lines
        shot = tmp_path / "viewer.png"
        screenshot(f"http://127.0.0.1:{port}", shot, browser)
        assert shot.is_file(), "Chromium wrote no screenshot"
        image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
        background = np.median(image.reshape(-1, 3), axis=0)
        differs = np.abs(image - background).sum(-1) > 30
        assert differs.mean() > 0.05, f"screenshot is nearly blank ({differs.mean():.3f} non-background)"
        # --mode class: the sofa's class colour (light cyan, 158 218 229, lighter still where splats blend
        # over the white background) reached the canvas; everything else is grey (r = g = b)
        cyan = (image[..., 2] - image[..., 0] > 30) & (image[..., 1] - image[..., 0] > 25)
        assert cyan.mean() > 0.02, f"too few sofa-coloured pixels ({cyan.mean():.3f})"
        if os.environ.get("FFSPLAT_SCREENSHOT"):
            shutil.copy(shot, os.environ["FFSPLAT_SCREENSHOT"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_scene_view_serves_the_in_memory_scene_with_the_models_query():
    import ffsplat

    scene = ffsplat.load(device="cpu").predict(DEMO_VIEWS, cameras=ROOT / "examples/demo_real/cameras.json")
    viewer = scene.view(port=free_port())
    try:
        n = scene.gaussians.num_gaussians
        assert viewer.splats.buffer.shape == (n, 8) and len(viewer.frusta) == 2
        assert viewer.data.class_names == ["unlabelled", *scene.classes]
        viewer.set_query("sofa")
        expected = scene.query("sofa").relevance.numpy()
        np.testing.assert_allclose(viewer._relevance, expected, atol=1e-6)
        assert np.abs(sent_rgb(viewer).astype(int) - np.round(ramp(expected) * 255)).max() <= 1
        viewer.set_query("lamp")  # no clip_path: the model's own message, shown in the GUI
        assert "clip_path" in viewer.status
    finally:
        viewer.stop()


def test_start_mode(tmp_path, capsys):
    data = load_scene(write_scene(tmp_path))
    v = Viewer(data, port=free_port(), mode="class confidence")
    try:
        assert v.mode.value == "class confidence"
        assert np.abs(sent_rgb(v).astype(int) - np.round(ramp(data.class_conf) * 255)).max() <= 1
    finally:
        v.stop()
    plain = write_scene(tmp_path / "plain" if (tmp_path / "plain").mkdir() is None else tmp_path, classes=False)
    assert main([str(plain), "--port", str(free_port()), "--mode", "class"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --mode: 'class' needs class fields"), err


@pytest.mark.slow
def test_model_queries_from_the_files_match_the_api_and_take_free_text(demo_scene, tmp_path):
    import ffsplat
    from ffsplat.view import model_query
    from tests.test_teacher_lseg import tiny_clip, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tiny_clip(tokenizer, 0).save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    data = load_scene(demo_scene)
    query = model_query(data, None, str(tmp_path / "clip"))
    scene = ffsplat.load(device="cpu").predict(DEMO_VIEWS, cameras=ROOT / "examples/demo_real/cameras.json")
    np.testing.assert_allclose(query("sofa"), scene.query("sofa").relevance.numpy(), atol=1e-4)
    lamp = query("lamp")  # not a class: the (tiny, random) CLIP text encoder embeds it
    assert lamp.shape == (data.gaussians.num_gaussians,) and 0 <= lamp.min() and lamp.max() <= 1 and lamp.max() > 0
    v = Viewer(data, port=free_port(), query=query)
    try:
        v.set_query("lamp")
        assert v.mode.value == "query relevance" and np.allclose(v._relevance, lamp)
    finally:
        v.stop()


@pytest.mark.parametrize("kind", ["checkpoint_alone", "plain_ply", "not_pixel_aligned"])
def test_model_query_options_are_checked(tmp_path, capsys, kind):
    ply = write_scene(tmp_path, classes=kind != "plain_ply")
    args = [str(ply), "--port", str(free_port())]
    args += ["--checkpoint", "x.pt"] if kind == "checkpoint_alone" else ["--clip-path", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = {"checkpoint_alone": "give --clip-path too", "plain_ply": "need the class fields",
                "not_pixel_aligned": "not one per input pixel"}[kind]  # fmt: skip
    assert len(err) == 1 and err[0].startswith("error: --") and expected in err[0], err


def test_clip_path_hands_the_model_query_to_the_viewer(tmp_path, monkeypatch):
    import ffsplat.view

    calls = []
    sentinel = lambda text: np.zeros(N)  # noqa: E731
    monkeypatch.setattr(
        ffsplat.view, "model_query", lambda data, ckpt, clip, device: calls.append((ckpt, clip, device)) or sentinel
    )
    monkeypatch.setattr(ffsplat.view, "serve", lambda data, host, port, mode, query: calls.append((port, mode, query)))
    ply = write_scene(tmp_path)
    assert main([str(ply), "--port", "0", "--clip-path", "clipdir", "--checkpoint", "m.pt", "--mode", "class"]) == 0
    assert calls == [(Path("m.pt"), "clipdir", "cpu"), (0, "class", sentinel)]


@pytest.mark.slow
def test_python_dash_m_runs_the_command(tmp_path):
    missing = tmp_path / "missing.ply"
    proc = subprocess.run(
        [sys.executable, "-m", "ffsplat.view", str(missing)], capture_output=True, text=True, timeout=120
    )
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == f"error: {missing}: no such file (expected a Gaussian splatting .ply)"
    )
