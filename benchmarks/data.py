"""Data pipeline throughput: shard writing and read+decode, at 256x256.

Source: the real HoloLens office sequence (``../shared/data/hololens-office``, 540x360 RGB-D),
linked under ``--scenes`` names so that parallel writing has several scenes. Measures:

* write: scenes -> clips (resize, crop, depth resampling, JPEG/PNG encoding) -> shards, with 1 and
  ``--workers`` processes;
* read: shards -> decoded clips -> sampled Examples through a DataLoader with 0 and 2 workers.

    python benchmarks/data.py [--size 256] [--scenes 4] [--workers 2]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clip-length", type=int, default=24)
    args = parser.parse_args()
    if not SOURCE.is_dir():
        raise SystemExit(f"benchmark source not found: {SOURCE}")

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
