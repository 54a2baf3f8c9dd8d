"""ESPNetv2 teacher: the network loads the published PASCAL weights strictly and reproduces the
public EdgeNets implementation's logits on a real frame; the teacher's language features are
the class probabilities embedded through its class table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ffsplat.teachers.base import build_teacher
from ffsplat.teachers.espnetv2 import PASCAL_CLASSES, ESPNetv2Seg, ESPNetv2Teacher, load_espnetv2

from .conftest import shared_data

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "espnetv2-pascal"

# Per-class mean logits of sacmehta/EdgeNets' ESPNetv2Segmentation (s=2.0, pascal) with
# espnetv2_s_2.0_pascal_256x256.pth on hololens-office/color/120.jpg resized (PIL bilinear) to
# 256x256, ImageNet-normalised; computed with the public code in a temporary directory.
REFERENCE_MEAN_LOGITS = [8.2133, -5.9568, 0.2368, -1.9857, -0.6594, 0.6168, -4.5143, -1.4511, -0.1064, 5.5532, -2.9236,
                         6.673, -2.1306, -1.7581, -3.0544, 2.0531, 3.8649, -4.9926, 4.1628, -1.5725, -0.264]  # fmt: skip
REFERENCE_ARGMAX_COUNTS = {0: 49659, 9: 3599, 11: 7623, 16: 2483, 18: 2172}


def weights(name: str = "espnetv2_s_2.0_pascal_256x256.pth") -> Path:
    path = WEIGHTS / name
    if not path.is_file():
        pytest.skip(f"ESPNetv2 weights not found at {path}")
    return path


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("espnet") / "random.pth"
    torch.save(ESPNetv2Seg().state_dict(), path)
    return path


def test_network_shapes_and_multiple_of_16_check():
    net = ESPNetv2Seg().eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 96)).shape == (2, 21, 64, 96)
    with pytest.raises(ValueError, match="multiple of 16"):
        net(torch.randn(1, 3, 60, 64))


@pytest.mark.parametrize("name", ["espnetv2_s_2.0_pascal_256x256.pth", "espnetv2_s_2.0_pascal_384x384.pth"])
def test_published_weights_load_strictly(name):
    state = torch.load(weights(name), map_location="cpu", weights_only=True)
    ours = ESPNetv2Seg().state_dict()
    assert set(state) == set(ours)
    assert all(state[k].shape == ours[k].shape for k in ours)
    load_espnetv2(weights(name))  # strict=True inside


def test_logits_match_the_public_implementation_on_a_real_frame():
    net = load_espnetv2(weights())
    img = Image.open(shared_data("hololens-office/color/120.jpg")).convert("RGB").resize((256, 256), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float()[None] / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        logits = net(x)
    torch.testing.assert_close(logits.mean((0, 2, 3)), torch.tensor(REFERENCE_MEAN_LOGITS), atol=2e-3, rtol=0)
    counts = torch.bincount(logits.argmax(1).flatten(), minlength=21)
    assert {k: int(v) for k, v in enumerate(counts) if v} == pytest.approx(REFERENCE_ARGMAX_COUNTS, abs=20)


def test_teacher_contract_and_registry(random_checkpoint):
    teacher = build_teacher("espnetv2", checkpoint=str(random_checkpoint), input_size=64)
    assert isinstance(teacher, ESPNetv2Teacher) and teacher.dim == 512 and not teacher.needs_labels
    images = torch.rand(3, 3, 48, 40)
    feats = teacher.encode(images)
    assert feats.shape == (3, 512, 24, 20) and teacher.output_size(48, 40) == (24, 20)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(3, 24, 20))
    # Features are the probability-weighted class embeddings: a confident pixel sits on its class row.
    probs = teacher.probabilities(images)
    torch.testing.assert_close(probs.sum(1), torch.ones(3, 48, 40))
    assert teacher.class_embeddings().shape == (len(PASCAL_CLASSES) - 1, 512)
    sharp = ESPNetv2Teacher(checkpoint=random_checkpoint, input_size=64, temperature=1e-4, stride=1)
    f = sharp.encode(images)
    best = sharp.probabilities(images).argmax(1)
    torch.testing.assert_close(f.permute(0, 2, 3, 1), sharp.table[best], atol=1e-3, rtol=0)
    teacher.train()
    assert not teacher.net.training  # BN statistics stay frozen


def test_bad_settings_and_missing_weights(tmp_path, random_checkpoint):
    with pytest.raises(FileNotFoundError, match="teachers.language.kwargs.checkpoint"):
        ESPNetv2Teacher(checkpoint=tmp_path / "none.pth")
    with pytest.raises(ValueError, match="input_size"):
        ESPNetv2Teacher(checkpoint=random_checkpoint, input_size=100)
    bad = tmp_path / "bad.pth"
    torch.save({k: v for k, v in torch.load(random_checkpoint, weights_only=True).items() if "level4" not in k}, bad)
    with pytest.raises(ValueError, match="does not fit.*missing"):
        ESPNetv2Teacher(checkpoint=bad)


def test_real_frame_finds_indoor_classes():
    teacher = ESPNetv2Teacher(checkpoint=weights())
    img = Image.open(shared_data("hololens-office/color/259.jpg")).convert("RGB")
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float()[None] / 255
    present = set(teacher.probabilities(x).argmax(1).unique().tolist())
    assert PASCAL_CLASSES.index("dining table") in present and PASCAL_CLASSES.index("chair") in present
