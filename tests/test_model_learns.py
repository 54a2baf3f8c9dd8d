"""The network learns: overfitting the small model to one synthetic room with the photometric loss
through render() at least halves target-view depth AbsRel and photometric error (CPU, ~1.5 min; 300
steps since the scale law covers pixel footprints from the start, which lowers the untrained error)."""

from __future__ import annotations

import pytest

import numpy as np
import torch

from ffsplat.render import render
from ffsplat.core.config import group_file, to_dataclass
from ffsplat.synthetic import SyntheticConfig, make_scene, render_frame
from ffsplat.model.network import ModelConfig, build_model
from ffsplat.core.types import Cameras, Views

SIZE = 48


def scene_examples() -> list[tuple[Views, Views]]:
    """Five (context = frames i, i+4; targets = i+1..i+3) examples from one synthetic room."""
    room, poses, k = make_scene(0, SyntheticConfig(height=SIZE, width=SIZE, frames=24))
    frames = [render_frame(room, pose, k, SIZE, SIZE) for pose in poses]
    images = torch.from_numpy(np.stack([f[0] for f in frames])).permute(0, 3, 1, 2).float() / 255
    depths = torch.from_numpy(np.stack([f[1] for f in frames]))
    c2w, kt = torch.from_numpy(poses).float(), torch.from_numpy(k).float()

    def views(ids: list[int]) -> Views:
        cams = Cameras(kt.expand(1, len(ids), 3, 3).clone(), c2w[ids][None], (SIZE, SIZE))
        return Views(images[ids][None], cams, torch.tensor([0.5]), torch.tensor([8.0]), depths=depths[ids][None])

    return [(views([i, i + 4]), views([i + 1, i + 2, i + 3])) for i in range(0, 20, 4)]


def target_errors(model, examples) -> tuple[float, float]:
    absrel, photometric = [], []
    with torch.no_grad():
        for context, target in examples:
            rendered = render(model(context).gaussians, target.cameras)
            valid = target.depths > 0
            absrel.append(((rendered.depth - target.depths).abs() / target.depths)[valid].mean())
            photometric.append((rendered.rgb - target.images).abs().mean())
    return float(torch.stack(absrel).mean()), float(torch.stack(photometric).mean())


@pytest.mark.slow
def test_overfitting_one_scene_halves_depth_and_photometric_error():
    torch.manual_seed(0)
    cfg = to_dataclass(ModelConfig, group_file("model", "small"))
    cfg.conditioning.use_seg_teacher = cfg.conditioning.use_lang_teacher = False  # geometry only: no teachers needed
    model = build_model(cfg)
    examples = scene_examples()
    absrel_0, photo_0 = target_errors(model, examples)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(300):
        context, target = examples[step % len(examples)]
        rendered = render(model(context).gaussians, target.cameras)
        loss = (rendered.rgb - target.images).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    absrel_1, photo_1 = target_errors(model, examples)
    assert absrel_1 <= 0.5 * absrel_0, (absrel_0, absrel_1)
    assert photo_1 <= 0.5 * photo_0, (photo_0, photo_1)
