"""Tests for ffsplat.render.ply: Inria-layout round trips, header layout, plain Inria files, errors, atomicity."""

from __future__ import annotations

import os

import numpy as np
import numpy.lib.recfunctions as rfn
import pytest
import torch
from plyfile import PlyData, PlyElement

from ffsplat.render.ply import PlyError, read_ply, write_ply
from ffsplat.core.types import Gaussians


def random_gaussians(n: int, sh_degree: int, feature_dims: dict[str, int] | None = None, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    return Gaussians(
        means=torch.randn(n, 3, generator=gen) * 10,
        scales=torch.exp(torch.randn(n, 3, generator=gen) * 1.5 - 3),  # ~[1e-4, 1]
        rotations=torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1),
        opacities=torch.rand(n, generator=gen).clamp(1e-3, 1 - 1e-3),
        sh=torch.randn(n, k, 3, generator=gen),
        features={name: torch.randn(n, c, generator=gen) for name, c in (feature_dims or {}).items()},
    )


def random_extra(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "class_id": rng.integers(-5, 1000, n).astype(np.int32),
        "class_conf": rng.random(n).astype(np.float32),
        "mask": rng.integers(0, 256, n).astype(np.uint8),
    }


def inria_property_names(sh_degree: int) -> list[str]:
    num_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(num_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def assert_gaussians_equal(a: Gaussians, b: Gaussians) -> None:
    for name in ("means", "scales", "rotations", "opacities", "sh"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert list(a.features) == list(b.features)
    for name in a.features:
        assert torch.equal(a.features[name], b.features[name]), name


CASES = [
    pytest.param(0, {}, False, id="deg0-plain"),
    pytest.param(3, {}, False, id="deg3-plain"),
    pytest.param(0, {"seg": 16}, True, id="deg0-features-extra"),
    pytest.param(3, {"seg": 16, "lang": 128}, True, id="deg3-features-extra"),
    pytest.param(3, {"lang": 128}, False, id="deg3-wide-feature"),
]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "ascii"])
@pytest.mark.parametrize(("sh_degree", "feature_dims", "with_extra"), CASES)
def test_round_trip(tmp_path, sh_degree, feature_dims, with_extra, binary):
    n = 257
    original = random_gaussians(n, sh_degree, feature_dims)
    extra = random_extra(n) if with_extra else None

    path = write_ply(tmp_path / "scene.ply", original, extra=extra, binary=binary)
    assert path == tmp_path / "scene.ply"
    loaded, loaded_extra = read_ply(path)

    # original -> write -> read: exact except the logit / log conversions.
    assert loaded.sh_degree == sh_degree and loaded.num_gaussians == n
    for name in ("means", "rotations", "sh"):
        assert getattr(loaded, name).dtype == torch.float32
        assert torch.equal(getattr(loaded, name), getattr(original, name)), name
    assert loaded.feature_dims == feature_dims
    for name, feat in original.features.items():
        assert torch.equal(loaded.features[name], feat), name
    torch.testing.assert_close(loaded.opacities, original.opacities, rtol=1e-6, atol=0)
    torch.testing.assert_close(loaded.scales, original.scales, rtol=1e-6, atol=0)
    assert set(loaded_extra) == set(extra or {})
    for name, arr in (extra or {}).items():
        assert loaded_extra[name].dtype == arr.dtype and np.array_equal(loaded_extra[name], arr), name

    # read -> write gives the same bytes, and reading those gives the same tensors.
    again = write_ply(tmp_path / "again.ply", loaded, extra=loaded_extra, binary=binary)
    assert again.read_bytes() == path.read_bytes()
    reloaded, reloaded_extra = read_ply(again)
    assert_gaussians_equal(reloaded, loaded)
    assert all(np.array_equal(reloaded_extra[k], v) for k, v in loaded_extra.items())


