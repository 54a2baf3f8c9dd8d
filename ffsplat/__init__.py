"""ffsplat: feed-forward semantic 3D Gaussian splatting (SemanticSplat) with per-scene baselines."""

from ffsplat import _torchvision_cpu

_torchvision_cpu.install()  # before anything imports torchvision (timm, lightning, SAM)

from ffsplat.core.types import Cameras, Gaussians  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Cameras", "Gaussians", "__version__"]
