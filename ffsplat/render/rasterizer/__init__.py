"""ffsplat's own rasterizer: gsplat-compatible projection and a pure-torch tile compositor."""

from ffsplat.render.rasterizer.projection import Projected, project_gaussians
from ffsplat.render.rasterizer.tiles import rasterize_tiles

__all__ = ["Projected", "project_gaussians", "rasterize_tiles"]
