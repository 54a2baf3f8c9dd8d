"""What a network returns and which networks exist: :class:`NetworkOutput` and :data:`MODELS`.

Both networks (``ffsplat.model.network.SemanticSplatNet`` and the MVSplat-based
``ffsplat.model.mvsplat.net.MVSplatSemanticNet``) import this module, never each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ffsplat.core.types import Gaussians
from ffsplat.model.depth import DepthOutput


@dataclass
class NetworkOutput:
    """Gaussians of batch ``[B]`` with ``features = {"seg": [B, N, seg_dim], "lang": [B, N, lang_dim]}``,
    and the per-view depth predictions."""

    gaussians: Gaussians
    depth: DepthOutput


MODELS: dict[str, type[nn.Module]] = {}
"""``model.name`` -> network class; each network module registers itself here."""
