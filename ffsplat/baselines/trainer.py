"""Shared per-scene optimisation for the baselines (Inria 3DGS / gsplat defaults).

* Initialisation: the given Gaussians (:mod:`ffsplat.baselines.initialisation`: SfM points, random
  frustum points, predicted depth, or the sensor-depth oracle); without them one Gaussian per pixel
  (every ``init_stride``-th) unprojected from the views' depth, opacity ``init_opacity``.
* Loss: ``0.8 L1 + 0.2 (1 - SSIM)`` on one training view per step, plus the method's terms. Views
  are drawn without replacement within an epoch (a fresh shuffled order of all views each epoch,
  as Inria's ``viewpoint_stack``).
* Optimiser: one Adam per attribute with Inria's learning rates (means ``1.6e-4 x scene scale``
  decaying exponentially to 1% over Inria's ``lr_means_horizon = 30000`` steps, whatever the run
  length, then held), ``eps = 1e-15``; SH bands unlocked every ``sh_degree_interval``.
* Densification: gsplat's ``DefaultStrategy`` (clone / split / prune), which is pure torch and so
  runs on CPU and CUDA alike, with the opacity reset that gsplat 1.5.3 never performs (its test
  ``step % reset_every == 0 & step > 0`` is always False) done by :class:`OpacityResetStrategy`.
  Every per-Gaussian attribute, including each method's extras, lives in one ``ParameterDict`` so
  densification keeps them aligned.
* Rendering: ``ffsplat.render.renderer`` (gsplat on CUDA, the torch rasterizer on CPU), like the model.
* Checkpoints (atomic) every ``checkpoint_every`` steps; :meth:`SceneTrainer.fit` resumes from one.
* Budgets: the refine / reset / SH / position-decay steps are written for ``schedule_reference``
  (Inria's 30k in ``configs/baseline/*.yaml``) iterations; a shorter run scales them to its budget (:func:`scaled_to_budget`), so
  it densifies within any budget (e.g. 100 steps: refine every 10 from step 10 to 50, reset at 30).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import reset_opa
from torch import Tensor, nn

from ffsplat.core.atomic import atomic_open
from ffsplat.render.init import gaussians_from_rgbd
from ffsplat.objectives.metrics import ssim
from ffsplat.render.renderer import RasterSettings, RenderOutput, render
from ffsplat.core.sh import num_sh_bases
from ffsplat.core.types import Cameras, Gaussians, Views


@dataclass
class SceneConfig:
    """Per-scene optimisation settings (Inria 3DGS defaults unless noted).

    Attributes:
        iterations: optimisation steps (Inria / Feature 3DGS / semantic logits / Proto-SaGa: 30k).
        method_iterations: per-baseline overrides of ``iterations`` (FHGS: 10k), used by
            :func:`ffsplat.baselines.compare.run_baseline` unless the iterations are set explicitly.
        sh_degree: final SH degree; ``sh_degree_interval``: steps per unlocked band.
        ssim_weight: lambda of ``(1 - lambda) L1 + lambda (1 - SSIM)``.
        lr_*: learning rates (means scaled by the scene scale and decayed to ``lr_means_final``x
            over ``lr_means_horizon`` steps, Inria's ``position_lr_max_steps = 30000``).
        init_opacity: opacity of the initial Gaussians; init_stride: keep every n-th pixel.
        densify: run gsplat's DefaultStrategy; refine_*: its schedule; grow_grad2d: gradient
            threshold; prune_opa: opacity pruning threshold; reset_every: opacity reset period.
        background: RGB background of the renders.
        seed: RNG seed (view order, splits).
        checkpoint_every: steps between checkpoints (0: none).
        cpu_threads: torch intra-op threads while :meth:`SceneTrainer.fit` runs on CPU (restored
            afterwards); 0 leaves torch's setting. Small scenes are dominated by thread
            synchronisation of tiny ops: 3DGS on 3 views of 48x48 (6.9k Gaussians) on the 2-core
            box took 0.09 CPU-s (0.13 s) per step with 1 thread against 0.55 CPU-s (0.5-0.7 s)
            with 2 (BENCHMARKS.md, per-scene baselines); the quick config uses 1.
        schedule_reference: the budget the step counts above are written for (the baseline configs
            set Inria's 30000); a run of fewer iterations scales refine_* / reset_every /
            sh_degree_interval / lr_means_horizon to its length (:func:`scaled_to_budget`); 0 (the
            dataclass default, for hand-written schedules) uses them as written.
        render: rasterization settings.
    """

    iterations: int = 30000
    method_iterations: dict[str, int] = field(default_factory=lambda: {"fhgs": 10000})
    sh_degree: int = 3
    sh_degree_interval: int = 1000
    ssim_weight: float = 0.2
    lr_means: float = 1.6e-4
    lr_means_final: float = 0.01
    lr_means_horizon: int = 30000
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    init_opacity: float = 0.1
    init_stride: int = 1
    densify: bool = True
    refine_start: int = 500
    refine_stop: int = 15000
    refine_every: int = 100
    grow_grad2d: float = 2e-4
    prune_opa: float = 0.005
    reset_every: int = 3000
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seed: int = 0
    checkpoint_every: int = 0
    cpu_threads: int = 0
    schedule_reference: int = 0
    render: RasterSettings = field(default_factory=RasterSettings)


MIN_REFINE_EVERY = 10
"""Fewest steps between densifications of a scaled schedule (gradients are averaged over them)."""


def scaled_to_budget(cfg: SceneConfig) -> SceneConfig:
    """``cfg`` with its step schedule scaled to ``cfg.iterations`` when that is below
    ``cfg.schedule_reference`` (ratio ``r``): refine every ``max(10, r * refine_every)`` steps from
    ``max(that, r * refine_start)`` to ``r * refine_stop``, opacity reset every
    ``max(3 x refine interval, r * reset_every)``, SH bands every ``r * sh_degree_interval``, position
    learning rate decayed over the run. Unchanged otherwise."""
    from dataclasses import replace

    ref = cfg.schedule_reference
    if ref <= 0 or cfg.iterations >= ref:
        return cfg
    r = cfg.iterations / ref
    every = max(MIN_REFINE_EVERY, round(cfg.refine_every * r))
    start = max(every, round(cfg.refine_start * r))
    stop = max(start + every, round(cfg.refine_stop * r))
    return replace(cfg, refine_every=every, refine_start=start, refine_stop=stop,
                   reset_every=max(3 * every, round(cfg.reset_every * r)),
                   sh_degree_interval=max(1, round(cfg.sh_degree_interval * r)),
                   lr_means_horizon=max(1, round(cfg.lr_means_horizon * r)))  # fmt: skip


class OpacityResetStrategy(DefaultStrategy):
    """gsplat's DefaultStrategy with the periodic opacity reset it is meant to do."""

    def step_post_backward(self, params, optimizers, state, step, info, packed=False):
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        if 0 < step < self.refine_stop_iter and step % self.reset_every == 0:
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)


class _Grad:
    """Exposes a gradient tensor as ``.grad`` (what DefaultStrategy reads from ``info["means2d"]``)."""

    def __init__(self, grad: Tensor):
        self.grad = grad


class SceneMethod(nn.Module):
    """A baseline's additions to plain 3DGS. Subclasses override what they need.

    ``per_gaussian`` declares extra per-Gaussian attributes ``{name: (initial [N, C] tensor, lr)}``
    (densified with the rest); ``modules`` declares extra trainable modules ``[(module, lr)]``;
    ``render`` turns parameters into images; ``loss`` adds terms to the RGB loss.
    """

    name = "3dgs"

    def per_gaussian(self, init: Gaussians, data: Views) -> dict[str, tuple[Tensor, float]]:
        return {}

    def modules(self) -> list[tuple[nn.Module, float]]:
        return []

    def render(self, trainer: SceneTrainer, cameras: Cameras) -> RenderOutput:
        return render(
            trainer.gaussians(),
            cameras,
            features=[],
            background=list(trainer.cfg.background),
            settings=trainer.cfg.render,
        )

    def loss(self, trainer: SceneTrainer, out: RenderOutput, view: int, step: int) -> tuple[Tensor, dict[str, float]]:
        return out.rgb.new_zeros(()), {}


class SceneTrainer:
    """Optimises one scene from posed views with a :class:`SceneMethod`.

    Args:
        cfg: settings.
        data: the training views of one scene, batch ``[1, V]`` (images, cameras, depths for the
            initialisation, and whatever the method supervises: labels, instances, teacher maps).
        method: the baseline.
        init: initial Gaussians (unbatched); default: unprojected from ``data.depths``.
    """

    CORE = ("means", "scales", "quats", "opacities", "sh0", "shN")

    def __init__(self, cfg: SceneConfig, data: Views, method: SceneMethod, init: Gaussians | None = None):
        cfg = scaled_to_budget(cfg)
        self.cfg, self.data, self.method = cfg, data, method
        device = data.images.device
        if init is None:
            if data.depths is None:
                raise ValueError("SceneTrainer: no initial Gaussians given and the views have no depth to unproject")
            init = gaussians_from_rgbd(
                data.images, data.depths, data.cameras, opacity=cfg.init_opacity, sh_degree=cfg.sh_degree
            )[0]
            keep = torch.zeros(init.num_gaussians, dtype=torch.bool, device=device)
            keep[:: cfg.init_stride] = True
            init = init.select(keep & (init.opacities > 0))
        self.scene_scale = scene_scale(data.cameras.centers[0], init.means)
        k = num_sh_bases(cfg.sh_degree)
        sh = torch.zeros(init.num_gaussians, k, 3, device=device)
        sh[:, : init.sh.shape[1]] = init.sh[:, :k]
        tensors = {
            "means": (init.means, cfg.lr_means * self.scene_scale),
            "scales": (torch.log(init.scales.clamp_min(1e-8)), cfg.lr_scales),
            "quats": (init.rotations, cfg.lr_quats),
            "opacities": (torch.logit(init.opacities.clamp(1e-4, 1 - 1e-4)), cfg.lr_opacities),
            "sh0": (sh[:, :1], cfg.lr_sh0),
            "shN": (sh[:, 1:], cfg.lr_shN),
        }
        tensors.update(method.per_gaussian(init, data))
        self.params = nn.ParameterDict({n: nn.Parameter(t.detach().clone().float()) for n, (t, _) in tensors.items()})
        self.optimizers = {n: torch.optim.Adam([self.params[n]], lr=lr, eps=1e-15) for n, (_, lr) in tensors.items()}
        self.module_optimizers = [torch.optim.Adam(m.parameters(), lr=lr) for m, lr in method.modules()]
        self.strategy = OpacityResetStrategy(
            prune_opa=cfg.prune_opa, grow_grad2d=cfg.grow_grad2d, refine_start_iter=cfg.refine_start,
            refine_stop_iter=cfg.refine_stop, refine_every=cfg.refine_every, reset_every=cfg.reset_every,
        )  # fmt: skip
        self.strategy.check_sanity(self.params, self.optimizers)
        self.state = self.strategy.initialize_state(scene_scale=self.scene_scale)
        self.step = 0
        self.rng = random.Random(cfg.seed)  # training-view order; saved in checkpoints
        self.epoch_order: list[int] = []  # views left in the current epoch (drawn from the end)
        self.sh_degree_now = 0
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ views of the parameters
    def gaussians(self, detach_geometry: bool = False, features: dict[str, Tensor] | None = None) -> Gaussians:
        """The current Gaussians (batch ``[1]``), SH limited to the unlocked degree."""
        p = self.params
        geo = (lambda t: t.detach()) if detach_geometry else (lambda t: t)  # noqa: E731
        sh = torch.cat([p["sh0"], p["shN"]], dim=1)[:, : num_sh_bases(self.sh_degree_now)]
        return Gaussians(
            means=geo(p["means"])[None],
            scales=geo(torch.exp(p["scales"]))[None],
            rotations=geo(F.normalize(p["quats"], dim=-1))[None],
            opacities=geo(torch.sigmoid(p["opacities"]))[None],
            sh=geo(sh)[None],
            features={k: v[None] for k, v in (features or {}).items()},
        )

    @property
    def num_gaussians(self) -> int:
        return len(self.params["means"])

    def view(self, index: int) -> Cameras:
        return self.data.cameras[:, index : index + 1]

    # ------------------------------------------------------------------ optimisation
    def rgb_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        l1 = (pred - target).abs().mean()
        return (1 - self.cfg.ssim_weight) * l1 + self.cfg.ssim_weight * (
            1 - ssim(pred.flatten(0, 1), target.flatten(0, 1)).mean()
        )

    def train_step(self, view: int) -> dict[str, float]:
        cfg = self.cfg
        self.sh_degree_now = min(cfg.sh_degree, self.step // cfg.sh_degree_interval)
        out = self.method.render(self, self.view(view))
        means2d = out.meta.get("means2d")
        if cfg.densify and means2d is not None and means2d.requires_grad:
            means2d.retain_grad()
        target = self.data.images[:, view : view + 1]
        rgb = self.rgb_loss(out.rgb, target)
        extra, logs = self.method.loss(self, out, view, self.step)
        loss = rgb + extra
        loss.backward()
        if cfg.densify and means2d is not None and means2d.grad is not None:
            h, w = target.shape[-2:]
            info = {"means2d": _Grad(means2d.grad[0]), "radii": out.meta["radii"][0], "width": w, "height": h,
                    "n_cameras": 1, "gaussian_ids": None}  # fmt: skip
            self.strategy.step_post_backward(self.params, self.optimizers, self.state, self.step, info)
        for name, optimizer in self.optimizers.items():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if name == "means":
                for group in optimizer.param_groups:
                    group["lr"] = self.means_lr(self.step + 1)
        for optimizer in self.module_optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"loss": loss.item(), "rgb": rgb.item(), **logs, "gaussians": self.num_gaussians}

    def means_lr(self, step: int) -> float:
        """Inria's exponential position-lr schedule: ``lr0 * final ** (min(step, horizon) / horizon)``."""
        cfg = self.cfg
        t = min(step, cfg.lr_means_horizon) / max(1, cfg.lr_means_horizon)
        return cfg.lr_means * self.scene_scale * cfg.lr_means_final**t

    def next_view(self) -> int:
        """The next training view: every view once per epoch, in a fresh random order each epoch."""
        if not self.epoch_order:
            self.epoch_order = list(range(self.data.images.shape[1]))
            self.rng.shuffle(self.epoch_order)
        return self.epoch_order.pop()

    def fit(self, checkpoint: str | Path | None = None, progress: bool = True) -> list[dict[str, float]]:
        """Run to ``cfg.iterations`` (resuming from ``checkpoint`` if it exists)."""
        if checkpoint is not None and Path(checkpoint).is_file():
            self.load(checkpoint)
        cpu = self.data.images.device.type == "cpu"
        with intra_op_threads(self.cfg.cpu_threads if cpu else 0):
            return self._fit(checkpoint, progress)

    def _fit(self, checkpoint: str | Path | None, progress: bool) -> list[dict[str, float]]:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=self.cfg.iterations, initial=self.step, desc=self.method.name, unit="step")
        while self.step < self.cfg.iterations:
            logs = self.train_step(self.next_view())
            self.history.append(logs)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.4f}", n=logs["gaussians"])
            if checkpoint is not None and self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                self.save(checkpoint)
        if bar is not None:
            bar.close()
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path) -> None:
        blob = {
            "step": self.step,
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "modules": [m.state_dict() for m, _ in self.method.modules()],
            "module_optimizers": [o.state_dict() for o in self.module_optimizers],
            "state": {k: v.cpu() if torch.is_tensor(v) else v for k, v in self.state.items()},
            "config": asdict(self.cfg),
            "method": self.method.name,
            # RNG states, so a resumed fit continues exactly (view order, gsplat's split sampling)
            "rng": self.rng.getstate(),
            "epoch_order": list(self.epoch_order),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        with atomic_open(path) as f:
            torch.save(blob, f)

    def load(self, path: str | Path) -> None:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("method") != self.method.name:
            raise ValueError(f"{path}: a {blob.get('method')} checkpoint, not {self.method.name}")
        device = self.params["means"].device
        self.params = nn.ParameterDict({k: nn.Parameter(v.to(device)) for k, v in blob["params"].items()})
        for name, optimizer in self.optimizers.items():
            optimizer.param_groups[0]["params"] = [self.params[name]]
            optimizer.load_state_dict(blob["optimizers"][name])
        for (module, _), state in zip(self.method.modules(), blob["modules"]):
            module.load_state_dict(state)
        for optimizer, state in zip(self.module_optimizers, blob["module_optimizers"]):
            optimizer.load_state_dict(state)
        self.state = {k: v.to(device) if torch.is_tensor(v) else v for k, v in blob["state"].items()}
        self.step = blob["step"]
        self.rng.setstate(blob["rng"])
        self.epoch_order = list(blob.get("epoch_order", []))
        torch.set_rng_state(blob["torch_rng"])
        if blob["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(blob["cuda_rng"])


@contextlib.contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(threads)`` and restore the previous count after
    (``threads <= 0``: leave the setting alone)."""
    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads > 0:
            torch.set_num_threads(previous)


def scene_scale(camera_centers: Tensor, points: Tensor) -> float:
    """gsplat's scene scale (1.1 x the largest camera distance from their centroid), but at least
    half the median point distance from the centroid: with a few close views the camera spread
    alone would make the means' learning rate and the clone/split size threshold vanish."""
    centroid = camera_centers.mean(0)
    spread = (camera_centers - centroid).norm(dim=-1).max().item()
    extent = (points - centroid).norm(dim=-1).median().item() if len(points) else 0.0
    return 1.1 * max(spread, 0.5 * extent, 1e-3)
