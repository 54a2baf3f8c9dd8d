"""Closed-vocabulary semantics: ``loss.class_balance`` (per-pixel weights evening out a teacher's
classes, reaching the seg and lang distillation losses), ``loss.class_ce`` (a cross-entropy over the
teacher's class rows added to those terms) and the ``background_embedding`` (a
closed-vocabulary teacher's "none of the classes" row: class id 0, matched by no query) through
classification, queries, the model file, the CLI and the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ffsplat
import infer
from ffsplat.checkpoint import CheckpointError, load_model, save_model, tensor_checksum
from ffsplat.core.errors import InputError
from ffsplat.objectives.losses import class_balance_weights, class_cross_entropy, cosine_distillation
from ffsplat.objectives.metrics import classify_by_embeddings
from ffsplat.objectives.policy import CLASS_LOGIT_SCALE, classify, match_query
from ffsplat.teachers.base import teacher_class_table
from ffsplat.training.config import LossConfig, StageConfig, TeacherRole, TeachersConfig, TrainConfig
from tests.test_infer import checkpoint, inputs, room_views  # noqa: F401  (fixtures)
from tests.test_training import tiny_config


def label_features(labels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``labels [N, H, W]`` -> unit features ``[N, C, H, W]`` mixing 90 % of the label's row with 10 % of row 0."""
    mix = 0.9 * table[labels] + 0.1 * table[0]
    return F.normalize(mix, dim=-1).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------- class balance
@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_class_balance_weights_even_out_the_teachers_classes(power):
    table = teacher_class_table("espnetv2")  # [21, 512]
    labels = torch.zeros(2, 10, 10, dtype=torch.long)  # 200 pixels: 180 background, 15 chair, 5 sofa
    labels[0, :3, :5], labels[1, 0, :5] = 9, 18
    weights = class_balance_weights(label_features(labels, table), table, power)
    assert weights.shape == labels.shape and not weights.requires_grad
    torch.testing.assert_close(weights.mean(), torch.tensor(1.0))
    freq = {k: float((labels == k).float().mean()) for k in (0, 9, 18)}
    per_pixel = {k: float(weights[labels == k][0]) for k in freq}
    for k in freq:  # each class's pixels share one weight, proportional to freq ** -power
        assert torch.allclose(weights[labels == k], torch.tensor(per_pixel[k]))
        expected = (freq[k] / freq[0]) ** -power
        assert per_pixel[k] / per_pixel[0] == pytest.approx(expected, rel=1e-5)
    if power == 1.0:  # inverse frequency: every class present carries the same total weight
        totals = [float(weights[labels == k].sum()) for k in freq]
        assert totals == pytest.approx([totals[0]] * 3, rel=1e-5)


def test_class_balance_raises_the_cost_of_a_field_that_says_background_everywhere():
    table = teacher_class_table("espnetv2")
    labels = torch.zeros(1, 10, 10, dtype=torch.long)
    labels[0, :1] = 9  # 10 % chair
    target = label_features(labels, table)
    everywhere_background = table[0].view(1, -1, 1, 1).expand_as(target)
    plain = cosine_distillation(everywhere_background, target)
    balanced = cosine_distillation(everywhere_background, target, class_balance_weights(target, table, 1.0))
    assert balanced > 3 * plain


def test_class_tables_of_the_closed_vocabulary_teachers():
    from ffsplat.teachers.espnetv2 import pascal_background_embedding, pascal_class_embeddings
    from ffsplat.teachers.label_teachers import LabelLanguageTeacher

    table = teacher_class_table("espnetv2", {"dim": 512, "seed": 7})
    torch.testing.assert_close(table[1:], pascal_class_embeddings())
    torch.testing.assert_close(table[0], pascal_background_embedding())
    assert teacher_class_table("espnetv2_seg").shape == (21, 256)
    torch.testing.assert_close(teacher_class_table("label_lang"), LabelLanguageTeacher().table)
    assert teacher_class_table("sam") is None and teacher_class_table("lseg") is None


def test_class_balance_is_checked_when_the_config_loads():
    with pytest.raises(InputError, match=r"loss.class_balance: expected a number in \[0, 1\], got 2"):
        LossConfig(class_balance=2)
    with pytest.raises(InputError, match="loss.class_balance=0.5: stage 'geometry' distils no teacher"):
        TrainConfig(stage=StageConfig("geometry"), loss=LossConfig(class_balance=0.5))
    sam = TeachersConfig(segmentation=TeacherRole("sam"), language=TeacherRole("lseg"))
    with pytest.raises(InputError, match="teachers.language.name='lseg' has no closed class vocabulary"):
        TrainConfig(stage=StageConfig("lang"), teachers=sam, loss=LossConfig(class_balance=0.5))
    ok = TrainConfig(stage=StageConfig("lang"), loss=LossConfig(class_balance=0.5))  # label_lang
    assert ok.loss.class_balance == 0.5


