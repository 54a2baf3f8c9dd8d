"""infer.py camera options: registration without poses (EXIF / --intrinsics / intrinsics-only JSON),
camera import formats, --save-depth, and bad camera input (one error line, exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffsplat.core.types import center_crop_offsets, cover_size
from ffsplat.inference.cameras import CameraFile, CameraView, write_cameras
from tests.test_infer import checkpoint, inputs, room_views, run_infer  # noqa: F401  (fixtures)


def test_save_depth_writes_mm_png_and_metres_npy_with_crop(tmp_path, checkpoint, inputs, capsys):  # noqa: F811
    views, cams = inputs
    out = tmp_path / "scene.ply"
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
            "--save-depth",
            "--device",
            "cpu",
        )
        == 0
    )
    summary = json.loads((tmp_path / "scene.json").read_text())
    depth = summary["depth"]
    assert len(depth["views"]) == 2
    for _v, (view, path) in enumerate(zip(depth["views"], views)):
        metres = np.load(view["npy_m"])
        mm = np.asarray(Image.open(view["png_mm"]))
        assert (
            metres.dtype == np.float32 and metres.shape == (64, 64) and mm.dtype == np.uint16 and mm.shape == (64, 64)
        )
        assert 0.3 <= metres.min() and metres.max() <= 8.0  # inside the cameras' near/far
        np.testing.assert_array_equal(mm, np.round(metres * 1000).astype(np.uint16))
        h, w = np.asarray(Image.open(path)).shape[:2]
        cover = cover_size((h, w), (64, 64))
        assert view["input_size"] == [h, w] and view["resized_to"] == list(cover)
        assert view["crop_top_left"] == list(center_crop_offsets(cover, (64, 64)))
    assert depth["views"][1]["input_size"] == [256, 224] and depth["views"][1]["crop_top_left"][0] > 0  # cropped


def test_registration_with_exif_intrinsics(tmp_path, checkpoint, room_views, capsys):  # noqa: F811
    images, k, _ = room_views
    f35 = k[0, 0] * np.hypot(36, 24) / np.hypot(256, 256)  # the room's focal length as 35 mm-equivalent
    paths = []
    for i, image in enumerate(images):
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0xA405] = round(f35)
        paths.append(tmp_path / f"v{i}.jpg")
        Image.fromarray(image).save(paths[-1], "JPEG", quality=95, exif=exif)
    out = tmp_path / "s.ply"
    assert run_infer("--views", *paths, "--checkpoint", checkpoint, "--out", out, "--device", "cpu") == 0, (
        capsys.readouterr().err
    )
    summary = json.loads((tmp_path / "s.json").read_text())
    how = summary["cameras"]["how"]
    assert "COLMAP two-view geometry" in how and "EXIF 35 mm-equivalent focal length" in how
    reg = summary["cameras"]["registration"]
    assert reg["method"].startswith("two-view geometry") and reg["pairs"][0]["inliers"] >= 15


def test_intrinsics_only_cameras_json_registers_the_poses(tmp_path, checkpoint, room_views, capsys):  # noqa: F811
    images, k, _ = room_views
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"v{i}.png")
        Image.fromarray(image).save(paths[-1])
    write_cameras(tmp_path / "k.json", CameraFile([CameraView(k, None, 256, 256), CameraView(k, None, 256, 256)]))
    assert run_infer("--views", *paths, "--cameras", tmp_path / "k.json", "--checkpoint", checkpoint,
                     "--out", tmp_path / "s.ply", "--device", "cpu") == 0, capsys.readouterr().err  # fmt: skip
    how = json.loads((tmp_path / "s.json").read_text())["cameras"]["how"]
    assert "COLMAP two-view geometry" in how and f"intrinsics from {tmp_path / 'k.json'}" in how


def test_scannet_folder_as_cameras(tmp_path, checkpoint, capsys):  # noqa: F811
    from tests.conftest import shared_data

    root = shared_data("hololens-office")
    views = [root / "color" / "100.jpg", root / "color" / "104.jpg"]
    assert (
        run_infer(
            "--views",
            *views,
            "--cameras",
            root,
            "--checkpoint",
            checkpoint,
            "--out",
            tmp_path / "s.ply",
            "--device",
            "cpu",
        )
        == 0
    )
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["cameras"]["how"] == f"cameras from {root} (scannet)"


def bad_camera_case(tmp_path: Path, room_views, inputs, kind: str) -> tuple[list, str]:  # noqa: F811
    images, _, _ = room_views
    views, cams = inputs
    pngs = []
    for i, image in enumerate(images):
        pngs.append(tmp_path / f"v{i}.png")
        Image.fromarray(image).save(pngs[-1])
    if kind == "unrelated":
        noise = tmp_path / "noise.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, images[0].shape, dtype=np.uint8)).save(noise)
        return ["--views", pngs[0], noise], "v0.png and noise.png could not be registered"
    if kind == "identical":
        return ["--views", pngs[0], pngs[0]], "v0.png and v0.png are the same photo"
    if kind == "corrupt_exif":
        exif = Image.Exif()
        exif.get_ifd(0x8769).update({0x920A: 0, 0xA20E: 3000})
        bad = tmp_path / "bad.jpg"
        Image.fromarray(images[0]).save(bad, "JPEG", exif=exif)
        return ["--views", bad, pngs[1]], "bad.jpg: corrupt EXIF FocalLength"
    if kind == "intrinsics_text":
        return ["--views", *pngs, "--intrinsics", "200,200,128"], "--intrinsics: expected four numbers"
    if kind == "intrinsics_outside":
        return [
            "--views",
            *pngs,
            "--intrinsics",
            "200,200,1000,128",
        ], "principal point (1000, 128) is far outside the 256x256 image"
    if kind == "near_string":
        data = json.loads(Path(cams).read_text())
        data["near"] = "0.3"
        (tmp_path / "c.json").write_text(json.dumps(data))
        return ["--views", *views, "--cameras", tmp_path / "c.json"], '"near": expected a finite number'
    if kind == "refine_two":
        return [
            "--views",
            *pngs,
            "--refine-intrinsics",
            "--focal",
            "200",
        ], "--refine-intrinsics: refining intrinsics needs 3 or more views"
    if kind == "focal_with_cameras":
        return ["--views", *views, "--cameras", cams, "--focal", "200"], "cannot be combined with --cameras"
    if kind == "missing_folder_view":
        (tmp_path / "scan" / "pose").mkdir(parents=True)
        (tmp_path / "scan" / "intrinsic").mkdir()
        np.savetxt(tmp_path / "scan" / "intrinsic" / "intrinsic_color.txt", np.eye(4) * 100 + np.diag([0, 0, -99, -99]))
        return ["--views", *pngs, "--cameras", tmp_path / "scan"], "no pose file for v0, v1"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "unrelated",
        "identical",
        "corrupt_exif",
        "intrinsics_text",
        "intrinsics_outside",
        "near_string",
        "refine_two",
        "focal_with_cameras",
        "missing_folder_view",
    ],
)
def test_bad_camera_input_gives_one_clear_error_and_no_output(tmp_path, checkpoint, room_views, inputs, capsys, kind):  # noqa: F811
    args, message = bad_camera_case(tmp_path, room_views, inputs, kind)
    out = tmp_path / "result" / "scene.ply"
    code = run_infer(*args, "--checkpoint", checkpoint, "--out", out, "--device", "cpu")
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "result").exists()


def test_near_far_default_to_the_models_training_depth_range(tmp_path, inputs, capsys):  # noqa: F811
    """Without --near/--far and without near/far in the cameras file, infer.py uses the depth range
    recorded in model.pt (the cost volume's candidates were learned over it); the file's range and
    then the options take precedence."""
    import torch

    from ffsplat.core.config import group_file, to_dataclass
    from ffsplat.inference.cameras import read_cameras
    from ffsplat.model.network import ModelConfig
    from ffsplat.training.config import TrainConfig
    from ffsplat.training.module import SemanticSplatModule, export_slim

    cfg = TrainConfig()
    cfg.model = to_dataclass(ModelConfig, group_file("model", "small"))
    cfg.model.conditioning.use_seg_teacher = cfg.model.conditioning.use_lang_teacher = False
    torch.manual_seed(0)
    module = SemanticSplatModule(cfg)
    module.image_size, module.depth_ranges = 64, [(1.5, 3.0), (1.4, 3.2), (1.6, 2.8)]
    ranged = export_slim(module, tmp_path / "model.pt")
    views, cams = inputs
    bare = tmp_path / "bare.json"
    write_cameras(bare, CameraFile(read_cameras(cams).views, None, None))
    cases = [([], bare, (1.5, 3.0)), ([], cams, (0.3, 8.0)), (["--near", "1.0", "--far", "4.0"], bare, (1.0, 4.0))]
    for i, (extra, camera_file, expected) in enumerate(cases):
        out = tmp_path / f"scene_{i}.ply"
        args = ["--views", *views, "--cameras", camera_file, "--checkpoint", ranged, "--out", out, *extra]
        assert run_infer(*args, "--device", "cpu") == 0, capsys.readouterr().err
        summary = json.loads(out.with_suffix(".json").read_text())
        assert (summary["cameras"]["near"], summary["cameras"]["far"]) == pytest.approx(expected), (extra, camera_file)
