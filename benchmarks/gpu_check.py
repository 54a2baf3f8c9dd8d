"""One GPU check of the CUDA/bf16 path, as a one-shot that returns its figures whatever happens.

    bash benchmarks/gpu_check.sh              # on the GPU machine (installs .whl/*.whl first)
    bash benchmarks/gpu_check.sh --dry-run    # the same steps on CPU at a tiny size (a test runs it)

Steps, in order of value (each a subprocess under its own timeout; the run keeps within ``--budget``
seconds, 540 by default for a 600-second device call):

0. ``compile`` starts FIRST, in the background (its own timeout): gsplat's JIT build of its CUDA
   kernels (TORCH_CUDA_ARCH_LIST=9.0, MAX_JOBS=16), timed by a first tiny ``rasterization`` call.
   It is never started twice: a killed build deletes its partial output, so the gsplat steps are
   then skipped (training falls back to the torch rasterizer and says so). The built module is
   copied to ``$OUT`` when it is at most 16 MiB, so that a second lease can reuse it.
1. ``env`` and ``preflight`` (~10 s): versions, and the training stack imports, the paper model
   and the label teachers build; a failing preflight stops the run with one line.
2. ``data``: synthetic shards for the train step (while the compile runs).
3. ``parity``: gsplat vs the torch rasterizer (RGB, alpha, depth, features, gradients).
4. ``train``: bf16-mixed steps of the paper model (4 target views, DataLoader workers) through
   gsplat: steps/s after warm-up, peak GPU memory, losses, finiteness.
5. ``model``: the paper model's forward at 2x256x256: eager float32, eager bf16, and the fast path
   (``inference_forward``: inference mode + bf16 + ``torch.compile``), timed, with the compiled
   outputs' max difference from eager (whether ``infer.py --compile`` is right and faster).
6. ``tests``: the CUDA tests (gsplat parity, bf16 through the network into gsplat).
7. ``render``: ``benchmarks/render.py`` (gsplat vs torch backend).

Output in ``${OUT:-/tmp/gpu_check_out}`` (at most 8 files, the device tool's limit): ``summary.json``
(rewritten after every step, so a call killed at its limit still returns what was measured),
``setup.log`` (env, preflight, data), ``compile.log``, ``parity.log``, ``train.log``, ``model.log``,
``tests.log`` (tests and render), each streamed while its step runs, and the gsplat module.
``--dry-run`` runs the GPU configuration at a tiny size on CPU (paper model, bf16-mixed, two
DataLoader workers, 4 target views; compile, parity and the CUDA tests report ``skipped``);
``--rehearse`` runs every child with only the packages that the GPU machine's image
(``benchmarks/gpu_image.txt``) and ``benchmarks/gpu_wheels.txt`` provide (:func:`rehearsal_site`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


WORK = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/gpu_check_work"))


def sizes(dry: bool) -> dict:
    """The run's sizes: the GPU configuration, or the same at a tiny size for ``--dry-run``."""
    if dry:
        return {"size": 32, "frames": 16, "teacher_size": (8, 8), "steps": 4, "warm": 1, "workers": 2, "batch": 1}
    return {"size": 256, "frames": 16, "teacher_size": (32, 32), "steps": 200, "warm": 20, "workers": 4, "batch": 2}


def step_preflight(dry: bool) -> dict:
    """The training stack imports; the paper model and the label teachers build (seconds)."""
    t0 = time.perf_counter()
    import lightning  # noqa: F401

    from ffsplat.core.config import group_file, to_dataclass
    from ffsplat.model.network import ModelConfig, build_model
    from ffsplat.teachers.base import build_teacher
    from ffsplat.training.config import TrainConfig
    from ffsplat.training.fit import fit  # noqa: F401
    from ffsplat.training.module import SemanticSplatModule

    cfg = TrainConfig()
    cfg.model = to_dataclass(ModelConfig, group_file("model", "paper"))
    params = sum(p.numel() for p in build_model(cfg.model).parameters())
    SemanticSplatModule(cfg)
    teachers = [type(build_teacher(name)).__name__ for name in ("label_seg", "label_lang")]
    return {"paper_model_parameters": params, "teachers": teachers, "seconds": round(time.perf_counter() - t0, 1)}


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


def step_data(dry: bool) -> dict:
    from ffsplat.core.benchmarking import clear_work_dir

    z = sizes(dry)
    clear_work_dir(WORK, "GPU_CHECK_WORK")  # never a folder of the user's: only one a benchmark made (marker file)
    t0 = time.perf_counter()
    shards = make_shards(WORK, z["size"], z["frames"], z["teacher_size"])
    return {"shards": str(shards), "image_size": z["size"], "seconds": round(time.perf_counter() - t0, 1)}