def test_header_layout_and_stored_values(tmp_path):
    n = 64
    g = random_gaussians(n, 3, {"seg": 4, "lang": 128})
    extra = {"class_id": np.arange(n, dtype=np.int32), "class_conf": np.linspace(0, 1, n, dtype=np.float32)}
    path = write_ply(tmp_path / "scene.ply", g, extra=extra)

    # Inria's SIBR viewer reads "element vertex N" from the third header line.
    assert path.read_bytes().startswith(f"ply\nformat binary_little_endian 1.0\nelement vertex {n}\n".encode())
    ply = PlyData.read(str(path))
    vertex = ply["vertex"]
    names = [prop.name for prop in vertex.properties]
    expected = (
        inria_property_names(3)
        + [f"seg_{i}" for i in range(4)]
        + [f"lang_{i}" for i in range(128)]
        + ["class_id", "class_conf"]
    )
    assert names == expected
    dtypes = {prop.name: prop.val_dtype for prop in vertex.properties}
    assert dtypes["class_id"] == "i4" and all(dtypes[name] == "f4" for name in expected if name != "class_id")
    assert vertex.comments == [
        "ffsplat sh_degree 3",
        "ffsplat features seg:4 lang:128",
        "ffsplat extra class_id class_conf",
    ]

    def col(name):
        return torch.from_numpy(np.asarray(vertex[name]).copy())

    assert torch.equal(col("nx"), torch.zeros(n))
    assert torch.equal(col("f_dc_1"), g.sh[:, 0, 1])
    # f_rest is channel-major: 15 red coefficients, then 15 green, then 15 blue.
    assert torch.equal(col("f_rest_0"), g.sh[:, 1, 0])
    assert torch.equal(col("f_rest_14"), g.sh[:, 15, 0])
    assert torch.equal(col("f_rest_15"), g.sh[:, 1, 1])
    assert torch.equal(col("f_rest_44"), g.sh[:, 15, 2])
    torch.testing.assert_close(torch.sigmoid(col("opacity")), g.opacities)
    torch.testing.assert_close(torch.exp(col("scale_2")), g.scales[:, 2])
    assert torch.equal(col("rot_0"), g.rotations[:, 0])  # w first
    assert torch.equal(col("lang_127"), g.features["lang"][:, 127])
    assert np.array_equal(np.asarray(vertex["class_id"]), extra["class_id"])


def test_opacities_of_zero_and_one_are_clamped(tmp_path):
    g = random_gaussians(4, 0)
    g.opacities = torch.tensor([0.0, 1.0, 0.5, 1e-9])
    path = write_ply(tmp_path / "scene.ply", g)
    loaded, _ = read_ply(path)
    assert torch.isfinite(loaded.opacities).all()
    torch.testing.assert_close(loaded.opacities, torch.tensor([1e-6, 1 - 1e-6, 0.5, 1e-6]), rtol=1e-6, atol=0)
    assert write_ply(tmp_path / "again.ply", loaded).read_bytes() == path.read_bytes()


def write_inria_ply(path, sh_degree: int, n: int, drop: tuple[str, ...] = (), num_rest: int | None = None):
    """A plain Inria 3DGS file built with plyfile directly (no ffsplat comments)."""
    names = [name for name in inria_property_names(sh_degree) if name not in drop and not name.startswith("f_rest_")]
    rest = [f"f_rest_{i}" for i in range(3 * ((sh_degree + 1) ** 2 - 1) if num_rest is None else num_rest)]
    names = names[: names.index("opacity")] + rest + names[names.index("opacity") :]
    rng = np.random.default_rng(1)
    data = np.empty(n, dtype=[(name, "f4") for name in names])
    for name in names:
        data[name] = rng.standard_normal(n).astype(np.float32)
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))
    return data


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_reads_plain_inria_file(tmp_path, sh_degree):
    n = 50
    path = tmp_path / "point_cloud.ply"
    data = write_inria_ply(path, sh_degree, n)
    g, extra = read_ply(path, device=torch.device("cpu"))

    assert g.sh_degree == sh_degree and g.num_gaussians == n
    assert g.features == {} and extra == {}
    assert torch.equal(g.means, torch.from_numpy(np.stack([data["x"], data["y"], data["z"]], -1)))
    assert torch.equal(g.rotations, torch.from_numpy(np.stack([data[f"rot_{i}"] for i in range(4)], -1)))
    k = (sh_degree + 1) ** 2
    for j in range(1, k):
        for c in range(3):
            assert torch.equal(g.sh[:, j, c], torch.from_numpy(data[f"f_rest_{c * (k - 1) + j - 1}"]))
    assert torch.equal(g.sh[:, 0, 2], torch.from_numpy(data["f_dc_2"]))
    expected_opacity = torch.sigmoid(torch.from_numpy(data["opacity"]).double()).float()
    assert torch.equal(g.opacities, expected_opacity)
    assert torch.equal(g.scales[:, 1], torch.exp(torch.from_numpy(data["scale_1"]).double()).float())


def test_plain_file_with_bad_f_rest_count_raises(tmp_path):
    path = tmp_path / "odd.ply"
    write_inria_ply(path, 1, 5, num_rest=10)
    with pytest.raises(PlyError, match="f_rest") as info:
        read_ply(path)
    assert str(path) in str(info.value)


def test_truncated_file_raises(tmp_path):
    path = write_ply(tmp_path / "scene.ply", random_gaussians(100, 3, {"seg": 8}))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(PlyError, match="truncated") as info:
        read_ply(path)
    assert str(path) in str(info.value)


def test_truncated_ascii_file_raises(tmp_path):
    path = write_ply(tmp_path / "scene.ply", random_gaussians(100, 1), binary=False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(PlyError) as info:
        read_ply(path)
    assert str(path) in str(info.value)


BAD_HEADER = b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty quux x\nend_header\n" + bytes(8)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world\n", os.urandom(4096), b"ply\nformat binary_little_endian 1.0\n", BAD_HEADER],
    ids=["empty", "text", "random", "no-end-header", "bad-type"],
)
def test_garbage_file_raises(tmp_path, content):
    path = tmp_path / "garbage.ply"
    path.write_bytes(content)
    with pytest.raises(PlyError) as info:
        read_ply(path)
    assert str(path) in str(info.value)


