"""``semantic.segmenter``: a frozen pretrained 2D segmenter (ESPNetv2-PASCAL) whose class
probabilities of each context image join the semantic trunk. Checked: the config is validated; the
segmenter's weights are buffers (no parameter group, optimiser or gradient sees them) and its batch
norm stays in eval mode; it runs the teacher's own preprocessing (same probabilities as the
``espnetv2`` teacher); it sees the context images view by view and reaches the fields but not the
geometry; training loads it from ``segmenter_checkpoint`` (or a ``stage.init_from`` that has it),
refuses a model that would have a random one, and never changes it; ``model.pt`` carries it, so
inference needs no other file. ``semantic.fields: classes``: an untrained branch carries every
class of the segmenter into both fields and decodes exactly to the teachers' features; training
sets the teachers' class tables, trains only the residuals, and ``model.pt`` carries the tables."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from einops import rearrange

from ffsplat.core.config import group_file, to_dataclass
from ffsplat.inference.predictor import Predictor
from ffsplat.model.network import LANG, SEG, ModelConfig, build_model
from ffsplat.model.semantic_heads import PretrainedSegmenter, SemanticConfig, SemanticTrunk
from ffsplat.teachers.espnetv2 import ESPNetv2Seg
from ffsplat.training.config import TeacherRole
from ffsplat.training.module import SemanticSplatModule, export_slim
from tests.test_model import make_views
from tests.test_mvsplat import small_cfg as mvsplat_cfg
from tests.test_semantic_encoder import save_slim
from tests.test_training import tiny_config
from tests.test_training_glue import first_batch

SIZE = (64, 64)  # the segmenter's input size in these tests (fast; the demo runs it at 256x256)
SHARED_WEIGHTS = (
    Path(__file__).resolve().parents[2] / "shared" / "weights" / "espnetv2-pascal" / "espnetv2_s_2.0_pascal_256x256.pth"
)


def with_segmenter(cfg: ModelConfig, checkpoint: str = "") -> ModelConfig:
    cfg.conditioning = replace(cfg.conditioning, use_seg_teacher=False, use_lang_teacher=False)
    cfg.semantic = replace(cfg.semantic, segmenter="espnetv2", segmenter_size=SIZE, segmenter_checkpoint=checkpoint)
    return cfg


def model_cfg(name: str = "semanticsplat") -> ModelConfig:
    base = (
        mvsplat_cfg(conditioned=False) if name == "mvsplat" else to_dataclass(ModelConfig, group_file("model", "small"))
    )
    return with_segmenter(base)


@pytest.fixture(scope="module")
def espnet_file(tmp_path_factory) -> Path:
    """A state dict in the published key layout (random weights, BN statistics perturbed so that a
    load is visible): training loads it like the real file."""
    torch.manual_seed(3)
    net = ESPNetv2Seg()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("espnet") / "espnetv2.pth"
    torch.save(net.state_dict(), path)
    return path


def test_config_from_yaml_and_refusals():
    cfg = to_dataclass(ModelConfig, group_file("model", "small"), {"semantic": {"segmenter": "espnetv2", "segmenter_size": [128, 96]}})  # fmt: skip
    assert (cfg.semantic.segmenter, cfg.semantic.segmenter_size) == ("espnetv2", (128, 96))
    assert to_dataclass(ModelConfig, group_file("model", "small")).semantic.segmenter == ""  # paper: none
    with pytest.raises(ValueError, match="semantic.segmenter: 'sam'.*espnetv2"):
        SemanticConfig(segmenter="sam")
    for bad in ([100, 128], [0, 16], [16]):
        with pytest.raises(ValueError, match="semantic.segmenter_size"):
            SemanticConfig(segmenter="espnetv2", segmenter_size=bad)


def test_segmenter_is_frozen_buffers_in_eval_mode():
    seg = PretrainedSegmenter("espnetv2", SIZE)
    assert list(seg.parameters()) == []
    assert set(seg.net.state_dict()) == set(ESPNetv2Seg().state_dict())  # the published key layout
    seg.train()
    assert not any(m.training for m in seg.net.modules())  # running BN statistics, always
    x = torch.rand(3, 3, 40, 56, requires_grad=True)
    probs = seg(x)
    assert probs.shape == (3, 21, 40, 56) and not probs.requires_grad
    torch.testing.assert_close(probs.sum(1), torch.ones(3, 40, 56))


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason="needs ../shared/weights/espnetv2-pascal")
def test_segmenter_gives_the_teachers_probabilities():
    """The network's input is what the ``espnetv2`` teacher gives it: same resize, same standardisation."""
    from ffsplat.teachers.espnetv2 import ESPNetv2Teacher

    teacher = ESPNetv2Teacher(SHARED_WEIGHTS, input_size=SIZE)
    seg = PretrainedSegmenter("espnetv2", SIZE)
    seg.load_weights(SHARED_WEIGHTS)
    images = torch.rand(2, 3, 48, 48)
    torch.testing.assert_close(seg(images), teacher.probabilities(images), atol=1e-5, rtol=0)


