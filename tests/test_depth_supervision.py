"""Depth supervision (objectives.losses.depth_loss) and its wiring into the geometry/seg stages."""

from __future__ import annotations

import math

import torch

from ffsplat.objectives.losses import depth_loss
from tests.test_training import tiny_config


def test_depth_loss_is_log_l1_over_valid_sensor_pixels():
    target = torch.full((1, 2, 4, 4), 2.0)
    target[0, 0, 0, 0] = 0.0  # no sensor return
    target[0, 1, 1, 1] = float("nan")
    pred = torch.full((1, 2, 4, 4), 2.0, requires_grad=True)
    assert depth_loss(pred, target).item() == 0.0
    far = pred.detach().clone()
    far[0, 0, 0, 0] = 100.0  # an invalid pixel: ignored
    assert depth_loss(far, target).item() == 0.0
    doubled = torch.full((1, 2, 4, 4), 4.0)
    assert math.isclose(depth_loss(doubled, target).item(), math.log(2.0), rel_tol=1e-6)
    # Prediction at another resolution is resized to the sensor grid.
    assert math.isclose(depth_loss(torch.full((1, 2, 8, 8), 4.0), target).item(), math.log(2.0), rel_tol=1e-6)
    empty = depth_loss(pred, torch.zeros_like(target))
    assert empty.item() == 0.0 and empty.requires_grad
    depth_loss(torch.full((1, 2, 4, 4), 3.0, requires_grad=True), target).backward()


def test_depth_weight_adds_context_and_target_depth_terms(tiny_shards, tmp_path):
    from ffsplat.data.shards import ClipExamples, collate_examples, manifest_shards
    from ffsplat.training.module import SemanticSplatModule

    torch.manual_seed(0)
    plain_module = SemanticSplatModule(tiny_config(tiny_shards, tmp_path, "geometry"))
    module = SemanticSplatModule(tiny_config(tiny_shards, tmp_path, "geometry", loss__depth_weight=0.5))
    module.model.load_state_dict(plain_module.model.state_dict())
    data = ClipExamples(manifest_shards(tiny_shards, "train"), module.cfg.data.sampler, shuffle_buffer=0)
    batch = collate_examples([next(iter(data))])
    assert batch.context.depths is not None and batch.target.depths is not None
    losses = {}
    for weight, m in ((0.0, plain_module), (0.5, module)):
        m._move_helpers()
        losses[weight] = m.compute_losses(batch)
    (plain, plain_logs), (supervised, logs) = losses[0.0], losses[0.5]
    assert "depth_context" not in plain_logs
    assert logs["depth_context"] > 0 and logs["depth_target"] > 0
    expected = plain + 0.5 * (logs["depth_context"] + logs["depth_target"])
    torch.testing.assert_close(supervised, expected, rtol=1e-5, atol=1e-5)
