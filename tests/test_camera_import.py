"""Camera import (COLMAP bin/txt, nerfstudio, ScanNet), cameras JSON validation, EXIF intrinsics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from ffsplat.inference.cameras import CameraFileError, detect_camera_format, exif_focal, load_cameras, read_cameras

H, W = 48, 64
K = np.array([[70.0, 0, 30.5], [0, 72.0, 25.0], [0, 0, 1]])


def known_c2w(i: int) -> np.ndarray:
    """A non-trivial camera-to-world pose (OpenCV axes)."""
    angle = 0.3 + 0.2 * i
    c, s = np.cos(angle), np.sin(angle)
    c2w = np.eye(4)
    c2w[:3, :3] = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.array(
        [[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]]
    )
    c2w[:3, 3] = [0.5 * i, -0.2, 1.0 + i]
    return c2w


def project(k: np.ndarray, c2w: np.ndarray, point: np.ndarray) -> np.ndarray:
    cam = np.linalg.inv(c2w) @ np.r_[point, 1.0]
    return (k @ cam[:3])[:2] / cam[2]


def assert_same_camera(view, k: np.ndarray, c2w: np.ndarray) -> None:
    np.testing.assert_allclose(view.k, k, atol=1e-9)
    np.testing.assert_allclose(view.c2w, c2w, atol=1e-9)
    point = c2w[:3, :3] @ np.array([0.1, -0.05, 2.0]) + c2w[:3, 3]  # in front of the camera
    np.testing.assert_allclose(project(view.k, view.c2w, point), project(k, c2w, point), atol=1e-7)
    assert (view.height, view.width) == (H, W)


NAMES = ["a.jpg", "b.jpg"]
SIZES = [(H, W), (H, W)]


@pytest.mark.parametrize("ext", ["bin", "txt"])
def test_colmap_sparse_model_round_trip(tmp_path, ext):
    rec = pycolmap.Reconstruction()
    camera = pycolmap.Camera(
        model="PINHOLE", width=W, height=H, params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]], camera_id=1
    )
    rec.add_camera_with_trivial_rig(camera)
    for i, name in enumerate(reversed(NAMES)):  # stored order differs from --views order: matched by name
        w2c = np.linalg.inv(known_c2w(1 - i))
        rec.add_image_with_trivial_frame(
            pycolmap.Image(name=f"images/{name}", camera_id=1, image_id=i + 1), pycolmap.Rigid3d(w2c[:3])
        )
    folder = tmp_path / "sparse"
    folder.mkdir()
    (rec.write_binary if ext == "bin" else rec.write_text)(folder)
    assert (folder / f"cameras.{ext}").is_file() and detect_camera_format(folder) == "colmap"
    cams, fmt = load_cameras(folder, NAMES, SIZES)
    assert fmt == "colmap" and [v.image for v in cams.views] == NAMES
    for i, view in enumerate(cams.views):
        assert_same_camera(view, K, known_c2w(i))
    with pytest.raises(CameraFileError, match=r"no COLMAP image for c\.jpg"):
        load_cameras(folder, ["a.jpg", "c.jpg"], SIZES)


def test_colmap_refuses_distortion(tmp_path):
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(
        pycolmap.Camera(model="SIMPLE_RADIAL", width=W, height=H, params=[70.0, 32, 24, 0.05], camera_id=1)
    )
    rec.add_image_with_trivial_frame(pycolmap.Image(name="a.jpg", camera_id=1, image_id=1), pycolmap.Rigid3d())
    rec.write_text(tmp_path)
    with pytest.raises(CameraFileError, match="lens distortion"):
        load_cameras(tmp_path, ["a.jpg"], SIZES[:1])


def test_nerfstudio_transforms_round_trip(tmp_path):
    gl_from_cv = np.diag([1.0, -1.0, -1.0, 1.0])
    frames = [
        {"file_path": f"images/{n}", "transform_matrix": (known_c2w(i) @ gl_from_cv).tolist()}
        for i, n in enumerate(NAMES)
    ]
    data = {"camera_model": "OPENCV", "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": W, "h": H,
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames[::-1]}  # fmt: skip
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps(data))
    cams, fmt = load_cameras(path, NAMES, SIZES)
    assert fmt == "nerfstudio"
    for i, view in enumerate(cams.views):
        assert_same_camera(view, K, known_c2w(i))
    data["k1"] = 0.1
    path.write_text(json.dumps(data))
    with pytest.raises(CameraFileError, match="lens distortion"):
        load_cameras(path, NAMES, SIZES)


def test_scannet_export_round_trip(tmp_path):
    (tmp_path / "pose").mkdir()
    (tmp_path / "intrinsic").mkdir()
    k4 = np.eye(4)
    k4[:3, :3] = K
    np.savetxt(tmp_path / "intrinsic" / "intrinsic_color.txt", k4)
    for i, name in enumerate(NAMES):
        np.savetxt(tmp_path / "pose" / f"{Path(name).stem}.txt", known_c2w(i))
    cams, fmt = load_cameras(tmp_path, NAMES, SIZES)
    assert fmt == "scannet"
    for i, view in enumerate(cams.views):
        assert_same_camera(view, K, known_c2w(i))
    np.savetxt(tmp_path / "pose" / "a.txt", np.full((4, 4), -np.inf))
    with pytest.raises(CameraFileError, match="invalid pose"):
        load_cameras(tmp_path, NAMES, SIZES)


def test_real_hololens_folder_imports_as_scannet():
    from tests.conftest import shared_data

    root = shared_data("hololens-office")
    cams, fmt = load_cameras(root, ["100.jpg"], [(360, 540)])
    assert fmt == "scannet"
    np.testing.assert_allclose(cams.views[0].c2w, np.loadtxt(root / "pose" / "100.txt"))


def cameras_json(tmp_path, **changes) -> Path:
    view = {"width": W, "height": H, "K": K.tolist(), "c2w": np.eye(4).tolist()}
    data = {"convention": "opencv_c2w", "views": [dict(view), dict(view)], "near": 0.5, "far": 8.0}
    for key, value in changes.items():
        if key in ("near", "far"):
            data[key] = value
        else:
            for v in data["views"]:
                if value is None:
                    v.pop(key)
                else:
                    v[key] = value
    path = tmp_path / "cams.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"near": "0.5"}, '"near": expected a finite number'),
        ({"far": "10"}, '"far": expected a finite number'),
        ({"K": [[70, 0, 400], [0, 72, 25], [0, 0, 1]]}, "principal point (400, 25) is far outside the 64x48 image"),
        ({"K": [[70, 0, 30], [0, 72, 25], [0, 1, 1]]}, "last row must be [0, 0, 1]"),
        ({"K": [[-70, 0, 30], [0, 72, 25], [0, 0, 1]]}, "focal lengths must be positive"),
    ],
)
def test_cameras_json_refuses_impossible_values(tmp_path, changes, message):
    with pytest.raises(CameraFileError, match="views\\[0\\]|near|far") as info:
        read_cameras(cameras_json(tmp_path, **changes))
    assert message in str(info.value)


def test_intrinsics_only_cameras_json(tmp_path):
    path = cameras_json(tmp_path, c2w=None)
    with pytest.raises(CameraFileError, match='missing "c2w"'):
        read_cameras(path)
    cams = read_cameras(path, require_poses=False)
    assert all(v.c2w is None for v in cams.views)
    np.testing.assert_array_equal(cams.views[1].k, K)


def jpeg_with_exif(path: Path, tags: dict, size=(W, H)) -> Path:
    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)
    sub.update(tags)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path, "JPEG", exif=exif)
    return path


def test_exif_focal_length(tmp_path):
    f35 = jpeg_with_exif(tmp_path / "f35.jpg", {0xA405: 28})
    focal, how = exif_focal(f35, H, W)
    assert focal == pytest.approx(28 * np.hypot(W, H) / np.hypot(36, 24)) and "35 mm" in how
    plane = jpeg_with_exif(
        tmp_path / "plane.jpg", {0x920A: IFDRational(43, 10), 0xA20E: IFDRational(2000, 1), 0xA210: 3}
    )
    focal, how = exif_focal(plane, H, W)
    assert focal == pytest.approx(4.3 * 2000 / 10.0) and "focal-plane" in how  # 2000 px per cm
    assert exif_focal(jpeg_with_exif(tmp_path / "none.jpg", {}), H, W) is None
    corrupt = jpeg_with_exif(tmp_path / "corrupt.jpg", {0x920A: IFDRational(4, 0), 0xA20E: IFDRational(3000, 1)})
    with pytest.raises(CameraFileError, match="corrupt.jpg: corrupt EXIF FocalLength"):
        exif_focal(corrupt, H, W)
