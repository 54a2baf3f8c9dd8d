"""Per-pixel Gaussians render as closed surfaces away from the training resolution: a scene predicted
by the network, rendered at 2x the working resolution (from a context view and from a nearby
target view), has almost no empty (alpha < 0.5) pixels inside the region it covers at 1x, even
with every Gaussian at the smallest scale the scale law allows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ffsplat.core.config import group_file, to_dataclass
from ffsplat.core.types import Views
from ffsplat.model.network import ModelConfig, build_model
from ffsplat.render import render
from tests.synthetic_fixtures import synthetic_views

SIZE = 32


def empty_fraction(gaussians, cameras, size: int) -> float:
    """Fraction of alpha < 0.5 pixels at 2x resolution inside the 1x-covered region (eroded by a pixel)."""
    low = render(gaussians, cameras).alpha  # [1, V, H, W]
    high = render(gaussians, cameras.resize(2 * size, 2 * size)).alpha
    covered = -F.max_pool2d(-(low > 0.5).float(), 3, stride=1, padding=1)  # erode by one pixel
    covered = F.interpolate(covered, scale_factor=2, mode="nearest") > 0.5
    assert covered.float().mean() > 0.5, "the 1x render covers too little of the view to measure"
    return float((high[covered] < 0.5).float().mean())


def predicted_scene(scale_min: float | None, at_minimum: bool):
    """Gaussians the small model (configs/model/small.yaml; ``scale_min`` overrides its floor)
    predicts from frames 0 and 2 of a synthetic room, and the cameras of frames 0, 1, 2."""
    cfg = to_dataclass(ModelConfig, group_file("model", "small"))
    cfg.conditioning.use_seg_teacher = cfg.conditioning.use_lang_teacher = False
    if scale_min is not None:
        cfg.gaussians.scale_min = scale_min
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if at_minimum:  # the worst case a trained model can reach: every scale at scale_min
        with torch.no_grad():
            model.gaussian_head.net[-1].bias[1:4] = -30.0
    views = synthetic_views(3, [0, 1, 2], SIZE)
    context = Views(views.images[:, [0, 2]], views.cameras[:, [0, 2]], views.near, views.far)
    with torch.no_grad():
        out = model(context)
    return out.gaussians, views.cameras


def cameras_at(cameras, index: int):
    return cameras[:, index : index + 1]


@pytest.mark.parametrize("at_minimum", [False, True], ids=["init", "min_scale"])
def test_predicted_scene_has_no_gaps_at_twice_the_resolution(at_minimum):
    gaussians, cameras = predicted_scene(None, at_minimum)
    for view in (0, 1):  # a context view and the target view between the two context views
        frac = empty_fraction(gaussians, cameras_at(cameras, view), SIZE)
        assert frac < 0.03, f"view {view}: {frac:.1%} of covered pixels are empty at 2x"


def test_the_old_scale_floor_leaves_gaps():
    """Control: with the former floor (0.1 pixel footprints) the same scene is a dot grid at 2x."""
    gaussians, cameras = predicted_scene(0.1, True)
    assert empty_fraction(gaussians, cameras_at(cameras, 0), SIZE) > 0.2
