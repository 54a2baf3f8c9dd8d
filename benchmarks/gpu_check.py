"""One GPU check of the CUDA/bf16 training path; prints one JSON summary.

    bash benchmarks/gpu_check.sh              # on the GPU machine (installs .whl/*.whl first)
    python benchmarks/gpu_check.py --dry-run  # every step tiny on CPU (tests this script itself)

Steps (each in its own subprocess under its own timeout; a failing step does not stop the others;
the whole run keeps within ``--budget`` seconds):

1. ``env``: torch / CUDA / GPU, nvcc, and which optional packages import.
2. ``compile``: gsplat's JIT build of its CUDA kernels (TORCH_CUDA_ARCH_LIST=9.0, MAX_JOBS=16),
   timed by a first tiny ``rasterization`` call.
3. ``tests``: the CUDA tests (``-k "cuda or gsplat"``: gsplat vs torch backend parity of images and
   gradients, bf16 autocast through the network into gsplat).
4. ``parity``: max abs differences gsplat vs torch backend (RGB, alpha, depth, features and the
   gradients of means / opacities / features) on 2 x 500 random Gaussians, 3 views of 48x64.
5. ``train``: 200 bf16-mixed steps of the paper model config on synthetic shards made on the fly
   (2 train + 1 val rooms of 256x256, label teachers cached), rendering through gsplat: steps/s
   after 20 warm-up steps, peak GPU memory, first/last loss, whether every weight stayed finite.
6. ``model``: ``benchmarks/model.py --device cuda`` cases paper 2x256x256 forward (fp32, bf16) and
   forward+backward.
7. ``render``: ``benchmarks/render.py --device cuda --sizes 256`` (gsplat vs torch backend).

Everything goes to ``${OUT:-/tmp/gpu_check_out}``: one log per step and ``summary.json`` (8 files
at most, no sub-folders); the summary is printed last. ``--dry-run`` runs the same steps on CPU at
toy sizes (compile and parity report ``skipped``: gsplat has no CPU kernels).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def last_json(text: str):
    """The last JSON document in a step's stdout (a one-line object, or an indented one at the end)."""
    lines = text.strip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("{"):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    return None


# ----------------------------------------------------------------------------------- child steps
def step_env(dry: bool) -> dict:
    import importlib

    import torch

    report = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch_cuda": torch.version.cuda,
        "nvcc": shutil.which("nvcc"),
        "cuda_home": os.environ.get("CUDA_HOME"),
        "cpu_count": os.cpu_count(),
    }
    for name in ("gsplat", "webdataset", "omegaconf", "plyfile", "lightning", "pytest", "ninja", "lpips", "wandb"):
        try:
            importlib.import_module(name)
            report[f"import_{name}"] = True
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            report[f"import_{name}"] = f"{type(exc).__name__}: {exc}"[:200]
    return report


def step_compile(dry: bool) -> dict:
    import torch

    if dry or not torch.cuda.is_available():
        return {"skipped": "no CUDA (gsplat has no CPU kernels)"}
    start = time.perf_counter()
    from gsplat import rasterization

    n = 64
    means = torch.randn(n, 3, device="cuda") * 0.3 + torch.tensor([0, 0, 3.0], device="cuda")
    quats = torch.nn.functional.normalize(torch.randn(n, 4, device="cuda"), dim=-1)
    _, alpha, _ = rasterization(
        means, quats, torch.full((n, 3), 0.05, device="cuda"), torch.full((n,), 0.8, device="cuda"),
        torch.rand(n, 3, device="cuda"), torch.eye(4, device="cuda")[None],
        torch.tensor([[[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]]], device="cuda"), 32, 32,
    )  # fmt: skip
    torch.cuda.synchronize()
    return {"seconds": round(time.perf_counter() - start, 1), "alpha_mean": float(alpha.mean())}


