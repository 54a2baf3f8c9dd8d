"""ffsplat: feed-forward semantic 3D Gaussian splatting (SemanticSplat) with per-scene baselines."""

from ffsplat import _torchvision_cpu

_torchvision_cpu.install()  # before anything imports torchvision (timm, lightning, SAM)

from ffsplat.core.types import Cameras, Gaussians  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Cameras", "Gaussians", "__version__", "load"]


def load(checkpoint=None, device=None, **teachers):
    """Load a trained ``model.pt`` (default: the demo checkpoint) -> :class:`ffsplat.inference.api.Model`.

    ``model.predict(images, cameras=None) -> Scene`` with ``save_ply()``, ``render()``, ``query()``
    and ``classes``; see :mod:`ffsplat.inference.api` (keyword arguments: ``sam_checkpoint``,
    ``lseg_checkpoint``, ``clip_path``, and ``bf16`` / ``compile`` for the fast inference path).
    """
    from ffsplat.inference.api import load as _load

    return _load(checkpoint, device, **teachers)
