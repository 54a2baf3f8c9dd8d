"""The shared per-scene trainer: it fits, densification keeps every attribute aligned, the opacity
reset that gsplat 1.5.3 skips really happens, and a fit resumes from its checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffsplat.baselines.trainer import SceneConfig, SceneMethod, SceneTrainer, scene_scale
from tests.synthetic_fixtures import synthetic_views
from ffsplat.core.types import Views


def small_scene(size: int = 32, frames=(0, 4, 8)) -> Views:
    views = synthetic_views(3, list(frames), size)
    return Views(views.images, views.cameras, views.near, views.far, depths=views.depths)


def config(**kw) -> SceneConfig:
    base = dict(
        iterations=160,
        refine_start=50,
        refine_every=50,
        reset_every=200,
        grow_grad2d=5e-5,
        sh_degree=1,
        sh_degree_interval=100,
    )
    return SceneConfig(**{**base, **kw})


class Extra(SceneMethod):
    """Plain 3DGS plus a dummy per-Gaussian attribute, to check that densification carries it."""

    name = "extra"

    def per_gaussian(self, init, data):
        return {"tag": (torch.arange(init.num_gaussians, dtype=torch.float32)[:, None], 0.0)}


@pytest.mark.slow
def test_fit_lowers_the_loss_and_densifies_with_attributes_aligned():
    torch.manual_seed(0)
    trainer = SceneTrainer(config(), small_scene(), Extra())
    n0 = trainer.num_gaussians
    history = trainer.fit(progress=False)
    assert np.mean([h["loss"] for h in history[-20:]]) < 0.6 * np.mean([h["loss"] for h in history[:20]])
    assert trainer.num_gaussians != n0  # densification happened
    assert {len(p) for p in trainer.params.values()} == {trainer.num_gaussians}
    tags = trainer.params["tag"][:, 0]
    assert set(tags.round().long().tolist()) <= set(range(n0))  # copies of original tags, nothing invented
    assert trainer.sh_degree_now == 1


@pytest.mark.slow
def test_opacity_reset_happens_at_reset_every():
    torch.manual_seed(0)
    trainer = SceneTrainer(config(iterations=200, densify=True), small_scene(), SceneMethod())
    for _ in range(200):  # steps 0..199
        trainer.train_step(0)
    assert torch.sigmoid(trainer.params["opacities"]).max() > 0.5
    trainer.train_step(0)  # step 200: reset to 2 x prune_opa = 0.01, then one Adam step (<= 0.05 in logit)
    assert torch.sigmoid(trainer.params["opacities"]).max() <= torch.sigmoid(torch.logit(torch.tensor(0.01)) + 0.051)


@pytest.mark.slow
def test_resume_restores_the_exact_state_and_continues(tmp_path):
    data = small_scene()
    torch.manual_seed(0)
    full = SceneTrainer(config(iterations=120, checkpoint_every=60), data, SceneMethod())
    full.fit(tmp_path / "a.ckpt", progress=False)
    torch.manual_seed(0)
    killed = SceneTrainer(config(iterations=120, checkpoint_every=60), data, SceneMethod())
    while killed.step < 60:  # the same run, killed right after its step-60 checkpoint
        killed.train_step(killed.next_view())
    killed.save(tmp_path / "b.ckpt")
    torch.manual_seed(123)  # a fresh process: unrelated RNG state until the checkpoint restores it
    resumed = SceneTrainer(config(iterations=120, checkpoint_every=60), data, SceneMethod())
    resumed.load(tmp_path / "b.ckpt")
    # The restored state is exactly the killed run's: parameters, Adam moments, strategy, RNG.
    assert resumed.step == 60 and resumed.rng.getstate() == killed.rng.getstate()
    for name in killed.params:
        assert torch.equal(resumed.params[name], killed.params[name])
        a, b = resumed.optimizers[name].state_dict(), killed.optimizers[name].state_dict()
        assert all(torch.equal(a["state"][0][k], b["state"][0][k]) for k in ("exp_avg", "exp_avg_sq"))
        assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"]
    assert torch.equal(resumed.state["grad2d"], killed.state["grad2d"])
    resumed.fit(tmp_path / "b.ckpt", progress=False)
    # It continues to the same place. CPU float accumulation is not bit-deterministic (two fits from
    # scratch differ slightly too), so the end states agree in size and up to that noise.
    assert resumed.step == 120 and resumed.num_gaussians == full.num_gaussians
    assert (resumed.params["means"] - full.params["means"]).abs().mean() < 1e-4
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match="not extra"):
        SceneTrainer(config(), data, Extra()).load(tmp_path / "b.ckpt")


def test_scene_scale_is_not_tiny_for_close_views():
    centers = torch.tensor([[0.0, 0, 0], [0.05, 0, 0]])
    points = torch.randn(100, 3) * 0.1 + torch.tensor([0.0, 0, 3.0])
    assert scene_scale(centers, points) == pytest.approx(
        1.1 * 0.5 * (points - centers.mean(0)).norm(dim=-1).median().item()
    )


@pytest.mark.slow
def test_cpu_threads_apply_during_fit_only_and_keep_results(monkeypatch):
    """cfg.cpu_threads sets torch's intra-op threads while fit runs (restored after, also on
    error) and the fit's results equal those with torch's own setting."""
    data = small_scene()
    before = torch.get_num_threads()
    target = before + 1  # differs from torch's setting whatever OMP_NUM_THREADS is
    seen = []
    real = SceneTrainer.train_step

    def spy(self, view):
        seen.append(torch.get_num_threads())
        return real(self, view)

    results = {}
    for threads in (0, target):
        torch.manual_seed(0)
        trainer = SceneTrainer(config(iterations=12, cpu_threads=threads), data, SceneMethod())
        monkeypatch.setattr(SceneTrainer, "train_step", spy)
        trainer.fit(progress=False)
        monkeypatch.setattr(SceneTrainer, "train_step", real)
        results[threads] = {k: v.detach().clone() for k, v in trainer.params.items()}
        assert torch.get_num_threads() == before
    assert seen[:12] == [before] * 12 and seen[12:] == [target] * 12
    for name, value in results[0].items():
        torch.testing.assert_close(results[target][name], value, rtol=1e-4, atol=1e-6)

    def boom(self, view):
        raise RuntimeError("boom")

    monkeypatch.setattr(SceneTrainer, "train_step", boom)
    with pytest.raises(RuntimeError):
        SceneTrainer(config(iterations=2, cpu_threads=target), data, SceneMethod()).fit(progress=False)
    assert torch.get_num_threads() == before
