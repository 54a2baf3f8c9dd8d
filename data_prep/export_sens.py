"""Export ScanNet ``.sens`` files to the exported-ScanNet folder layout, one process per file.

    python data_prep/export_sens.py --sens scans/scene0000_00/scene0000_00.sens [...] --out DIR \\
        [--frame-skip N] [--workers N]

Each file goes to ``DIR/<file stem>/`` (``color/``, ``depth/``, ``pose/``, ``intrinsic/``; see
:func:`ffsplat.data.sens.export_sens`). Prints one progress line per finished file and a JSON
summary at the end; exits with status 1 if any file failed.
"""

from __future__ import annotations

import sys
from pathlib import Path


import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: E402

from ffsplat.data.sens import export_sens  # noqa: E402


def _export(sens: Path, out_dir: Path, frame_skip: int) -> dict:
    start = time.perf_counter()
    stats = export_sens(sens, out_dir, frame_skip)
    return {**stats, "seconds": round(time.perf_counter() - start, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sens", type=Path, nargs="+", required=True, help=".sens files to export")
    parser.add_argument("--out", type=Path, required=True, help="output root; each scene goes to OUT/<file stem>/")
    parser.add_argument("--frame-skip", type=int, default=1, help="export every N-th frame (default 1)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="parallel processes")
    args = parser.parse_args(argv)
    if args.frame_skip < 1 or args.workers < 1:
        parser.error("--frame-skip and --workers must be >= 1")
    names = [p.stem for p in args.sens]
    if len(set(names)) != len(names):
        parser.error(f"scene names (file stems) must be unique, got {names}")

    summary: dict = {"out": str(args.out), "scenes": {}, "failed": {}}
    with ProcessPoolExecutor(max_workers=min(args.workers, len(args.sens))) as pool:
        jobs = {pool.submit(_export, p, args.out / p.stem, args.frame_skip): p.stem for p in args.sens}
        for done, job in enumerate(as_completed(jobs), 1):
            name = jobs[job]
            try:
                stats = summary["scenes"][name] = job.result()
                line = (
                    f"exported {stats['exported']}/{stats['frames']} frames, "
                    f"{stats['skipped_invalid_pose']} invalid poses skipped, {stats['seconds']} s"
                )
            except Exception as exc:  # noqa: BLE001  (reported per file; the others go on)
                summary["failed"][name] = f"{type(exc).__name__}: {exc}"
                line = f"FAILED: {summary['failed'][name]}"
            print(f"[{done}/{len(jobs)}] {name}: {line}", flush=True)
    print(json.dumps(summary, indent=2))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
