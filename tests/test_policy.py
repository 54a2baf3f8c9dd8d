"""ffsplat.objectives.policy: one inference policy for the training module and the Predictor.

The end-to-end case that drifted before: a model distilled from real SAM but trained *without*
conditioning must get SAM's prompt decoder when loaded for evaluation, and evaluation's promptable
IoU must work with it."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

import ffsplat  # noqa: F401
from ffsplat.checkpoint import save_model
from ffsplat.core.config import group_file, to_dataclass
from ffsplat.core.types import Cameras, Views
from ffsplat.data.labels import EVAL_CLASSES
from ffsplat.data.sampling import ViewSamplerConfig, build_eval_index
from ffsplat.data.shards import EvalIndexDataset, scene_frame_ids
from ffsplat.evaluation.evaluate import EvalConfig, evaluate_model
from ffsplat.inference.predictor import Predictor
from ffsplat.model.network import ModelConfig, build_model
from ffsplat.objectives import policy
from ffsplat.objectives.metrics import classify_by_embeddings
from ffsplat.objectives.prompting import SimilarityPromptDecoder
from ffsplat.teachers.sam import SAMTeacher
from tests.test_teacher_sam import tiny_sam


def test_resolve_prompt_decoder():
    assert policy.resolve_prompt_decoder("auto", "sam") == "sam"
    assert policy.resolve_prompt_decoder("auto", "label_seg") == "similarity"
    assert policy.resolve_prompt_decoder("similarity", "sam") == "similarity"
    with pytest.raises(ValueError, match="needs teachers.segmentation.name=sam"):
        policy.resolve_prompt_decoder("sam", "label_seg")
    with pytest.raises(ValueError, match="choose one of auto, sam, similarity"):
        policy.resolve_prompt_decoder("sammy", "sam")
    assert isinstance(policy.build_prompt_decoder("auto", "label_seg", {}), SimilarityPromptDecoder)
    loaded = {"sam": torch.nn.Identity()}
    assert policy.build_prompt_decoder("auto", "sam", {}, loaded) is loaded["sam"]


def test_classify_is_the_cosine_argmax_with_clip_temperature():
    torch.manual_seed(0)
    feats, table = torch.randn(2, 5, 3, 4), torch.randn(3, 5)
    ids, conf = policy.classify(feats, table)
    assert torch.equal(ids, classify_by_embeddings(feats, table))
    cos = (
        torch.nn.functional.normalize(feats, dim=1).permute(0, 2, 3, 1) @ torch.nn.functional.normalize(table, dim=1).T
    )
    expected = (cos / 0.07).softmax(-1).max(-1).values
    torch.testing.assert_close(conf, expected)
    assert ids.min() >= 1 and ids.max() <= 3


def _views(cached: dict[str, torch.Tensor]) -> Views:
    cams = Cameras(torch.eye(3).expand(1, 2, 3, 3).clone(), torch.eye(4).expand(1, 2, 4, 4).clone(), (8, 8))
    return Views(torch.rand(1, 2, 3, 8, 8), cams, torch.tensor([0.5]), torch.tensor([5.0]), teacher=cached)


def test_teacher_maps_cached_online_and_missing():
    names = {"segmentation": "a", "language": "b"}
    cached = {"a": torch.ones(1, 2, 4, 2, 2), "b": torch.zeros(1, 2, 6, 2, 2)}
    maps = policy.teacher_maps(_views(cached), names)
    assert maps["segmentation"] is cached["a"] and maps["language"] is cached["b"]

    class Const(torch.nn.Module):
        def __init__(self, value: float):
            super().__init__()
            self.value = value

        def encode(self, images, labels=None, instances=None):
            return torch.full((len(images), 3, 2, 2), self.value)

    teachers = {"a": Const(2.0), "b": Const(3.0)}
    online = policy.teacher_maps(_views(cached), names, teachers, prefer_cached=False)
    assert online["segmentation"].shape == (1, 2, 3, 2, 2) and float(online["language"].mean()) == 3.0
    assert policy.teacher_maps(_views({}), names, teachers)["segmentation"].mean() == 2.0  # computed when not cached
    with pytest.raises(KeyError, match=r"no cached \['a', 'b'\] teacher features"):
        policy.teacher_maps(_views({}), names)


def test_both_implementations_satisfy_the_protocol(tmp_path):
    from ffsplat.training.config import TrainConfig
    from ffsplat.training.module import SemanticSplatModule, export_slim

    cfg = TrainConfig()
    cfg.model = to_dataclass(ModelConfig, group_file("model", "small"))
    module = SemanticSplatModule(cfg)
    predictor = Predictor(export_slim(module, tmp_path / "model.pt"))
    for model in (module, predictor):
        assert isinstance(model, policy.SemanticModel)
        assert model.conditioned is True and isinstance(model.prompt_decoder, SimilarityPromptDecoder)


@pytest.fixture(scope="module")
def unconditioned_sam_checkpoint(tmp_path_factory):
    """A model.pt distilled from (a tiny, randomly initialised) real SAM, trained without conditioning."""
    tmp = tmp_path_factory.mktemp("samckpt")
    torch.save(tiny_sam().state_dict(), tmp / "sam.pth")
    cfg = to_dataclass(ModelConfig, group_file("model", "small"))
    cfg.conditioning.use_seg_teacher = cfg.conditioning.use_lang_teacher = False
    torch.manual_seed(0)
    model = build_model(cfg)
    teachers = {"segmentation": {"name": "sam", "kwargs": {"checkpoint": str(tmp / "sam.pth")}},
                "language": {"name": "lseg", "kwargs": {"checkpoint": str(tmp / "lseg-not-needed.ckpt")}}}  # fmt: skip
    return save_model(tmp / "model.pt", model_config=asdict(cfg), state_dict=model.state_dict(), teachers=teachers,
                      class_names=list(EVAL_CLASSES), class_embeddings=torch.randn(len(EVAL_CLASSES), 512),
                      prompt_decoder=policy.resolve_prompt_decoder("auto", "sam"), stage="seg")  # fmt: skip


def test_unconditioned_sam_model_gets_sams_prompt_decoder_and_promptable_iou(unconditioned_sam_checkpoint, tiny_shards):
    torch.set_num_threads(1)
    predictor = Predictor(unconditioned_sam_checkpoint, teacher_overrides={"segmentation": {"builder": tiny_sam}})
    assert not predictor.conditioned and predictor.prompt_decoder_name == "sam"
    assert isinstance(predictor.prompt_decoder, SAMTeacher)  # was None before: evaluation failed at promptable IoU
    index = build_eval_index(
        scene_frame_ids(tiny_shards, "val"),
        ViewSamplerConfig(num_context=2, num_target=1, min_gap=3, max_gap=5),
        seed=0,
    )
    result = evaluate_model(
        predictor,
        EvalIndexDataset(tiny_shards, "val", index),
        EvalConfig(prompt_grid=2, max_examples=1, source_views=False),
    )
    assert result["examples"] == 1 and 0.0 <= result["promptable_iou"] <= 1.0


def test_unconditioned_sam_model_without_sam_weights_fails_clearly_only_when_prompting(
    unconditioned_sam_checkpoint, tmp_path
):
    """Inference on photos needs no SAM weights; asking for the prompt decoder names the missing file."""
    blob = torch.load(unconditioned_sam_checkpoint, weights_only=True)
    blob["teachers"]["segmentation"]["kwargs"]["checkpoint"] = str(tmp_path / "missing_sam.pth")
    meta = {
        k: v
        for k, v in blob.items()
        if k
        not in (
            "format",
            "version",
            "checksum",
            "model_config",
            "state_dict",
            "teachers",
            "class_names",
            "class_embeddings",
        )
    }
    path = save_model(tmp_path / "model.pt", model_config=blob["model_config"], state_dict=blob["state_dict"], teachers=blob["teachers"],
                      class_names=blob["class_names"], class_embeddings=blob["class_embeddings"], **meta)  # fmt: skip
    predictor = Predictor(path)  # loads: an unconditioned model needs nothing but images
    with pytest.raises(FileNotFoundError, match="missing_sam.pth"):
        _ = predictor.prompt_decoder
