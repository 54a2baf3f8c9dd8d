"""End-to-end inference time: infer.py on 2 views at 256x256, per stage, on this machine.

Runs ``infer.py`` in-process on the example views (``examples/demo``) with the demo checkpoint at
``--size`` (the network works at any multiple of 4), ``--repeats`` times after a warm-up, and
reports median seconds per stage: load (checkpoint), cameras, prepare (resize/crop), network
(teachers + forward: the demo model is not conditioned on teachers, see benchmarks/teachers.py for
SAM/LSeg cost), semantics (render + classify), write (.ply), render (PNGs).

    python benchmarks/infer.py [--size 256] [--repeats 3]

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import infer  # noqa: E402
from ffsplat.core.benchmarking import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", type=Path, default=infer.DEFAULT_CHECKPOINT)
    args = parser.parse_args()
    demo = ROOT / "examples" / "demo"
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats + 1):
            out = Path(tmp) / f"run{i}" / "scene.ply"
            argv = ["--views", str(demo / "view_0.png"), str(demo / "view_1.png"), "--cameras", str(demo / "cameras.json"),
                    "--checkpoint", str(args.checkpoint), "--out", str(out), "--size", str(args.size), "--render", "--device", "cpu"]  # fmt: skip
            with contextlib.redirect_stdout(io.StringIO()):
                if infer.main(argv) != 0:
                    raise SystemExit("infer.py failed")
            if i:
                runs.append(json.loads(out.with_suffix(".json").read_text())["seconds"])
    stages = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    print(json.dumps({"benchmark": "infer", "machine": machine(), "views": 2, "size": args.size,
                      "checkpoint": str(args.checkpoint), "repeats": args.repeats, "median_seconds": stages}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
