"""End-to-end inference time: infer.py on 2 views, per stage, on this machine.

Runs ``infer.py`` in-process on the README's example photos (``examples/demo_real``, with their
cameras) with each ``--checkpoint`` (default: the demo checkpoint) at ``--size`` (default: the
model's training size, as ``infer.py`` picks it), ``--repeats`` times after a warm-up, and reports
median seconds per stage: load (checkpoint), cameras, prepare (resize/crop), network (teachers +
forward, including a frozen ``semantic.segmenter``; the demo model is not conditioned on teachers,
see benchmarks/teachers.py for SAM/LSeg cost), semantics (render + classify), write (.ply), render
(PNGs).

    python benchmarks/infer.py [--checkpoint A.pt --checkpoint B.pt] [--size 256] [--repeats 3]

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

from ffsplat.inference.cli import main as infer_main  # noqa: E402  (not `import infer`: this file is infer.py on sys.path)
from ffsplat.core.benchmarking import machine  # noqa: E402
from ffsplat.core.config import DEMO_CHECKPOINT  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, help="working size (default: the model's training size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", type=Path, action="append", help="repeatable; default: the demo checkpoint")
    args = parser.parse_args()
    demo = ROOT / "examples" / "demo_real"
    results = {}
    for checkpoint in args.checkpoint or [DEMO_CHECKPOINT]:
        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.repeats + 1):
                out = Path(tmp) / f"run{i}" / "scene.ply"
                argv = ["--views", str(demo / "view_0.jpg"), str(demo / "view_1.jpg"), "--cameras", str(demo / "cameras.json"),
                        "--checkpoint", str(checkpoint), "--out", str(out), "--render", "--device", "cpu"]  # fmt: skip
                if args.size:
                    argv += ["--size", str(args.size)]
                with contextlib.redirect_stdout(io.StringIO()):
                    if infer_main(argv) != 0:
                        raise SystemExit(f"infer.py failed with {checkpoint}")
                if i:
                    runs.append(json.loads(out.with_suffix(".json").read_text())["seconds"])
        results[str(checkpoint)] = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    print(json.dumps({"benchmark": "infer", "machine": machine(), "views": 2, "size": args.size or "model's",
                      "repeats": args.repeats, "median_seconds": results}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
