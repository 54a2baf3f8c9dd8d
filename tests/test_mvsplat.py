"""MVSplat-compatible geometry (ffsplat.model.mvsplat): strict checkpoint loading through the key
maps, zero-initialised semantic conditioning, shapes and gradients.

The fixture ``fixtures/mvsplat_re10k_encoder_keys.json`` is the key list + shapes of a state dict
saved from MVSplat's official ``EncoderCostVolume`` (re10k settings); the output equivalence with
the official code is recorded in BENCHMARKS.md ("MVSplat compatibility")."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ffsplat.core.config import group_file, to_dataclass
from ffsplat.core.geometry import quat_to_rotmat
from ffsplat.core.types import Cameras, Views
from ffsplat.model.mvsplat.adapter import rotate_sh_e3nn
from ffsplat.model.mvsplat.config import MVSplatConfig
from ffsplat.model.mvsplat.keymap import CheckpointMismatchError, load_geometry_checkpoint
from ffsplat.model.network import ModelConfig, PretrainedConfig, build_model

FIXTURE = Path(__file__).parent / "fixtures" / "mvsplat_re10k_encoder_keys.json"


def small_cfg(conditioned: bool = True) -> ModelConfig:
    cfg = to_dataclass(ModelConfig, group_file("model", "small"))
    cfg.name = "mvsplat"
    cfg.mvsplat = MVSplatConfig(
        d_feature=32, cnn_channels=(16, 24, 32), num_transformer_layers=2, num_depth_candidates=16,
        costvolume_unet_feat_dim=32, costvolume_unet_channel_mult=(1, 1, 1), costvolume_unet_attn_res=(4,),
        depth_unet_feat_dim=32, depth_unet_channel_mult=(1, 1), depth_unet_attn_res=(2,), sh_degree=2,
    )  # fmt: skip
    cfg.conditioning = replace(cfg.conditioning, use_seg_teacher=conditioned, use_lang_teacher=conditioned)
    return cfg


def context(b: int = 1, v: int = 2, size: int = 32, seed: int = 0) -> tuple[Views, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    k = torch.tensor([[0.9 * size, 0, size / 2], [0, 0.9 * size, size / 2], [0, 0, 1.0]]).expand(b, v, 3, 3).clone()
    q = torch.cat([torch.ones(b, v, 1), 0.1 * torch.randn(b, v, 3, generator=g)], -1)
    c2w = torch.eye(4).repeat(b, v, 1, 1)
    c2w[..., :3, :3] = quat_to_rotmat(q / q.norm(dim=-1, keepdim=True))
    c2w[..., :3, 3] = 0.3 * torch.randn(b, v, 3, generator=g)
    views = Views(
        torch.rand(b, v, 3, size, size, generator=g),
        Cameras(k, c2w, (size, size)),
        torch.full((b,), 0.5),
        torch.full((b,), 20.0),
    )
    cond = {"sam": torch.randn(b, v, 256, 8, 8, generator=g), "lseg": torch.randn(b, v, 512, 16, 16, generator=g)}
    return views, cond


def test_paper_config_loads_an_mvsplat_encoder_state_dict_strictly(tmp_path):
    fixture = json.loads(FIXTURE.read_text())
    g = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn(shape, generator=g) if shape else torch.randn((), generator=g)
        for k, shape in fixture["keys"].items()
    }
    state["decoder.background_color"] = torch.zeros(3)  # outside the encoder: ignored, counted
    path = tmp_path / "re10k.ckpt"
    torch.save({"state_dict": state, "global_step": 300000}, path)
    cfg = to_dataclass(ModelConfig, group_file("model", "paper"))
    assert cfg.name == "mvsplat"
    cfg.pretrained = PretrainedConfig(path=str(path), format="mvsplat")
    model = build_model(cfg)
    ours = model.state_dict()
    geometry = model.geometry_state_dict()
    assert len(geometry) == fixture["num_tensors"] == 471
    assert sum(t.numel() for t in geometry.values()) == fixture["num_parameters"]
    for key, value in state.items():
        if key.startswith("encoder."):
            torch.testing.assert_close(ours[key.removeprefix("encoder.")], value, rtol=0, atol=0)
    # The injection of the semantic conditioning starts at exactly zero.
    assert not model.condition_inject.weight.any() and not model.condition_inject.bias.any()


def test_mismatching_checkpoints_name_the_keys(tmp_path):
    fixture = json.loads(FIXTURE.read_text())
    state = {k: torch.zeros(shape) for k, shape in fixture["keys"].items()}
    model = build_model(to_dataclass(ModelConfig, group_file("model", "paper")))
    broken = dict(state)
    del broken["encoder.depth_predictor.to_disparity.2.weight"]
    broken["encoder.extra_head.weight"] = torch.zeros(2)
    broken["encoder.backbone.backbone.conv2.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointMismatchError) as err:
        load_geometry_checkpoint(model, broken, "mvsplat")
    msg = str(err.value)
    assert "1 missing: depth_predictor.to_disparity.2.weight" in msg
    assert "1 unexpected: encoder.extra_head.weight" in msg
    assert "backbone.backbone.conv2.bias: file (7,) vs model (128,)" in msg
    with pytest.raises(CheckpointMismatchError, match="format='colmap'"):
        load_geometry_checkpoint(model, state, "colmap")
    # Through the config: a file of the wrong network.
    path = tmp_path / "other.pt"
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, path)
    cfg = to_dataclass(ModelConfig, group_file("model", "paper"))
    cfg.pretrained = PretrainedConfig(path=str(path), format="mvsplat")
    with pytest.raises(CheckpointMismatchError, match="471 missing"):
        build_model(cfg)
    cfg.pretrained = PretrainedConfig(path=str(tmp_path / "absent.ckpt"), format="mvsplat")
    with pytest.raises(FileNotFoundError, match="model.pretrained.path"):
        build_model(cfg)


def test_unimatch_backbone_loads_and_ignores_other_heads():
    src = build_model(small_cfg())
    backbone = src.backbone.state_dict()
    state = {f"backbone.{k[len('backbone.') :]}" if k.startswith("backbone.") else k: v for k, v in backbone.items()}
    state["upsampler.0.weight"] = torch.zeros(3)  # UniMatch's flow upsampler: not ours
    dst = build_model(small_cfg())
    report = load_geometry_checkpoint(dst, state, "unimatch")
    assert report["loaded"] == len(backbone) and report["ignored"] == 1
    for k, v in backbone.items():
        torch.testing.assert_close(dst.backbone.state_dict()[k], v, rtol=0, atol=0)
    del state["transformer.layers.0.self_attn.q_proj.weight"]
    with pytest.raises(CheckpointMismatchError, match="backbone.transformer.layers.0.self_attn.q_proj.weight"):
        load_geometry_checkpoint(dst, state, "unimatch")


def test_semantic_conditioning_starts_without_effect_on_geometry():
    torch.manual_seed(0)
    conditioned = build_model(small_cfg(conditioned=True)).eval()
    plain = build_model(small_cfg(conditioned=False)).eval()
    report = load_geometry_checkpoint(
        plain, {f"encoder.{k}": v for k, v in conditioned.geometry_state_dict().items()}, "mvsplat"
    )
    assert report["loaded"] == len(conditioned.geometry_state_dict())
    views, cond = context(v=3)
    with torch.no_grad():
        a = conditioned(views, cond)
        b = plain(views, None)
        c = conditioned(views, {k: 5 * torch.randn_like(t) for k, t in cond.items()})
    for name in ("means", "scales", "rotations", "opacities", "sh"):
        torch.testing.assert_close(getattr(a.gaussians, name), getattr(b.gaussians, name), rtol=0, atol=0)
        torch.testing.assert_close(getattr(a.gaussians, name), getattr(c.gaussians, name), rtol=0, atol=0)
    torch.testing.assert_close(a.depth.depth, b.depth.depth, rtol=0, atol=0)
    # Once the injection is trained (non-zero), the conditioning does change the geometry.
    with torch.no_grad():
        conditioned.condition_inject.weight.normal_(std=0.1)
        d = conditioned(views, cond)
    assert not torch.allclose(d.depth.depth, a.depth.depth)


def test_mvsplat_forward_shapes_depth_contract_and_gradients():
    model = build_model(small_cfg())
    views, cond = context(b=2, v=2)
    out = model(views, cond)
    g = out.gaussians
    n = 2 * 32 * 32
    assert g.means.shape == (2, n, 3) and g.sh.shape == (2, n, 9, 3) and g.opacities.shape == (2, n)
    assert g.features["seg"].shape == (2, n, 8) and g.features["lang"].shape == (2, n, 16)
    assert out.depth.depth.shape == (2, 2, 32, 32) and out.depth.probabilities.shape == (2, 2, 16, 8, 8)
    assert torch.allclose(g.rotations.norm(dim=-1), torch.ones(()), atol=1e-5)
    # DepthOutput.depth is the camera-frame z of the means (MVSplat's depth is the ray distance).
    c2w = views.cameras.extrinsics
    local = (
        c2w[:, :, None, :3, :3].transpose(-1, -2) @ (g.means.view(2, 2, -1, 3) - c2w[:, :, None, :3, 3])[..., None]
    )[..., 0]
    torch.testing.assert_close(local[..., 2], out.depth.depth.flatten(2), rtol=1e-4, atol=1e-4)
    near, far = views.near[0].item(), views.far[0].item()
    ray = (g.means.view(2, 2, -1, 3) - c2w[:, :, None, :3, 3]).norm(dim=-1)
    assert ray.min() >= near - 1e-4 and ray.max() <= far + 1e-3
    loss = g.means.mean() + g.opacities.mean() + g.sh.mean() + sum(f.mean() for f in g.features.values())
    loss.backward()
    groups = model.parameter_groups()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert sum(len(p) for p in groups.values()) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="V >= 2"):
        model(context(v=1)[0], {k: t[:, :1] for k, t in cond.items()})


def test_e3nn_sh_rotation_is_a_representation_that_fixes_dc():
    g = torch.Generator().manual_seed(1)
    rots = []
    for _ in range(2):
        q = torch.randn(4, generator=g, dtype=torch.float64)
        rots.append(quat_to_rotmat((q / q.norm())[None])[0])
    coeffs = torch.randn(25, 3, generator=g, dtype=torch.float64)
    once = rotate_sh_e3nn(rotate_sh_e3nn(coeffs, rots[0]), rots[1])
    torch.testing.assert_close(once, rotate_sh_e3nn(coeffs, rots[1] @ rots[0]))
    torch.testing.assert_close(rotate_sh_e3nn(coeffs, rots[0])[0], coeffs[0])
    # Wigner-D matrices that e3nn 0.6 (MVSplat's rotate_sh) gives for this rotation, degrees 1 and 2.
    r = torch.tensor([[0.36, 0.48, -0.8], [-0.8, 0.6, 0.0], [0.48, 0.64, 0.6]], dtype=torch.float64)
    d1 = [[0.36, 0.48, -0.8], [-0.8, 0.6, 0.0], [0.48, 0.64, 0.6]]
    d2 = [
        [-0.168, 0.4608, 0.532086, -0.224, -0.6528],
        [0.64, -0.168, 0.498831, -0.48, 0.288],
        [0.0, -0.831384, 0.04, 0.0, -0.554256],
        [-0.48, -0.224, 0.665108, 0.36, 0.384],
        [0.576, 0.1344, 0.155192, 0.768, -0.1904],
    ]
    full = rotate_sh_e3nn(torch.eye(9, dtype=torch.float64), r)
    torch.testing.assert_close(full[1:4, 1:4], torch.tensor(d1, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(full[4:9, 4:9], torch.tensor(d2, dtype=torch.float64), rtol=0, atol=1e-5)


def test_bf16_autocast_keeps_camera_geometry_in_float32():
    torch.manual_seed(0)
    model = build_model(small_cfg(conditioned=False)).eval()
    views, _ = context(v=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(views, None)
    g = out.gaussians
    assert g.means.dtype == torch.float32 and g.scales.dtype == torch.float32 and g.sh.dtype == torch.float32
    assert all(torch.isfinite(t).all() for t in (g.means, g.scales, g.rotations, g.opacities, g.sh, out.depth.depth))
    near, far = views.near[0].item(), views.far[0].item()
    assert out.depth.depth.min() > 0.5 * near and out.depth.depth.max() < far * 1.01


def gathering_transformer_forward(self, features, splits):
    """MultiViewTransformer.forward before issue 18: the other views' features stacked into a
    ``[(V B), V-1, L, C]`` copy and projected per (view, other view) pair (the reference)."""
    from einops import rearrange

    from ffsplat.model.mvsplat.backbone import shifted_window_mask

    b, v, c, h, w = features.shape
    mask = shifted_window_mask(h, w, splits, features.device).to(features.dtype)
    x = rearrange(features, "b v c h w -> v b (h w) c")
    others = [[j for j in range(v) if j != i] for i in range(v)]
    for idx, block in enumerate(self.layers):
        shift = mask if idx % 2 == 1 else None
        target = rearrange(
            torch.stack([torch.stack([x[j] for j in o], dim=1) for o in others]), "v b m l c -> (v b) m l c"
        )
        flat = x.reshape(v * b, h * w, c)
        flat = block.self_attn(flat, flat[:, None], h, w, splits, shift)
        flat = block.cross_attn_ffn(flat, target, h, w, splits, shift)
        x = flat.view(v, b, h * w, c)
    return rearrange(x, "v b (h w) c -> b v c h w", h=h)


@pytest.mark.parametrize("views", [2, 3, 4])
def test_mvsplat_transformer_without_gathered_copies_equals_gathering_reference(monkeypatch, views):
    """Keys/values projected once per view (no [V, V-1] copy) == the stacked-copy implementation,
    outputs and gradients, float64, shifted windows included (2 layers)."""
    from ffsplat.model.mvsplat.backbone import MultiViewTransformer

    torch.manual_seed(0)
    tr = MultiViewTransformer(8, num_layers=2, ffn_expansion=2).double()
    x = torch.randn(2, views, 8, 8, 12, dtype=torch.float64)
    probe = torch.randn_like(x)

    def run():
        xi = x.clone().requires_grad_(True)
        tr.zero_grad()
        out = tr(xi, 2)
        (out * probe).sum().backward()
        return out.detach(), xi.grad, [p.grad.clone() for p in tr.parameters()]

    out, gx, gp = run()
    with torch.no_grad():
        out_nograd = tr(x, 2)
    monkeypatch.setattr(MultiViewTransformer, "forward", gathering_transformer_forward)
    ref, rgx, rgp = run()
    for a, r in [(out, ref), (out_nograd, ref), (gx, rgx), *zip(gp, rgp)]:
        torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-12)


def test_ffsplat_format_strips_the_lightning_model_prefix():
    """A Lightning ``last.ckpt``'s ``state_dict`` keys are ``model.<our key>``: the ffsplat format strips
    the prefix and loads every tensor exactly."""
    torch.manual_seed(0)
    source = build_model(small_cfg(conditioned=False))
    target = build_model(small_cfg(conditioned=False))
    state = {f"model.{k}": v.clone() for k, v in source.state_dict().items()}
    result = load_geometry_checkpoint(target, state, "ffsplat")
    assert result["loaded"] == len(source.state_dict()) and result["kept"] == []
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)
