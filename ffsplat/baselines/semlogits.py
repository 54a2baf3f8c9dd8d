"""Per-Gaussian semantic logits with normalised rendering (seed 001, "Gaussian Semantics").

What follows ``BASELINES.md`` / the seed paper:

* Every Gaussian carries view-independent logits ``s_i`` in R^C (``randn * 0.01``, Adam lr 0.01),
  stored in ``trainer.params["semantics"]`` (densified with the rest). Here ``C = num_classes = 8``:
  logit ``k`` is class ``k + 1`` of the 8-class evaluation labels; label 0 (unlabelled) is ignored
  by the loss, so it gets no logit.
* Normalised rendering (paper eq. 2): ``s_hat = sum_i a_i T_i s_i / (1 - T_final)``, i.e. the
  rendered channels divided by the rendered alpha: the blend-weighted mean of the ``s_i``.
  Pixels with ``alpha < alpha_eps`` are masked out of the loss (the division is ill-conditioned
  there; ``alpha_eps`` is not published, 0.01 is used).
* Semantics and RGB are rendered in one pass with live geometry: the semantic loss reaches the
  geometry (the paper's joint optimisation).
* ``L = L_rgb + sem_weight (1.0) * CE(s_hat, y) + lambda_H(step) * mean_i H(softmax(s_i))`` with
  ``lambda_H`` warmed up linearly from 0 to ``entropy_weight`` (0.01) over ``entropy_warmup``
  (5000) steps; ``H(p) = -sum_k p_k log p_k`` (the paper drops the sign; it minimises entropy).
* ``softmax=True`` ("+Softmax" ablation): blend ``p_i = softmax(s_i)`` instead of the logits,
  normalise by alpha and use ``NLL(log(p_hat + log_eps))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ffsplat.baselines.trainer import SceneMethod, SceneTrainer
from ffsplat.render.renderer import RenderOutput, render
from ffsplat.core.types import Cameras, Gaussians, Views

SEMANTICS = "semantics"
"""Name of the per-Gaussian logits in ``trainer.params`` and of the rendered field."""


def normalised(rendered: Tensor, alpha: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Normalised rendering: ``rendered [..., C, H, W] / alpha [..., H, W]`` (alpha clamped at
    ``eps``) and the mask ``alpha >= eps`` of pixels that may enter the loss."""
    return rendered / alpha.clamp_min(eps).unsqueeze(-3), alpha >= eps


def entropy(logits: Tensor) -> Tensor:
    """Mean over rows of ``H(softmax(s)) = -sum_k p_k log p_k`` for logits ``[N, C]``."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


def warmup_weight(step: int, weight: float, warmup: int) -> float:
    """``weight * min(1, step / warmup)`` (0 at step 0; the full weight when ``warmup <= 0``)."""
    return weight if warmup <= 0 else weight * min(1.0, step / warmup)


class SemanticLogits(SceneMethod):
    """Per-Gaussian class logits supervised by 2D labels through normalised rendering.

    Args:
        num_classes: C, the classes ``1..C`` of ``trainer.data.labels`` (0 = ignored).
        softmax: the "+Softmax" variant (blend per-Gaussian probabilities, NLL loss).
        sem_weight: weight of the CE / NLL term (1.0).
        entropy_weight: final lambda_H (0.01; the paper also tries 0.05).
        entropy_warmup: steps of the linear lambda_H warm-up (5000).
        alpha_eps: pixels with accumulated alpha below this are left out of the loss.
        log_eps: the eps of ``log(p_hat + eps)`` in the softmax variant.
        lr: Adam lr of the logits (0.01); init_std: std of their initialisation (0.01).
    """

    name = "semlogits"

    def __init__(self, num_classes: int = 8, softmax: bool = False, sem_weight: float = 1.0,
                 entropy_weight: float = 0.01, entropy_warmup: int = 5000, alpha_eps: float = 0.01,
                 log_eps: float = 1e-6, lr: float = 0.01, init_std: float = 0.01):  # fmt: skip
        super().__init__()
        self.num_classes, self.softmax, self.sem_weight = num_classes, softmax, sem_weight
        self.entropy_weight, self.entropy_warmup = entropy_weight, entropy_warmup
        self.alpha_eps, self.log_eps, self.lr, self.init_std = alpha_eps, log_eps, lr, init_std

    # ------------------------------------------------------------------ SceneMethod hooks
    def per_gaussian(self, init: Gaussians, data: Views) -> dict[str, tuple[Tensor, float]]:
        logits = torch.randn(init.num_gaussians, self.num_classes, device=init.means.device) * self.init_std
        return {SEMANTICS: (logits, self.lr)}

    def render(self, trainer: SceneTrainer, cameras: Cameras) -> RenderOutput:
        """One render with live geometry; ``features["semantics"]`` ``[1, V, C, H, W]`` holds the
        *unnormalised* blend of logits (or of probabilities with ``softmax=True``)."""
        s = trainer.params[SEMANTICS]
        g = trainer.gaussians(features={SEMANTICS: torch.softmax(s, dim=-1) if self.softmax else s})
        bg, settings = list(trainer.cfg.background), trainer.cfg.render
        return render(g, cameras, features=[SEMANTICS], background=bg, settings=settings)

    def loss(self, trainer: SceneTrainer, out: RenderOutput, view: int, step: int) -> tuple[Tensor, dict[str, float]]:
        sem = self.semantic_loss(out, trainer.data.labels[:, view : view + 1])
        lam = warmup_weight(step, self.entropy_weight, self.entropy_warmup)
        ent = entropy(trainer.params[SEMANTICS])
        return self.sem_weight * sem + lam * ent, {"sem": sem.item(), "entropy": ent.item(), "entropy_weight": lam}

    # ------------------------------------------------------------------ helpers
    def semantic_loss(self, out: RenderOutput, labels: Tensor) -> Tensor:
        """CE (logits) or NLL of ``log(p_hat + eps)`` (softmax) of the normalised render against
        ``labels [..., H, W]`` (1..C; 0 and pixels with alpha < ``alpha_eps`` ignored), averaged over
        the remaining pixels (0 when there are none)."""
        s_hat, valid = normalised(out.features[SEMANTICS], out.alpha, self.alpha_eps)
        target = torch.where(valid & (labels > 0), labels.long() - 1, -1).flatten()
        if not (target >= 0).any():
            return s_hat.sum() * 0.0
        pred = s_hat.movedim(-3, -1).reshape(-1, self.num_classes)
        if self.softmax:
            return F.nll_loss(torch.log(pred + self.log_eps), target, ignore_index=-1)
        return F.cross_entropy(pred, target, ignore_index=-1)

    @torch.no_grad()
    def predict(self, trainer: SceneTrainer, cameras: Cameras) -> Tensor:
        """``[1, V, H, W]`` int64 class ids in ``1..C``: argmax of the rendered semantics (every
        pixel gets a class; where nothing is hit all channels are 0 and class 1 is returned)."""
        return self.render(trainer, cameras).features[SEMANTICS].argmax(dim=-3) + 1