def step_parity(dry: bool) -> dict:
    import torch

    if dry or not torch.cuda.is_available():
        return {"skipped": "no CUDA (gsplat has no CPU kernels)"}
    from ffsplat.render import RasterSettings, render
    from tests.test_render import look_at_cameras, random_gaussians

    g = random_gaussians(2, 500, 64, sh_degree=3, dtype=torch.float32, device="cuda")
    cams = look_at_cameras(2, 3, 48, 64, dtype=torch.float32, device="cuda")
    out = {}
    for backend in ("gsplat", "torch"):
        gg = g.to("cuda")
        params = [gg.means, gg.opacities, gg.features["feat"]]
        for p in params:
            p.requires_grad_(True)
        r = render(gg, cams, background=[0.3, 0.2, 0.1], settings=RasterSettings(backend=backend))
        loss = r.rgb.square().sum() + r.alpha.sum() + (r.depth / 4).sum() + r.features["feat"].square().sum()
        grads = torch.autograd.grad(loss, params)
        out[backend] = {"rgb": r.rgb, "alpha": r.alpha, "depth": r.depth, "feat": r.features["feat"],
                        "grad_means": grads[0], "grad_opacities": grads[1], "grad_feat": grads[2]}  # fmt: skip
    report = {}
    for key, a in out["gsplat"].items():
        b = out["torch"][key]
        report[f"max_abs_{key}"] = float((a - b).abs().max())
        report[f"max_abs_ref_{key}"] = float(b.abs().max())
    return report


def make_shards(root: Path, size: int, frames: int, teacher_size: tuple[int, int]) -> Path:
    from ffsplat.data.shard_writer import ShardConfig, write_shards
    from ffsplat.synthetic import SyntheticConfig, write_synthetic_scene

    labels = ROOT.parent / "shared" / "data" / "scannet" / "scannetv2-labels.combined.tsv"
    if not labels.is_file():  # no shared data on this machine: the rows the synthetic rooms use
        labels = root / "labels.tsv"
        root.mkdir(parents=True, exist_ok=True)
        rows = [(1, "wall", 1), (3, "floor", 2), (41, "ceiling", 22), (2, "chair", 5), (4, "table", 7),
                (6, "couch", 6), (11, "bed", 4), (26, "box", 29)]  # fmt: skip
        labels.write_text("id\traw_category\tnyu40id\n" + "".join(f"{i}\t{n}\t{k}\n" for i, n, k in rows))
    for i in range(3):
        write_synthetic_scene(
            root / "scenes" / f"room{i}", 10 + i, SyntheticConfig(height=size, width=size, frames=frames)
        )
    cfg = ShardConfig(size=size, clip_length=8, min_clip_length=8, keyframe_translation=0.0,
                      teachers={"label_seg": {}, "label_lang": {}}, teacher_size=teacher_size)  # fmt: skip
    scenes = {"train": [root / "scenes" / "room0", root / "scenes" / "room1"], "val": [root / "scenes" / "room2"]}
    write_shards(scenes, root / "shards", cfg, labels, progress=False)
    return root / "shards"


