"""``semantic.image_encoder``: the semantic latent's own image features (RGB-only models distilling a
closed-vocabulary teacher). Checked: the config is validated and reaches the trunk of both networks,
the trunk sees the *context images* of the same views, the encoder is part of the segmentation
branch (trained in stage 1, frozen in stage 2), and a ``model.pt`` with it loads and predicts."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest
import torch
from einops import rearrange

from ffsplat.checkpoint import save_model
from ffsplat.core.config import group_file, to_dataclass
from ffsplat.inference.predictor import Predictor
from ffsplat.model.network import SEG, ModelConfig, build_model
from ffsplat.model.semantic_heads import SemanticConfig, SemanticImageEncoder, SemanticTrunk
from ffsplat.training.module import ADDABLE_MODULES, SemanticSplatModule, load_model_weights
from tests.test_model import make_views
from tests.test_mvsplat import small_cfg as mvsplat_cfg
from tests.test_training import tiny_config

WIDTHS = (8, 12, 16)


def save_slim(path, model, cfg: ModelConfig):
    return save_model(
        path, model_config=asdict(cfg), state_dict=model.state_dict(),
        teachers={"segmentation": {"name": "label_seg", "kwargs": {}}, "language": {"name": "label_lang", "kwargs": {}}},
        class_names=["a", "b"], class_embeddings=torch.nn.functional.normalize(torch.randn(2, 512), dim=-1),
    )  # fmt: skip


def rgb_only(name: str = "semanticsplat") -> ModelConfig:
    cfg = (
        mvsplat_cfg(conditioned=False) if name == "mvsplat" else to_dataclass(ModelConfig, group_file("model", "small"))
    )
    cfg.conditioning = replace(cfg.conditioning, use_seg_teacher=False, use_lang_teacher=False)
    cfg.semantic = replace(cfg.semantic, image_encoder=WIDTHS)
    return cfg


def test_config_from_yaml_lists_and_refusals():
    cfg = to_dataclass(ModelConfig, group_file("model", "small"), {"semantic": {"image_encoder": [8, 12]}})
    assert cfg.semantic.image_encoder == (8, 12)
    assert to_dataclass(ModelConfig, group_file("model", "small")).semantic.image_encoder == ()  # paper: none
    for bad in ([8], [8, 0]):
        with pytest.raises(ValueError, match="semantic.image_encoder"):
            SemanticConfig(image_encoder=bad)


def test_encoder_shapes_and_multiscale_context():
    torch.manual_seed(0)
    enc = SemanticImageEncoder(WIDTHS, 10).eval()
    x = torch.rand(2, 3, 32, 48)
    out = enc(x)
    assert out.shape == (2, 10, 32, 48)
    # The coarsest stage gives every pixel context: a change in one corner reaches the opposite one.
    y = x.clone()
    y[:, :, :4, :4] = 1 - y[:, :, :4, :4]
    assert (enc(y) - out)[..., -4:, -4:].abs().max() > 1e-6


def test_trunk_without_images_is_one_clear_error():
    trunk = SemanticTrunk(5, 4, WIDTHS)
    with pytest.raises(ValueError, match="needs images"):
        trunk(torch.rand(2, 5, 16, 16))
    with pytest.raises(ValueError, match="needs images"):
        trunk(torch.rand(2, 5, 16, 16), torch.rand(2, 3, 8, 8))
    assert SemanticTrunk(5, 4)(torch.rand(2, 5, 16, 16)).shape == (2, 4, 16, 16)  # no encoder: images unused


@pytest.mark.parametrize("name", ["semanticsplat", "mvsplat"])
def test_trunk_encodes_the_context_images_view_by_view(name):
    torch.manual_seed(0)
    model = build_model(rgb_only(name)).eval()
    views = make_views(2, 3, 32, 32)
    torch.nn.init.normal_(model.semantic_trunk.image_proj.weight, std=0.1)  # a trained projection
    seen = []
    model.semantic_trunk.image_encoder.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        out = model(views)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], rearrange(views.images, "b v c h w -> (b v) c h w"))
    # ... and what it encodes reaches the rendered fields: a different encoder, different features
    with torch.no_grad():
        model.semantic_trunk.image_encoder.mix.weight.mul_(-1.0)
        flipped = model(views)
    assert (flipped.gaussians.features[SEG] - out.gaussians.features[SEG]).abs().max() > 1e-5
    torch.testing.assert_close(flipped.gaussians.means, out.gaussians.means)  # geometry does not use it


def test_a_model_without_an_encoder_gains_one_unchanged(tmp_path):
    """The projection starts at zero: loading a model without an encoder into one with it gives the
    same fields, and only the encoder's and projection's tensors may be absent from the file."""
    torch.manual_seed(0)
    plain_cfg = rgb_only()
    plain_cfg.semantic = replace(plain_cfg.semantic, image_encoder=())
    plain = build_model(plain_cfg).eval()
    save_slim(tmp_path / "plain.pt", plain, plain_cfg)
    grown = build_model(rgb_only()).eval()
    addable = [n for n, _ in grown.named_parameters() if n.startswith(ADDABLE_MODULES)]
    added = load_model_weights(grown, tmp_path / "plain.pt", addable)
    assert sorted(added) == sorted(addable) and len(added) > 4
    views = make_views(1, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grown(views).gaussians.features[SEG], plain(views).gaussians.features[SEG])
    with pytest.raises(ValueError, match="stage.init_from.*missing"):
        load_model_weights(build_model(rgb_only()), tmp_path / "plain.pt")  # nothing declared addable


@pytest.mark.parametrize("stage,ok", [("semantic", True), ("lang", False)])
def test_only_a_stage_that_trains_the_encoder_may_add_it(tiny_shards, tmp_path, stage, ok):
    plain = tiny_config(tiny_shards, tmp_path, "seg")
    path = tmp_path / "plain.pt"
    save_slim(path, SemanticSplatModule(plain).model, plain.model)
    cfg = tiny_config(tiny_shards, tmp_path, stage, stage__init_from=str(path))
    cfg.model.semantic = replace(cfg.model.semantic, image_encoder=WIDTHS)
    if ok:
        module = SemanticSplatModule(cfg)
        assert float(module.model.semantic_trunk.image_proj.weight.abs().sum()) == 0.0
    else:  # frozen, a zero projection would stay zero: refused rather than silently useless
        with pytest.raises(ValueError, match="missing.*semantic_trunk.image"):
            SemanticSplatModule(cfg)


@pytest.mark.parametrize("stage,trained", [("seg", True), ("semantic", True), ("lang", False)])
def test_encoder_is_the_segmentation_branch(tiny_shards, tmp_path, stage, trained):
    cfg = tiny_config(tiny_shards, tmp_path, stage)
    cfg.model.semantic = replace(cfg.model.semantic, image_encoder=WIDTHS)
    module = SemanticSplatModule(cfg)
    params = list(module.model.semantic_trunk.image_encoder.parameters())
    assert params and {p.requires_grad for p in params} == {trained}
    optimised = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert all((id(p) in optimised) == trained for p in params)


def test_model_pt_with_an_encoder_loads_and_predicts(tmp_path):
    torch.manual_seed(0)
    cfg = rgb_only()
    model = build_model(cfg).eval()
    path = save_slim(tmp_path / "model.pt", model, cfg)
    predictor = Predictor(path)
    assert predictor.cfg.model.semantic.image_encoder == WIDTHS
    views = make_views(1, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(predictor(views).gaussians.features[SEG], model(views).gaussians.features[SEG])
