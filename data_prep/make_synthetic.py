"""Write a synthetic dataset of procedural rooms (exact ray-cast RGB-D, labels, instances, poses).

    python data_prep/make_synthetic.py --out DIR [--scenes 20] [--size 128 | --height H --width W] \\
        [--frames 60] [--seed 0] [--workers 2] [--sens] [--split-val 0.2]

Scene ``i`` goes to ``DIR/synth_<i:04d>/`` in the exported-ScanNet layout (see
:func:`ffsplat.synthetic.write_synthetic_scene`; with ``--sens`` also
``DIR/synth_<i>/synth_<i>.sens``); its seed is derived from ``(--seed, i)``, so scene ``i`` is the
same whatever ``--scenes`` is. Each scene is written into ``DIR/.synth_<i>.tmp/`` and renamed into
place when complete, so an interrupted run resumes: existing scenes are skipped (after checking
that they were made with the same settings). ``DIR/splits/{train,val}.txt`` list the scene names;
the validation scenes (a fraction ``--split-val``) are picked by a per-scene hash of ``(--seed, i)``.
Prints one progress line per scene and a JSON summary; exits with status 1 if any scene failed.
"""

from __future__ import annotations

import sys
from pathlib import Path


import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: E402
from dataclasses import asdict  # noqa: E402

import numpy as np  # noqa: E402

from ffsplat.core.atomic import atomic_open  # noqa: E402
from ffsplat.core.errors import ArgumentParser, InputError, check_output_dir, check_outputs, run_command  # noqa: E402
from ffsplat.synthetic import SCENE_META, SyntheticConfig, write_synthetic_scene  # noqa: E402


def scene_name(index: int) -> str:
    return f"synth_{index:04d}"


def scene_seed(seed: int, index: int, salt: int = 0) -> int:
    """Deterministic 32-bit seed of scene ``index`` of a dataset with base ``seed``."""
    return int(np.random.SeedSequence([seed, index, salt]).generate_state(1)[0])


def split_names(names: list[str], seed: int, fraction: float) -> tuple[list[str], list[str]]:
    """``(train, val)``: the ``round(fraction * n)`` scenes (at least 1 if ``fraction > 0`` and n > 1,
    at most n - 1) with the smallest per-scene hash are validation; both lists sorted."""
    n_val = round(fraction * len(names))
    if fraction > 0 and len(names) > 1:
        n_val = min(max(n_val, 1), len(names) - 1)
    keys = sorted(names, key=lambda name: scene_seed(seed, int(name.split("_")[1]), salt=1))
    val = set(keys[:n_val])
    return sorted(set(names) - val), sorted(val)


def _make(out: Path, index: int, seed: int, config: SyntheticConfig, sens: bool) -> dict:
    """Write one scene (or skip / complete it if it exists). Runs in a worker process."""
    start = time.perf_counter()
    name = scene_name(index)
    final = out / name
    if (final / SCENE_META).exists():
        meta = json.loads((final / SCENE_META).read_text())
        if meta["config"] != json.loads(json.dumps(asdict(config))) or meta["seed"] != scene_seed(seed, index):
            raise ValueError(f"{final} exists but was made with other settings; use another --out or delete it")
        status = "exists, skipped"
        if sens and not (final / f"{name}.sens").exists():
            from ffsplat.data.sens import folder_to_sens

            folder_to_sens(final, final / f"{name}.sens")
            status = "exists, .sens added"
        return {"name": name, "status": status, "seconds": round(time.perf_counter() - start, 2)}
    if final.exists():  # ours get their SCENE_META before they are renamed into place
        raise ValueError(f"{final} exists and is not a scene of this generator (no {SCENE_META}); it is left as it is")
    tmp = out / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted run
    try:
        stats = write_synthetic_scene(tmp, scene_seed(seed, index), config, sens=sens, name=name)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if sens:
        stats["sens"] = str(final / f"{name}.sens")
    return {**stats, "status": "written", "seconds": round(time.perf_counter() - start, 2)}