def test_a_wrong_file_names_the_key(tmp_path):
    seg = PretrainedSegmenter("espnetv2", SIZE)
    with pytest.raises(FileNotFoundError, match="model.semantic.segmenter_checkpoint"):
        seg.load_weights(tmp_path / "absent.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="model.semantic.segmenter_checkpoint.*other.pth"):
        seg.load_weights(tmp_path / "other.pth")


@pytest.mark.parametrize("name", ["semanticsplat", "mvsplat"])
def test_segmenter_sees_the_context_images_and_reaches_the_fields_only(name):
    torch.manual_seed(0)
    model = build_model(model_cfg(name)).eval()
    assert model.semantic_trunk.image_proj.weight.shape[1] == 21  # its class probabilities alone
    views = make_views(2, 3, 32, 32)
    torch.nn.init.normal_(model.semantic_trunk.image_proj.weight, std=0.1)  # a trained projection
    seen = []
    model.semantic_trunk.segmenter.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    with torch.no_grad():
        out = model(views)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0][0], rearrange(views.images, "b v c h w -> (b v) c h w"))
    assert seen[0][1].shape == (6, 21, 32, 32)
    last_conv = [m for m in model.semantic_trunk.segmenter.net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # another segmenter: other fields, same geometry
        last_conv.weight.mul_(-3.0)
        other = model(views)
    assert (other.gaussians.features[SEG] - out.gaussians.features[SEG]).abs().max() > 1e-5
    torch.testing.assert_close(other.gaussians.means, out.gaussians.means)


def test_trunk_with_a_segmenter_and_an_encoder_projects_both():
    trunk = SemanticTrunk(5, 4, (8, 12), "espnetv2", SIZE)
    assert trunk.image_proj.weight.shape[1] == 2 * 4 + 21
    with pytest.raises(ValueError, match="image encoder or segmenter needs images"):
        trunk(torch.rand(2, 5, 16, 16))
    assert trunk(torch.rand(2, 5, 16, 16), torch.rand(2, 3, 16, 16)).shape == (2, 4, 16, 16)


def train_steps(module: SemanticSplatModule, optimiser, shards, steps: int = 2) -> None:
    module.train()
    batch = first_batch(module, shards)
    for _ in range(steps):
        optimiser.zero_grad()
        module.training_step(batch, 0).backward()
        optimiser.step()


def test_training_from_scratch_needs_the_checkpoint(tiny_shards, tmp_path, espnet_file):
    cfg = tiny_config(tiny_shards, tmp_path, "seg")
    cfg.model = with_segmenter(cfg.model)
    with pytest.raises(ValueError, match="model.semantic.segmenter_checkpoint"):
        SemanticSplatModule(cfg)
    cfg.model = with_segmenter(cfg.model, str(espnet_file))
    module = SemanticSplatModule(cfg)
    torch.testing.assert_close(module.model.semantic_trunk.segmenter.net.state_dict(), torch.load(espnet_file))


def test_a_semantic_stage_adds_it_to_a_model_without_one_and_never_trains_it(tiny_shards, tmp_path, espnet_file):
    plain = tiny_config(tiny_shards, tmp_path, "seg")
    plain.model.conditioning = replace(plain.model.conditioning, use_seg_teacher=False, use_lang_teacher=False)
    plain_module = SemanticSplatModule(plain)
    init = save_slim(tmp_path / "plain.pt", plain_module.model, plain.model)
    cfg = tiny_config(tiny_shards, tmp_path, "semantic", stage__init_from=str(init))
    cfg.model = with_segmenter(cfg.model)
    with pytest.raises(ValueError, match="no semantic.segmenter: set model.semantic.segmenter_checkpoint"):
        SemanticSplatModule(cfg)  # neither the init model nor a checkpoint has its weights
    cfg.model = with_segmenter(cfg.model, str(espnet_file))
    module = SemanticSplatModule(cfg)
    trunk = module.model.semantic_trunk
    assert float(trunk.image_proj.weight.abs().sum()) == 0.0 and trunk.image_proj.weight.requires_grad
    before = {k: v.clone() for k, v in trunk.segmenter.state_dict().items()}
    optimiser = module.configure_optimizers()["optimizer"]
    optimised = {id(p) for g in optimiser.param_groups for p in g["params"]}
    assert id(trunk.image_proj.weight) in optimised
    train_steps(module, optimiser, tiny_shards)
    assert float(trunk.image_proj.weight.abs().sum()) > 0  # the projection learns ...
    torch.testing.assert_close(trunk.segmenter.state_dict(), before)  # ... the segmenter does not
    # the next stage starts from this model without the file: the weights come with it
    exported = export_slim(module, tmp_path / "semantic.pt")
    lang = tiny_config(tiny_shards, tmp_path, "lang", stage__init_from=str(exported))
    lang.model = with_segmenter(lang.model)
    torch.testing.assert_close(SemanticSplatModule(lang).model.semantic_trunk.segmenter.state_dict(), before)


def test_model_pt_carries_the_segmenter(tmp_path, espnet_file):
    torch.manual_seed(0)
    cfg = with_segmenter(to_dataclass(ModelConfig, group_file("model", "small")), str(tmp_path / "gone.pth"))
    model = build_model(cfg).eval()
    model.semantic_trunk.segmenter.load_weights(espnet_file)
    torch.nn.init.normal_(model.semantic_trunk.image_proj.weight, std=0.1)
    path = save_slim(tmp_path / "model.pt", model, cfg)
    predictor = Predictor(path)  # segmenter_checkpoint names a file that does not exist: not read
    assert predictor.cfg.model.semantic.segmenter == "espnetv2"
    views = make_views(1, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(predictor(views).gaussians.features[SEG], model(views).gaussians.features[SEG])


def test_init_groups_take_only_the_named_groups(tiny_shards, tmp_path, espnet_file):
    """``stage.init_groups: [geometry]``: the geometry comes from ``init_from``, the segmentation
    branch starts afresh (its collapsed weights are not loaded), the segmenter from its checkpoint."""
    from ffsplat.core.errors import InputError
    from ffsplat.training.config import StageConfig

    with pytest.raises(InputError, match="stage.init_groups='colour'; choose one of geometry, segmentation, language"):
        StageConfig("semantic", "init.pt", ["colour"])
    with pytest.raises(InputError, match=r"stage.init_groups=\['geometry'\] needs stage.init_from"):
        StageConfig("semantic", None, ["geometry"])
    first = tiny_config(tiny_shards, tmp_path, "seg")
    first.model = with_segmenter(first.model, str(espnet_file))
    source = SemanticSplatModule(first).model
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.5)  # every parameter differs from a fresh initialisation
    init = save_slim(tmp_path / "init.pt", source, first.model)
    cfg = tiny_config(tiny_shards, tmp_path, "semantic", stage__init_from=str(init), stage__init_groups=("geometry",))
    cfg.model = with_segmenter(cfg.model)
    with pytest.raises(ValueError, match="model.semantic.segmenter_checkpoint"):
        SemanticSplatModule(cfg)  # the init model's segmenter is not taken: its weights must come from the file
    cfg.model = with_segmenter(cfg.model, str(espnet_file))
    model = SemanticSplatModule(cfg).model
    src = dict(source.named_parameters())
    for name, p in model.named_parameters():
        same = torch.equal(p, src[name])
        assert same == name.startswith(("backbone.", "conditioning.", "depth_head.", "gaussian_head.")), name
    torch.testing.assert_close(model.semantic_trunk.segmenter.net.state_dict(), torch.load(espnet_file))


def test_a_trunk_without_geometry_reads_the_segmenter_alone():
    """``semantic.trunk_geometry: false``: the semantic latent is a function of the segmenter's
    output only (another geometry input, same latent; another segmenter output, another latent)."""
    with pytest.raises(
        ValueError, match="semantic.trunk_geometry=false needs semantic.image_encoder or semantic.segmenter"
    ):
        SemanticConfig(trunk_geometry=False)
    torch.manual_seed(0)
    trunk = SemanticTrunk(5, 4, (), "espnetv2", SIZE, geometry=False).eval()
    assert trunk.image_proj is None and trunk.net[0].in_channels == 21
    x, images = torch.rand(2, 5, 16, 16), torch.rand(2, 3, 16, 16)
    out = trunk(x, images)
    torch.testing.assert_close(trunk(torch.rand(2, 5, 16, 16), images), out)
    assert (trunk(x, 1 - images) - out).abs().max() > 1e-4
    cfg = model_cfg()
    cfg.semantic = replace(cfg.semantic, trunk_geometry=False)
    model = build_model(cfg).eval()
    assert model.semantic_trunk.net[0].in_channels == 21
    views = make_views(1, 2, 32, 32)
    with torch.no_grad():
        out = model(views)
        model.depth_head.apply(lambda m: m.weight.mul_(0.5) if isinstance(m, torch.nn.Conv2d) else None)
        other = model(views)
    assert (other.gaussians.means - out.gaussians.means).abs().max() > 1e-5  # the geometry changed ...
    torch.testing.assert_close(other.gaussians.features[SEG], out.gaussians.features[SEG])  # ... the fields did not


# ------------------------------------------------------------- semantic.fields: classes


def classes_cfg(name: str = "semanticsplat") -> ModelConfig:
    cfg = model_cfg(name)
    cfg.semantic = replace(cfg.semantic, fields="classes", seg_dim=21, lang_dim=21, trunk_geometry=False)
    return cfg


def espnet_roles(path: Path, **lang) -> dict:
    """Both teacher roles on the test network at the segmenter's input size (online teachers)."""
    kwargs = {"checkpoint": str(path), "input_size": list(SIZE)}
    return {"segmentation": {"name": "espnetv2_seg", "kwargs": kwargs}, "language": {"name": "espnetv2", "kwargs": kwargs | lang}}  # fmt: skip


def test_class_fields_config_refusals(tiny_shards, tmp_path):
    from ffsplat.core.errors import InputError

    with pytest.raises(ValueError, match=r"semantic.fields: expected one of \['features', 'classes'\], got 'logits'"):
        SemanticConfig(fields="logits")
    with pytest.raises(ValueError, match="semantic.fields=classes needs semantic.segmenter"):
        SemanticConfig(fields="classes", seg_dim=21, lang_dim=21)
    with pytest.raises(
        ValueError, match="seg_dim and lang_dim must be the espnetv2 segmenter's 21 classes, got seg_dim=64"
    ):
        SemanticConfig(fields="classes", segmenter="espnetv2")
    cfg = tiny_config(tiny_shards, tmp_path, "seg")
    cfg.model = classes_cfg()
    for role, name, message in (
        ("language", "lseg", r"teachers.language.name='lseg' has no closed class vocabulary"),
        ("segmentation", "label_seg", r"teachers.segmentation.name='label_seg' has no closed class vocabulary"),
        ("language", "label_lang", r"teachers.language \(label_lang\) has a 9 x 512 class table; expected 21 classes"),
    ):
        teachers = replace(cfg.teachers, segmentation=TeacherRole("espnetv2_seg"), language=TeacherRole("espnetv2"))
        teachers = replace(teachers, **{role: TeacherRole(name)})
        with pytest.raises(InputError, match=f"model.semantic.fields=classes: {message}"):
            replace(cfg, teachers=teachers)


@pytest.mark.parametrize("name", ["semanticsplat", "mvsplat"])
def test_untrained_class_fields_carry_every_class_of_the_segmenter(name, espnet_file):
    """An untrained ``fields: classes`` branch: each Gaussian carries its pixel's segmenter
    probabilities (both fields), and the decoders give exactly the closed-vocabulary teachers'
    features of those probabilities (segmentation role: the 256-d table; language: the 512-d one)."""
    from ffsplat.teachers.base import build_teacher, teacher_class_table

    torch.manual_seed(0)
    model = build_model(classes_cfg(name)).eval()
    model.semantic_trunk.segmenter.load_weights(espnet_file)
    roles = espnet_roles(espnet_file)
    model.set_class_tables(*(teacher_class_table(r["name"], r["kwargs"]) for r in roles.values()))
    views = make_views(1, 2, 32, 32)
    images = rearrange(views.images, "b v c h w -> (b v) c h w")
    with torch.no_grad():
        out = model(views)
    probs = build_teacher("espnetv2", **roles["language"]["kwargs"]).probabilities(images)
    for key in (SEG, LANG):
        torch.testing.assert_close(out.gaussians.features[key], rearrange(probs, "(b v) k h w -> b (v h w) k", b=1))
    grid = {k: rearrange(f, "b (v h w) k -> b v k h w", v=2, h=32) for k, f in out.gaussians.features.items()}
    decoded = model.decode_fields(grid)
    for role, key in (("segmentation", "sam"), ("language", "lseg")):
        teacher = build_teacher(roles[role]["name"], **roles[role]["kwargs"] | {"stride": 1})
        expected = rearrange(teacher.encode(images), "(b v) c h w -> b v c h w", b=1)
        torch.testing.assert_close(torch.nn.functional.normalize(decoded[key], dim=2), expected, atol=1e-5, rtol=0)
    assert not list(model.seg_decoder.parameters()) and not list(model.lang_decoder.parameters())  # fixed tables


def test_class_table_decoder_resizes_then_mixes():
    from ffsplat.model.semantic_heads import ClassTableDecoder, resize_field

    decoder = ClassTableDecoder(3, 5)
    with pytest.raises(RuntimeError, match="semantic.fields=classes: the decoder's class table is not set"):
        decoder(torch.rand(1, 1, 3, 4, 4))  # never a silent zero table
    with pytest.raises(ValueError, match=r"class table \(4, 5\) does not fit the decoder's \(3, 5\)"):
        decoder.set_table(torch.rand(4, 5))
    table = torch.rand(3, 5)
    decoder.set_table(table)
    rendered = torch.rand(2, 2, 3, 16, 16).softmax(2)  # class distributions
    reference = torch.einsum("nkhw,kc->nchw", resize_field(rendered.flatten(0, 1), (4, 4)), table)
    torch.testing.assert_close(decoder(rendered, (4, 4)), reference.unflatten(0, (2, 2)))
    assert set(decoder.state_dict()) == {"table"}  # model.pt carries it
    loaded = ClassTableDecoder(3, 5)
    loaded.load_state_dict(decoder.state_dict())
    torch.testing.assert_close(loaded(rendered, (4, 4)), decoder(rendered, (4, 4)))
    # the mass the Gaussians leave (opacity < 1) is the empty class's (PASCAL background: 0)
    empty = ClassTableDecoder(3, 5, empty_class=1)
    empty.set_table(table)
    partial = rendered * torch.rand(2, 2, 1, 16, 16)
    reference = (
        torch.einsum("...khw,kc->...chw", partial, table) + (1 - partial.sum(2, keepdim=True)) * table[1, :, None, None]
    )
    torch.testing.assert_close(empty(partial), reference)
    torch.testing.assert_close(empty(torch.zeros(1, 1, 3, 2, 2))[0, 0, :, 0, 0], table[1])
    assert build_model(classes_cfg()).lang_decoder.empty_class == 0


def test_a_stage_trains_the_residual_and_the_teachers_tables_stay(tiny_shards, tmp_path, espnet_file):
    """Training sets the decoders' tables from the configured teachers (also over an ``init_from``
    with other tables), trains only the residual of the trained branch, and ``model.pt`` carries
    the tables to inference."""
    from ffsplat.teachers.base import teacher_class_table

    def config(stage: str, roles: dict, **overrides):
        cfg = tiny_config(tiny_shards, tmp_path, stage, **overrides)
        cfg.model = classes_cfg()
        cfg.model.semantic = replace(cfg.model.semantic, segmenter_checkpoint=str(espnet_file))
        teachers = {r: TeacherRole(v["name"], v["kwargs"]) for r, v in roles.items()}
        return replace(cfg, teachers=replace(cfg.teachers, source="online", prompt_decoder="similarity", masks="none", **teachers))  # fmt: skip

    roles = espnet_roles(espnet_file)
    module = SemanticSplatModule(config("seg", roles))
    model = module.model
    for role, decoder in (("segmentation", model.seg_decoder), ("language", model.lang_decoder)):
        torch.testing.assert_close(decoder.table, teacher_class_table(roles[role]["name"], roles[role]["kwargs"]))
    tables = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("decoder.table")}
    lang_before = {k: v.clone() for k, v in model.lang_head.state_dict().items()}
    optimiser = module.configure_optimizers()["optimizer"]
    train_steps(module, optimiser, tiny_shards)
    assert float(model.seg_head.residual.net[-1].weight.detach().abs().sum()) > 0  # the seg residual learns ...
    torch.testing.assert_close(model.lang_head.state_dict(), lang_before)  # ... the language one is not trained
    for key, table in tables.items():
        torch.testing.assert_close(model.state_dict()[key], table)
    exported = export_slim(module, tmp_path / "classes.pt")
    predictor = Predictor(exported)
    for key, table in tables.items():
        torch.testing.assert_close(predictor.model.state_dict()[key], table)
    # the next stage's teacher (another table seed) wins over init_from's table
    lang = SemanticSplatModule(config("lang", espnet_roles(espnet_file, seed=11), stage__init_from=str(exported)))
    torch.testing.assert_close(lang.model.lang_decoder.table, teacher_class_table("espnetv2", {"seed": 11}))
    torch.testing.assert_close(lang.model.seg_head.state_dict(), model.seg_head.state_dict())


