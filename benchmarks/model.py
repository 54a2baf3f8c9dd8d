"""Network cost: parameters per module, forward and forward+backward time and peak memory.

Cases (each in a fresh subprocess so peak memory is its own):

* small config at 64x64 with V = 2, 4, 8 context views (how cost grows with V);
* paper config at 256x256 with V = 2 (forward and forward+backward) and V = 4 (forward only:
  the V=4 backward needs more memory than a CPU test box should spend).

Inputs are random images and random SAM (256-d, 64x64) / LSeg (512-d, half-resolution) features;
forward+backward backpropagates a loss on the Gaussians' means, opacities, colours and fields.

    python benchmarks/model.py                    # CPU
    python benchmarks/model.py --device cuda      # GPU (adds bf16 autocast forward, with/without conditioning)
    python benchmarks/model.py --device cuda --compile   # + torch.compile forward (eager vs compiled)

``--compile`` cases use :func:`ffsplat.inference.fast.inference_forward` (inference mode, bf16
learned layers, ``torch.compile``; ``reduce-overhead`` adds CUDA graphs) on the paper config at
2x256x256, with and without teacher conditioning; the first (compiling) call is reported as
``compile_s`` and excluded from ``seconds``.

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json


import torch  # noqa: E402

from ffsplat.core.benchmarking import PeakMemory, machine, median_time, run_case_subprocess  # noqa: E402
from ffsplat.core.config import group_file, to_dataclass  # noqa: E402
from ffsplat.model.network import ModelConfig, build_model  # noqa: E402
from ffsplat.core.types import Cameras, Views  # noqa: E402


def inputs(size: int, views: int, device: str) -> tuple[Views, dict[str, torch.Tensor]]:
    k = torch.tensor([[0.9 * size, 0, size / 2], [0, 0.9 * size, size / 2], [0, 0, 1.0]]).expand(1, views, 3, 3).clone()
    c2w = torch.eye(4).repeat(1, views, 1, 1)
    c2w[0, :, 0, 3] = torch.linspace(-0.3, 0.3, views)
    context = Views(
        torch.rand(1, views, 3, size, size), Cameras(k, c2w, (size, size)), torch.tensor([0.5]), torch.tensor([10.0])
    )
    cond = {"sam": torch.randn(1, views, 256, 64, 64), "lseg": torch.randn(1, views, 512, size // 2, size // 2)}
    return context.to(device), {k: v.to(device) for k, v in cond.items()}


def run_case(config: str, size: int, views: int, mode: str, device: str, repeats: int) -> dict:
    import time

    from ffsplat.inference.fast import FastInferenceConfig, inference_forward

    torch.manual_seed(0)
    cfg = to_dataclass(ModelConfig, group_file("model", config))
    if mode.endswith("_nocond"):  # no teacher conditioning: the network without the SAM/LSeg branch
        cfg.conditioning.use_seg_teacher = cfg.conditioning.use_lang_teacher = False
    model = build_model(cfg).to(device)
    context, cond = inputs(size, views, device)
    if mode.endswith("_nocond"):
        cond = None
    extra = {}
    if mode.startswith(("forward_compiled", "forward_inference")):
        compile_mode = "reduce-overhead" if "_cudagraphs" in mode else "default"
        fast = inference_forward(
            model, FastInferenceConfig(compile="compiled" in mode, compile_mode=compile_mode, bf16=True)
        )
        start = time.perf_counter()
        fast(context, cond)
        if device == "cuda":
            torch.cuda.synchronize()
        extra["compile_s"] = round(time.perf_counter() - start, 2)

    def forward() -> None:
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=mode.startswith("forward_bf16")):
            model(context, cond)

    def forward_backward() -> None:
        g = model(context, cond).gaussians
        loss = g.means.mean() + g.opacities.mean() + g.sh.mean() + sum(f.mean() for f in g.features.values())
        loss.backward()
        model.zero_grad(set_to_none=True)

    if extra:
        with PeakMemory(device) as peak:
            seconds = median_time(lambda: fast(context, cond), repeats, device)
    else:
        with PeakMemory(device) as peak:
            seconds = median_time(forward_backward if mode == "forward_backward" else forward, repeats, device)
    return {
        "config": config,
        "size": size,
        "views": views,
        "mode": mode,
        "device": device,
        "seconds": round(seconds, 4),
        "peak_memory_mb": round(peak.mb, 1),
        "repeats": repeats,
        **extra,
    }


def parameter_counts(config: str) -> dict:
    model = build_model(to_dataclass(ModelConfig, group_file("model", config)))
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_children()}
    return {"total": sum(counts.values()), **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--compile", action="store_true", help="add torch.compile inference cases (CUDA; compiling takes minutes)"
    )
    parser.add_argument("--only", choices=["small", "paper"], help="run only this config's cases")
    parser.add_argument("--case", nargs=4, metavar=("CONFIG", "SIZE", "VIEWS", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        config, size, views, mode = args.case
        print(json.dumps(run_case(config, int(size), int(views), mode, args.device, args.repeats)))
        return

    cases = [("small", 64, v, m) for v in (2, 4, 8) for m in ("forward", "forward_backward")]
    cases += [("paper", 256, 2, "forward"), ("paper", 256, 2, "forward_backward"), ("paper", 256, 4, "forward")]
    if args.device == "cuda":
        cases += [("paper", 256, 2, "forward_bf16"), ("paper", 256, 2, "forward_bf16_nocond"),
                  ("paper", 256, 8, "forward"), ("paper", 256, 8, "forward_backward")]  # fmt: skip
        if args.compile:
            cases += [("paper", 256, 2, m + c) for m in ("forward_inference", "forward_compiled", "forward_compiled_cudagraphs")
                      for c in ("", "_nocond")]  # fmt: skip
    if args.only:
        cases = [c for c in cases if c[0] == args.only]
    results = []
    for config, size, views, mode in cases:
        repeats = args.repeats if (config == "small" or args.device == "cuda") else 1
        case = ["--device", args.device, "--repeats", str(repeats), "--case", config, str(size), str(views), mode]
        try:
            results.append(run_case_subprocess(__file__, case))
        except RuntimeError as exc:  # e.g. a compile failure: report it, keep the other cases
            results.append({"config": config, "size": size, "views": views, "mode": mode, "error": str(exc)[-1500:]})
    report = {
        "benchmark": "model",
        "machine": machine(),
        "parameters": {name: parameter_counts(name) for name in ("small", "paper")},
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
