"""ffsplat.checkpoint: the model.pt format (save / load / validate), its checksum, the refusal of
non-finite weights, weights_only loading, and the demo checkpoint in the current format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ffsplat.checkpoint import (
    FORMAT_VERSION,
    SLIM_FORMAT,
    CheckpointError,
    load_model,
    load_weights,
    save_model,
    tensor_checksum,
)

ROOT = Path(__file__).resolve().parents[1]
TEACHERS = {"segmentation": {"name": "label_seg", "kwargs": {}}, "language": {"name": "label_lang", "kwargs": {}}}
MARKER = torch.arange(4096, dtype=torch.float32) * 0.001 + 1234.5  # distinctive bytes to find in the file


def write(path: Path, **state) -> Path:
    state = state or {"layer.weight": MARKER.clone(), "layer.bias": torch.zeros(3)}
    return save_model(path, model_config={"name": "x"}, state_dict=state, teachers=TEACHERS,
                      class_names=["a", "b"], class_embeddings=torch.eye(2, 4), stage="seg", global_step=7)  # fmt: skip


def test_round_trip_with_checksum(tmp_path):
    path = write(tmp_path / "model.pt")
    blob = load_model(path)
    assert blob["format"] == SLIM_FORMAT and blob["version"] == FORMAT_VERSION == 2
    assert torch.equal(blob["state_dict"]["layer.weight"], MARKER) and blob["global_step"] == 7
    items = {f"state_dict/{k}": v for k, v in blob["state_dict"].items()} | {
        "class_embeddings": blob["class_embeddings"]
    }
    assert blob["checksum"] == {"algorithm": "sha256", "tensors": tensor_checksum(items)}
    assert torch.equal(load_weights(path)["layer.weight"], MARKER)
    assert not list(tmp_path.glob("*.tmp*"))  # atomic write leaves nothing behind


def test_checksum_depends_on_bytes_names_and_order_free():
    a = {"x": torch.ones(3), "y": torch.zeros(2)}
    assert tensor_checksum(a) == tensor_checksum(dict(reversed(list(a.items()))))
    assert tensor_checksum(a) != tensor_checksum({"x": torch.ones(3), "z": torch.zeros(2)})
    b = {"x": torch.ones(3), "y": torch.tensor([0.0, 1e-30])}
    assert tensor_checksum(a) != tensor_checksum(b)
    assert tensor_checksum({"x": torch.ones(3)}) != tensor_checksum({"x": torch.ones(3, 1)})
    assert isinstance(tensor_checksum({"h": torch.ones(2, dtype=torch.bfloat16)}), str)


def test_flipped_byte_inside_a_tensor_is_caught(tmp_path):
    path = write(tmp_path / "model.pt")
    data = bytearray(path.read_bytes())
    at = bytes(data).find(MARKER[1000:1004].numpy().tobytes())
    assert at > 0
    data[at + 1] ^= 0x10
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        load_model(bad)
    message = str(err.value)
    assert str(bad) in message and ("checksum mismatch" in message or "not a readable checkpoint" in message)


def test_tampered_tensor_with_valid_container_is_caught(tmp_path):
    """Rewrite the file with one changed weight but the old checksum: only the checksum can tell."""
    path = write(tmp_path / "model.pt")
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["layer.weight"][5] += 1e-3
    torch.save(blob, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_model(tmp_path / "edited.pt")
    del blob["checksum"]
    torch.save(blob, tmp_path / "nosum.pt")
    with pytest.raises(CheckpointError, match="without a sha256 'checksum'"):
        load_model(tmp_path / "nosum.pt")


def test_refuses_non_finite_weights_and_names_them(tmp_path):
    bad = {"good": torch.ones(2), "enc.w": torch.tensor([1.0, float("nan")]), "dec.b": torch.tensor([float("inf")])}
    with pytest.raises(
        CheckpointError, match=r"non-finite weights in 2 tensor\(s\): state_dict/enc.w, state_dict/dec.b"
    ):
        write(tmp_path / "model.pt", **bad)
    assert not (tmp_path / "model.pt").exists() and not list(tmp_path.iterdir())
    assert write(tmp_path / "ints.pt", ids=torch.tensor([1, 2]), w=torch.ones(1)).is_file()  # integer tensors are fine


def test_loads_with_weights_only(tmp_path):
    """A pickle that needs arbitrary code is refused (weights_only=True), with the file named."""
    path = tmp_path / "evil.pt"
    blob = {"format": SLIM_FORMAT, "payload": _Evil()}
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as err:
        load_model(path)
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_weights(path)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda b: b.pop("teachers"), "without 'teachers'"),
        (lambda b: b.update(format="other"), "not an ffsplat model file"),
        (lambda b: b.update(version=99), "version 99"),
        (lambda b: b.update(class_names=["a"]), "1 class_names but 2 class_embeddings"),
        (lambda b: b["teachers"].pop("language"), "no 'language' entry"),
    ],
)
def test_validation_errors_name_the_file(tmp_path, edit, message):
    blob = torch.load(write(tmp_path / "model.pt"), weights_only=True)
    edit(blob)
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(tmp_path / "bad.pt")
    assert str(tmp_path / "bad.pt") in str(err.value)


def test_missing_file_and_lightning_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model(tmp_path / "nope.pt")
    torch.save(
        {"state_dict": {"model.layer.weight": torch.ones(2), "other": torch.ones(1)}, "epoch": 1},
        tmp_path / "last.ckpt",
    )
    with pytest.raises(CheckpointError, match="Lightning last.ckpt"):
        load_model(tmp_path / "last.ckpt")
    assert list(load_weights(tmp_path / "last.ckpt")) == ["layer.weight"]


def test_version_one_files_load_with_a_warning(tmp_path):
    blob = torch.load(write(tmp_path / "model.pt"), weights_only=True)
    blob["version"] = 1
    del blob["checksum"]
    torch.save(blob, tmp_path / "v1.pt")
    with pytest.warns(UserWarning, match="no checksum"):
        assert load_model(tmp_path / "v1.pt")["version"] == 1


def test_demo_checkpoint_is_current_and_verified():
    demo = ROOT / "checkpoints" / "demo" / "model.pt"
    if not demo.is_file():
        pytest.skip("no demo checkpoint in this checkout")
    blob = load_model(demo)
    assert blob["version"] == FORMAT_VERSION and blob["prompt_decoder"] in ("sam", "similarity")


@pytest.mark.slow
def test_inference_does_not_need_lightning():
    """Loading a model for inference imports neither Lightning nor the training package."""
    import subprocess
    import sys

    code = ("import sys, ffsplat.inference.predictor, ffsplat.checkpoint; "
            "bad = [m for m in sys.modules if m.startswith(('lightning', 'ffsplat.training', 'webdataset'))]; "
            "print(bad); sys.exit(1 if bad else 0)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
