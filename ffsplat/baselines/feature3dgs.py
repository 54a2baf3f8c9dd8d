"""Feature 3DGS (Zhou et al., CVPR 2024) on the shared per-scene trainer.

What follows ``BASELINES.md`` (and the authors' public code):

* Every Gaussian carries a feature ``f`` (zeros at init, Adam lr 1e-3), stored in
  ``trainer.params["feature"]`` so gsplat's DefaultStrategy densifies it with the rest.
* Speed-up module (``speedup=True``): render ``rendered_dim`` channels (C/4) and lift them back to
  the teacher's ``teacher_dim`` with a 1x1 convolution *with bias* (Adam lr 1e-4): SAM 64 -> 256,
  LSeg 128 -> 512. Without it the Gaussians carry and render ``teacher_dim`` channels directly.
* The feature loss never moves geometry (the authors comment out the feature-to-geometry
  gradient in their rasterizer): RGB is rendered with the live geometry and the features in a
  second render with *detached* means / scales / rotations / opacities. The RGB render is the one
  returned (its ``means2d`` drives densification, as in the authors' code).
* The rendered map is bilinearly resized (``align_corners=True``, as the authors do) to the
  teacher's resolution *before* the decoder; loss ``feature_weight (1.0) * L1(decoded, teacher)``,
  added to the trainer's ``0.8 L1 + 0.2 (1 - SSIM)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffsplat.baselines.trainer import SceneMethod, SceneTrainer
from ffsplat.render.renderer import RenderOutput, render
from ffsplat.core.types import Cameras, Gaussians, Views

FEATURE = "feature"
"""Name of the per-Gaussian feature in ``trainer.params`` and in ``RenderOutput.features``."""


class Feature3DGS(SceneMethod):
    """Distils a 2D teacher feature map into per-Gaussian features.

    Args:
        teacher: key of the teacher maps in ``trainer.data.teacher`` (``[1, V, teacher_dim, h, w]``).
        teacher_dim: teacher channels (SAM 256, LSeg 512).
        rendered_dim: rendered channels with the speed-up module (default ``teacher_dim // 4``:
            SAM 64, LSeg 128); must equal ``teacher_dim`` (or be None) without it.
        speedup: use the 1x1-conv decoder (Feature 3DGS's speed-up module).
        feature_weight: weight of the feature L1 loss (1.0).
        lr_feature: Adam lr of the per-Gaussian features (1e-3).
        lr_decoder: Adam lr of the decoder (1e-4).
    """

    name = "feature3dgs"

    def __init__(self, teacher: str, teacher_dim: int, rendered_dim: int | None = None, speedup: bool = True,
                 feature_weight: float = 1.0, lr_feature: float = 1e-3, lr_decoder: float = 1e-4):  # fmt: skip
        super().__init__()
        if rendered_dim is None:
            rendered_dim = teacher_dim // 4 if speedup else teacher_dim
        if not speedup and rendered_dim != teacher_dim:
            raise ValueError(f"Feature3DGS without speed-up renders teacher_dim={teacher_dim} channels, "
                             f"not {rendered_dim}")  # fmt: skip
        self.teacher, self.teacher_dim, self.rendered_dim, self.speedup = teacher, teacher_dim, rendered_dim, speedup
        self.feature_weight, self.lr_feature, self.lr_decoder = feature_weight, lr_feature, lr_decoder
        self.decoder: nn.Conv2d | None = None
        if speedup:
            self.decoder = nn.Conv2d(rendered_dim, teacher_dim, kernel_size=1, bias=True)

    # ------------------------------------------------------------------ SceneMethod hooks
    def per_gaussian(self, init: Gaussians, data: Views) -> dict[str, tuple[Tensor, float]]:
        if self.teacher not in data.teacher:
            raise KeyError(f"Feature3DGS: teacher {self.teacher!r} not in the views' teacher maps "
                           f"{list(data.teacher)}")  # fmt: skip
        channels = data.teacher[self.teacher].shape[2]
        if channels != self.teacher_dim:
            raise ValueError(f"Feature3DGS: teacher {self.teacher!r} has {channels} channels, "
                             f"expected teacher_dim={self.teacher_dim}")  # fmt: skip
        if self.decoder is not None:
            self.decoder.to(init.means.device)  # before the trainer builds the module optimisers
        return {FEATURE: (init.means.new_zeros(init.num_gaussians, self.rendered_dim), self.lr_feature)}

    def modules(self) -> list[tuple[nn.Module, float]]:
        return [] if self.decoder is None else [(self.decoder, self.lr_decoder)]

    def render(self, trainer: SceneTrainer, cameras: Cameras) -> RenderOutput:
        """RGB with live geometry; ``features["feature"]`` ``[1, V, rendered_dim, H, W]`` rendered with
        detached geometry (so only the features receive the feature loss's gradient)."""
        bg, s = list(trainer.cfg.background), trainer.cfg.render
        out = render(trainer.gaussians(), cameras, features=[], background=bg, settings=s)
        out.features[FEATURE] = self.render_features(trainer, cameras)
        return out

    def loss(self, trainer: SceneTrainer, out: RenderOutput, view: int, step: int) -> tuple[Tensor, dict[str, float]]:
        target = trainer.data.teacher[self.teacher][:, view : view + 1]
        l1 = (self.decode(out.features[FEATURE], target.shape[-2:]) - target).abs().mean()
        return self.feature_weight * l1, {"feature_l1": l1.item()}

    # ------------------------------------------------------------------ helpers
    def render_features(self, trainer: SceneTrainer, cameras: Cameras) -> Tensor:
        """``[1, V, rendered_dim, H, W]`` raw rendered features (geometry detached)."""
        g = trainer.gaussians(detach_geometry=True, features={FEATURE: trainer.params[FEATURE]})
        return render(g, cameras, features=[FEATURE], settings=trainer.cfg.render).features[FEATURE]

    def decode(self, rendered: Tensor, size: tuple[int, int] | torch.Size | None = None) -> Tensor:
        """Bilinearly resize ``[..., V, C, H, W]`` to ``size`` (if given) and apply the decoder."""
        lead = rendered.shape[:-3]
        x = rendered.flatten(0, -4)
        if size is not None and tuple(size) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        if self.decoder is not None:
            x = self.decoder(x)
        return x.reshape(lead + x.shape[1:])

    @torch.no_grad()
    def decoded_features(self, trainer: SceneTrainer, cameras: Cameras) -> Tensor:
        """``[1, V, teacher_dim, H, W]`` decoded features at render resolution (for evaluation:
        classify pixels by similarity to class / text embeddings). Memory grows with ``V x teacher_dim``:
        pass a few cameras at a time for large images."""
        return self.decode(self.render_features(trainer, cameras))
