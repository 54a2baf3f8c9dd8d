"""The baselines' default setup is the papers' strength (issue 30, point 1): no baseline starts with
fewer Gaussians than Inria's random initialisation, and every budget densifies."""

from __future__ import annotations

import argparse

import pytest
import torch

import ffsplat.baselines.initialisation as initialisation
from ffsplat.baselines.__main__ import common
from ffsplat.baselines.compare import BASELINES
from ffsplat.baselines.initialisation import InitConfig, initial_gaussians
from ffsplat.baselines.trainer import SceneConfig, SceneMethod, SceneTrainer, scaled_to_budget
from ffsplat.core.config import CONFIG_DIR, to_dataclass
from tests.synthetic_fixtures import synthetic_views

INRIA_RANDOM_INIT = 100_000  # gaussian-splatting scene/dataset_readers.py: num_pts = 100_000 without SfM


def default_args(method: str):
    p = argparse.ArgumentParser()
    common(p)
    return p.parse_args(["--checkpoint", "m.pt", "--shards", "s", "--index", "i.json"])


@pytest.mark.parametrize("method", sorted(BASELINES))
def test_default_setup_has_at_least_the_papers_gaussians(method, monkeypatch):
    args = default_args(method)
    assert args.init not in initialisation.ORACLE_INITIALISATIONS
    # Inria's exact k-NN scale is not what is counted here: a constant keeps the test fast.
    monkeypatch.setattr(initialisation, "knn_scales", lambda pts, *a, **k: pts.new_full((len(pts),), 0.01))
    views = synthetic_views(3, [0, 6], 24)
    cfg = InitConfig(random_points=args.init_points, sfm_min_points=args.init_points, sh_degree=0)
    g, info = initial_gaussians(args.init, views, cfg=cfg)  # the command line's default
    assert g.num_gaussians >= INRIA_RANDOM_INIT, (method, info)
    g, info = initial_gaussians(args.init, views, cfg=InitConfig(sh_degree=0))  # run_baseline's default
    assert g.num_gaussians >= INRIA_RANDOM_INIT, (method, info)


@pytest.mark.slow
def test_every_budget_densifies():
    quick = to_dataclass(SceneConfig, CONFIG_DIR / "baseline" / "quick.yaml")
    for steps in (100, 300, 1000):
        s = scaled_to_budget(SceneConfig(**{**quick.__dict__, "iterations": steps}))
        assert s.refine_start < s.refine_stop <= steps and s.refine_every <= s.refine_start
        assert s.lr_means_horizon == steps and s.reset_every >= 3 * s.refine_every
    s = scaled_to_budget(SceneConfig(**{**quick.__dict__, "iterations": 100}))
    assert (s.refine_start, s.refine_every, s.refine_stop, s.reset_every) == (10, 10, 50, 30)
    full = to_dataclass(SceneConfig, CONFIG_DIR / "baseline" / "default.yaml")
    assert scaled_to_budget(full) == full  # 30k steps: Inria's schedule as written
    torch.manual_seed(0)
    views = synthetic_views(3, [0, 6], 24)
    init, _ = initial_gaussians("random", views, cfg=InitConfig(random_points=300, sh_degree=1))
    trainer = SceneTrainer(
        SceneConfig(**{**quick.__dict__, "iterations": 60, "grow_grad2d": 1e-8}), views, SceneMethod(), init=init
    )
    trainer.fit(progress=False)
    assert trainer.num_gaussians != 300  # densified within a 60-step budget (refines at steps 20 and 30)