def test_missing_property_is_named(tmp_path):
    path = tmp_path / "no_rot3.ply"
    write_inria_ply(path, 3, 10, drop=("rot_3", "scale_0"))
    with pytest.raises(PlyError, match="rot_3") as info:
        read_ply(path)
    assert "scale_0" in str(info.value) and str(path) in str(info.value)


def test_missing_feature_property_is_named(tmp_path):
    path = write_ply(tmp_path / "scene.ply", random_gaussians(10, 0, {"seg": 3}))
    vertex = PlyData.read(str(path))["vertex"]
    data = rfn.drop_fields(np.asarray(vertex.data), "seg_2", usemask=False)
    PlyData([PlyElement.describe(data, "vertex", comments=vertex.comments)]).write(str(path))
    with pytest.raises(PlyError, match="seg_2"):
        read_ply(path)


def test_missing_vertex_element_raises(tmp_path):
    path = tmp_path / "faces.ply"
    data = np.zeros(3, dtype=[("a", "f4")])
    PlyData([PlyElement.describe(data, "face")]).write(str(path))
    with pytest.raises(PlyError, match="vertex") as info:
        read_ply(path)
    assert str(path) in str(info.value)


def test_missing_file_raises(tmp_path):
    path = tmp_path / "nope.ply"
    with pytest.raises(PlyError) as info:
        read_ply(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "scene.ply"

    def failing_write(self, stream):
        stream.write(b"ply\npartial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(PlyData, "write", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        write_ply(target, random_gaussians(10, 1))
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_old_file(tmp_path, monkeypatch):
    target = write_ply(tmp_path / "scene.ply", random_gaussians(10, 1))
    before = target.read_bytes()

    def failing_write(self, stream):
        stream.write(b"ply\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(PlyData, "write", failing_write)
    with pytest.raises(KeyboardInterrupt):
        write_ply(target, random_gaussians(10, 1, seed=1))
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["scene.ply"]


def test_write_into_missing_directory_raises(tmp_path):
    target = tmp_path / "missing" / "scene.ply"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        write_ply(target, random_gaussians(4, 0))
    assert str(target) in str(info.value)
    assert not (tmp_path / "missing").exists()


def test_write_into_read_only_directory_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # as if not writable (works as root too)
    target = tmp_path / "scene.ply"
    with pytest.raises(PermissionError, match="not writable") as info:
        write_ply(target, random_gaussians(4, 0))
    assert str(target) in str(info.value)
    assert os.listdir(tmp_path) == []


def test_batched_gaussians_are_rejected(tmp_path):
    g = random_gaussians(4, 0)
    batched = Gaussians(
        means=g.means[None], scales=g.scales[None], rotations=g.rotations[None],
        opacities=g.opacities[None], sh=g.sh[None],
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"index the batch"):
        write_ply(tmp_path / "scene.ply", batched)
    assert not (tmp_path / "scene.ply").exists()


@pytest.mark.parametrize(
    ("extra", "features", "message"),
    [
        ({"class_id": np.zeros(4, np.int64)}, {}, "int64"),
        ({"class_id": np.zeros(5, np.int32)}, {}, "shape"),
        ({"bad name": np.zeros(4, np.int32)}, {}, "bad name"),
        ({}, {"f_dc": 1}, "f_dc_0"),
        ({"seg_0": np.zeros(4, np.float32)}, {"seg": 2}, "seg_0"),
    ],
)
def test_invalid_extras_and_names_raise(tmp_path, extra, features, message):
    g = random_gaussians(4, 0, features)
    with pytest.raises(ValueError, match=message):
        write_ply(tmp_path / "scene.ply", g, extra=extra)
    assert os.listdir(tmp_path) == []


def test_accepts_tensor_extras_and_other_dtypes(tmp_path):
    g = random_gaussians(8, 1, {"seg": 2}).to(torch.float64)
    g.features["seg"].requires_grad_(True)
    extra = {"class_id": torch.arange(8, dtype=torch.int32)}
    loaded, loaded_extra = read_ply(write_ply(tmp_path / "scene.ply", g, extra=extra))
    assert loaded.means.dtype == torch.float32
    assert torch.equal(loaded.means, g.means.float())
    assert torch.equal(loaded.features["seg"], g.features["seg"].detach().float())
    assert loaded_extra["class_id"].dtype == np.int32
    assert np.array_equal(loaded_extra["class_id"], np.arange(8, dtype=np.int32))


def test_empty_scene_round_trips(tmp_path):
    g = random_gaussians(0, 2, {"seg": 3})
    loaded, extra = read_ply(write_ply(tmp_path / "empty.ply", g, extra={"class_id": np.zeros(0, np.int32)}))
    assert loaded.num_gaussians == 0 and loaded.sh_degree == 2 and loaded.feature_dims == {"seg": 3}
    assert extra["class_id"].shape == (0,)