def step_train(dry: bool) -> dict:
    import lightning as L
    import torch

    from ffsplat.core.config import group_file, to_dataclass
    from ffsplat.data.sampling import ViewSamplerConfig
    from ffsplat.model.network import ModelConfig
    from ffsplat.render.renderer import BACKENDS, resolve_backend
    from ffsplat.training.config import TrainConfig
    from ffsplat.training.fit import fit

    from ffsplat.core.benchmarking import clear_work_dir

    # never a folder of the user's: only one this check made (marker file) is cleared
    work = clear_work_dir(Path(os.environ.get("GPU_CHECK_WORK", "/tmp/gpu_check_work")), "GPU_CHECK_WORK")
    size, steps = (32, 6) if dry else (256, 200)
    t0 = time.perf_counter()
    shards = make_shards(work, size, 16, (8, 8) if dry else (32, 32))
    shard_seconds = time.perf_counter() - t0

    cfg = TrainConfig(run_name="gpu_check")
    cfg.model = to_dataclass(ModelConfig, group_file("model", "small" if dry else "paper"))
    d = cfg.data
    d.root, d.batch_size, d.num_workers, d.epoch_length, d.val_examples = str(shards), 2, 0 if dry else 4, 10_000, 2
    d.sampler = ViewSamplerConfig(
        num_context=2, num_target=1 if dry else 4, min_gap=2, max_gap=6, gap_warmup_steps=steps // 2
    )
    cfg.stage.name = "seg"
    cfg.optim.max_steps, cfg.optim.warmup_steps = steps, min(20, steps)
    t = cfg.trainer
    t.accelerator, t.precision = ("cpu", "32-true") if dry else ("gpu", "bf16-mixed")
    t.val_every_n_steps, t.log_every_n_steps = 0, 50
    cfg.logging.wandb_mode, cfg.logging.images_every_n_steps, cfg.logging.save_dir = (
        "disabled",
        0,
        str(work / "outputs"),
    )
    cfg.checkpoint.dir, cfg.checkpoint.every_n_steps, cfg.checkpoint.resume = (
        str(work / "checkpoints"),
        steps // 2,
        None,
    )
    cfg.loss.num_prompts = 2 if dry else 8

    backend = os.environ.get("GPU_CHECK_BACKEND", "gsplat")
    if backend == "torch":  # fallback when gsplat could not be built: measure the torch backend instead
        BACKENDS["gsplat"] = BACKENDS["torch"]

    class Timer(L.Callback):
        def __init__(self):
            self.times, self.losses, self.backend = {}, [], None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times[trainer.global_step] = time.perf_counter()
            if self.backend is None:
                self.backend = resolve_backend("auto", pl_module.device)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(float(loss))
            step = trainer.global_step
            if step % 25 == 0 and step > warm and warm in self.times:  # partial figures survive a timeout
                rate = (step - warm) / (time.perf_counter() - self.times[warm])
                mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
                print(json.dumps({"partial": True, "step": step, "steps_per_s": round(rate, 3),
                                  "peak_gpu_memory_gb": mem and round(mem, 2), "loss": round(self.losses[-1], 4),
                                  "render_backend": self.backend}), flush=True)  # fmt: skip

    warm = 1 if dry else 20  # steps left out of the rate (cuDNN autotuning, allocator warm-up)
    timer = Timer()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    module = fit(cfg, callbacks=[timer])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    end = time.perf_counter()
    timed = steps - warm
    report = {
        "steps": steps,
        "image_size": size,
        "model": "small" if dry else "paper",
        "precision": t.precision,
        "batch_size": d.batch_size,
        "target_views": d.sampler.num_target,
        "render_backend": timer.backend if backend == "gsplat" else "torch (gsplat fallback)",
        "shard_seconds": round(shard_seconds, 1),
        "fit_seconds": round(end - t1, 1),
        "steps_per_s": round(timed / (end - timer.times[warm]), 3) if warm in timer.times else None,
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available()
        else None,
        "first_losses": [round(x, 4) for x in timer.losses[:3]],
        "last_losses": [round(x, 4) for x in timer.losses[-3:]],
        "weights_finite": all(bool(torch.isfinite(p).all()) for p in module.model.parameters()),
        "photometric_loss": module.photometric_loss,
        "model_pt": (Path(cfg.checkpoint.dir) / cfg.run_name / "model.pt").is_file(),
    }
    return report


CHILD_STEPS = {"env": step_env, "compile": step_compile, "parity": step_parity, "train": step_train}