def train_config(dry: bool):
    """The GPU training configuration of the check: the paper model in bf16-mixed, 2 context and 4
    target views, DataLoader workers; ``dry`` only shrinks sizes and steps (and runs on CPU)."""
    from ffsplat.core.config import group_file, to_dataclass
    from ffsplat.data.sampling import ViewSamplerConfig
    from ffsplat.model.network import ModelConfig
    from ffsplat.training.config import TrainConfig

    z = sizes(dry)
    cfg = TrainConfig(run_name="gpu_check")
    cfg.model = to_dataclass(ModelConfig, group_file("model", "paper"))
    d = cfg.data
    d.root, d.batch_size, d.num_workers, d.epoch_length, d.val_examples = (
        str(WORK / "shards"),
        z["batch"],
        z["workers"],
        10_000,
        2,
    )
    d.sampler = ViewSamplerConfig(num_context=2, num_target=4, min_gap=2, max_gap=6, gap_warmup_steps=z["steps"] // 2)
    cfg.stage.name = "seg"
    cfg.optim.max_steps, cfg.optim.warmup_steps = z["steps"], min(20, z["steps"])
    t = cfg.trainer
    t.accelerator, t.precision = ("cpu" if dry else "gpu"), "bf16-mixed"
    t.val_every_n_steps, t.log_every_n_steps = 0, 50
    cfg.logging.wandb_mode, cfg.logging.images_every_n_steps, cfg.logging.save_dir = (
        "disabled",
        0,
        str(WORK / "outputs"),
    )
    cfg.checkpoint.dir, cfg.checkpoint.every_n_steps, cfg.checkpoint.resume = (
        str(WORK / "checkpoints"),
        z["steps"] // 2,
        None,
    )
    cfg.loss.num_prompts = 2 if dry else 8
    return cfg


def step_train(dry: bool) -> dict:
    import lightning as L
    import torch

    from ffsplat.render.renderer import BACKENDS, resolve_backend
    from ffsplat.training.fit import fit

    z = sizes(dry)
    if not (WORK / "shards" / "manifest.json").is_file():
        step_data(dry)
    cfg = train_config(dry)
    steps, warm = z["steps"], z["warm"]
    backend = os.environ.get("GPU_CHECK_BACKEND", "gsplat")
    if backend == "torch":  # gsplat could not be built: measure the torch rasterizer instead
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

    timer = Timer()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    module = fit(cfg, callbacks=[timer])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    end = time.perf_counter()
    return {
        "steps": steps, "image_size": z["size"], "model": "paper", "precision": cfg.trainer.precision,
        "batch_size": cfg.data.batch_size, "target_views": cfg.data.sampler.num_target,
        "num_workers": cfg.data.num_workers,
        "render_backend": timer.backend if backend == "gsplat" else "torch (gsplat fallback)",
        "fit_seconds": round(end - t1, 1),
        "steps_per_s": round((steps - warm) / (end - timer.times[warm]), 3) if warm in timer.times else None,
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "first_losses": [round(x, 4) for x in timer.losses[:3]],
        "last_losses": [round(x, 4) for x in timer.losses[-3:]],
        "weights_finite": all(bool(torch.isfinite(p).all()) for p in module.model.parameters()),
        "photometric_loss": module.photometric_loss,
        "model_pt": (Path(cfg.checkpoint.dir) / cfg.run_name / "model.pt").is_file(),
    }  # fmt: skip


def step_model(dry: bool) -> dict:
    """The paper model's forward: eager float32, eager bf16, and the fast path (inference mode + bf16 +
    torch.compile) with its max difference from eager bf16: is ``--compile`` right and faster?"""
    import torch

    from ffsplat.core.benchmarking import median_time
    from ffsplat.core.config import group_file, to_dataclass
    from ffsplat.core.types import Cameras, Views
    from ffsplat.inference.fast import FastInferenceConfig, inference_forward
    from ffsplat.model.network import ModelConfig, build_model

    device = "cpu" if dry or not torch.cuda.is_available() else "cuda"
    size, repeats = (32, 1) if dry else (256, 5)
    cfg = to_dataclass(ModelConfig, group_file("model", "paper"))
    cfg.conditioning.use_seg_teacher = cfg.conditioning.use_lang_teacher = False
    torch.manual_seed(0)
    model = build_model(cfg).to(device).eval()
    k = torch.tensor([[0.9 * size, 0, size / 2], [0, 0.9 * size, size / 2], [0, 0, 1.0]]).repeat(1, 2, 1, 1)
    c2w = torch.eye(4).repeat(1, 2, 1, 1)
    c2w[0, 1, 0, 3] = 0.2
    views = Views(
        torch.rand(1, 2, 3, size, size), Cameras(k, c2w, (size, size)), torch.tensor([0.5]), torch.tensor([10.0])
    ).to(device)
    report: dict = {"device": device, "image_size": size, "views": 2}
    runs = {
        "eager_fp32": inference_forward(model, FastInferenceConfig()),
        "eager_bf16": inference_forward(model, FastInferenceConfig(bf16=True)),
    }
    outs = {name: fn(views, None) for name, fn in runs.items()}
    for name, fn in runs.items():
        report[f"{name}_s"] = round(median_time(lambda fn=fn: fn(views, None), repeats, device), 5)
    if dry:  # compiling takes minutes on CPU; tests/test_fast_inference.py checks the compiled path there
        report["compile"] = "skipped in --dry-run"
        return report
    t0 = time.perf_counter()
    compiled = inference_forward(model, FastInferenceConfig(bf16=True, compile=True))
    out = compiled(views, None)
    report["compile_s"] = round(time.perf_counter() - t0, 1)
    report["compiled_bf16_s"] = round(median_time(lambda: compiled(views, None), repeats, device), 5)
    ref = outs["eager_bf16"].gaussians
    report["compiled_vs_eager_bf16_max_abs"] = {
        "means": float((out.gaussians.means - ref.means).abs().max()),
        **{k: float((out.gaussians.features[k].float() - ref.features[k].float()).abs().max()) for k in ref.features},
    }
    report["bf16_vs_fp32_means_max_abs"] = float((ref.means - outs["eager_fp32"].gaussians.means).abs().max())
    report["speedup_compiled_vs_eager_fp32"] = round(report["eager_fp32_s"] / max(report["compiled_bf16_s"], 1e-9), 2)
    return report


CHILD_STEPS = {"env": step_env, "preflight": step_preflight, "data": step_data, "compile": step_compile,
               "parity": step_parity, "train": step_train, "model": step_model}  # fmt: skip
LOG_OF = {"env": "setup", "preflight": "setup", "data": "setup", "compile": "compile", "parity": "parity",
          "train": "train", "model": "model", "tests": "tests", "render": "tests"}  # fmt: skip
"""Step -> log file (``<name>.log``): 6 logs + summary.json + the gsplat module = the device tool's 8 files."""
MAX_OUT_FILE = 16 * 2**20


# ----------------------------------------------------------------------------------- driver
class Check:
    """Runs steps, streams their output into ``$OUT/<log>.log`` and rewrites ``summary.json`` after each."""

    def __init__(self, out: Path, env: dict, budget: float, scale: float, dry: bool):
        self.out, self.env, self.scale, self.dry = out, env, scale, dry
        self.deadline = time.perf_counter() + budget
        self.budget = budget
        self.summary: dict = {"check": "gpu_check", "dry_run": dry, "budget_s": round(budget),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": {}}  # fmt: skip
        self.write()

    def left(self, cap: float, reserve: float = 0.0) -> float:
        return max(0.0, min(cap * self.scale, self.deadline - time.perf_counter() - reserve * self.scale))

    def write(self) -> None:
        self.summary["elapsed_s"] = round(self.budget - (self.deadline - time.perf_counter()), 1)
        tmp = self.out / ".summary.json.tmp"
        tmp.write_text(json.dumps(self.summary, indent=2))
        os.replace(tmp, self.out / "summary.json")

    def start(self, name: str, cmd: list[str], env: dict | None = None) -> tuple[subprocess.Popen, dict]:
        log = open(self.out / f"{LOG_OF.get(name, name)}.log", "a")
        log.write(f"\n===== {name}: $ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or self.env, cwd=ROOT,
                                start_new_session=True, text=True)  # fmt: skip
        proc.log, proc.log_start = log, log.tell()  # type: ignore[attr-defined]
        record = {"command": " ".join(cmd), "started_s": self.summary.get("elapsed_s")}
        self.summary["steps"][name] = record
        return proc, record

    def finish(self, name: str, proc: subprocess.Popen, record: dict, timeout: float, t0: float) -> dict:
        try:
            record["rc"] = proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            record["rc"] = "timeout"
        proc.log.close()  # type: ignore[attr-defined]
        record["seconds"] = round(time.perf_counter() - t0, 1)
        text = (self.out / f"{LOG_OF.get(name, name)}.log").read_text()[proc.log_start :]  # type: ignore[attr-defined]
        result = last_json(text)
        if result is not None:
            record["result"] = result
        if record["rc"] != 0:
            record["error_tail"] = text[-800:]
        print(f"[gpu_check] {name}: rc={record['rc']} {record['seconds']}s", file=sys.stderr, flush=True)
        self.write()
        return record

    def run(self, name: str, cmd: list[str], timeout: float, env: dict | None = None) -> dict:
        if timeout < 3:
            self.summary["steps"][name] = {"command": " ".join(cmd), "skipped": "no time left in the budget"}
            self.write()
            return self.summary["steps"][name]
        t0 = time.perf_counter()
        proc, record = self.start(name, cmd, env)
        return self.finish(name, proc, record, timeout, t0)

    def skip(self, name: str, why: str) -> None:
        self.summary["steps"][name] = {"skipped": why}
        self.write()


def built_gsplat_module(extensions_dir: Path) -> Path | None:
    """The largest shared object gsplat's JIT build left (None if the build did not finish)."""
    found = (
        sorted(Path(extensions_dir).rglob("*.so"), key=lambda p: p.stat().st_size)
        if Path(extensions_dir).is_dir()
        else []
    )
    return found[-1] if found else None


def _names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[=<>\[ ]", line)[0].lower().replace("_", "-"))
    return names


def rehearsal_site(folder: Path) -> tuple[Path, list[str]]:
    """A site-packages of links to only the installed distributions that the GPU image
    (``benchmarks/gpu_image.txt``) or its wheels (``gpu_wheels.txt``) provide, their metadata included;
    children run with ``python -S`` and this folder on ``PYTHONPATH`` then see every other third-party
    package as missing, for imports and metadata probes alike, as on the GPU machine. Versions are not
    emulated: this finds missing packages, not version differences. Returns the folder and the names
    of the wanted distributions that are not installed here."""
    import importlib.metadata

    wanted = _names(ROOT / "benchmarks" / "gpu_image.txt") | _names(ROOT / "benchmarks" / "gpu_wheels.txt")
    listed = set(wanted)
    dists = {(d.metadata["Name"] or "").lower().replace("_", "-"): d for d in importlib.metadata.distributions()}
    todo = list(wanted)
    while todo:  # what the listed packages require is there too (pip installed it with them)
        dist = dists.get(todo.pop())
        for req in (dist.requires or []) if dist else []:
            if "extra ==" in req:
                continue
            dep = re.split(r"[=<>!~;\[ (]", req, maxsplit=1)[0].lower().replace("_", "-")
            if dep not in wanted:
                wanted.add(dep)
                todo.append(dep)
    from ffsplat.core.benchmarking import clear_work_dir

    clear_work_dir(folder, "GPU_CHECK_WORK")  # a folder this check made (marker), never the user's
    found = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name not in wanted or name == "ffsplat":
            continue
        found.add(name)
        base = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            src, dst = base / top, folder / top
            if top not in ("..", "bin") and src.exists() and not dst.exists():
                dst.symlink_to(src)
    return folder, sorted(listed - found)


def pytest_summary(log_text: str) -> str | None:
    lines = [
        ln for ln in log_text.splitlines() if " passed" in ln or " failed" in ln or " skipped" in ln or " error" in ln
    ]
    return lines[-1].strip("= ") if lines else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every step at a tiny size on CPU (checks this script)")
    parser.add_argument("--rehearse", action="store_true",
                        help="children see only the packages the GPU image has (benchmarks/gpu_image.txt + gpu_wheels.txt)")  # fmt: skip
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all steps together")
    parser.add_argument("--timeout-scale", type=float, default=None,
                        help="multiply every step's timeout and the budget (default 1; 4 with --dry-run: slow CPU boxes)")  # fmt: skip
    parser.add_argument("--step", choices=sorted(CHILD_STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:  # child process: one step, JSON on the last line
        import ffsplat  # noqa: F401  (CPU: installs the torchvision shim before Lightning imports it)

        print(json.dumps(CHILD_STEPS[args.step](args.dry_run)), flush=True)
        return

    out = Path(os.environ.get("OUT") or "/tmp/gpu_check_out")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.log"):
        old.unlink()
    env = dict(os.environ)
    env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    env.setdefault("MAX_JOBS", "16")
    env.setdefault("TORCH_EXTENSIONS_DIR", "/tmp/torch_extensions")
    env.setdefault("PYTHONUNBUFFERED", "1")
    py, me = [sys.executable], str(Path(__file__).resolve())
    site, absent = None, []
    if args.rehearse:  # children see only the GPU image's packages (python -S: no site-packages)
        site, absent = rehearsal_site(WORK.with_name(WORK.name + "_site"))
        py = [sys.executable, "-S"]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site or ""), env.get("PYTHONPATH", ""), str(ROOT)) if p)
    dry = ["--dry-run"] if args.dry_run else []
    scale = args.timeout_scale or (4.0 if args.dry_run else 1.0)
    check = Check(out, env, args.budget * scale, scale, args.dry_run)
    check.summary["rehearsal"] = {"site": str(site), "not_installed_here": absent} if args.rehearse else False

    # 0. The gsplat build first, in the background, with its own timeout (never a second build).
    t_compile = time.perf_counter()
    compile_proc, compile_rec = check.start("compile", [*py, me, "--step", "compile", *dry])
    compile_timeout = min(330.0 * scale, check.left(330, reserve=90))

    # 1. Setup (env, preflight: stop with one line if the training stack cannot start; data).
    check.run("env", [*py, me, "--step", "env", *dry], check.left(60))
    pre = check.run("preflight", [*py, me, "--step", "preflight", *dry], check.left(90))
    if pre.get("rc") != 0:
        os.killpg(compile_proc.pid, 9)
        check.finish("compile", compile_proc, compile_rec, 0.1, t_compile)
        check.summary["stopped"] = "preflight failed: " + " ".join((pre.get("error_tail") or "").split())[-300:]
        check.summary["ok"] = False
        check.write()
        print(f"error: gpu_check stopped: {check.summary['stopped']}", file=sys.stderr)
        print(json.dumps(check.summary, indent=2))
        sys.exit(1)
    check.run("data", [*py, me, "--step", "data", *dry], check.left(120, reserve=60))
    compiled = check.finish("compile", compile_proc, compile_rec,
                            compile_timeout - (time.perf_counter() - t_compile), t_compile)  # fmt: skip
    gsplat_ok = compiled.get("rc") == 0 and "skipped" not in compiled.get("result", {})
    module = built_gsplat_module(Path(env["TORCH_EXTENSIONS_DIR"])) if gsplat_ok else None
    if module is not None:
        compiled["module"] = {"path": str(module), "bytes": module.stat().st_size}
        if module.stat().st_size <= MAX_OUT_FILE:
            shutil.copy(module, out / module.name)
            compiled["module"]["copied_to_out"] = module.name
    check.write()

    # 2. The rest by value: parity -> train -> model -> CUDA tests -> render.
    no_gsplat = "gsplat was not built (compile step failed or timed out); not rebuilt"
    if gsplat_ok or args.dry_run:
        check.run("parity", [*py, me, "--step", "parity", *dry], check.left(60, reserve=60))
    else:
        check.skip("parity", no_gsplat)
    train_env = dict(env, GPU_CHECK_BACKEND="gsplat" if (gsplat_ok or args.dry_run) else "torch")
    check.run("train", [*py, me, "--step", "train", *dry], check.left(200, reserve=40), train_env)
    check.run("model", [*py, me, "--step", "model", *dry], check.left(120, reserve=20))
    if gsplat_ok or args.dry_run:
        tests = [*py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_render.py", "tests/test_model.py",
                 "tests/test_precision.py", "-k", "cuda or gsplat or autocast"]  # fmt: skip
        rec = check.run("tests", tests, check.left(120, reserve=15))
        rec["pytest"] = pytest_summary((out / "tests.log").read_text())
        if args.dry_run:
            render_cmd = [
                *py,
                "benchmarks/render.py",
                "--device",
                "cpu",
                "--repeats",
                "1",
                "--case",
                "64",
                "0",
                "torch",
            ]
        else:
            render_cmd = [*py, "benchmarks/render.py", "--device", "cuda", "--sizes", "256", "--channels", "0", "64"]
        check.run("render", render_cmd, check.left(90))
    else:
        check.skip("tests", no_gsplat)
        check.skip("render", no_gsplat)

    check.summary["ok"] = all(s.get("rc") == 0 for s in check.summary["steps"].values() if "skipped" not in s)
    check.write()
    print(json.dumps(check.summary, indent=2))
    sys.exit(0 if check.summary["ok"] else 1)


if __name__ == "__main__":
    main()
