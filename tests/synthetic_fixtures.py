"""Test fixtures built on synthetic rooms."""

from __future__ import annotations

import numpy as np

from ffsplat.synthetic import SyntheticConfig, make_scene, render_frame


def synthetic_views(seed: int, frames: list[int], height: int = 32, width: int | None = None, path_frames: int = 12):
    """Frames of one synthetic room as :class:`ffsplat.core.types.Views` (batch ``[1, V]``) with exact
    depth, 8-class labels and instance ids (for tests, examples and benchmarks).

    Args:
        seed: room seed; frames: indices into a camera path of ``path_frames`` poses.
    """
    import torch

    from ffsplat.core.types import Cameras, Views

    width = width or height
    room, poses, k = make_scene(seed, SyntheticConfig(height=height, width=width, frames=path_frames))
    rendered = [render_frame(room, poses[i], k, height, width) for i in frames]

    def stack(j: int):
        return torch.from_numpy(np.stack([r[j] for r in rendered]))[None]

    cams = Cameras(
        torch.from_numpy(k).float().expand(1, len(frames), 3, 3).clone(),
        torch.from_numpy(poses[list(frames)]).float()[None],
        (height, width),
    )
    return Views(
        images=stack(0).permute(0, 1, 4, 2, 3).float() / 255,
        cameras=cams,
        near=torch.tensor([0.3]),
        far=torch.tensor([8.0]),
        depths=stack(1).float(),
        labels=stack(2).long(),
        instances=stack(3).long(),
    )