def test_init_groups_geometry_into_class_fields(tiny_shards, tmp_path, espnet_file):
    """A ``fields: classes`` stage takes the geometry of a ``fields: features`` model (other
    semantic modules), as the demo recipe's stage 2 does; a file key of no module is still refused."""
    first = tiny_config(tiny_shards, tmp_path, "seg")
    first.model = with_segmenter(first.model, str(espnet_file))
    source = SemanticSplatModule(first).model
    init = save_slim(tmp_path / "features.pt", source, first.model)
    cfg = tiny_config(tiny_shards, tmp_path, "semantic", stage__init_from=str(init), stage__init_groups=("geometry",))
    cfg.model = classes_cfg()
    cfg.model.semantic = replace(cfg.model.semantic, segmenter_checkpoint=str(espnet_file))
    cfg.teachers = replace(
        cfg.teachers, **{r: TeacherRole(v["name"], v["kwargs"]) for r, v in espnet_roles(espnet_file).items()}
    )
    model = SemanticSplatModule(cfg).model
    torch.testing.assert_close(model.backbone.state_dict(), source.backbone.state_dict())
    source.register_buffer("colour_head", torch.zeros(1))  # a module the classes model lacks
    stray = save_slim(tmp_path / "stray.pt", source, first.model)
    with pytest.raises(ValueError, match=r"unexpected \['colour_head'\]"):
        SemanticSplatModule(replace(cfg, stage=replace(cfg.stage, init_from=str(stray))))
