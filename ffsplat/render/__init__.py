"""Rendering: ``render()`` with the gsplat (CUDA) and pure-torch backends, 3DGS .ply, Gaussian init."""

from ffsplat.render.renderer import RasterSettings, RenderOutput, render

__all__ = ["RasterSettings", "RenderOutput", "render"]
