"""Cameras, Gaussians and the geometry helpers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ffsplat import Cameras, Gaussians
from ffsplat.core.geometry import (
    invert_rigid,
    normalize_quat,
    project_points,
    quat_to_rotmat,
    rotmat_to_quat,
    unproject_depth,
)
from ffsplat.core.types import cover_size


def random_pose(gen: torch.Generator) -> torch.Tensor:
    q = normalize_quat(torch.randn(4, generator=gen, dtype=torch.float64))
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = quat_to_rotmat(q)
    c2w[:3, 3] = torch.randn(3, generator=gen, dtype=torch.float64)
    return c2w


def camera(height=48, width=64, gen=None) -> Cameras:
    gen = gen or torch.Generator().manual_seed(0)
    k = torch.tensor([[52.0, 0, 31.0], [0, 50.0, 25.0], [0, 0, 1]], dtype=torch.float64)
    return Cameras(k[None], random_pose(gen)[None], (height, width))


def test_quaternion_round_trip_including_near_180_degrees():
    gen = torch.Generator().manual_seed(1)
    q = normalize_quat(torch.randn(500, 4, generator=gen, dtype=torch.float64))
    q = torch.cat(
        [
            q,
            torch.tensor(
                [[0.0, 1.0, 0.0, 0.0], [1e-9, 0.0, 0.7071067811865476, 0.7071067811865476]], dtype=torch.float64
            ),
        ]
    )
    q = torch.where(q[:, :1] < 0, -q, q)
    back = rotmat_to_quat(quat_to_rotmat(q))
    # q and -q are the same rotation; compare rotations.
    torch.testing.assert_close(quat_to_rotmat(back), quat_to_rotmat(q))
    rot = quat_to_rotmat(q)
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(502, 3, 3))


def test_invert_rigid_and_w2c():
    cams = camera()
    torch.testing.assert_close(cams.w2c @ cams.c2w, torch.eye(4, dtype=torch.float64)[None])
    torch.testing.assert_close(invert_rigid(cams.w2c), cams.c2w)
    again = Cameras.from_w2c(cams.intrinsics, cams.w2c, cams.image_size)
    torch.testing.assert_close(again.extrinsics, cams.extrinsics)


def test_unproject_then_project_returns_pixel_centres():
    cams = camera()
    depth = 1.0 + torch.rand(1, 48, 64, dtype=torch.float64)
    pts = unproject_depth(depth, cams.intrinsics, cams.extrinsics).reshape(1, -1, 3)
    uv, z = project_points(pts, cams.intrinsics, cams.w2c)
    v, u = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
    torch.testing.assert_close(uv[0], torch.stack([u, v], -1).reshape(-1, 2).double() + 0.5)
    torch.testing.assert_close(z[0], depth.reshape(-1))


def test_opencv_axes_point_in_front_projects_to_principal_point():
    k = torch.tensor([[100.0, 0, 40], [0, 100.0, 30], [0, 0, 1]])
    cams = Cameras(k[None], torch.eye(4)[None], (60, 80))
    uv, z = project_points(torch.tensor([[[0.0, 0.0, 2.0], [0.2, 0.1, 2.0]]]), cams.intrinsics, cams.w2c)
    torch.testing.assert_close(uv[0], torch.tensor([[40.0, 30.0], [50.0, 35.0]]))  # +x right, +y down
    assert (z > 0).all()


@pytest.mark.parametrize("op", ["resize", "crop", "center_crop", "resize_and_center_crop"])
def test_image_edits_keep_projection_consistent(op):
    """A 3D point lands on the same image content before and after the edit."""
    cams = camera(48, 64)
    pts = unproject_depth(torch.full((1, 48, 64), 2.0, dtype=torch.float64), cams.intrinsics, cams.extrinsics)
    pts = pts[:, 10:40:7, 5:60:9].reshape(1, -1, 3)
    uv, _ = project_points(pts, cams.intrinsics, cams.w2c)
    if op == "resize":
        new = cams.resize(24, 96)
        expected = uv * torch.tensor([96 / 64, 24 / 48], dtype=torch.float64)
    elif op == "crop":
        new = cams.crop(5, 7, 30, 40)
        expected = uv - torch.tensor([7.0, 5.0], dtype=torch.float64)
    elif op == "center_crop":
        new = cams.center_crop(32, 32)
        expected = uv - torch.tensor([16.0, 8.0], dtype=torch.float64)
    else:
        new = cams.resize_and_center_crop(32, 32)
        assert cover_size((48, 64), (32, 32)) == (32, 43)
        # Rounded to whole pixels, x scales by 43/64 and y by 32/48.
        expected = uv * torch.tensor([43 / 64, 32 / 48], dtype=torch.float64) - torch.tensor(
            [(43 - 32) // 2, 0], dtype=torch.float64
        )
    got, _ = project_points(pts, new.intrinsics, new.w2c)
    torch.testing.assert_close(got, expected)
    assert new.image_size == {"resize": (24, 96), "crop": (30, 40)}.get(op, (32, 32))


def test_normalized_intrinsics_round_trip():
    cams = camera()
    back = Cameras.from_normalized(cams.normalized_intrinsics, cams.extrinsics, cams.image_size)
    torch.testing.assert_close(back.intrinsics, cams.intrinsics)
    assert cams.normalized_intrinsics[0, 0, 2].item() == pytest.approx(31.0 / 64)


def test_camera_validation_messages():
    cams = camera()
    cams.validate()
    bad = cams.extrinsics.clone()
    bad[0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        Cameras(cams.intrinsics, bad, cams.image_size).validate("cams.json")
    singular = cams.extrinsics.clone()
    singular[0, :3, :3] = 0
    with pytest.raises(ValueError, match="not a proper rotation"):
        Cameras(cams.intrinsics, singular, cams.image_size).validate()
    with pytest.raises(ValueError, match="crop window"):
        cams.crop(40, 0, 20, 20)
    with pytest.raises(ValueError, match=r"\[\.\.\., 4, 4\]"):
        Cameras(cams.intrinsics, torch.eye(3)[None], (4, 4))


def test_gaussians_shapes_and_helpers():
    n = 7
    g = Gaussians(
        means=torch.zeros(2, n, 3),
        scales=torch.ones(2, n, 3),
        rotations=torch.tensor([1.0, 0, 0, 0]).expand(2, n, 4),
        opacities=torch.ones(2, n),
        sh=torch.zeros(2, n, 16, 3),
        features={"seg": torch.zeros(2, n, 8)},
    )
    assert g.sh_degree == 3 and g.num_gaussians == n and g.batch_shape == (2,)
    assert g.feature_dims == {"seg": 8}
    both = Gaussians.cat([g, g])
    assert both.num_gaussians == 2 * n and both.features["seg"].shape == (2, 2 * n, 8)
    one = g[0].select(torch.tensor([0, 3]))
    assert one.means.shape == (2, 3) and one.features["seg"].shape == (2, 8)
    with pytest.raises(ValueError, match="Gaussians.sh"):
        Gaussians(g.means, g.scales, g.rotations, g.opacities, torch.zeros(2, n, 5, 3))
    with pytest.raises(ValueError, match="Gaussians.opacities"):
        Gaussians(g.means, g.scales, g.rotations, torch.ones(2, n, 1), g.sh)


@pytest.mark.slow
def test_stack_imports_on_this_torch_in_a_fresh_interpreter():
    """ffsplat first, then the libraries that import torchvision (the CPU-torch fix)."""
    code = (
        "import ffsplat, timm, lightning, segment_anything, torch, torchvision;"
        "from torchvision.ops import batched_nms;"
        "b = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60.]]);"
        "print(batched_nms(b, torch.tensor([.9, .8, .7]), torch.tensor([0, 0, 0]), .5).tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 2]"


def test_cpu_nms_matches_definition():
    from ffsplat._torchvision_cpu import nms_reference

    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=gen) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=gen) * 20], 1)
    scores = torch.rand(200, generator=gen)
    keep = nms_reference(boxes, scores, 0.4)
    # Kept boxes overlap each other by at most the threshold, in decreasing score order...
    from torchvision.ops import box_iou

    iou = box_iou(boxes[keep], boxes[keep]).fill_diagonal_(0)
    assert iou.max() <= 0.4 and (scores[keep].diff() <= 0).all()
    # ...and every dropped box overlaps a higher-scoring kept one by more than it.
    dropped = torch.ones(200, dtype=torch.bool)
    dropped[keep] = False
    over = box_iou(boxes[dropped], boxes[keep]) > 0.4
    higher = scores[keep][None, :] > scores[dropped][:, None]
    assert (over & higher).any(dim=1).all()
