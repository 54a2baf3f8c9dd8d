"""Make torchvision importable on a CPU-only torch whose torchvision wheel is a CUDA build.

PyPI's torchvision 0.28.0 (the only one accepting torch 2.13.0) ships a ``_C.so`` linked against
libtorch_cuda. On a CPU torch it fails to load, and ``import torchvision`` then dies in
``_meta_registrations.py`` ("operator torchvision::nms does not exist"), taking timm, lightning,
segment_anything and lpips with it. When (and only when) that library cannot be loaded, we define
the ``nms``/``qnms`` op schemas with pure-torch CPU kernels before torchvision is imported, which
is all its import and SAM's automatic mask generator need. Where torchvision's own ops load (any
CUDA machine, or a matching CPU build) this does nothing.

PyPI holds no CPU build of torchvision 0.28.0 (``pip index versions torchvision`` lists 0.28.0 only as
the CUDA wheel; ``pip download torchvision==0.28.0+cpu`` finds nothing), so ``constraints-cpu.txt``
cannot pin one. The fix therefore lives here, in one place, and runs lazily: :func:`install` puts a
finder on ``sys.meta_path`` that does the check and the registration when something first imports
torchvision (timm, lightning, SAM, lpips), so ``import ffsplat`` and the inference path, which never
import torchvision, do not pay for torchvision and the ``torch._dynamo`` it imports.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

import torch

_LIBRARY = None  # keeps the torch.library registration alive


def _extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # not installed: nothing to fix
    for location in spec.submodule_search_locations:
        for lib in Path(location).glob("_C*.so"):
            try:
                torch.ops.load_library(str(lib))
                return True
            except (OSError, RuntimeError):
                return False
    return False


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with torchvision's contract: kept indices in decreasing score order.

    Args:
        boxes: ``[N, 4]`` as (x1, y1, x2, y2).
        scores: ``[N]``.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order].double()
    area = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    lt = torch.maximum(b[:, None, :2], b[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    iou = (inter / (area[:, None] + area[None, :] - inter).clamp_min(1e-12)).numpy() > iou_threshold
    suppressed = [False] * len(order)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in iou[i, i + 1 :].nonzero()[0]:
            suppressed[i + 1 + j] = True
    return order[torch.tensor(keep, dtype=torch.long)]


def _register_ops() -> None:
    """Define ``torchvision::nms`` / ``qnms`` with the pure-torch kernel (torchvision not yet imported)."""
    global _LIBRARY
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", nms_reference, "CPU")
    lib.impl("qnms", lambda d, s, t: nms_reference(d.float(), s.float(), t), "CPU")
    _LIBRARY = lib


def _allow_partial_ops() -> None:
    """torchvision.ops.nms asserts that *all* C++ ops loaded; ours are enough for nms."""
    boxes = sys.modules.get("torchvision.ops.boxes")
    if boxes is not None:
        boxes._assert_has_ops = lambda: None


class _FirstImport(importlib.abc.MetaPathFinder):
    """Runs the check (and, if needed, the fix) when something first imports torchvision, so that
    ``import ffsplat`` itself costs nothing: torchvision pulls in ``torch._dynamo`` (~2 CPU-s)."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        uninstall()  # once; the finders after us locate torchvision
        spec = importlib.util.find_spec("torchvision")
        if spec is None or _extension_loads():
            return spec  # not installed, or its own ops load: nothing to fix
        _register_ops()
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _allow_partial_ops()

        spec.loader.exec_module = exec_module
        return spec


_FINDER = _FirstImport()


def install() -> None:
    """Arrange for the fallback ops to be registered when torchvision is first imported, if (and only
    if) its own extension cannot load then. Imports nothing now; idempotent."""
    if _LIBRARY is not None or _FINDER in sys.meta_path:
        return
    if "torchvision" in sys.modules:  # imported before ffsplat: too late to define the schemas first
        return
    sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    """Remove the first-import hook (the ops, once registered, stay)."""
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
