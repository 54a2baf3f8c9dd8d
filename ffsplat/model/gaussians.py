"""Per-pixel Gaussians from depth and features (SemanticSplat sec. 3.3, MVSplat's Gaussian adapter).

For every pixel of every context view:

* mean: the pixel centre (plus a learned sub-pixel offset) unprojected to the predicted depth;
* scale: ``depth / focal * s`` with ``s`` in ``[scale_min, scale_max]`` pixel footprints (so a
  Gaussian covers a similar number of pixels in its own view at any depth). ``scale_min = 0.5``
  (a standard deviation of half the pixel spacing) is the smallest scale at which neighbouring
  per-pixel Gaussians still overlap into a closed surface when rendered at a higher resolution
  or from a nearby view; with smaller scales the training-resolution low-pass filter (eps2d)
  hides the gaps and the scene renders as a dot grid elsewhere (tests/test_coverage.py). The
  head starts at ``s = init_scale`` (one pixel footprint);
* rotation: a unit quaternion predicted in the camera frame, composed with the camera-to-world
  rotation (world-space rotations, as the renderer and the .ply expect);
* opacity: sigmoid of a raw output;
* colour: SH whose DC term is the pixel's colour plus a residual, predicted in the camera frame
  and rotated into the world frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from ffsplat.core.geometry import float32_geometry, pixel_centers, quat_multiply, rotmat_to_quat, transform_points
from ffsplat.core.sh import num_sh_bases, rgb_to_sh_dc, rotate_sh
from ffsplat.core.types import Cameras, Gaussians


@dataclass
class GaussianConfig:
    """Gaussian head.

    Attributes:
        sh_degree: SH degree of the colour (0..4).
        scale_min, scale_max: range of Gaussian scales (standard deviations) in pixel footprints
            at their depth; ``scale_min >= 0.5`` keeps neighbouring Gaussians overlapping at any
            render resolution.
        init_scale: scale (pixel footprints) the untrained head predicts; inside the range.
        hidden: channels of the head's conv layers.
        pixel_offset: learn a sub-pixel offset (at most half a pixel) of each Gaussian's centre.
    """

    sh_degree: int = 4
    scale_min: float = 0.5
    scale_max: float = 3.0
    init_scale: float = 1.0
    hidden: int = 64
    pixel_offset: bool = True


class GaussianHead(nn.Module):
    """Two conv layers (SemanticSplat: "via two convolutional layers") from concatenated
    [refinement features, image, upsampled transformer features] to raw Gaussian parameters."""

    def __init__(self, cfg: GaussianConfig, in_ch: int):
        super().__init__()
        self.cfg = cfg
        self.k = num_sh_bases(cfg.sh_degree)
        self.raw_ch = 1 + 3 + 4 + 3 * self.k + 2
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, cfg.hidden, 3, padding=1), nn.GELU(), nn.Conv2d(cfg.hidden, self.raw_ch, 3, padding=1)
        )
        # Start near a sensible scene: mid opacity, mid scale, identity rotation, image colours.
        nn.init.normal_(self.net[-1].weight, std=1e-3)
        nn.init.zeros_(self.net[-1].bias)
        if not cfg.scale_min < cfg.init_scale < cfg.scale_max:
            raise ValueError(
                f"gaussians.init_scale={cfg.init_scale} must lie inside (scale_min, scale_max) = ({cfg.scale_min}, {cfg.scale_max})"
            )
        frac = (cfg.init_scale - cfg.scale_min) / (cfg.scale_max - cfg.scale_min)
        with torch.no_grad():
            self.net[-1].bias[1:4] = math.log(frac / (1 - frac))  # sigmoid(bias) = frac -> footprint init_scale

    def forward(self, features: Tensor, images: Tensor, depth: Tensor, cameras: Cameras) -> Gaussians:
        """
        Args:
            features: ``[B, V, C, H, W]``; images: ``[B, V, 3, H, W]``; depth: ``[B, V, H, W]``;
            cameras: batch ``[B, V]`` at ``(H, W)``.
        Returns:
            Gaussians of batch ``[B]`` with ``N = V * H * W`` (view-major, then row-major pixels), all
            float32: only the conv layers follow autocast; unprojection, the world rotation and
            the SH rotation run in float32 with autocast disabled.
        """
        b = images.shape[0]
        raw = rearrange(self.net(rearrange(features, "b v c h w -> (b v) c h w")), "(b v) c h w -> b v (h w) c", b=b)
        with float32_geometry(images.device):
            return self._adapt(raw.float(), images.float(), depth.float(), cameras.to(torch.float32))

    def _adapt(self, raw: Tensor, images: Tensor, depth: Tensor, cameras: Cameras) -> Gaussians:
        b, v, _, h, w = images.shape
        opacity_raw, scale_raw, rot_raw, sh_raw, offset_raw = raw.split([1, 3, 4, 3 * self.k, 2], dim=-1)

        uv = pixel_centers(h, w, images.device, images.dtype).reshape(1, 1, h * w, 2)
        if self.cfg.pixel_offset:
            uv = uv + 0.5 * torch.tanh(offset_raw)
        k = cameras.intrinsics.to(images.dtype)
        z = rearrange(depth, "b v h w -> b v (h w)")
        x = (uv[..., 0] - k[..., 0, 2, None]) / k[..., 0, 0, None] * z
        y = (uv[..., 1] - k[..., 1, 2, None]) / k[..., 1, 1, None] * z
        c2w = cameras.extrinsics.to(images.dtype)
        means = transform_points(c2w, torch.stack([x, y, z], dim=-1))  # [B, V, HW, 3]

        focal = 0.5 * (k[..., 0, 0] + k[..., 1, 1])[..., None, None]  # [B, V, 1, 1]
        footprint = self.cfg.scale_min + (self.cfg.scale_max - self.cfg.scale_min) * torch.sigmoid(scale_raw)
        scales = z[..., None] / focal * footprint

        identity = rot_raw.new_tensor([1.0, 0.0, 0.0, 0.0])
        rot_cam = torch.nn.functional.normalize(rot_raw + identity, dim=-1)
        rot_view = rotmat_to_quat(c2w[..., :3, :3])[:, :, None, :]  # [B, V, 1, 4]
        rotations = quat_multiply(rot_view.expand_as(rot_cam), rot_cam)

        sh = rearrange(sh_raw, "b v n (k c) -> b v n k c", c=3) * 0.1
        rgb = rearrange(images, "b v c h w -> b v (h w) c")
        sh = torch.cat([sh[..., :1, :] + rgb_to_sh_dc(rgb)[..., None, :], sh[..., 1:, :]], dim=-2)
        sh = rotate_sh(sh, c2w[:, :, None, :3, :3])

        def flat(t: Tensor) -> Tensor:
            return t.reshape(b, v * h * w, *t.shape[3:])

        return Gaussians(
            means=flat(means),
            scales=flat(scales),
            rotations=flat(rotations),
            opacities=flat(torch.sigmoid(opacity_raw)[..., 0]),
            sh=flat(sh),
        )
