"""The SemanticSplat predictor: context views (+ SAM/LSeg features) -> semantic Gaussians.

Data flow (SemanticSplat sec. 3.1-3.3, MVSplat)::

    images ─ backbone (CNN + cross-view Swin transformer) ─► features F (1/4 res)
    F, cameras, near/far ─ plane-sweep correlation ─► cost volume C (D candidates)
    C, F, SAM?, LSeg? ─ fusion U-Net ─► latent map Z
    C, F, Z ─ depth U-Net + softmax + refinement ─► depth, refinement features R (full res)
    R, image, F↑ ─ Gaussian head ─► means, scales, rotations, opacities, SH
    Z↑, depth, R (, image encoder?, frozen segmenter?) ─ semantic trunk ─► f ─ heads ─► f^S (seg), f^L (lang)  (rendered, then decoded)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ffsplat.core.geometry import inverse_depth_candidates
from ffsplat.model.backbone import BackboneConfig, MultiViewBackbone
from ffsplat.model.conditioning import ConditioningConfig, ConditioningFusion
from ffsplat.model.cost_volume import correlation_cost_volume
from ffsplat.model.depth import DepthConfig, DepthHead
from ffsplat.model.gaussians import GaussianConfig, GaussianHead
from ffsplat.model.mvsplat.config import MVSplatConfig
from ffsplat.model.registry import MODELS as MODELS, NetworkOutput as NetworkOutput  # re-exported
from ffsplat.model.semantic_heads import LANG as LANG, SEG as SEG  # the field names, re-exported
from ffsplat.model.semantic_heads import SemanticBranch, SemanticConfig
from ffsplat.core.types import Views


@dataclass
class PretrainedConfig:
    """Optional initial weights from a local checkpoint.

    Attributes:
        path: local ``.ckpt``/``.pth`` file (a state dict, or a dict with ``state_dict``/``model``).
        format: ``ffsplat`` (this network's own keys, renamed by ``key_map``), or for
            ``model.name: mvsplat`` one of ``mvsplat`` (MVSplat's released encoder), ``unimatch``
            (UniMatch's backbone) or ``ffsplat`` (strict); the key maps are documented in
            :mod:`ffsplat.model.mvsplat.keymap`. A mismatching file is an error naming the keys.
        key_map: (``format: ffsplat`` on ``model.name: semanticsplat`` only) source-prefix ->
            our-prefix renames applied before loading (e.g. ``{"encoder.backbone.": "backbone."}``);
            keys matching no prefix are dropped.
        strict: (same scope as ``key_map``) raise if any of our parameters stays unloaded.
    """

    path: str = ""
    key_map: dict[str, str] = field(default_factory=dict)
    strict: bool = False
    format: str = "ffsplat"


@dataclass
class ModelConfig:
    """The whole network. ``configs/model/*.yaml`` fill this tree.

    Attributes:
        name: registry name of the network class: ``semanticsplat`` (ffsplat's own geometry, uses
            ``backbone``/``depth``/``gaussians``) or ``mvsplat`` (MVSplat-compatible geometry, uses
            ``mvsplat``); both use ``conditioning`` and ``semantic``.
        backbone, depth, conditioning, gaussians, semantic: component configs.
        mvsplat: geometry of ``name: mvsplat`` (:class:`ffsplat.model.mvsplat.config.MVSplatConfig`).
        pretrained: optional local initial weights.
    """

    name: str = "semanticsplat"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    gaussians: GaussianConfig = field(default_factory=GaussianConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    mvsplat: MVSplatConfig = field(default_factory=MVSplatConfig)
    pretrained: PretrainedConfig | None = None


class SemanticSplatNet(SemanticBranch, nn.Module):
    """Feed-forward semantic Gaussian predictor for any number of context views ``V >= 2``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = MultiViewBackbone(cfg.backbone)
        c = cfg.backbone.d_model
        d = cfg.depth.num_candidates
        self.conditioning = ConditioningFusion(cfg.conditioning, d, c)
        self.depth_head = DepthHead(cfg.depth, c, cfg.conditioning.latent_dim)
        r = cfg.depth.refine_channels[0]
        self.gaussian_head = GaussianHead(cfg.gaussians, r + 3 + cfg.depth.feature_proj)
        self.build_semantic_branch(cfg.semantic, cfg.conditioning.latent_dim + 1 + r)

    def forward(self, context: Views, conditions: dict[str, Tensor] | None = None) -> NetworkOutput:
        """
        Args:
            context: ``V >= 2`` posed images per scene; H and W divisible by 4.
            conditions: teacher features of the context views, ``{"sam": [B, V, 256, h, w],
                "lseg": [B, V, 512, h, w]}`` as the conditioning config requires (any h, w).
        """
        images = context.images
        b, v, _, height, width = images.shape
        if height % 4 or width % 4:
            raise ValueError(f"context images must have H and W divisible by 4, got {height}x{width}")
        cnn_feats, feats = self.backbone(images)
        h, w = feats.shape[-2:]
        cams_low = context.cameras.resize(h, w)
        candidates = inverse_depth_candidates(context.near, context.far, self.cfg.depth.num_candidates)
        candidates = candidates[:, None].expand(b, v, -1)
        # Geometry stays float32 under autocast (cost volume, soft-argmax, unprojection, SH rotation).
        cams_low = cams_low.to(torch.float32)
        candidates = candidates.float()
        cost = correlation_cost_volume(feats, cams_low.intrinsics, cams_low.extrinsics, candidates,
                                       num_neighbors=self.cfg.depth.cost_volume_neighbors, depth_chunk=self.cfg.depth.cost_volume_depth_chunk)  # fmt: skip
        latent = self.conditioning(cost, feats, conditions)
        depth = self.depth_head(images, cost, feats, latent, candidates, context.near.float(), context.far.float())

        head_in = torch.cat([depth.refine_features, images, depth.projected_features], dim=2)
        gaussians = self.gaussian_head(head_in, images, depth.depth, context.cameras)

        lo, hi = depth.disparity_range
        norm_disp = (1.0 / depth.depth - lo[:, None, None, None]) / (hi - lo)[:, None, None, None]
        latent_full = F.interpolate(
            rearrange(latent, "b v c h w -> (b v) c h w"), size=(height, width), mode="bilinear", align_corners=False
        )
        refine = rearrange(depth.refine_features, "b v c h w -> (b v) c h w")
        trunk_in = torch.cat([latent_full, rearrange(norm_disp, "b v h w -> (b v) 1 h w"), refine], dim=1)
        flat_images = rearrange(images, "b v c h w -> (b v) c h w")
        gaussians = replace(gaussians, features=self.semantic_features(trunk_in, flat_images, b))
        return NetworkOutput(gaussians=gaussians, depth=depth)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by branch, for stage-wise freezing: geometry, segmentation, language."""
        geometry = [self.backbone, self.conditioning, self.depth_head, self.gaussian_head]
        return {"geometry": [p for m in geometry for p in m.parameters()], **self.semantic_groups()}


MODELS["semanticsplat"] = SemanticSplatNet


def build_model(cfg: ModelConfig) -> nn.Module:
    """Instantiate ``cfg.name`` from :data:`MODELS` and load ``cfg.pretrained`` if set."""
    if cfg.name not in MODELS:
        raise KeyError(f"model.name={cfg.name!r} is not a known model; choose one of {sorted(MODELS)}")
    model = MODELS[cfg.name](cfg)
    if cfg.pretrained is not None and cfg.pretrained.path and cfg.name == "mvsplat":
        from ffsplat.model.mvsplat.keymap import load_geometry_checkpoint, read_state_dict

        report = load_geometry_checkpoint(model, read_state_dict(cfg.pretrained.path), cfg.pretrained.format)
        print(f"[model] loaded {report['loaded']} tensors ({report['format']}) from {cfg.pretrained.path}; "
              f"ignored {report['ignored']} keys outside the geometry; {len(report['kept'])} new tensors keep their init")  # fmt: skip
    elif cfg.pretrained is not None and cfg.pretrained.path:
        if cfg.pretrained.format != "ffsplat":
            raise ValueError(f"model.pretrained.format={cfg.pretrained.format!r} needs model.name=mvsplat (got {cfg.name!r}); "
                             "model.name=semanticsplat loads format ffsplat only")  # fmt: skip
        report = load_pretrained(model, cfg.pretrained)
        print(f"[model] loaded {report['loaded']} tensors from {cfg.pretrained.path}; "
              f"missing {len(report['missing'])}, unexpected {len(report['unexpected'])}, "
              f"shape mismatches {len(report['mismatched'])}")  # fmt: skip
    return model


def load_pretrained(model: nn.Module, cfg: PretrainedConfig) -> dict:
    """Load a local checkpoint through explicit prefix renames; report what matched.

    Returns:
        ``{"loaded": n, "missing": [our keys not loaded], "unexpected": [renamed source keys we do
        not have], "mismatched": [(key, source shape, our shape)], "dropped": n source keys matching
        no prefix}``.
    Raises:
        FileNotFoundError naming ``model.pretrained.path``; RuntimeError if ``strict`` and anything is missing.
    """
    path = Path(cfg.path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained.path: no checkpoint at {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = blob.get("state_dict", blob.get("model", blob)) if isinstance(blob, dict) else blob
    renamed, dropped = {}, 0
    for key, value in state.items():
        for src, dst in cfg.key_map.items() if cfg.key_map else [("", "")]:
            if key.startswith(src):
                renamed[dst + key[len(src) :]] = value
                break
        else:
            dropped += 1
    ours = model.state_dict()
    mismatched = [
        (k, tuple(v.shape), tuple(ours[k].shape)) for k, v in renamed.items() if k in ours and v.shape != ours[k].shape
    ]
    loadable = {k: v for k, v in renamed.items() if k in ours and v.shape == ours[k].shape}
    missing = sorted(set(ours) - set(loadable))
    report = {
        "loaded": len(loadable),
        "missing": missing,
        "unexpected": sorted(set(renamed) - set(ours)),
        "mismatched": mismatched,
        "dropped": dropped,
    }
    if cfg.strict and (missing or mismatched):
        raise RuntimeError(
            f"model.pretrained (strict): {len(missing)} missing keys (e.g. {missing[:5]}), mismatched {mismatched[:5]}"
        )
    model.load_state_dict(loadable, strict=False)
    return report


import ffsplat.model.mvsplat.net  # noqa: E402,F401  (registers MODELS["mvsplat"])
