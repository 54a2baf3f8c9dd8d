"""The public Python API (ffsplat.load -> predict -> Scene): the README example runs as written,
and each Scene method does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import ffsplat
from ffsplat.render.ply import read_ply

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo_real"  # the README's example: two real office photos


@pytest.fixture(scope="module")
def model():
    if not (ROOT / "checkpoints" / "demo" / "model.pt").is_file():
        pytest.skip("no demo checkpoint in this checkout")
    return ffsplat.load(device="cpu")


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    monkeypatch.chdir(ROOT)
    exec(compile(code.replace('"outputs/api/', f'"{tmp_path}/'), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    classes = list(ffsplat.load(device="cpu").predictor.class_names)
    assert str(classes[:2])[:-1] in printed and "chair Gaussians" in printed
    assert (tmp_path / "scene.ply").is_file()


def test_predict_scene_methods(model, tmp_path):
    views = [DEMO / "view_0.jpg", DEMO / "view_1.jpg"]
    scene = model.predict(views, cameras=DEMO / "cameras.json")
    size = model.predictor.meta["image_size"]
    n = 2 * size * size
    k = len(model.predictor.class_names)
    assert scene.classes == list(model.predictor.class_names) and k >= 2
    assert scene.gaussians.means.shape == (n, 3) and scene.class_id.shape == (n,) and scene.class_conf.shape == (n,)
    assert int(scene.class_id.min()) >= 0 and int(scene.class_id.max()) <= k  # 0: the background (unlabelled)
    assert bool(((scene.class_conf > 0) & (scene.class_conf <= 1)).all())

    gaussians, extra = read_ply(scene.save_ply(tmp_path / "scene.ply"))
    assert gaussians.num_gaussians == n
    np.testing.assert_array_equal(np.asarray(extra["class_id"]), scene.class_id.numpy())

    at_inputs = scene.render()
    assert at_inputs["rgb"].shape == (2, 3, size, size) and at_inputs["depth"].shape == (2, size, size)
    # Gaussians are in pixel order of the context views: the classes rendered there are theirs.
    agreement = (at_inputs["classes"].reshape(-1) == scene.class_id).float().mean()
    assert agreement > 0.9, agreement
    novel = scene.render(DEMO / "novel_cameras.json")
    assert (
        novel["rgb"].shape[1:] == (3, size, size) and float(novel["rgb"].min()) >= 0 and float(novel["rgb"].max()) <= 1
    )

    for name in ("chair", scene.classes[0]):
        hit = scene.query(name)
        assert torch.equal(hit.mask, scene.class_id == scene.classes.index(name) + 1)
        assert hit.relevance.shape == (n,) and bool(((hit.relevance >= 0) & (hit.relevance <= 1)).all())
    with pytest.raises(ValueError, match="other words need clip_path"):
        scene.query("office chair")


def test_predict_from_arrays_and_pose_free(model):
    from PIL import Image

    real = DEMO  # two real office frames 8 apart: COLMAP registers them
    images = [np.asarray(Image.open(real / f"view_{i}.jpg").convert("RGB")) for i in range(2)]
    scene = model.predict(images)  # cameras=None: COLMAP registration, first two cameras 0.3 m apart
    c2w = scene.cameras.extrinsics[0]
    assert torch.allclose(c2w[0], torch.eye(4), atol=1e-5)
    assert float(torch.linalg.norm(c2w[1, :3, 3])) == pytest.approx(0.3, abs=1e-4)
    with pytest.raises(ValueError, match="need at least 2"):
        model.predict(images[:1])
    with pytest.raises(ValueError, match=r"expected \[H, W, 3\] uint8"):
        model.predict([images[0].astype(np.float32), images[1]])
    with pytest.raises(ValueError, match="intrinsics \\[2, 3, 3\\]"):
        model.predict(images, cameras=(np.eye(3)[None], np.eye(4)[None]))


def test_predict_uses_the_models_depth_range_without_near_far(model, monkeypatch):
    """The README photos' cameras give no near/far: predict() hands the network the depth range
    recorded in model.pt (depth_range); explicit near/far win."""
    from ffsplat.checkpoint import depth_range

    seen = []
    forward = type(model.predictor).__call__

    def recording(self, context, *rest):
        seen.append((float(context.near[0]), float(context.far[0])))
        return forward(self, context, *rest)

    monkeypatch.setattr(type(model.predictor), "__call__", recording)
    views = [DEMO / "view_0.jpg", DEMO / "view_1.jpg"]
    model.predict(views, cameras=DEMO / "cameras.json")
    model.predict(views, cameras=DEMO / "cameras.json", near=1.0, far=4.0)
    assert "depth_range" in model.predictor.meta
    assert seen == [pytest.approx(depth_range(model.predictor.meta)), pytest.approx((1.0, 4.0))]
