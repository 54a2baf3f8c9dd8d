"""Does the whole pipeline learn? All stages of the small model on synthetic rooms, on a CPU.

1. Data: ``--scenes`` procedural rooms (seeds 1000...), the last ``--test-scenes`` held out; shards
   at ``--size`` with the label-derived stand-in teachers cached (``label_seg`` for SAM,
   ``label_lang`` for LSeg: noisy, blurred, per-view flipped class embeddings).
2. Training with the documented experiment configs (``experiment=synthetic_seg`` then
   ``experiment=synthetic_lang``) through ``ffsplat.training.fit.fit``.
3. Held-out target views of a fixed evaluation index (2 context views, 3 targets between them,
   ``--entries`` per test scene), scored by ``ffsplat.evaluation.evaluate`` for the untrained model, the model
   after each stage, and the noisy 2D teachers applied directly at the target views.

    python benchmarks/learn_synthetic.py [--work /tmp/learn] [--seg-steps N] [--lang-steps N]

Prints one JSON document (also written to ``<work>/report.json``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from ffsplat.core.atomic import atomic_open  # noqa: E402
from ffsplat.core.benchmarking import claim_work_dir, machine  # noqa: E402
from ffsplat.core.config import to_dataclass  # noqa: E402
from ffsplat.core.errors import run_command  # noqa: E402
from ffsplat.data.shard_writer import ShardConfig, write_shards  # noqa: E402
from ffsplat.data.shards import EvalIndexDataset, scene_frame_ids  # noqa: E402
from ffsplat.synthetic import SyntheticConfig, write_synthetic_scene  # noqa: E402
from ffsplat.data.sampling import ViewSamplerConfig, build_eval_index  # noqa: E402
from ffsplat.evaluation.evaluate import EvalConfig, evaluate_model, evaluate_teacher  # noqa: E402
from ffsplat.training.fit import fit  # noqa: E402
from ffsplat.training.module import SemanticSplatModule  # noqa: E402
from ffsplat.training.config import TrainConfig  # noqa: E402

LABEL_TSV = ROOT.parent / "shared" / "data" / "scannet" / "scannetv2-labels.combined.tsv"


def _scene_job(args) -> None:
    out, seed, size, frames = args
    if not (out / "synthetic.json").exists():
        write_synthetic_scene(out, seed, SyntheticConfig(height=size, width=size, frames=frames))


def make_data(work: Path, scenes: int, test: int, size: int, frames: int) -> Path:
    jobs = [(work / "scenes" / f"synth_{i:04d}", 1000 + i, size, frames) for i in range(scenes)]
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_scene_job, jobs)
    cfg = ShardConfig(size=size, clip_length=24, min_clip_length=12,
                      teachers={"label_seg": {"noise_std": 0.05}, "label_lang": {"flip_rate": 0.1, "blur_sigma": 1.5, "noise_std": 0.02}})  # fmt: skip
    split = {"train": [j[0] for j in jobs[: scenes - test]], "test": [j[0] for j in jobs[scenes - test :]]}
    write_shards(split, work / "shards", cfg, LABEL_TSV, workers=2, progress=False)
    return work / "shards"


def stage_config(experiment: str, shards: Path, work: Path, steps: int, overrides: list[str]) -> TrainConfig:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        raw = compose("train", overrides=[
            f"experiment={experiment}", f"data.root={shards}", "data.val_split=test", "data.val_examples=4",
            "data.batch_size=1", "data.sampler.num_target=2", f"optim.max_steps={steps}",
            "trainer.val_every_n_steps=0", "logging.wandb_mode=disabled", f"logging.save_dir={work}/outputs",
            f"checkpoint.dir={work}/checkpoints", "checkpoint.resume=null", *overrides,
        ])  # fmt: skip
    return to_dataclass(TrainConfig, raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ffsplat-learn"))
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--test-scenes", type=int, default=4)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--seg-steps", type=int, default=1000)
    parser.add_argument("--lang-steps", type=int, default=500)
    parser.add_argument("--entries", type=int, default=4, help="evaluation examples per test scene")
    parser.add_argument("--prompt-grid", type=int, default=8)
    args = parser.parse_args()
    claim_work_dir(args.work)  # a folder of the user's is refused, never written into
    torch.set_num_threads(2)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    shards = make_data(args.work, args.scenes, args.test_scenes, args.size, args.frames)
    timings["data_s"] = time.perf_counter() - start
    sampler = ViewSamplerConfig(num_context=2, num_target=3, min_gap=4, max_gap=10)
    index = build_eval_index(scene_frame_ids(shards, "test"), sampler, seed=0, entries_per_scene=args.entries)
    with atomic_open(args.work / "eval_index.json", "w") as f:
        f.write(json.dumps(index))
    examples = lambda: EvalIndexDataset(shards, "test", index)  # noqa: E731
    eval_cfg = EvalConfig(prompt_grid=args.prompt_grid)

    seg_cfg = stage_config("synthetic_seg", shards, args.work, args.seg_steps, [])
    torch.manual_seed(0)
    untrained = SemanticSplatModule(seg_cfg)
    untrained._move_helpers()
    results = {
        "untrained": evaluate_model(untrained, examples(), eval_cfg),
        "teacher_2d": evaluate_teacher(untrained, examples(), eval_cfg),
    }

    start = time.perf_counter()
    seg = fit(seg_cfg)
    timings["seg_train_s"] = time.perf_counter() - start
    seg._move_helpers()
    results["after_seg_stage"] = evaluate_model(seg, examples(), eval_cfg)

    slim = Path(seg_cfg.checkpoint.dir) / seg_cfg.run_name / "model.pt"
    lang_cfg = stage_config("synthetic_lang", shards, args.work, args.lang_steps, [f"stage.init_from={slim}"])
    start = time.perf_counter()
    lang = fit(lang_cfg)
    timings["lang_train_s"] = time.perf_counter() - start
    lang._move_helpers()
    results["trained"] = evaluate_model(lang, examples(), eval_cfg)

    keys = ["psnr", "depth_abs_rel", "target_miou", "promptable_iou"]
    lower_is_better = {"depth_abs_rel"}
    beats = {
        k: (results["trained"][k] < results["untrained"][k])
        if k in lower_is_better
        else (results["trained"][k] > results["untrained"][k])
        for k in keys
    }
    report = {
        "benchmark": "learn_synthetic",
        "machine": machine(),
        "settings": {
            **vars(args),
            "work": str(args.work),
            "eval_examples": sum(map(len, index.values())),
            "seg_config": asdict(seg_cfg.optim),
            "lang_config": asdict(lang_cfg.optim),
        },  # fmt: skip
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "train_samples_per_s": {
            "seg": round(args.seg_steps * seg_cfg.data.batch_size / timings["seg_train_s"], 3),
            "lang": round(args.lang_steps * lang_cfg.data.batch_size / timings["lang_train_s"], 3),
        },
        "results": {
            name: {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for name, r in results.items()
        },
        "trained_beats_untrained": beats,
        "trained_beats_2d_teacher": {
            "target_miou": results["trained"]["target_miou"] > results["teacher_2d"].get("target_miou", float("nan")),
            "promptable_iou": results["trained"]["promptable_iou"]
            > results["teacher_2d"].get("promptable_iou", float("nan")),
        },
    }
    text = json.dumps(report, indent=2, default=str)
    with atomic_open(args.work / "report.json", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(run_command(main))
