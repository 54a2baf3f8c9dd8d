"""Export ScanNet ``.sens`` files to the exported-ScanNet folder layout, one process per file.

    python data_prep/export_sens.py --sens scans/scene0000_00/scene0000_00.sens [...] --out DIR \\
        [--frame-skip N] [--workers N] [--pixel-center 0]

Each file goes to ``DIR/<file stem>/`` (``color/``, ``depth/``, ``pose/``, ``intrinsic/``; see
:func:`ffsplat.data.sens.export_sens`), written into ``DIR/.<file stem>.tmp/`` and renamed into
place only when complete, with ``export.json`` recording the source file (size, mtime) and the
frames skipped for unusable poses (ids and why). Re-running skips scenes already exported from an
unchanged file and re-exports those whose ``.sens`` changed (``make_shards.py`` then rebuilds their
shards). Prints one progress line per file and a JSON summary. Exit status: 0 when every file was
exported, 2 on bad options or when any file failed (its scene folder is not created).
"""

from __future__ import annotations

import sys
from pathlib import Path


import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: E402

from ffsplat.core.errors import (
    ArgumentParser,
    InputError,
    check_input_file,
    check_number,
    check_output_dir,
    check_outputs,
    report,
    run_command,
)  # noqa: E402
from ffsplat.data.sens import export_scene  # noqa: E402


def _export(sens: Path, out_root: Path, frame_skip: int, pixel_center: float) -> dict:
    start = time.perf_counter()
    stats = export_scene(sens, out_root, frame_skip, pixel_center)
    return {**stats, "seconds": round(time.perf_counter() - start, 2)}


def describe_skipped(skipped: dict, limit: int = 10) -> str:
    """``"3 (inf/NaN in the pose), 7 (...)"`` for the first ``limit`` skipped frames."""
    items = [f"{i} ({why})" for i, why in sorted(skipped.items(), key=lambda kv: int(kv[0]))]
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    parser.add_argument("--sens", type=Path, nargs="+", required=True, help=".sens files to export")
    parser.add_argument("--out", type=Path, required=True, help="output root; each scene goes to OUT/<file stem>/")
    parser.add_argument("--frame-skip", type=int, default=1, help="export every N-th frame (default 1)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="parallel processes")
    parser.add_argument("--pixel-center", type=float, default=0.0, choices=[0.0, 0.5],
                        help="first pixel centre in the file's intrinsics: 0 (ScanNet, default) or 0.5 (ffsplat's own)")  # fmt: skip
    args = parser.parse_args(argv)
    return run_command(lambda: run(args))


def run(args) -> int:
    check_number("--frame-skip", args.frame_skip, low=1, integer=True)
    check_number("--workers", args.workers, low=1, high=256, integer=True)
    for path in args.sens:
        check_input_file("--sens", path, ".sens file")
        if path.suffix != ".sens":
            raise InputError(f"--sens: {path} does not end in .sens")
    names = [p.stem for p in args.sens]
    if len(set(names)) != len(names):
        raise InputError(f"--sens: scene names (file stems) must be unique, got {names}")
    check_output_dir("--out", args.out)
    # a scene folder that holds a .sens file being read (e.g. --out scans for scans/<scene>/<scene>.sens) is refused
    check_outputs({}, {"--sens": list(args.sens)}, {"--out": [args.out / name for name in names]})
    made = [d for d in [args.out, *args.out.parents] if not d.exists()]  # folders this run may create

    summary: dict = {"out": str(args.out), "scenes": {}, "failed": {}}
    with ProcessPoolExecutor(max_workers=min(args.workers, len(args.sens))) as pool:
        jobs = {pool.submit(_export, p, args.out, args.frame_skip, args.pixel_center): p.stem for p in args.sens}
        for done, job in enumerate(as_completed(jobs), 1):
            name = jobs[job]
            try:
                stats = summary["scenes"][name] = job.result()
                line = f"{stats['status']}: {stats['exported']}/{stats['frames']} frames, {stats['seconds']} s"
                if stats["skipped_frames"]:
                    line += (
                        f"; skipped {len(stats['skipped_frames'])} frames: {describe_skipped(stats['skipped_frames'])}"
                    )
            except Exception as exc:  # noqa: BLE001  (reported per file; the others go on)
                summary["failed"][name] = f"{type(exc).__name__}: {exc}"
                line = f"FAILED (nothing written): {summary['failed'][name]}"
            print(f"[{done}/{len(jobs)}] {name}: {line}", flush=True)
    print(json.dumps(summary, indent=2))
    for folder in made:  # nothing exported: the folders this run made go again (only when empty)
        try:
            folder.rmdir()
        except OSError:
            break
    if summary["failed"]:
        first = next(iter(summary["failed"].items()))
        return report(f"--sens: {len(summary['failed'])} of {len(jobs)} files failed (first: {first[0]}: {first[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
