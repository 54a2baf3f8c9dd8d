"""Inference mode of the network for fixed input shapes (the GPU path for the 20 ms goal).

:func:`inference_forward` wraps a :class:`~ffsplat.model.network.SemanticSplatNet` into a callable
that removes what inference does not need: autograd (``torch.inference_mode``), float32 matmuls
and convolutions in the learned layers (``bf16`` autocast; the geometry stays float32, see the
network's float32 geometry contract and :func:`ffsplat.render.render`), and Python/launch overhead
(``torch.compile``; ``compile_mode="reduce-overhead"`` also captures CUDA graphs, which pays off
only when the shapes stay fixed, e.g. always 2 views of 256x256).

Measured by ``benchmarks/model.py --device cuda --compile`` (eager vs compiled forward of the
paper config at 2x256x256, with and without teacher conditioning).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ffsplat.core.types import Views

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class FastInferenceConfig:
    """Options of :func:`inference_forward`.

    Attributes:
        compile: wrap the network in ``torch.compile`` (first call compiles: seconds to minutes).
        compile_mode: ``torch.compile`` mode, one of :data:`COMPILE_MODES`.
        bf16: run the learned layers under bf16 autocast (geometry stays float32).
        compile_backend: ``torch.compile`` backend (``inductor``: generated kernels; ``aot_eager``:
            the same graph capture without code generation, for quick checks).
    """

    compile: bool = False
    compile_mode: str = "default"
    bf16: bool = False
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode={self.compile_mode!r}; expected one of {COMPILE_MODES}")


def inference_forward(model: nn.Module, cfg: FastInferenceConfig | None = None) -> Callable:
    """``(context: Views, conditions: dict[str, Tensor] | None) -> NetworkOutput`` without autograd.

    The model is put in eval mode. Outputs are inference tensors (no ``.backward()``); with
    ``bf16=False, compile=False`` they equal ``model(context, conditions)`` under ``no_grad``.
    """
    cfg = cfg or FastInferenceConfig()
    model.eval()
    if cfg.compile and cfg.compile_backend != "inductor":
        net = torch.compile(model, backend=cfg.compile_backend, dynamic=False)  # modes are inductor options
    else:
        net = torch.compile(model, mode=cfg.compile_mode, dynamic=False) if cfg.compile else model

    def run(context: Views, conditions: dict[str, Tensor] | None = None):
        device = context.images.device.type
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.bf16):
            return net(context, conditions)

    return run
