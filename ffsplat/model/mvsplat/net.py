"""``MVSplatSemanticNet`` (``model.name: mvsplat``): MVSplat's geometry with ffsplat's semantic
conditioning and heads on top.

    images ─ CNN + multi-view transformer (UniMatch/MVSplat) ─► F, F_cnn (1/4 res)
    F, cameras ─ plane-sweep correlation ─► [cost, F]
    [cost, F], SAM?, LSeg? ─ ConditioningFusion ─► latent Z ─ zero-init 3x3 conv ─► injection
    [cost, F] ─ conv (+ injection) ─ GN ─ GELU ─ U-Net ─ conv (+ residual) ─ softmax ─► coarse depth
    [F, F_cnn]↑, image, coarse ─ refinement U-Net ─► depth, density, raw Gaussians ─ adapter ─► Gaussians
    Z↑, disparity, refinement features ─ semantic trunk ─► f ─ heads ─► f^S, f^L

The injection conv starts at zero (weight and bias), so the conditioning path adds exactly nothing
until trained: a model freshly loaded from an MVSplat checkpoint reproduces MVSplat's depths and
Gaussians. The semantic trunk and heads are new modules (never in an MVSplat checkpoint).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ffsplat.core.sh import num_sh_bases
from ffsplat.core.types import Views
from ffsplat.model.registry import MODELS, NetworkOutput
from ffsplat.model.conditioning import ConditioningFusion
from ffsplat.model.depth import DepthOutput
from ffsplat.model.mvsplat.adapter import adapt_gaussians
from ffsplat.model.mvsplat.backbone import MultiViewBackboneMVSplat
from ffsplat.model.mvsplat.depth import DepthPredictor, disparity_candidates
from ffsplat.model.semantic_heads import SemanticBranch


def normalized_intrinsics(intrinsics: Tensor, height: int, width: int) -> Tensor:
    """Pixel intrinsics for ``(height, width)`` -> MVSplat's normalised intrinsics (row 0 / W, row 1 / H)."""
    scale = intrinsics.new_tensor([1.0 / width, 1.0 / height, 1.0])[:, None]
    return intrinsics * scale


class MVSplatSemanticNet(SemanticBranch, nn.Module):
    """Feed-forward semantic Gaussians on MVSplat's geometry, for ``V >= 2`` context views with
    ``H`` and ``W`` divisible by ``4 * max(attn_splits, 2^(levels-1) of the cost-volume U-Net)``."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        g = cfg.mvsplat
        self.backbone = MultiViewBackboneMVSplat(
            g.d_feature, tuple(g.cnn_channels), g.num_transformer_layers, g.ffn_expansion
        )
        raw_channels = 2 + 7 + 3 * num_sh_bases(g.sh_degree)
        self.depth_predictor = DepthPredictor(g, raw_channels)
        cond = cfg.conditioning
        self.conditioning = ConditioningFusion(cond, g.num_depth_candidates, g.d_feature)
        self.condition_inject = nn.Conv2d(cond.latent_dim, g.costvolume_unet_feat_dim, 3, padding=1)
        nn.init.zeros_(self.condition_inject.weight)
        nn.init.zeros_(self.condition_inject.bias)
        self.build_semantic_branch(cfg.semantic, cond.latent_dim + 1 + g.depth_unet_feat_dim)

    def forward(self, context: Views, conditions: dict[str, Tensor] | None = None) -> NetworkOutput:
        """
        Args:
            context: ``V >= 2`` posed images per scene (pixel intrinsics, c2w), near/far ``[B]``.
            conditions: ``{"sam": [B, V, 256, h, w], "lseg": [B, V, 512, h, w]}`` as configured.
        Returns:
            Gaussians ``[B, V*H*W]`` with ``features = {"seg", "lang"}``, and per-view depth
            (``DepthOutput.depth`` is the z-depth of the Gaussian means).
        """
        g = self.cfg.mvsplat
        images = context.images
        b, v, _, height, width = images.shape
        if height % 4 or width % 4:
            raise ValueError(f"context images must have H and W divisible by 4, got {height}x{width}")
        intr = normalized_intrinsics(context.cameras.intrinsics, height, width)
        c2w = context.cameras.extrinsics
        near = context.near[:, None].expand(b, v)
        far = context.far[:, None].expand(b, v)

        feats, cnn = self.backbone(images, g.attn_splits)
        dp = self.depth_predictor
        # The cost volume is recomputed inside the predictor; compute it once here for the latent.
        cv_in = dp.cost_volume(feats, intr, c2w, disparity_candidates(near, far, g.num_depth_candidates))
        cost = rearrange(cv_in[:, : g.num_depth_candidates], "(b v) d h w -> b v d h w", b=b)
        latent = self.conditioning(cost, feats, conditions)
        injection = self.condition_inject(rearrange(latent, "b v c h w -> (b v) c h w"))
        out = dp(feats, cnn, images, intr, c2w, near, far, injection=injection, cost_volume=cv_in)

        split = lambda t: rearrange(t, "(b v) c h w -> b v c h w", b=b)
        gaussians, z = adapt_gaussians(  # Gaussian geometry in float32, also under autocast
            split(out.raw_gaussians).float(), split(out.depth)[:, :, 0].float(), split(out.density)[:, :, 0].float(), intr.float(), c2w.float(),
            g.gaussian_scale_min, g.gaussian_scale_max, g.sh_degree, g.opacity_exponent_log2,
        )  # fmt: skip

        disp_lo, disp_hi = 1.0 / context.far, 1.0 / context.near
        norm_disp = (1.0 / z - disp_lo[:, None, None, None]) / (disp_hi - disp_lo)[:, None, None, None]
        latent_full = F.interpolate(
            rearrange(latent, "b v c h w -> (b v) c h w"), size=(height, width), mode="bilinear", align_corners=False
        )
        trunk_in = torch.cat(
            [latent_full, rearrange(norm_disp, "b v h w -> (b v) 1 h w").to(latent_full.dtype), out.refine_features],
            dim=1,
        )
        flat_images = rearrange(images, "b v c h w -> (b v) c h w")
        gaussians = replace(gaussians, features=self.semantic_features(trunk_in, flat_images, b))
        depth = DepthOutput(
            depth=z,
            confidence=split(out.pdf_max)[:, :, 0],
            coarse_depth=1.0 / split(out.coarse_disparity)[:, :, 0],
            probabilities=split(out.pdf),
            refine_features=split(out.refine_features),
            projected_features=split(out.upsampled_features),
            disparity_range=(disp_lo, disp_hi),
        )
        return NetworkOutput(gaussians=gaussians, depth=depth)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by branch: geometry (MVSplat's encoder + conditioning), segmentation, language."""
        geometry = [self.backbone, self.depth_predictor, self.conditioning, self.condition_inject]
        return {"geometry": [p for m in geometry for p in m.parameters()], **self.semantic_groups()}

    def geometry_state_dict(self) -> dict[str, Tensor]:
        """The parameters MVSplat's encoder has (``backbone.*``, ``depth_predictor.*``)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(("backbone.", "depth_predictor."))}


MODELS["mvsplat"] = MVSplatSemanticNet
