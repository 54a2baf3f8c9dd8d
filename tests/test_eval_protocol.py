"""The comparison protocol (issue 17): metrics that match the papers' scorers, baselines without
ground truth by default, oracle rows marked, reconstruction and evaluation time apart."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch

import ffsplat  # noqa: F401  (torchvision CPU shim)
from ffsplat.baselines.compare import at_teacher_scale, teacher_scale, write_table
from ffsplat.baselines.initialisation import (
    InitConfig,
    gaussians_from_points,
    initial_gaussians,
    knn_scales,
    match_descriptors,
    random_frustum_points,
    sfm_points,
    triangulate,
)
from ffsplat.baselines.trainer import SceneConfig, SceneMethod, SceneTrainer
from ffsplat.baselines.supervision import MaskConfig, automatic_mask_ids, supervised_views, teacher_labels
from ffsplat.core.geometry import project_points
from ffsplat.core.types import Views
from ffsplat.objectives.metrics import (
    SSIM_VARIANTS,
    check_lpips_weights,
    depth_metrics,
    gaga_instance_miou,
    image_ssim,
    instance_matching_miou,
    ssim,
)
from ffsplat.objectives.prompting import SimilarityPromptDecoder
from tests.synthetic_fixtures import synthetic_views


# --------------------------------------------------------------------------- Gaga's instance mIoU
def test_gaga_miou_merged_instances_hand_case():
    gt = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3], [3, 3, 3, 3]])
    pred = torch.tensor([[5, 5, 5, 5], [5, 5, 5, 5], [7, 7, 7, 7], [7, 7, 7, 7]])  # 1 and 2 merged
    out = gaga_instance_miou(pred, gt)
    # IoU(3, 7) = 1; one of 1 / 2 matched to the merged segment (0.5), the other unmatched (0)
    assert out["miou"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert out["precision"] == pytest.approx(1 / 2) and out["recall"] == pytest.approx(1 / 3)  # 0.5 is not > 0.5
    assert instance_matching_miou(pred, gt)["miou"] == pytest.approx(0.75)  # the old pooled, matched-only score


def test_gaga_miou_is_per_view_and_counts_gt_zero():
    gt = torch.zeros(2, 2, 4, dtype=torch.long)
    gt[0, :, :2] = 1  # instance 1: 4 px in view 0
    gt[1, :, :1] = 1  # instance 1: 2 px in view 1
    pred = torch.zeros_like(gt)
    pred[0, :, :2] = 9  # exact in view 0
    pred[1, :, :2] = 9  # 2 of 4 pixels right in view 1
    out = gaga_instance_miou(pred, gt)
    # per view: instance 1 -> (1 + 0.5) / 2 = 0.75 (pooled would be 6 / 8); instance 0 -> (1 + 4/6) / 2
    assert out["num_gt"] == 2 and out["miou"] == pytest.approx((0.75 + (1 + 4 / 6) / 2) / 2)


# --------------------------------------------------------------------------- SSIM, LPIPS, depth
def test_named_ssim_variants():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 40, 40, generator=g), 3, 1, 1)
    b = (a + 0.05 * torch.randn(2, 3, 40, 40, generator=g)).clamp(0, 1)
    torch.testing.assert_close(image_ssim(a, b, "skimage"), ssim(a, b, sample_covariance=True))
    tm = pytest.importorskip("torchmetrics.functional.image")
    ref = tm.structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    torch.testing.assert_close(image_ssim(a, b, "torchmetrics"), ref, atol=2e-5, rtol=0)
    assert set(SSIM_VARIANTS) == {"skimage", "torchmetrics"}
    with pytest.raises(ValueError, match="unknown SSIM variant"):
        image_ssim(a, b, "pytorch_msssim")


def test_lpips_weights_are_hash_checked(tmp_path):
    path = tmp_path / "vgg16-397923af.pth"  # right name, wrong content
    path.write_bytes(b"not the ImageNet VGG16")
    with pytest.raises(ValueError, match="not torchvision's VGG16"):
        check_lpips_weights(path)
    assert check_lpips_weights(path, hashlib.sha256(path.read_bytes()).hexdigest()[:8]) == path
    with pytest.raises(FileNotFoundError):
        check_lpips_weights(tmp_path / "missing.pth")


def test_depth_nan_predictions_are_failures_not_dropped():
    gt = torch.tensor([1.0, 2.0, 4.0, 0.0])
    pred = torch.tensor([1.0, float("nan"), 4.0, float("nan")])  # the NaN at gt 0 is not a valid pixel
    out = depth_metrics(pred, gt)
    assert out["delta_1.25"].item() == pytest.approx(2 / 3)
    assert out["abs_rel"].item() == pytest.approx(1 / 3)  # the NaN pixel counts as d = 0 (error 1)
    assert out["rmse"].item() == pytest.approx(math.sqrt(4 / 3))
    assert out["invalid_pred"].item() == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- initialisation
@pytest.fixture(scope="module")
def room():
    return synthetic_views(3, [0, 2], 64)


def test_sfm_points_are_triangulated_on_the_surfaces(room):
    pts, rgb = sfm_points(room, InitConfig())
    assert len(pts) >= 10 and rgb.shape == pts.shape
    uv, z = project_points(pts[None], room.cameras.intrinsics[0, :1], room.cameras.w2c[0, :1])
    x = uv[0, :, 0].floor().long().clamp(0, 63)
    y = uv[0, :, 1].floor().long().clamp(0, 63)
    rel = (z[0] - room.depths[0, 0, y, x]).abs() / room.depths[0, 0, y, x]
    assert rel.median() < 0.05  # real geometry from matched features, not sensor depth


def test_triangulation_and_matching_units():
    k = torch.tensor([[50.0, 0, 32], [0, 50, 32], [0, 0, 1]], dtype=torch.float64)
    w2c1 = torch.eye(4, dtype=torch.float64)
    w2c2 = torch.eye(4, dtype=torch.float64)
    w2c2[0, 3] = -0.5
    x = torch.tensor([[0.1, -0.2, 3.0], [0.4, 0.3, 5.0]], dtype=torch.float64)
    uv1, _ = project_points(x[None], k[None], w2c1[None])
    uv2, _ = project_points(x[None], k[None], w2c2[None])
    torch.testing.assert_close(triangulate(uv1[0], uv2[0], k @ w2c1[:3], k @ w2c2[:3]), x)
    d = np.eye(4, 8, dtype=np.float32)
    np.testing.assert_array_equal(match_descriptors(d, d[[2, 0, 3, 1]]), [[0, 1], [1, 3], [2, 0], [3, 2]])


def test_random_frustum_points_lie_in_the_frustum(room):
    pts, _ = random_frustum_points(room, 500)
    uv, z = project_points(pts[None].expand(2, -1, -1), room.cameras.intrinsics[0], room.cameras.w2c[0])
    inside = (uv >= 0).all(-1) & (uv < 64).all(-1) & (z >= 0.3 - 1e-3) & (z <= 8.0 + 1e-3)
    assert inside.any(0).all()


def test_point_gaussians_take_inria_knn_scales():
    pts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3]])
    expected = math.sqrt((1 + 4 + 9) / 3)  # the origin's 3 neighbours
    assert knn_scales(pts)[0].item() == pytest.approx(expected)
    many = torch.rand(500, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(knn_scales(many, max_elements=1000), knn_scales(many))  # k-d tree == brute force
    g = gaussians_from_points(pts, torch.rand(4, 3), opacity=0.1, sh_degree=1)
    assert g.sh.shape == (4, 4, 3) and torch.allclose(g.opacities, torch.full((4,), 0.1))


def test_initialisations_mark_the_sensor_oracle(room):
    g, info = initial_gaussians("random", room, cfg=InitConfig(random_points=300))
    assert info == {"init": "random", "init_points": 300, "oracle": False} and g.num_gaussians == 300
    _, info = initial_gaussians("sensor", room)
    assert info["oracle"] is True
    _, info = initial_gaussians("sfm", room, cfg=InitConfig(sfm_min_points=3000))
    assert info["init"] == "sfm+random" and info["init_points"] == 3000 and not info["oracle"]
    with pytest.raises(ValueError, match="unknown initialisation"):
        initial_gaussians("colmap", room)
    with pytest.raises(ValueError, match="needs the feed-forward model"):
        initial_gaussians("predicted", room)


# --------------------------------------------------------------------------- supervision
def test_automatic_masks_of_the_teacher_recover_regions():
    emb = torch.zeros(1, 3, 16, 16)
    emb[0, 0, :, :8] = 1  # two regions with orthogonal features
    emb[0, 1, :, 8:] = 1
    ids = automatic_mask_ids(SimilarityPromptDecoder(), emb, (16, 16), MaskConfig(points_per_side=4))
    assert ids.shape == (1, 16, 16)
    left, right = ids[0, :, :8].unique(), ids[0, :, 8:].unique()
    assert len(left) == 1 and len(right) == 1 and left.item() != right.item() and left.item() > 0


def test_teacher_labels_and_oracle_supervision(room):
    emb = torch.eye(8)[:, :8]
    feats = emb[torch.tensor([[2, 2], [5, 5]])].permute(2, 0, 1)[None]  # [1, 8, 2, 2]
    assert teacher_labels(feats, emb, (2, 2)).tolist() == [[[3, 3], [6, 6]]]
    with pytest.raises(ValueError, match="ground-truth"):
        supervised_views("oracle", Views(room.images, room.cameras, room.near, room.far), None, {})
    with pytest.raises(ValueError, match="unknown supervision"):
        supervised_views("labels", room, None, {})


# --------------------------------------------------------------------------- FHGS at teacher scale
class ScaleSensitiveDecoder:
    """A decoder that is not scale-invariant (like SAM's): mask logits ``|e| - 1`` at every pixel,
    and it records the embedding norm it was given."""

    def __init__(self):
        self.norms = []

    def decode(self, embeddings, points, image_size):
        self.norms.append(float(embeddings.norm(dim=1).median()))
        h, w = image_size
        logit = embeddings.norm(dim=1, keepdim=True) - 1.0  # [1, 1, h, w]
        masks = logit[:, None].expand(1, points.shape[1], 3, h, w)
        return masks, masks.new_ones(1, points.shape[1], 3), masks


def test_fhgs_features_are_decoded_at_the_teachers_scale():
    teacher = torch.randn(2, 16, 8, 8) * 3  # teacher norms ~ 12: "inside" for the decoder
    rendered = torch.nn.functional.normalize(torch.randn(1, 16, 8, 8), dim=1) * 0.7  # a blend of unit features
    scale = teacher_scale(teacher)
    assert scale == pytest.approx(float(teacher.norm(dim=1).median()))
    dec = ScaleSensitiveDecoder()
    pts = torch.tensor([[[4.0, 4.0]]])
    raw = dec.decode(rendered, pts, (8, 8))[0]
    fixed = dec.decode(at_teacher_scale(rendered, scale), pts, (8, 8))[0]
    assert (raw < 0).all() and (fixed > 0).all()  # the unscaled blend decodes to nothing
    assert dec.norms[1] == pytest.approx(scale, rel=1e-4)


# --------------------------------------------------------------------------- trainer protocol
def test_views_are_drawn_without_replacement_per_epoch(room):
    trainer = SceneTrainer(SceneConfig(iterations=1, sh_degree=0, densify=False), room, SceneMethod(),
                           init=initial_gaussians("random", room, cfg=InitConfig(random_points=50, sh_degree=0))[0])  # fmt: skip
    draws = [trainer.next_view() for _ in range(6)]
    assert sorted(draws[:2]) == [0, 1] and sorted(draws[2:4]) == [0, 1] and sorted(draws[4:]) == [0, 1]


def test_position_lr_decays_over_the_inria_horizon_not_the_run(room):
    cfg = SceneConfig(iterations=3, sh_degree=0, densify=False)
    trainer = SceneTrainer(
        cfg,
        room,
        SceneMethod(),
        init=initial_gaussians("random", room, cfg=InitConfig(random_points=50, sh_degree=0))[0],
    )
    lr0 = trainer.optimizers["means"].param_groups[0]["lr"]
    trainer.fit(progress=False)
    lr3 = trainer.optimizers["means"].param_groups[0]["lr"]
    assert lr3 == pytest.approx(lr0 * 0.01 ** (3 / 30000))  # not 0.01 x after a 3-step run
    assert trainer.means_lr(10**6) == pytest.approx(lr0 * 0.01)
    assert SceneConfig().iterations == 30000 and SceneConfig().method_iterations == {"fhgs": 10000}


# --------------------------------------------------------------------------- the table
def test_table_rows_say_init_supervision_and_mark_oracles(tmp_path):
    rows = [
        {"method": "feed-forward", "setting": "sparse", "init": "-", "supervision": "teachers (training)", "reconstruction_s": 0.1,
         "evaluation_s": 2.0, "ssim_variant": "skimage"},
        {"method": "3dgs", "setting": "sparse", "init": "sfm", "supervision": "teacher", "oracle": False, "reconstruction_s": 9.0,
         "evaluation_s": 0.5, "ssim_variant": "skimage"},
        {"method": "semlogits", "setting": "sparse", "init": "sensor", "supervision": "oracle", "oracle": True, "gaga_miou": 0.5},
    ]  # fmt: skip
    text = write_table(rows, tmp_path / "t.md")
    assert "| method | setting | init | supervision |" in text and "reconstruction_s | evaluation_s" in text
    assert "| 3dgs | sparse | sfm | teacher |" in text
    assert "| semlogits (ORACLE) | sparse | sensor | oracle |" in text
    assert "SSIM variant: skimage" in text
    assert json.dumps(rows)  # rows stay JSON-serialisable


# --------------------------------------------------------------------------- LSM's test frames
def test_lsm_selected_seqs_become_an_eval_index(tmp_path):
    from ffsplat.data.sampling import load_eval_index
    from ffsplat.evaluation.protocols import lsm_eval_index, main

    names = [f"{i * 10:06d}" for i in range(10)]  # positions 1, 4 and 9 (9 % 8 == 1) are targets
    seqs = {"scene0001_00": list(reversed(names)), "scene0696_02": names, "scene0002_00": []}
    index = lsm_eval_index(seqs)
    assert list(index) == ["scene0001_00"]  # LSM leaves scene0696_02 out; empty scenes dropped
    assert index["scene0001_00"] == [{"context": [0, 20], "target": [10]}, {"context": [30, 50], "target": [40]},
                                     {"context": [80, 90], "target": [90]}]  # fmt: skip
    assert lsm_eval_index(seqs, available={"scene0001_00": [0, 10, 20, 80, 90]})["scene0001_00"][1:] == [
        {"context": [80, 90], "target": [90]}]  # fmt: skip
    (tmp_path / "seqs.json").write_text(json.dumps(seqs))
    assert main(["lsm", "--seqs", str(tmp_path / "seqs.json"), "--out", str(tmp_path / "index.json")]) == 0
    assert load_eval_index(tmp_path / "index.json")["scene0001_00"][0]["target"] == [10]
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(["lsm", "--seqs", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_lsm_sorts_frame_ids_numerically_and_reports_dropped_frames(tiny_shards, tmp_path, capsys):
    """Issue 30: integer ids sort as numbers (as LSM), and frames the shards lack are counted."""
    from ffsplat.data.shards import scene_frame_ids
    from ffsplat.evaluation.protocols import lsm_eval_index, main

    ids = [100, 9, 10, 8, 11, 12]  # as strings 10 < 100 < 11 < 12 < 8 < 9
    index = lsm_eval_index({"scene0001_00": ids})
    assert index["scene0001_00"] == [{"context": [8, 10], "target": [9]}, {"context": [11, 100], "target": [12]}]
    assert lsm_eval_index({"s": ["frame-9.jpg", "frame-10.jpg", "frame-8.jpg"]})["s"][0]["target"] == [9]

    held = scene_frame_ids(tiny_shards, "val")["room2"]
    wanted = list(held[:10]) + [held[-1] + 1]  # one frame the shards do not hold (position 10 -> 10 % 8 = 2)
    dropped = {}
    lsm_eval_index({"room2": wanted, "scene0003_00": [1, 2, 3]}, available={"room2": held}, dropped=dropped)
    # the missing frame is the context of target position 9: that entry is dropped
    assert dropped == {"frames_missing": 4, "entries_dropped": 2, "scenes_missing": ["scene0003_00"]}
    (tmp_path / "seqs.json").write_text(json.dumps({"room2": wanted}))
    args = [
        "lsm",
        "--seqs",
        str(tmp_path / "seqs.json"),
        "--out",
        str(tmp_path / "i.json"),
        "--shards",
        str(tiny_shards),
        "--split",
        "val",
    ]
    assert main(args) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["frames_missing"] == 1 and summary["entries_dropped"] == 1 and summary["shards_keyframed"] is True
    assert "warning: 1 LSM frames are not in --shards" in err and "--no-keyframing" in err