@pytest.mark.parametrize("stage", ["seg", "lang"])
def test_the_stage_loss_uses_the_balanced_weights(stage, tiny_shards, tmp_path, monkeypatch):
    """The distillation term of each stage gets ``class_balance_weights`` of its own teacher's target."""
    import ffsplat.training.module as module_lib
    from ffsplat.data.shards import ClipExamples, collate_examples, manifest_shards

    cfg = tiny_config(tiny_shards, tmp_path, stage, loss__class_balance=1.0, loss__hcam=False, loss__mask_weight=0.0)
    cfg.model.conditioning.use_seg_teacher = cfg.model.conditioning.use_lang_teacher = False
    if stage == "seg":  # label_seg is per-instance (no class table): ESPNetv2's table in the SAM role
        cfg.teachers.segmentation = TeacherRole("espnetv2_seg", {"checkpoint": "unused.pth"})
    seen = []
    real_cos = module_lib.cosine_distillation

    def spy(pred, target, mask=None):
        seen.append((target, mask))
        return real_cos(pred, target, mask)

    monkeypatch.setattr(module_lib, "cosine_distillation", spy)
    monkeypatch.setattr("ffsplat.objectives.losses.cosine_distillation", spy)
    module = module_lib.SemanticSplatModule(cfg)
    if stage == "seg":  # ESPNetv2-like features with several classes: the rooms' labels through its table

        def label_maps(views, roles):
            labels = F.interpolate(views.labels.flatten(0, 1)[:, None].float(), size=(8, 8), mode="nearest")
            feats = label_features(labels[:, 0].long(), teacher_class_table("espnetv2_seg"))
            return {"segmentation": feats.unflatten(0, views.labels.shape[:2])}

        monkeypatch.setattr(module, "teacher_maps", label_maps)
    data = ClipExamples(manifest_shards(tiny_shards, "train"), module.cfg.data.sampler, shuffle_buffer=0)
    module._move_helpers()
    terms, _ = module.loss_terms(collate_examples([next(iter(data))]))
    assert stage in terms and seen
    role = "segmentation" if stage == "seg" else "language"
    spec = getattr(cfg.teachers, role)
    table = teacher_class_table(spec.name, spec.kwargs)
    for target, mask in seen:
        assert mask is not None
        torch.testing.assert_close(mask, class_balance_weights(target, table, 1.0))
        assert mask.std() > 0  # several classes in the teacher's map: the weights are not uniform


# ----------------------------------------------------------------------------- class cross-entropy
def reference_class_ce(pred, target, table, weights, temperature=0.1):
    """Pixel by pixel: label = the row nearest the teacher feature, logits = cosines / temperature."""
    total = norm = 0.0
    for n in range(pred.shape[0]):
        for i in range(pred.shape[-2]):
            for j in range(pred.shape[-1]):
                t, p = target[n, :, i, j], pred[n, :, i, j]
                label = max(range(len(table)), key=lambda k: float(F.cosine_similarity(t, table[k], dim=0)))
                logits = torch.stack([F.cosine_similarity(p, row, dim=0) for row in table]) / temperature
                w = 1.0 if weights is None else weights[n, i, j]
                total = total - w * torch.log_softmax(logits, 0)[label]
                norm = norm + w
    return total / norm


@pytest.mark.parametrize("balanced", [False, True])
def test_class_cross_entropy_matches_a_plain_reference_with_gradients(balanced):
    torch.manual_seed(0)
    table = F.normalize(torch.randn(5, 12), dim=-1)
    target = label_features(torch.randint(0, 5, (2, 4, 3)), table)
    weights = class_balance_weights(target, table, 1.0) if balanced else None
    pred = torch.randn(2, 12, 4, 3, requires_grad=True)
    ref_pred = pred.detach().clone().requires_grad_(True)
    loss = class_cross_entropy(pred, target, table, weights)
    ref = reference_class_ce(ref_pred, target, table, weights)
    torch.testing.assert_close(loss, ref.float(), rtol=1e-4, atol=1e-5)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(pred.grad, ref_pred.grad, rtol=1e-4, atol=1e-6)


