"""Issue 28 (unclear messages about inputs): photos are read as a photo viewer shows them (EXIF
orientation applied and said so; gray+alpha, 1-bit, 16-bit and palette PNGs made RGB, 16-bit scaled
correctly); a folder given as ``--views`` gets its own message; the checkpoint's size is not called
``--size``; ``"width": true`` and a 1e300 translation in a cameras file are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import infer
from ffsplat.data.image_ops import EXIF_ORIENTATION, read_photo
from ffsplat.inference.cameras import CameraFileError, read_cameras
from ffsplat.inference.cli import load_image
from tests.test_infer import checkpoint, inputs, room_views  # noqa: F401  (fixtures)


def test_exif_orientation_is_applied_and_reported(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255  # left half white as stored
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 CW to display"
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif, quality=100)
    Image.fromarray(stored).save(tmp_path / "plain.jpg", quality=100)
    shown, rotated = read_photo(tmp_path / "r.jpg")
    assert rotated and shown.shape == (40, 20, 3)  # displayed portrait
    assert shown[:20].mean() > 200 and shown[20:].mean() < 50  # the white half is now on top
    plain, rotated = read_photo(tmp_path / "plain.jpg")
    assert not rotated and plain.shape == (20, 40, 3)
    turned: list = []
    load_image(tmp_path / "r.jpg", turned)
    load_image(tmp_path / "plain.jpg", turned)
    assert turned == [tmp_path / "r.jpg"]


def test_gray_alpha_one_bit_palette_and_16_bit_pngs_become_rgb(tmp_path):
    gray = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).astype(np.uint8)
    Image.fromarray(np.stack([gray, np.full_like(gray, 128)], -1), "LA").save(tmp_path / "la.png")
    Image.fromarray(gray > 100).convert("1").save(tmp_path / "bit.png")
    Image.fromarray(np.stack([gray] * 3, -1)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(
        tmp_path / "p.png"
    )
    wide = gray.astype(np.uint16) * 257 + 3  # 16-bit values: v8 * 257 (+3, rounds back to v8)
    Image.fromarray(wide).save(tmp_path / "g16.png")  # opens as mode I;16 / I
    for name in ("la.png", "bit.png", "p.png", "g16.png"):
        rgb, _ = read_photo(tmp_path / name)
        assert rgb.dtype == np.uint8 and rgb.shape == (8, 8, 3), name
    np.testing.assert_array_equal(read_photo(tmp_path / "la.png")[0][..., 0], gray)
    np.testing.assert_array_equal(read_photo(tmp_path / "g16.png")[0][..., 1], gray)  # scaled, not clipped to 255
    np.testing.assert_array_equal(read_photo(tmp_path / "bit.png")[0][..., 2], np.where(gray > 100, 255, 0))
    assert abs(read_photo(tmp_path / "p.png")[0].astype(int)[..., 0] - gray).max() <= 16
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "CMYK").save(tmp_path / "cmyk.jpg")
    with pytest.raises(ValueError, match="mode CMYK"):
        read_photo(tmp_path / "cmyk.jpg")


def test_a_folder_as_views_is_named_as_a_folder(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    code = infer.main(["--views", str(tmp_path / "photos"), str(tmp_path / "a.png"), "--out", str(tmp_path / "o" / "s.ply"),
                       "--checkpoint", str(tmp_path / "unused.pt"), "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"--views: {tmp_path / 'photos'} is a folder; give the image files" in err and "not found" not in err


def cameras_file(tmp_path, **change) -> str:
    view = {"K": [[50, 0, 32], [0, 50, 32], [0, 0, 1]], "c2w": np.eye(4).tolist(), "width": 64, "height": 64}
    view |= change
    path = tmp_path / "cams.json"
    path.write_text(json.dumps({"convention": "opencv_c2w", "views": [view]}))
    return path


def test_cameras_file_refuses_bool_sizes_and_far_away_cameras(tmp_path):
    read_cameras(cameras_file(tmp_path))
    with pytest.raises(
        CameraFileError, match=r"views\[0\].width: expected a positive integer number of pixels, got true"
    ):
        read_cameras(cameras_file(tmp_path, width=True))
    far = np.eye(4)
    far[:3, 3] = [1e300, 0, 0]
    with pytest.raises(CameraFileError, match=r"views\[0\].c2w: the camera position .* is 1e\+300 from the origin"):
        read_cameras(cameras_file(tmp_path, c2w=far.tolist()))
    far[:3, 3] = [0, 2e5, 0]
    with pytest.raises(CameraFileError, match="expected at most 100000"):
        read_cameras(cameras_file(tmp_path, c2w=far.tolist()))


def test_the_checkpoints_size_is_not_called_size(tmp_path, capsys, monkeypatch):
    import ffsplat.inference.predictor as predictor_module

    class TrainedAt66:  # a model file recording a working size that is not a multiple of 4
        meta = {"image_size": 66}
        needs_labels = False

        def __init__(self, *args, **kwargs):
            pass

    monkeypatch.setattr(predictor_module, "Predictor", TrainedAt66)
    views = [tmp_path / "a.png", tmp_path / "b.png"]
    for v in views:
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(v)
    (tmp_path / "model.pt").write_bytes(b"x")
    argv = ["--views", *map(str, views), "--out", str(tmp_path / "o" / "s.ply"), "--checkpoint", str(tmp_path / "model.pt"),
            "--device", "cpu"]  # fmt: skip
    code = infer.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "--size" not in err.split(";")[0] and f"the training size {tmp_path / 'model.pt'} records" in err, err
    assert "expected a multiple of 4, got 66" in err and not (tmp_path / "o").exists()


def test_infer_says_when_it_applied_an_exif_orientation(tmp_path, checkpoint, inputs, capsys):  # noqa: F811
    views, cameras = inputs
    turned = tmp_path / "view_0.png"  # the name the cameras file gives
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 3  # rotate 180: the displayed size is the stored one, so the cameras still fit
    Image.open(views[0]).rotate(180).save(turned, exif=exif)
    code = infer.main(["--views", str(turned), str(views[1]), "--cameras", str(cameras), "--out", str(tmp_path / "o" / "s.ply"),
                       "--checkpoint", str(checkpoint), "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"info: applied the EXIF orientation of {turned} (as photo viewers do)" in err, err
