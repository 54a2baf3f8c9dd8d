"""Label-derived stand-in teachers (their noise, blur and flip settings do what they say) and teacher
features cached in shards equal to the same features computed online."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import webdataset as wds

from ffsplat.data.clip import decode_clip
from ffsplat.data.shard_writer import ShardConfig, write_shards
from ffsplat.synthetic import SyntheticConfig, make_scene, render_frame, write_synthetic_scene
from ffsplat.teachers.features import teacher_features
from ffsplat.teachers.label_teachers import LabelLanguageTeacher, LabelSegmentationTeacher


@pytest.fixture(scope="module")
def frames():
    """Labels and instances of 24 frames of one synthetic room at 64x64."""
    room, poses, k = make_scene(2, SyntheticConfig(height=64, width=64, frames=24))
    rendered = [render_frame(room, pose, k, 64, 64) for pose in poses]
    labels = torch.from_numpy(np.stack([r[2] for r in rendered])).long()
    instances = torch.from_numpy(np.stack([r[3] for r in rendered])).long()
    return torch.zeros(24, 3, 64, 64), labels, instances


def argmax_classes(teacher: LabelLanguageTeacher, feats: torch.Tensor) -> torch.Tensor:
    scores = torch.einsum("nchw,kc->nkhw", feats, teacher.class_embeddings())
    return scores.argmax(dim=1) + 1


def test_clean_language_teacher_reproduces_the_labels(frames):
    images, labels, instances = frames
    teacher = LabelLanguageTeacher(flip_rate=0.0, blur_sigma=0.0, noise_std=0.0, stride=1)
    feats = teacher.encode(images, labels, instances)
    assert feats.shape == (24, 512, 64, 64)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(24, 64, 64))
    valid = labels > 0
    assert torch.equal(argmax_classes(teacher, feats)[valid], labels[valid])


def test_flip_rate_is_the_fraction_of_regions_flipped(frames):
    images, labels, instances = frames
    teacher = LabelLanguageTeacher(flip_rate=0.3, blur_sigma=0.0, noise_std=0.0, stride=1)
    predicted = argmax_classes(teacher, teacher.encode(images, labels, instances))
    flipped = total = 0
    for i in range(len(labels)):
        for region in torch.unique(instances[i]).tolist():
            mask = (instances[i] == region) & (labels[i] > 0)
            if mask.any():
                total += 1
                flipped += int((predicted[i][mask] != labels[i][mask]).all())
                assert (predicted[i][mask] == predicted[i][mask][0]).all()  # whole regions flip together
    assert total > 100
    assert abs(flipped / total - 0.3) < 0.1, (flipped, total)
    # Per-view: the same instance is flipped in some views and not in others.
    assert 0 < flipped < total


@pytest.mark.slow
def test_noise_and_blur_levels(frames):
    images, labels, instances = frames
    sigma = 0.05
    noisy = LabelLanguageTeacher(flip_rate=0.0, blur_sigma=0.0, noise_std=sigma, stride=1)
    feats = noisy.encode(images, labels, instances)
    clean = noisy.table[labels].permute(0, 3, 1, 2)
    cos = (feats * clean).sum(dim=1)
    expected = 1 / math.sqrt(1 + sigma**2 * 512)  # |e + sigma n|^2 ~ 1 + sigma^2 d
    assert abs(cos.mean().item() - expected) < 0.01
    blurred = LabelLanguageTeacher(flip_rate=0.0, blur_sigma=2.0, noise_std=0.0, stride=1).encode(
        images, labels, instances
    )
    cos_blur = (blurred * clean).sum(dim=1)
    # Away from class boundaries (7x7 neighbourhood of one class) features are unchanged...
    pooled_max = torch.nn.functional.max_pool2d(labels[:, None].float(), 13, 1, 6)[:, 0]
    pooled_min = -torch.nn.functional.max_pool2d(-labels[:, None].float(), 13, 1, 6)[:, 0]
    interior = pooled_max == pooled_min
    assert cos_blur[interior].min() > 0.999
    # ...and at boundaries they mix neighbouring classes.
    assert cos_blur[~interior].mean() < 0.95


def test_language_teacher_output_grid_and_determinism(frames):
    images, labels, instances = frames
    teacher = LabelLanguageTeacher()
    a, b = teacher.encode(images, labels, instances), teacher.encode(images, labels, instances)
    assert a.shape == (24, 512, 32, 32) and teacher.output_size(64, 64) == (32, 32)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="needs ground-truth labels"):
        teacher.encode(images)


def test_segmentation_teacher_separates_instances(frames):
    images, labels, instances = frames
    teacher = LabelSegmentationTeacher(noise_std=0.0, stride=1)
    feats = teacher.encode(images, labels, instances)
    ids = torch.unique(instances)
    means = torch.stack([feats.permute(0, 2, 3, 1)[instances == i].mean(0) for i in ids])
    sim = means @ means.T
    assert torch.allclose(sim.diagonal(), torch.ones(len(ids)), atol=1e-5)  # one embedding per instance
    off = sim[~torch.eye(len(ids), dtype=torch.bool)]
    assert off.abs().max() < 0.3  # nearly orthogonal random unit vectors in 256-d
    assert LabelSegmentationTeacher().encode(images, labels, instances).shape == (24, 256, 16, 16)
    with pytest.raises(ValueError, match="instance ids"):
        teacher.encode(images, labels)


def test_cached_teacher_features_equal_online_ones(tmp_path):
    write_synthetic_scene(tmp_path / "scenes" / "room", 5, SyntheticConfig(height=64, width=64, frames=10))
    specs = {"label_lang": {"flip_rate": 0.2}, "label_seg": {}}
    cfg = ShardConfig(
        size=32, clip_length=5, min_clip_length=2, keyframe_translation=0.0, teachers=specs, teacher_size=(8, 8)
    )
    from tests.conftest import shared_data

    manifest = write_shards({"train": [tmp_path / "scenes" / "room"]}, tmp_path / "out", cfg,
                            shared_data("scannet/scannetv2-labels.combined.tsv"), progress=False)  # fmt: skip
    urls = [str(tmp_path / "out" / s["path"]) for s in manifest["splits"]["train"]["shards"]]
    clips = [decode_clip(s) for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())]
    assert len(clips) == 2
    from ffsplat.teachers.features import load_teachers

    teachers = load_teachers(specs)
    for clip in clips:
        assert set(clip.teacher) == {"label_lang", "label_seg"}
        assert clip.teacher["label_lang"].shape == (5, 512, 8, 8) and clip.teacher["label_lang"].dtype == np.float16
        images = torch.from_numpy(clip.images).permute(0, 3, 1, 2).float() / 255  # what the loader yields
        online = teacher_features(teachers, images, torch.from_numpy(clip.labels).long(),
                                  torch.from_numpy(clip.instances).long(), size=(8, 8))  # fmt: skip
        for name, cached in clip.teacher.items():
            torch.testing.assert_close(torch.from_numpy(cached.astype(np.float32)), online[name], atol=1e-3, rtol=1e-3)
            assert np.abs(cached.astype(np.float32)).max() > 0.05