def test_class_cross_entropy_ranks_the_teachers_class_where_cosine_barely_cares():
    """A pixel the teacher calls 55 % chair and 45 % background: "background" costs the cosine term
    little, the cross-entropy much more than "chair" (the field's argmax is what classification reads)."""
    table = torch.eye(3, 8)  # 0 background, 1 chair, 2 other
    target = F.normalize(0.55 * table[1] + 0.45 * table[0], dim=0).view(1, 8, 1, 1)
    says_background, says_chair = table[0].view(1, 8, 1, 1), table[1].view(1, 8, 1, 1)
    cos_gap = float(cosine_distillation(says_background, target) - cosine_distillation(says_chair, target))
    ce_gap = float(class_cross_entropy(says_background, target, table) - class_cross_entropy(says_chair, target, table))
    assert 0 < cos_gap < 0.2 and ce_gap > 5
    with pytest.raises(ValueError, match="differ beyond the grid"):
        class_cross_entropy(torch.rand(2, 8, 2, 2), torch.rand(1, 8, 2, 2), table)


def test_class_ce_is_checked_when_the_config_loads():
    with pytest.raises(InputError, match=r"loss.class_ce: expected a number >= 0, got -1"):
        LossConfig(class_ce=-1)
    with pytest.raises(InputError, match="loss.class_ce=1.0: stage 'geometry' distils no teacher"):
        TrainConfig(stage=StageConfig("geometry"), loss=LossConfig(class_ce=1.0))
    sam = TeachersConfig(language=TeacherRole("lseg", {}))
    with pytest.raises(InputError, match="loss.class_ce=1.0: teachers.language.name='lseg' has no closed class"):
        TrainConfig(stage=StageConfig("lang"), teachers=sam, loss=LossConfig(class_ce=1.0))


@pytest.mark.parametrize("stage", ["semantic", "lang"])
def test_the_stage_term_adds_the_weighted_class_ce(stage, tiny_shards, tmp_path, monkeypatch):
    """seg (stage semantic) = cosine + class_ce * CE; lang = language loss + class_ce * CE; both on
    the stage's own teacher target and table, with the class_balance weights."""
    import ffsplat.training.module as module_lib
    from tests.test_training_glue import first_batch

    cfg = tiny_config(tiny_shards, tmp_path, stage, loss__class_balance=1.0, loss__class_ce=0.3, loss__hcam=False,
                      loss__mask_weight=0.0)  # fmt: skip
    cfg.model.conditioning.use_seg_teacher = cfg.model.conditioning.use_lang_teacher = False
    if stage == "semantic":
        cfg.teachers.segmentation = TeacherRole("espnetv2_seg", {"checkpoint": "unused.pth"})
    seen = []
    real_ce = module_lib.class_cross_entropy

    def spy(pred, target, table, weights=None):
        seen.append((target, table, weights, real_ce(pred, target, table, weights)))
        return seen[-1][-1]

    monkeypatch.setattr(module_lib, "class_cross_entropy", spy)
    module = module_lib.SemanticSplatModule(cfg)
    if stage == "semantic":

        def label_maps(views, roles):
            labels = F.interpolate(views.labels.flatten(0, 1)[:, None].float(), size=(8, 8), mode="nearest")
            feats = label_features(labels[:, 0].long(), teacher_class_table("espnetv2_seg"))
            return {"segmentation": feats.unflatten(0, views.labels.shape[:2])}

        monkeypatch.setattr(module, "teacher_maps", label_maps)
    module._move_helpers()
    terms, logs = module.loss_terms(first_batch(module, tiny_shards))
    assert len(seen) == 1
    target, table, weights, ce = seen[0]
    role = "segmentation" if stage == "semantic" else "language"
    spec = getattr(cfg.teachers, role)
    torch.testing.assert_close(table, teacher_class_table(spec.name, spec.kwargs))
    torch.testing.assert_close(weights, class_balance_weights(target, table, 1.0))
    if stage == "semantic":
        torch.testing.assert_close(terms["seg"], logs["sam_cos"] + 0.3 * ce)
    else:
        torch.testing.assert_close(terms["lang"], logs["lang_total"] + 0.3 * ce)
    assert float(ce) > 0 and (logs["sam_ce"] if stage == "semantic" else logs["lang_ce"]) is ce


# ----------------------------------------------------------------------------- background
def test_classification_with_a_background_embedding():
    table = torch.eye(4, 8)  # classes 1..3 = rows 0..2; row 3 = background
    classes, background = table[:3], table[3]
    features = torch.stack([table[0], table[3], 0.6 * table[2] + 0.4 * table[3], table[1]]).T.reshape(1, 8, 2, 2)
    assert classify_by_embeddings(features, classes).flatten().tolist() == [1, 1, 3, 2]  # no background: always 1..K
    assert classify_by_embeddings(features, classes, background).flatten().tolist() == [1, 0, 3, 2]
    ids, conf = classify(features, classes, background)
    assert ids.flatten().tolist() == [1, 0, 3, 2]
    cos = F.normalize(features, dim=1).flatten(2)[0].T @ table.T  # [4 pixels, 4 rows]
    torch.testing.assert_close(conf.flatten(), (cos * CLASS_LOGIT_SCALE).softmax(-1).max(-1).values)


