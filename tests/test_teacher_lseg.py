"""LSeg teacher and CLIP text embeddings, with random weights (no pretrained weights exist here).

A small ViT (timm ``vit_tiny_patch16_384`` shrunk to 4 blocks of width 32) runs the real LSeg code
path; the full ViT-L/16 model is only built on the meta device to check the official key names.
CLIP is a tiny random ``CLIPModel`` with a real byte-level BPE tokenizer built offline, saved with
``save_pretrained`` and loaded through the same local-directory path users use.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ffsplat  # noqa: F401  (torchvision shim before timm/transformers)
from ffsplat.teachers.base import TEACHERS, build_teacher
from ffsplat.teachers.clip_text import PHOTO_TEMPLATE, ClipTextEncoder
from ffsplat.teachers.lseg import (
    LOGIT_SCALE,
    LSegNet,
    LSegTeacher,
    build_lseg_teacher,
    load_lseg_weights,
    official_state_dict,
)

SMALL = dict(backbone="vit_tiny_patch16_384", features=16, hooks=(0, 1, 2, 3), channels=(8, 16, 32, 32),
             vit_kwargs=dict(depth=4, embed_dim=32, num_heads=2, img_size=64))  # fmt: skip
LABELS = ["cat", "dog", "chair", "wall"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_net(seed: int = 0) -> LSegNet:
    """Random small LSeg with non-trivial BatchNorm statistics (so loading them is checked too)."""
    torch.manual_seed(seed)
    net = LSegNet(**SMALL)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def tiny_tokenizer():
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("p", "h"), ("o", "f</w>")]
    tokens = (
        alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    )
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)


def tiny_clip(tokenizer, seed: int):
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16
    )
    torch.manual_seed(seed)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)).eval()


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory):
    """Two saved tiny CLIP models (full ``CLIPModel`` dirs, like openai/clip-vit-base-patch32) with a real tokenizer."""
    tokenizer = tiny_tokenizer()
    out = []
    for seed in (0, 1):
        path = tmp_path_factory.mktemp(f"clip{seed}")
        model = tiny_clip(tokenizer, seed)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        out.append((path, model, tokenizer))
    return out


def count_forwards(encoder: ClipTextEncoder) -> list[int]:
    calls = [0]
    encoder.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def write_official_checkpoint(path, net: LSegNet, extra: dict | None = None) -> dict:
    """A Lightning-like checkpoint in the official layout, incl. the CLIP weights LSeg keeps inside."""
    state = official_state_dict(net)
    state["net.clip_pretrained.positional_embedding"] = torch.zeros(77, 512)  # dropped on load, as documented
    state.update(extra or {})
    torch.save(
        {"epoch": 200, "global_step": 1, "state_dict": state, "hyper_parameters": {"backbone": "clip_vitl16_384"}}, path
    )
    return state


# --------------------------------------------------------------------------------------------- LSeg


@pytest.mark.parametrize("size,expected", [((64, 64), (32, 32)), ((64, 96), (32, 48)), ((50, 70), (25, 35))])
def test_encode_shapes_unit_norm_and_normalisation(size, expected):
    teacher = LSegTeacher(small_net())
    images = torch.rand(2, 3, *size)
    feats = teacher.encode(images)
    assert teacher.dim == 512 and teacher.needs_labels is False and teacher.name == "lseg"
    assert feats.shape == (2, 512, *expected) and teacher.output_size(*size) == expected
    assert torch.allclose(feats.norm(dim=1), torch.ones(2, *expected), atol=1e-5)
    if size[0] % 32 == 0 and size[1] % 32 == 0:  # no padding: encode = normalise(net((x - 0.5) / 0.5))
        assert torch.allclose(feats, F.normalize(teacher.net(images * 2 - 1), dim=1), atol=1e-5)
    else:  # padded to 64x96 with black, then cropped
        padded = F.pad(images, (0, 96 - size[1], 0, 64 - size[0]))
        assert torch.allclose(feats, teacher.encode(padded)[..., : expected[0], : expected[1]], atol=1e-5)


def test_position_embedding_is_resampled_for_other_grids():
    net = small_net()
    x = torch.randn(1, 3, 64, 96)  # 4x6 patches vs the 4x4 grid the ViT was built for
    with torch.no_grad():
        maps = net.pretrained(x)
        assert [tuple(m.shape[-2:]) for m in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]
        net.pretrained.model.pos_embed[:, 1:].zero_()  # changing the grid embedding changes the output
        assert not torch.allclose(net.pretrained(x)[0], maps[0])


def test_readout_projection_concatenates_patch_then_class_token():
    from ffsplat.teachers.lseg import ProjectReadout

    readout = ProjectReadout(4)
    tokens = torch.randn(2, 1 + 6, 4)
    linear = readout.project[0]
    with torch.no_grad():
        linear.bias.zero_()
        linear.weight.copy_(torch.cat([torch.eye(4), torch.zeros(4, 4)], dim=1))  # official: cat(patches, readout)
        assert torch.allclose(readout(tokens), F.gelu(tokens[:, 1:]))
        linear.weight.copy_(torch.cat([torch.zeros(4, 4), torch.eye(4)], dim=1))
        assert torch.allclose(readout(tokens), F.gelu(tokens[:, :1]).expand(2, 6, 4))


def test_class_logits_are_scaled_cosines(clip_dirs):
    path, _, _ = clip_dirs[0]
    teacher = LSegTeacher(small_net(), ClipTextEncoder.from_pretrained(path))
    images = torch.rand(2, 3, 64, 96)
    logits = teacher.class_logits(images, LABELS)
    assert logits.shape == (2, len(LABELS), 32, 48)
    assert teacher.logit_scale.item() == pytest.approx(1 / 0.07) and LOGIT_SCALE == pytest.approx(14.2857, abs=1e-4)
    pixels, text = teacher.encode(images), teacher.text_features(LABELS)
    cos = F.cosine_similarity(pixels.unsqueeze(1), text[None, :, :, None, None], dim=2)
    assert torch.allclose(logits, cos / 0.07, atol=1e-4)
    assert logits.abs().max() <= 1 / 0.07 + 1e-4


def test_official_layout_checkpoint_round_trip(tmp_path):
    source = small_net(seed=3)
    ckpt = tmp_path / "demo_e200.ckpt"
    write_official_checkpoint(ckpt, source)
    assert TEACHERS["lseg"] is build_lseg_teacher
    teacher = build_teacher("lseg", checkpoint=ckpt, **SMALL)
    loaded = teacher.net.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in source.state_dict().items())
    images = torch.rand(1, 3, 64, 64)
    assert torch.equal(teacher.encode(images), LSegTeacher(source).encode(images))
    assert not torch.allclose(teacher.encode(images), LSegTeacher(small_net(seed=4)).encode(images))


@pytest.mark.parametrize("change,error,needle", [
    ("drop", KeyError, "net.scratch.head1.bias"),
    ("extra", KeyError, "net.scratch.head2.weight"),
    ("unprefixed", KeyError, "scratch.refinenet4.out_conv.weight"),
    ("shape", ValueError, "net.scratch.head1.weight"),
])  # fmt: skip
def test_wrong_checkpoint_keys_raise_naming_them(tmp_path, change, error, needle):
    state = official_state_dict(small_net())
    if change == "drop":
        del state["net.scratch.head1.bias"]
    elif change == "extra":
        state["net.scratch.head2.weight"] = torch.zeros(1)
    elif change == "unprefixed":
        state["scratch.refinenet4.out_conv.weight"] = state.pop("net.scratch.refinenet4.out_conv.weight")
    else:
        state["net.scratch.head1.weight"] = torch.zeros(3, 16, 1, 1)
    with pytest.raises(error, match="teachers.language.kwargs.checkpoint") as info:
        load_lseg_weights(small_net(), state)
    assert needle in str(info.value)
    ckpt = tmp_path / "bad.ckpt"
    torch.save({"state_dict": state}, ckpt)
    with pytest.raises(error, match=needle.replace(".", r"\.")):
        build_lseg_teacher(checkpoint=ckpt, **SMALL)


def expected_official_keys() -> set[str]:
    """The ``state_dict`` of the official LSegNet (clip_vitl16_384, use_bn=True, readout="project",
    arch_option=0), written out from lseg_net.py / lseg_blocks.py / lseg_vit.py, minus ``clip_pretrained``."""
    wb = ("weight", "bias")
    vit = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    block = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
    vit += [f"blocks.{i}.{m}.{p}" for i in range(24) for m in block for p in wb]
    vit += [f"{m}.{p}" for m in ("norm", "head") for p in wb]
    keys = {f"net.pretrained.model.{k}" for k in vit}
    for level, layers in {1: (3, 4), 2: (3, 4), 3: (3,), 4: (3, 4)}.items():
        for layer in ("0.project.0", *map(str, layers)):
            keys |= {f"net.pretrained.act_postprocess{level}.{layer}.{p}" for p in wb}
    keys |= {f"net.scratch.layer{i}_rn.weight" for i in range(1, 5)} | {f"net.scratch.head1.{p}" for p in wb}
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    for i in range(1, 5):
        keys |= {f"net.scratch.refinenet{i}.out_conv.{p}" for p in wb}
        for unit in (1, 2):
            prefix = f"net.scratch.refinenet{i}.resConfUnit{unit}"
            keys |= {f"{prefix}.conv{c}.weight" for c in (1, 2)} | {f"{prefix}.bn{b}.{p}" for b in (1, 2) for p in bn}
    return keys


def test_full_size_model_has_the_official_key_names_and_shapes():
    with torch.device("meta"):  # ~344M parameters: never materialised
        net = LSegNet()
    state = official_state_dict(net)
    assert set(state) == expected_official_keys()
    assert "net.logit_scale" not in state  # the official logit_scale is a plain tensor, not saved
    shapes = {
        "net.pretrained.model.patch_embed.proj.weight": (1024, 3, 16, 16),
        "net.pretrained.model.pos_embed": (1, 577, 1024),
        "net.pretrained.act_postprocess1.0.project.0.weight": (1024, 2048),
        "net.pretrained.act_postprocess1.4.weight": (256, 256, 4, 4),  # ConvTranspose2d 4x
        "net.pretrained.act_postprocess2.4.weight": (512, 512, 2, 2),
        "net.pretrained.act_postprocess3.3.weight": (1024, 1024, 1, 1),
        "net.pretrained.act_postprocess4.4.weight": (1024, 1024, 3, 3),  # stride-2 conv
        "net.scratch.layer1_rn.weight": (256, 256, 3, 3),
        "net.scratch.layer4_rn.weight": (256, 1024, 3, 3),
        "net.scratch.refinenet4.out_conv.weight": (256, 256, 1, 1),
        "net.scratch.refinenet1.resConfUnit2.bn2.running_var": (256,),
        "net.scratch.head1.weight": (512, 256, 1, 1),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert "net.scratch.refinenet1.resConfUnit1.conv1.bias" not in state  # bn=True convs have no bias
    # ViT-L/16 304.7M + reassemble 22.8M + decoder 16.3M (LSeg minus its CLIP)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(343.86e6, rel=1e-3)


def test_missing_paths_name_their_config_keys(tmp_path, clip_dirs):
    for checkpoint in (None, tmp_path / "missing.ckpt"):
        with pytest.raises(FileNotFoundError, match="teachers.language.kwargs.checkpoint"):
            build_lseg_teacher(checkpoint=checkpoint, **SMALL)
    ckpt = tmp_path / "demo_e200.ckpt"
    write_official_checkpoint(ckpt, small_net())
    with pytest.raises(FileNotFoundError, match=r"teachers\.clip_path.*noclip"):
        build_lseg_teacher(checkpoint=ckpt, clip_path=tmp_path / "noclip", **SMALL)
    with pytest.raises(FileNotFoundError, match="teachers.clip_path"):
        ClipTextEncoder.from_pretrained(None)
    with pytest.raises(
        FileNotFoundError, match="teachers.language.kwargs.clip_path"
    ):  # encode works without CLIP, logits do not
        build_lseg_teacher(checkpoint=ckpt, **SMALL).class_logits(torch.rand(1, 3, 64, 64), LABELS)
    model_only = tmp_path / "model_only"
    clip_dirs[0][1].save_pretrained(model_only)
    with pytest.raises(FileNotFoundError, match=r"teachers\.clip_path.*tokenizer"):
        ClipTextEncoder.from_pretrained(model_only)
    teacher = build_lseg_teacher(checkpoint=ckpt, clip_path=clip_dirs[0][0], **SMALL)
    assert teacher.class_logits(torch.rand(1, 3, 64, 64), LABELS).shape == (1, 4, 32, 32)


def test_two_token_tokenizer_trap_is_detected(tmp_path, clip_dirs):
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    empty = tmp_path / "empty"
    empty.mkdir()
    trap = CLIPTokenizer.from_pretrained(str(empty), local_files_only=True)  # silently "works" offline
    assert len(trap) == 2
    model = CLIPTextModelWithProjection.from_pretrained(str(clip_dirs[0][0]), local_files_only=True)
    with pytest.raises(ValueError, match=r"teachers\.clip_path.*2 tokens"):
        ClipTextEncoder(model, trap)
    saved = tmp_path / "saved_trap"  # the placeholder written to disk next to real weights
    model.save_pretrained(saved)
    trap.save_pretrained(saved)
    with pytest.raises(ValueError, match=rf"teachers\.clip_path.*{saved.name}"):
        ClipTextEncoder.from_pretrained(saved)


# --------------------------------------------------------------------------------------------- CLIP text


def test_clip_text_embeddings_match_clip_and_are_cached(clip_dirs):
    path, model, tokenizer = clip_dirs[0]
    encoder = ClipTextEncoder.from_pretrained(path)
    calls = count_forwards(encoder)
    emb = encoder(LABELS)
    assert emb.shape == (4, 512) and encoder.dim == 512 and calls[0] == 1
    assert torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-5)
    with torch.no_grad():  # same as CLIPModel.get_text_features on the bare names (LSeg's prompt)
        ref = model.get_text_features(**tokenizer(LABELS, padding=True, return_tensors="pt"))
        ref = getattr(ref, "pooler_output", ref)
    assert torch.allclose(emb, F.normalize(ref, dim=-1), atol=1e-5)
    assert torch.equal(encoder(LABELS), emb) and calls[0] == 1  # cached: the model did not run again
    assert torch.equal(ClipTextEncoder.from_pretrained(path)(LABELS), emb)  # deterministic across loads
    other = encoder(["sofa", "table"])
    assert calls[0] == 2 and (other @ emb.T).max() < 0.999  # different labels -> different embeddings
    assert (emb @ emb.T).fill_diagonal_(0).max() < 0.999
    photo = ClipTextEncoder.from_pretrained(path, template=PHOTO_TEMPLATE)(LABELS)
    assert (photo * emb).sum(-1).max() < 0.999


def test_clip_text_disk_cache_round_trip(tmp_path, clip_dirs):
    cache = tmp_path / "cache"
    first = ClipTextEncoder.from_pretrained(clip_dirs[0][0], cache_dir=cache)
    emb = first(LABELS)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"  # atomic write: no temporary left behind
    second = ClipTextEncoder.from_pretrained(clip_dirs[0][0], cache_dir=cache)
    calls = count_forwards(second)
    assert torch.equal(second(LABELS), emb) and calls[0] == 0  # read from disk, model not run
    other_model = ClipTextEncoder.from_pretrained(clip_dirs[1][0], cache_dir=cache)
    calls = count_forwards(other_model)
    assert (other_model(LABELS) * emb).sum(-1).max() < 0.999 and calls[0] == 1  # cache keyed by the weights
    assert len(list(cache.iterdir())) == 2
    files[0].write_bytes(b"not a torch file")  # an unreadable cache is recomputed and rewritten
    third = ClipTextEncoder.from_pretrained(clip_dirs[0][0], cache_dir=cache)
    assert torch.allclose(third(LABELS), emb, atol=1e-6)
    assert torch.equal(torch.load(files[0], weights_only=True)["embeddings"], third(LABELS))


class _Hyper:
    """A pickled class, as Lightning stores hyper-parameters: weights_only=True refuses it."""

    backbone = "clip_vitl16_384"


def test_full_unpickle_of_an_lseg_checkpoint_is_an_explicit_opt_in(tmp_path):
    from ffsplat.teachers.lseg import _read_checkpoint

    state = official_state_dict(small_net(seed=1))
    ckpt = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": _Hyper()}, ckpt)
    with pytest.raises(ValueError, match="allow_pickle=true"):
        _read_checkpoint(ckpt)
    with pytest.raises(ValueError, match="allow_pickle=true"):
        build_lseg_teacher(checkpoint=ckpt, **SMALL)
    with pytest.warns(UserWarning, match="allow_pickle=true"):
        assert set(_read_checkpoint(ckpt, allow_pickle=True)) == set(state)
    teacher = build_lseg_teacher(checkpoint=ckpt, allow_pickle=True, **SMALL)
    assert all(torch.equal(v, teacher.net.state_dict()[k]) for k, v in small_net(seed=1).state_dict().items())
