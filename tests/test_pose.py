"""COLMAP registration (ffsplat.inference.pose.register_views): accuracy on synthetic and real views,
the scale rule, the report, and refusals (unrelated photos, identical photos, bad arguments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from ffsplat.inference.pose import PoseEstimationError, RegistrationConfig, register_views, triangulate_pair
from ffsplat.synthetic import SyntheticConfig, make_scene, render_frame
from tests.conftest import shared_data

FAST = RegistrationConfig(domain_size_pooling=False)


def angle_deg(r: np.ndarray) -> float:
    return math.degrees(math.acos(np.clip((np.trace(r) - 1) / 2, -1, 1)))


def direction_deg(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


@pytest.fixture(scope="module")
def room():
    """Frames 0 and 6 of a synthetic room at 256x256 with their exact cameras."""
    room, poses, k = make_scene(7, SyntheticConfig(height=256, width=256, frames=12))
    return [render_frame(room, poses[i], k, 256, 256)[0] for i in (0, 6)], k, poses[[0, 6]]


def test_two_views_recover_relative_pose_and_scale(room):
    images, k, poses = room
    reg = register_views(images, [k, k], baseline=0.25, names=["a.png", "b.png"], config=FAST)
    true_rel = np.linalg.inv(poses[0]) @ poses[1]  # camera 1 in camera 0's frame
    np.testing.assert_allclose(reg.c2w[0], np.eye(4), atol=1e-12)
    assert angle_deg(reg.c2w[1, :3, :3].T @ true_rel[:3, :3]) < 2.0
    assert direction_deg(reg.c2w[1, :3, 3], true_rel[:3, 3]) < 5.0
    assert np.linalg.norm(reg.c2w[1, :3, 3]) == pytest.approx(0.25)
    np.testing.assert_allclose(reg.k, np.stack([k, k]))  # two views: the priors are kept
    rep = reg.report
    assert (
        rep.method.startswith("two-view geometry (")
        and rep.pairs[0].inliers >= 30
        and rep.pairs[0].matches >= rep.pairs[0].inliers
    )
    assert rep.points >= 30 and rep.mean_reprojection_error < 1.0 and "a.png and b.png are 0.25 m apart" in rep.scale


def test_refuses_unrelated_and_identical_photos(room):
    images, k, _ = room
    noise = np.random.default_rng(0).integers(0, 255, images[0].shape, dtype=np.uint8)
    with pytest.raises(
        PoseEstimationError, match=r"a\.png and noise\.png could not be registered: \d+ feature matches"
    ):
        register_views([images[0], noise], [k, k], names=["a.png", "noise.png"], config=FAST)
    with pytest.raises(PoseEstimationError, match="a.png and b.png are the same photo"):
        register_views([images[0], images[0].copy()], [k, k], names=["a.png", "b.png"], config=FAST)
    with pytest.raises(ValueError, match="3 or more views"):
        register_views(images, [k, k], config=RegistrationConfig(refine_intrinsics=True))


def test_triangulate_pair_reprojects_exactly():
    k = np.array([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]])
    rel = np.eye(4)
    rel[:3, 3] = [-0.2, 0.0, 0.0]
    points = np.random.default_rng(1).uniform([-1, -1, 2], [1, 1, 4], (20, 3))
    x0 = (points @ k.T)[:, :2] / points[:, 2:]
    c1 = points + rel[:3, 3]
    x1 = (c1 @ k.T)[:, :2] / c1[:, 2:]
    n, err, angle = triangulate_pair(k, k, rel, x0, x1)
    assert n == 20 and err < 1e-6 and 2.0 < angle < 6.0  # 0.2 m baseline at 2-4 m
    assert triangulate_pair(k, k, rel, x0, x1 + 2.0)[1] > 0.1  # a wrong match shows as error


@pytest.fixture(scope="module")
def hololens():
    root = shared_data("hololens-office")
    frames = (100, 104, 108)
    images = [np.asarray(Image.open(root / "color" / f"{f}.jpg").convert("RGB")) for f in frames]
    k = np.loadtxt(root / "intrinsic" / "intrinsic_color.txt")[:3, :3]
    poses = np.stack([np.loadtxt(root / "pose" / f"{f}.txt") for f in frames])
    return images, k, poses


def test_three_real_views_by_incremental_mapping(hololens):
    images, k, poses = hololens
    reg = register_views(images, [k] * 3, baseline=0.5, names=["100.jpg", "104.jpg", "108.jpg"], config=FAST)
    assert reg.report.method == "incremental mapping" and len(reg.report.pairs) == 3
    assert all(o > 0 for o in reg.report.observations) and reg.report.mean_reprojection_error < 2.0
    assert np.linalg.norm(reg.c2w[1, :3, 3]) == pytest.approx(0.5)
    for i in (1, 2):
        true_rel = np.linalg.inv(poses[0]) @ poses[i]
        assert angle_deg(reg.c2w[i, :3, :3].T @ true_rel[:3, :3]) < 10.0
    true_ratio = np.linalg.norm(poses[2, :3, 3] - poses[0, :3, 3]) / np.linalg.norm(poses[1, :3, 3] - poses[0, :3, 3])
    ratio = np.linalg.norm(reg.c2w[2, :3, 3]) / np.linalg.norm(reg.c2w[1, :3, 3])
    assert ratio == pytest.approx(true_ratio, rel=0.5)  # one scale for the whole reconstruction


def test_unregistered_view_is_named(hololens):
    images, k, _ = hololens
    noise = np.random.default_rng(0).integers(0, 255, images[0].shape, dtype=np.uint8)
    with pytest.raises(PoseEstimationError, match=r"could not register 1 of 3 views: noise\.jpg"):
        register_views([images[0], images[1], noise], [k] * 3, names=["100.jpg", "104.jpg", "noise.jpg"], config=FAST)
