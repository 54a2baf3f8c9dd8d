"""Data pipeline throughput: shard writing and read+decode, at 256x256.

Source: the real HoloLens office sequence (``../shared/data/hololens-office``, 540x360 RGB-D),
linked under ``--scenes`` names so that parallel writing has several scenes. Measures:

* write: scenes -> clips (resize, crop, depth resampling, JPEG/PNG encoding) -> shards, with 1 and
  ``--workers`` processes;
* read: shards -> decoded clips -> sampled Examples through a DataLoader with 0 and 2 workers;
* ``--loader-report`` (instead): for each shard kind (no teacher cache, ESPNetv2 caches at 32x32,
  full-size LSeg + SAM caches) the MB per clip, examples per CPU-second with whole-clip decoding
  (before) and sampled-frame decoding (now) side by side, and the loader workers that ``--gpus`` GPUs
  at ``--steps-per-s`` with ``--batch`` consume.

    python benchmarks/data.py [--size 256] [--scenes 4] [--workers 2]
    python benchmarks/data.py --loader-report [--gpus 8 --steps-per-s 5 --batch 4]

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from ffsplat.data.shard_writer import ShardConfig, write_shards  # noqa: E402
from ffsplat.data.shards import ClipExamples, manifest_shards  # noqa: E402
from ffsplat.data.sampling import ViewSamplerConfig  # noqa: E402

SOURCE = ROOT.parent / "shared" / "data" / "hololens-office"


def measure_write(scenes: list[Path], out: Path, cfg: ShardConfig, workers: int) -> dict:
    start = time.perf_counter()
    manifest = write_shards({"train": scenes}, out, cfg, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    entry = manifest["splits"]["train"]
    return {
        "workers": workers,
        "seconds": round(seconds, 2),
        "samples": entry["samples"],
        "frames": entry["frames"],
        "samples_per_s": round(entry["samples"] / seconds, 2),
        "frames_per_s": round(entry["frames"] / seconds, 1),
        "megabytes": round(sum(s["bytes"] for s in entry["shards"]) / 2**20, 1),
    }


def measure_read(urls: list[str], workers: int, clip_length: int) -> dict:
    sampler = ViewSamplerConfig(num_context=2, num_target=4, min_gap=4, max_gap=12)
    dataset = ClipExamples(urls, sampler, shuffle_buffer=16, seed=0)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    start = time.perf_counter()
    count = sum(1 for _ in loader)
    seconds = time.perf_counter() - start
    return {
        "workers": workers,
        "seconds": round(seconds, 2),
        "samples": count,
        "samples_per_s": round(count / seconds, 2),
        "decoded_frames_per_s": round(count * clip_length / seconds, 1),
    }


TEACHER_KINDS = {
    "no teacher cache": {},
    "ESPNetv2 caches at 32x32": {"espnetv2": (512, 32, 32), "espnetv2_seg": (256, 32, 32)},
    "full-size caches (LSeg 512x128x128 + SAM 256x64x64)": {"lseg": (512, 128, 128), "sam": (256, 64, 64)},
}
"""Shard kinds of the loader report: teacher name -> cached ``[C, h, w]`` (float16, random values: the
decode cost depends on the bytes, not on what they hold)."""


def with_teachers(src: Path, dst: Path, teachers: dict, clips: int) -> Path:
    """The first ``clips`` samples of shard ``src`` with float16 teacher caches of the given shapes added."""
    import io

    import numpy as np
    import webdataset as wds

    rng = np.random.default_rng(0)
    with wds.TarWriter(str(dst)) as sink:
        for n, sample in enumerate(wds.DataPipeline(wds.SimpleShardList([str(src)]), wds.tarfile_to_samples())):
            if n == clips:
                break
            meta = json.loads(sample["meta.json"])
            length = len(meta["frame_ids"])
            meta["teacher"] = {name: list(shape) for name, shape in teachers.items()}
            out = {k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"}
            out["meta.json"] = json.dumps(meta).encode()
            for name, shape in teachers.items():
                buf = io.BytesIO()
                np.save(buf, rng.standard_normal((length, *shape), dtype=np.float32).astype(np.float16))
                out[f"teacher.{name}.npy"] = buf.getvalue()
            sink.write(out)
    return dst


def whole_clip_examples(urls: list[str], sampler, seed: int):
    """Before issue 33: decode every frame of the clip, then draw the views (the same examples)."""
    import numpy as np
    import webdataset as wds

    from ffsplat.core.types import Example
    from ffsplat.data.clip import decode_clip
    from ffsplat.data.sampling import sample_views
    from ffsplat.data.shards import clip_to_views

    for produced, sample in enumerate(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())):
        clip = decode_clip(sample)
        context, target = sample_views(len(clip), sampler, np.random.default_rng([seed, 0, 0, 0, produced]), 0)
        yield Example(clip_to_views(clip, context), clip_to_views(clip, target), [clip.scene])


def loader_rates(shard: Path, examples: int, repeats: int) -> dict:
    """Examples per CPU-second in one process (a DataLoader worker's view): whole-clip decode (before)
    and sampled-frames decode (now), interleaved, ``repeats`` times each; median and spread."""
    import statistics

    sampler = ViewSamplerConfig(num_context=2, num_target=4, min_gap=4, max_gap=12)
    urls = [str(shard)] * examples  # cycle the shard's clips until ``examples`` are drawn
    paths = {
        "whole clip (before)": lambda: whole_clip_examples(urls, sampler, 0),
        "sampled frames (now)": lambda: iter(ClipExamples(urls, sampler, shuffle_buffer=0, seed=0)),
    }
    rates: dict[str, list[float]] = {name: [] for name in paths}
    firsts = {}
    for _ in range(repeats):
        for name, make in paths.items():
            start = time.process_time()
            got = [ex for _, ex in zip(range(examples), make())]
            rates[name].append(len(got) / (time.process_time() - start))
            firsts[name] = [ex.target.frame_ids.tolist() for ex in got]
    same = firsts["whole clip (before)"] == firsts["sampled frames (now)"]
    return {
        name: {
            "examples_per_cpu_s": round(statistics.median(r), 2),
            "min": round(min(r), 2),
            "max": round(max(r), 2),
        }
        for name, r in rates.items()
    } | {"same_examples": same}


def loader_report(args, work: Path) -> dict:
    """Per shard kind: MB per clip, examples per CPU-second before/now, and the loader processes
    (= cores) that ``--gpus`` GPUs at ``--steps-per-s`` with ``--batch`` examples per step consume."""
    import math

    scene = work / "scenes" / "office_00"
    scene.parent.mkdir(parents=True, exist_ok=True)
    if not scene.exists():
        scene.symlink_to(SOURCE)
    cfg = ShardConfig(size=args.size, clip_length=args.clip_length)
    write_shards({"train": [scene]}, work / "plain", cfg, workers=1, progress=False)
    (base,) = manifest_shards(work / "plain", "train")
    need = args.gpus * args.steps_per_s * args.batch
    rows = {}
    for kind, teachers in TEACHER_KINDS.items():
        big = sum(c * h * w for c, h, w in teachers.values()) > 2**20
        clips = 2 if big else args.report_clips
        shard = with_teachers(Path(base), work / f"kind{len(rows)}.tar", teachers, clips)
        rates = loader_rates(shard, 4 if big else args.report_examples, args.repeats)
        row = {"mb_per_clip": round(shard.stat().st_size / clips / 2**20, 1)} | rates
        for name in ("whole clip (before)", "sampled frames (now)"):
            row[name]["workers_needed"] = math.ceil(need / row[name]["examples_per_cpu_s"])
        rows[kind] = row
        shard.unlink()
    return {
        "consumption": {
            "gpus": args.gpus,
            "steps_per_s": args.steps_per_s,
            "batch": args.batch,
            "examples_per_s": need,
        },  # fmt: skip
        "note": "workers_needed = ceil(examples/s consumed / examples per CPU-second): one loader worker per core",
        "kinds": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clip-length", type=int, default=24)
    parser.add_argument("--loader-report", action="store_true",
                        help="only the per-shard-kind loader report (examples per CPU-second, workers needed)")  # fmt: skip
    parser.add_argument("--gpus", type=int, default=8, help="loader report: GPUs to feed")
    parser.add_argument("--steps-per-s", type=float, default=5.0, help="loader report: training steps/s per GPU")
    parser.add_argument("--batch", type=int, default=4, help="loader report: examples per step per GPU")
    parser.add_argument("--repeats", type=int, default=3, help="loader report: repeats per path")
    parser.add_argument("--report-clips", type=int, default=6, help="loader report: clips per shard kind")
    parser.add_argument("--report-examples", type=int, default=12, help="loader report: examples per repeat")
    args = parser.parse_args()
    if not SOURCE.is_dir():
        raise SystemExit(f"benchmark source not found: {SOURCE}")
    if args.loader_report:
        work = Path(tempfile.mkdtemp(prefix="ffsplat-loader-bench-"))
        try:
            report = {"benchmark": "data loader report", "machine": {"platform": platform.platform(),
                      "torch": torch.__version__}, "size": args.size, "clip_length": args.clip_length}  # fmt: skip
            report |= loader_report(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(report, indent=2))
        return

    work = Path(tempfile.mkdtemp(prefix="ffsplat-data-bench-"))
    try:
        scenes = []
        for i in range(args.scenes):
            link = work / "scenes" / f"office_{i:02d}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(SOURCE)
            scenes.append(link)
        cfg = ShardConfig(size=args.size, clip_length=args.clip_length)
        write = [measure_write(scenes, work / f"shards_w{w}", cfg, w) for w in (1, args.workers)]
        urls = manifest_shards(work / "shards_w1", "train")
        read = [measure_read(urls, w, args.clip_length) for w in (0, 2)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "benchmark": "data",
        "machine": {
            "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "source": f"hololens-office x {args.scenes} (540x360 RGB-D, 260 frames each)",
        "size": args.size,
        "clip_length": args.clip_length,
        "write": write,
        "read": read,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