def test_a_query_competes_with_the_background():
    table = torch.eye(4, 8)
    classes, background = table[:3], table[3]
    features = torch.stack([table[0], 0.4 * table[0] + 0.6 * table[3], table[3], table[1]]).T.reshape(1, 8, 2, 2)
    match, relevance = match_query(features, classes, 0)
    assert match.flatten().tolist() == [True, True, True, False]  # without background: best class wins
    match, relevance = match_query(features, classes, 0, background)
    assert match.flatten().tolist() == [True, False, False, False]
    assert relevance.shape == (1, 2, 2) and relevance[0, 0, 0] > 0.9 > relevance[0, 0, 1]
    text = table[1].clone()  # an embedding (e.g. CLIP text) is appended as a new label
    match, _ = match_query(features, classes, text, background)
    assert match.flatten().tolist() == [False, False, False, False]  # ties with class 2: the class wins
    with pytest.raises(ValueError, match=r"class index 3 outside 0..2"):
        match_query(features, classes, 3)


def test_model_file_keeps_and_verifies_the_background_embedding(tmp_path):
    kwargs = dict(model_config={"name": "x"}, state_dict={"w": torch.ones(3)},
                  teachers={"segmentation": {"name": "a"}, "language": {"name": "b"}},
                  class_names=["a", "b"], class_embeddings=torch.eye(2, 4))  # fmt: skip
    path = save_model(tmp_path / "m.pt", background_embedding=torch.tensor([0.0, 0, 1, 0]), **kwargs)
    blob = load_model(path)
    assert torch.equal(blob["background_embedding"], torch.tensor([0.0, 0, 1, 0]))
    items = {"state_dict/w": torch.ones(3), "class_embeddings": torch.eye(2, 4),
             "background_embedding": torch.tensor([0.0, 0, 1, 0])}  # fmt: skip
    assert blob["checksum"]["tensors"] == tensor_checksum(items)  # the checksum covers it
    edited = torch.load(path, weights_only=True)
    edited["background_embedding"][0] = 0.5
    torch.save(edited, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_model(tmp_path / "edited.pt")
    bad = save_model(tmp_path / "bad.pt", background_embedding=torch.ones(3), **kwargs)
    with pytest.raises(CheckpointError, match=r"'background_embedding' must be a \[4\] tensor"):
        load_model(bad)
    assert "background_embedding" not in load_model(save_model(tmp_path / "none.pt", **kwargs))


@pytest.fixture(scope="module")
def background_model(checkpoint, tmp_path_factory) -> Path:  # noqa: F811
    """The untrained test model with a background embedding and a language decoder whose output is
    that embedding everywhere: every Gaussian is background (and would be "chair" without it)."""
    blob = load_model(checkpoint)
    state = dict(blob["state_dict"])
    # close to "chair" (which would win without the background row), closer still to itself
    chair = blob["class_embeddings"][blob["class_names"].index("chair")]
    noise = torch.randn(chair.shape, generator=torch.Generator().manual_seed(1))
    background = F.normalize(chair + 0.3 * noise / noise.norm(), dim=0)
    state["lang_decoder.net.2.weight"] = torch.zeros_like(state["lang_decoder.net.2.weight"])
    state["lang_decoder.net.2.bias"] = background.clone()
    keep = ("model_config", "teachers", "class_names", "class_embeddings", "stage", "image_size", "global_step")
    path = tmp_path_factory.mktemp("bg") / "model.pt"
    return save_model(path, state_dict=state, background_embedding=background, **{k: blob[k] for k in keep})


def test_infer_labels_background_gaussians_unlabelled_and_matches_no_query(tmp_path, background_model, inputs, capsys):  # noqa: F811
    from plyfile import PlyData

    views, cams = inputs
    out = tmp_path / "scene.ply"
    code = infer.main([str(a) for a in ("--views", *views, "--cameras", cams, "--checkpoint", background_model,
                                         "--out", out, "--query", "chair", "--device", "cpu", "--size", "64")])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    ids = PlyData.read(str(out))["vertex"]["class_id"]
    assert (ids == 0).all() and len(ids) == 2 * 64 * 64
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["class_counts"] == {"unlabelled": 2 * 64 * 64}
    assert "query 'chair': no Gaussian matched" in captured.out and not list(tmp_path.glob("scene_chair*"))


def test_api_labels_background_gaussians_unlabelled(background_model, inputs):  # noqa: F811
    views, cams = inputs
    scene = ffsplat.load(background_model, device="cpu").predict(views, cameras=cams, size=64)
    assert (scene.class_id == 0).all()
    assert not scene.query("chair").mask.any()
    assert (scene.render()["classes"] == 0).all()
