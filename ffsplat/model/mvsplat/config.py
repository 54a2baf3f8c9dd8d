"""Configuration of the MVSplat-compatible geometry path (``model.name: mvsplat``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MVSplatConfig:
    """Geometry of MVSplat's encoder (``EncoderCostVolumeCfg``); defaults are its released
    RealEstate10K/ACID model (``config/experiment/re10k.yaml``), which its checkpoints need.

    Attributes:
        d_feature: transformer / matching-feature channels C (MVSplat ``d_feature``).
        cnn_channels: widths of UniMatch's CNN (``conv1``/``layer1``, ``layer2``, ``layer3``).
        num_transformer_layers: multi-view transformer blocks (self-attention, then cross-attention
            to all other views + FFN); even layers plain windows, odd layers shifted.
        ffn_expansion: FFN width = ``2 * d_feature * ffn_expansion`` (the FFN sees [x, message]).
        attn_splits: windows per side of the 1/4-resolution map (``multiview_trans_attn_split``);
            at least 2, and ``H / 4`` and ``W / 4`` must be divisible by it.
        num_depth_candidates: D, uniform in inverse depth between near and far.
        costvolume_unet_feat_dim, costvolume_unet_channel_mult, costvolume_unet_attn_res: the
            correlation-refinement U-Net (width, per-level multipliers, downsample rates with
            cross-view attention).
        depth_unet_feat_dim, depth_unet_channel_mult, depth_unet_attn_res: the full-resolution
            depth-refinement U-Net.
        gaussian_scale_min, gaussian_scale_max: scale range of MVSplat's adapter, in units of
            ``0.1 x`` the pixel footprint at the Gaussian's depth.
        sh_degree: SH degree of the colour (MVSplat: 4).
        opacity_exponent_log2: ``x`` of MVSplat's pdf -> opacity map
            ``0.5 * (1 - (1 - p)^(2^x) + p^(1 / 2^x))`` (released configs: 0, the identity).
    """

    d_feature: int = 128
    cnn_channels: tuple[int, int, int] = (64, 96, 128)
    num_transformer_layers: int = 6
    ffn_expansion: int = 4
    attn_splits: int = 2
    num_depth_candidates: int = 128
    costvolume_unet_feat_dim: int = 128
    costvolume_unet_channel_mult: tuple[int, ...] = (1, 1, 1)
    costvolume_unet_attn_res: tuple[int, ...] = (4,)
    depth_unet_feat_dim: int = 32
    depth_unet_channel_mult: tuple[int, ...] = (1, 1, 1, 1, 1)
    depth_unet_attn_res: tuple[int, ...] = (16,)
    gaussian_scale_min: float = 0.5
    gaussian_scale_max: float = 15.0
    sh_degree: int = 4
    opacity_exponent_log2: float = 0.0

    def __post_init__(self) -> None:
        if self.attn_splits < 2:
            raise ValueError(f"model.mvsplat.attn_splits must be >= 2 (MVSplat: 2), got {self.attn_splits}")
        if not 0 <= self.sh_degree <= 4:
            raise ValueError(f"model.mvsplat.sh_degree must be in 0..4, got {self.sh_degree}")