def _write_text(path: Path, lines: list[str]) -> None:
    with atomic_open(path) as f:
        f.write("".join(line + "\n" for line in lines).encode())


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output root")
    parser.add_argument("--scenes", type=int, default=20, help="number of scenes (default 20)")
    parser.add_argument("--size", type=int, default=128, help="square image size (default 128)")
    parser.add_argument("--height", type=int, help="image height (overrides --size)")
    parser.add_argument("--width", type=int, help="image width (overrides --size)")
    parser.add_argument("--frames", type=int, default=60, help="frames per scene (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")
    parser.add_argument("--sens", action="store_true", help="also write <scene>/<scene>.sens")
    parser.add_argument("--split-val", type=float, default=0.2, help="fraction of validation scenes (default 0.2)")
    args = parser.parse_args(argv)
    height, width = args.height or args.size, args.width or args.size
    if min(args.scenes, args.frames, args.workers, height, width) < 1 or not 0 <= args.split_val < 1:
        parser.error("--scenes, --frames, --workers and the image size must be >= 1; --split-val in [0, 1)")
    config = SyntheticConfig(height=height, width=width, frames=args.frames)
    return run_command(lambda: run(args, config))


def check_splits(out: Path) -> None:
    """``OUT/splits/{train,val}.txt`` are rewritten at the end: refuse, before any work, split files that
    are not this generator's (they list other scenes: the user's dataset), or paths that are folders."""
    files = [out / "splits" / f"{split}.txt" for split in ("train", "val")]
    check_outputs({"--out (splits)": files}, {}, {"--out (splits)": out / "splits"})
    for path in files:
        if not path.is_file():
            continue
        try:
            others = [n for n in path.read_text().split() if not n.startswith("synth_")]
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--out: cannot read {path} ({exc}); it is not a split file of this generator") from exc
        if others:
            raise InputError(
                f"--out: {path} lists scenes that are not synthetic ({others[0]!r}, ...); writing the splits would "
                "overwrite it: choose another --out"
            )


def run(args, config: SyntheticConfig) -> int:
    check_output_dir("--out", args.out)
    check_splits(args.out)
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    summary: dict = {"out": str(args.out), "scenes": {}, "failed": {}}
    jobs = [(args.out, i, args.seed, config, args.sens) for i in range(args.scenes)]

    def report(done: int, name: str, run) -> None:
        try:
            result = summary["scenes"][name] = run()
            line = f"{result['status']} ({result['seconds']} s)"
        except Exception as exc:  # noqa: BLE001  (reported per scene; the others go on)
            summary["failed"][name] = f"{type(exc).__name__}: {exc}"
            line = f"FAILED: {summary['failed'][name]}"
        print(f"[{done}/{len(jobs)}] {name}: {line}", flush=True)

    if args.workers == 1:
        for done, job in enumerate(jobs, 1):
            report(done, scene_name(job[1]), lambda job=job: _make(*job))
    else:
        with ProcessPoolExecutor(max_workers=min(args.workers, len(jobs))) as pool:
            futures = {pool.submit(_make, *job): scene_name(job[1]) for job in jobs}
            for done, future in enumerate(as_completed(futures), 1):
                report(done, futures[future], future.result)

    train, val = split_names([scene_name(i) for i in range(args.scenes)], args.seed, args.split_val)
    (args.out / "splits").mkdir(exist_ok=True)
    _write_text(args.out / "splits" / "train.txt", train)
    _write_text(args.out / "splits" / "val.txt", val)
    statuses = [s["status"] for s in summary["scenes"].values()]
    summary.update(
        written=statuses.count("written"),
        skipped=len(statuses) - statuses.count("written"),
        train=len(train),
        val=len(val),
        seconds=round(time.perf_counter() - start, 2),
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "scenes"}, indent=2))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