# ----------------------------------------------------------------------------------- driver
def run_step(name: str, cmd: list[str], timeout: float, out: Path, env: dict, summary: dict) -> dict:
    """Run one step's command under ``timeout``; log to ``out/<name>.log``; record its JSON/rc."""
    start = time.perf_counter()
    log = out / f"{name}.log"
    record: dict = {"command": " ".join(cmd), "timeout_s": int(timeout)}
    if timeout < 5:
        record["skipped"] = "no time left in the budget"
        summary["steps"][name] = record
        return record
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, check=False)
        record["rc"] = done.returncode
        stdout, stderr = done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        record["rc"] = "timeout"
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    record["seconds"] = round(time.perf_counter() - start, 1)
    log.write_text(f"$ {record['command']}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    result = last_json(stdout)
    if result is not None:
        record["result"] = result
    elif record["rc"] != 0:
        record["error_tail"] = (stderr or stdout)[-600:]
    summary["steps"][name] = record
    print(f"[gpu_check] {name}: rc={record['rc']} {record['seconds']}s", file=sys.stderr, flush=True)
    return record


def pytest_summary(log_text: str) -> str | None:
    lines = [
        ln for ln in log_text.splitlines() if " passed" in ln or " failed" in ln or " skipped" in ln or " error" in ln
    ]
    return lines[-1].strip("= ") if lines else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every step tiny on CPU (checks this script)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all steps together")
    parser.add_argument("--timeout-scale", type=float, default=None,
                        help="multiply every step's timeout and the budget (default 1; 6 with --dry-run: slow CPU boxes)")  # fmt: skip
    parser.add_argument("--step", choices=sorted(CHILD_STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:  # child process: one step, JSON on the last line
        import ffsplat  # noqa: F401  (CPU: installs the torchvision shim before Lightning imports it)

        print(json.dumps(CHILD_STEPS[args.step](args.dry_run)))
        return

    out = Path(os.environ.get("OUT") or "/tmp/gpu_check_out")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    env.setdefault("MAX_JOBS", "16")
    env.setdefault("TORCH_EXTENSIONS_DIR", "/tmp/torch_extensions")  # the compile step's build is reused
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(ROOT)) if p)
    dry = ["--dry-run"] if args.dry_run else []
    py = sys.executable
    summary: dict = {
        "check": "gpu_check",
        "dry_run": args.dry_run,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "steps": {},
    }
    scale = args.timeout_scale or (6.0 if args.dry_run else 1.0)
    budget = args.budget * scale
    deadline = time.perf_counter() + budget

    def left(cap: float, reserve: float = 0.0) -> float:
        return max(0.0, min(cap * scale, deadline - time.perf_counter() - reserve * scale))

    me = str(Path(__file__).resolve())
    run_step("env", [py, me, "--step", "env", *dry], left(60), out, env, summary)
    compiled = run_step("compile", [py, me, "--step", "compile", *dry], left(330, reserve=60), out, env, summary)
    gsplat_ok = compiled.get("rc") == 0 and "skipped" not in compiled.get("result", {})
    tests = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_render.py", "tests/test_model.py",
             "tests/test_precision.py", "-k", "cuda or gsplat or autocast"]  # fmt: skip
    rec = run_step("tests", tests, left(120, reserve=60), out, env, summary)
    if (out / "tests.log").is_file():
        rec["pytest"] = pytest_summary((out / "tests.log").read_text())
    run_step("parity", [py, me, "--step", "parity", *dry], left(60, reserve=60), out, env, summary)
    train_env = dict(env, GPU_CHECK_BACKEND="gsplat" if (gsplat_ok or args.dry_run) else "torch")
    run_step("train", [py, me, "--step", "train", *dry], left(200, reserve=30), out, train_env, summary)
    if args.dry_run:
        model_cmd = [
            py,
            "benchmarks/model.py",
            "--device",
            "cpu",
            "--repeats",
            "1",
            "--case",
            "small",
            "64",
            "2",
            "forward",
        ]
        render_cmd = [py, "benchmarks/render.py", "--device", "cpu", "--repeats", "1", "--case", "64", "0", "torch"]
    else:
        model_cmd = [py, "-c", (
            "import json,subprocess,sys\n"
            "cases=[('paper','256','2','forward'),('paper','256','2','forward_bf16'),('paper','256','2','forward_backward')]\n"
            "res=[json.loads(subprocess.run([sys.executable,'benchmarks/model.py','--device','cuda','--repeats','5','--case',*c],"
            "capture_output=True,text=True,check=True).stdout.strip().splitlines()[-1]) for c in cases]\n"
            "print(json.dumps({'benchmark':'model','results':res}))"
        )]  # fmt: skip
        render_cmd = [py, "benchmarks/render.py", "--device", "cuda", "--sizes", "256", "--channels", "0", "64"]
    run_step("model", model_cmd, left(90, reserve=10), out, env, summary)
    run_step("render", render_cmd, left(90), out, env, summary)

    summary["total_seconds"] = round(budget - (deadline - time.perf_counter()), 1)
    summary["ok"] = all(s.get("rc") == 0 for s in summary["steps"].values())
    text = json.dumps(summary, indent=2)
    (out / "summary.json").write_text(text)
    print(text)
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
