"""Per-scene baselines from the command line.

    # one baseline on an evaluation index (sparse: the index's 2 context views; dense: all keyframes)
    python -m ffsplat.baselines run --method feature3dgs --checkpoint model.pt --shards data/shards/x \
        --split test --index index.json --setting sparse --out results/feature3dgs_sparse.json

    # the feed-forward model and every baseline on the same index, in both settings: one table
    python -m ffsplat.baselines compare --checkpoint model.pt --shards data/shards/x --split test \
        --index index.json --out reports/compare

``--checkpoint`` is the feed-forward model whose class embeddings, prompt decoder and teacher names
both sides are scored with. ``--split`` defaults to ``val``, as in ``evaluate.py``. Each scene fit
shows a progress bar (``--no-progress`` hides it). Bad input (shards, split, index, frames,
checkpoint, ``--scene-config``, numeric options, device) ends with one ``error:`` line and exit
code 2 before anything is written. Per-scene settings come from ``configs/baseline/default.yaml``
(Inria/gsplat defaults, the papers' budgets: 30k steps, FHGS 10k; ``--scene-config`` another YAML,
``--iterations`` to override every method's budget). ``compare`` runs each (method, setting) in its
own process so that its peak memory is its own.

By default the baselines start from SfM points of their training views topped up with random
frustum points to Inria's 100,000 (``--init sfm``, ``--init-points``; also
``random``, ``predicted`` = the feed-forward model's depth) and learn from the teachers
(``--supervision teacher``). ``--oracle`` adds, per method and setting, a row marked ORACLE that
starts from sensor depth and learns from ground-truth labels / instances. Times are per scene:
``reconstruction_s`` (model forward, or supervision + initialisation + fitting) and
``evaluation_s`` (rendering + scoring) separately.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import ffsplat  # noqa: F401  (torchvision shim first)
from ffsplat.baselines.compare import BASELINES, run_baseline, save_json, write_table
from ffsplat.baselines.initialisation import DEFAULT_INIT, INITIALISATIONS, PAPER_INITIAL_GAUSSIANS, InitConfig
from ffsplat.baselines.supervision import SUPERVISIONS, MaskConfig
from ffsplat.baselines.trainer import SceneConfig
from ffsplat.objectives.metrics import SSIM_VARIANTS
from ffsplat.core.atomic import make_dirs, transaction
from ffsplat.core.config import CONFIG_DIR, to_dataclass
from ffsplat.core.errors import (ArgumentParser, InputError, check_device, check_input_file, check_number, check_output_dir, check_outputs,
                                 check_output_file, one_line, run_command)  # fmt: skip
from ffsplat.data.remote import shard_root
from ffsplat.data.sampling import load_eval_index


def scene_config(args) -> SceneConfig:
    try:
        return to_dataclass(SceneConfig, args.scene_config)
    except Exception as exc:  # noqa: BLE001  (YAML syntax, unknown keys, wrong types: all the user's file)
        raise InputError(f"--scene-config: {args.scene_config}: {one_line(exc)}") from exc


def check_inputs(args):
    """Every check that can fail on user input, before any work; returns (index, scene config)."""
    from ffsplat.data.shards import EvalIndexDataset, check_index_frames

    check_number("--iterations", args.iterations, low=1, integer=True)
    check_number("--prompt-grid", args.prompt_grid, low=0, high=256, integer=True)
    check_number("--dense-views", args.dense_views, low=2, integer=True)
    check_number("--max-examples", args.max_examples, low=1, integer=True)
    check_number("--init-points", args.init_points, low=1, integer=True)
    check_device("--device", args.device)
    check_input_file("--checkpoint", args.checkpoint, "checkpoint")
    check_input_file("--index", args.index, "evaluation index")
    check_input_file("--scene-config", args.scene_config, "scene config YAML")
    if args.command == "run":
        check_output_file("--out", args.out, ".json")
    else:
        check_output_dir("--out", args.out)
    inputs = {"--checkpoint": args.checkpoint, "--index": args.index, "--scene-config": args.scene_config,
              "--shards": args.shards, "--lpips-vgg": args.lpips_vgg}  # fmt: skip
    if args.command == "run":
        check_outputs({"--out": args.out}, inputs)
    else:
        check_outputs({"--out": [args.out / name for name in report_names(args)]}, inputs, {"--out": args.out})
    cfg = scene_config(args)
    try:
        index = load_eval_index(args.index)
    except ValueError as exc:
        raise InputError(f"--index: {one_line(exc)}") from exc
    if not index or not any(index.values()):
        raise InputError(f"--index: {args.index} has no entries; nothing to run")
    try:
        EvalIndexDataset(args.shards, args.split, index)
        check_index_frames(args.shards, args.split, index)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise InputError(f"--shards/--split/--index: {one_line(exc)}") from exc
    return index, cfg


def compare_runs(args) -> list[tuple[str, str, str, str, str]]:
    """``(method, setting, init, supervision, result file name)`` of every baseline run of ``compare``."""
    runs = [(args.init, args.supervision)] + ([("sensor", "oracle")] if args.oracle else [])
    return [
        (
            method,
            setting,
            init,
            supervision,
            f"{method}_{setting}{'' if (init, supervision) == runs[0] else '_oracle'}.json",
        )
        for method in args.methods
        for setting in args.settings
        for init, supervision in runs
    ]


def report_names(args) -> list[str]:
    """The files ``compare`` writes into its report folder."""
    return [run[-1] for run in compare_runs(args)] + ["compare.json", "compare.md"]


def load_predictor(args):
    from ffsplat.inference.predictor import CheckpointError, Predictor

    try:
        return Predictor(args.checkpoint, args.device)
    except CheckpointError as exc:
        raise InputError(f"--checkpoint: {exc}") from exc


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="feed-forward model.pt (references for scoring)")
    p.add_argument("--shards", type=shard_root, required=True)
    p.add_argument(
        "--split", default="val", help="split of the shards holding the index's scenes (default val, as evaluate.py)"
    )
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--scene-config", type=Path, default=CONFIG_DIR / "baseline" / "default.yaml")
    p.add_argument("--iterations", type=int, help="steps for every method (default: the scene config's budgets)")
    p.add_argument(
        "--init", default=DEFAULT_INIT, choices=sorted(INITIALISATIONS), help="initial Gaussians (sensor = oracle)"
    )
    p.add_argument("--init-points", type=int, default=PAPER_INITIAL_GAUSSIANS,
                   help="points of the random init and the count SfM is topped up to (default: Inria's 100,000)")  # fmt: skip
    p.add_argument(
        "--supervision", default="teacher", choices=sorted(SUPERVISIONS), help="training signal (oracle = ground truth)"
    )
    p.add_argument("--mask-grid", type=int, default=32, help="prompt grid per side of the teacher's automatic masks")
    p.add_argument(
        "--ssim", default="skimage", choices=sorted(SSIM_VARIANTS), help="SSIM variant (skimage: MVSplat/SemanticSplat)"
    )
    p.add_argument("--lpips-vgg", type=Path, help="torchvision vgg16-397923af.pth for LPIPS (hash-checked)")
    p.add_argument("--prompt-grid", type=int, default=32)
    p.add_argument("--dense-views", type=int, default=16)
    p.add_argument("--max-examples", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="hide the per-scene progress bar")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m ffsplat.baselines", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one baseline, one setting")
    common(run)
    run.add_argument("--method", required=True, choices=sorted(BASELINES))
    run.add_argument("--setting", default="sparse", choices=["sparse", "dense"])
    run.add_argument("--out", type=Path, required=True, help="result JSON")
    cmp = sub.add_parser("compare", help="feed-forward model + baselines, one table")
    common(cmp)
    cmp.add_argument("--methods", nargs="+", default=sorted(BASELINES), choices=sorted(BASELINES))
    cmp.add_argument("--settings", nargs="+", default=["sparse", "dense"], choices=["sparse", "dense"])
    cmp.add_argument(
        "--oracle", action="store_true", help="also run each method with sensor-depth init and ground-truth supervision"
    )
    cmp.add_argument("--out", type=Path, required=True, help="report folder")
    args = parser.parse_args(argv)
    return run_command(lambda: execute(args))


def execute(args) -> int:
    index, cfg = check_inputs(args)
    if args.command == "run":
        predictor = load_predictor(args)
        result = run_baseline(args.method, predictor, args.shards, args.split, index, args.setting, scene_config(args),
                              args.prompt_grid, args.dense_views, args.max_examples, init=args.init,
                              supervision=args.supervision, mask_cfg=MaskConfig(points_per_side=args.mask_grid),
                              init_cfg=InitConfig(random_points=args.init_points, sfm_min_points=args.init_points),
                              ssim_variant=args.ssim, lpips_vgg_path=str(args.lpips_vgg) if args.lpips_vgg else None,
                              iterations=args.iterations, progress=not args.no_progress)  # fmt: skip
        with writing(args.out):
            make_dirs(args.out.parent)
            save_json(args.out, result)
        print(json.dumps(result, indent=2))
        return 0

    predictor = load_predictor(args)
    try:
        with writing(args.out), tempfile.TemporaryDirectory(prefix="ffsplat-compare-") as staging:
            # each baseline's JSON is staged outside the report folder and the report folder's files are renamed
            # into place together at the end: a failed compare leaves an earlier report exactly as it was
            make_dirs(args.out)
            compare(args, index, predictor, Path(staging))
    except BaselineFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


class BaselineFailed(Exception):
    """A baseline subprocess of ``compare`` failed (its own error is above)."""


def compare(args, index, predictor, staging: Path) -> None:
    """The feed-forward model and every baseline run (:func:`compare_runs`) -> the report folder's files."""
    from ffsplat.evaluation.evaluate import EvalConfig, evaluate_model
    from ffsplat.data.shards import EvalIndexDataset

    ff = evaluate_model(predictor, EvalIndexDataset(args.shards, args.split, index),
                        EvalConfig(prompt_grid=args.prompt_grid, source_views=True, max_examples=args.max_examples,
                                   ssim_variant=args.ssim, lpips_vgg_path=str(args.lpips_vgg) if args.lpips_vgg else None))  # fmt: skip
    ff.update(method="feed-forward", setting="sparse", init="-", supervision="teachers (training)", oracle=False)
    results = [ff]
    for method, setting, init, supervision, name in compare_runs(args):
        out = staging / name
        cmd = [sys.executable, "-m", "ffsplat.baselines", "run", "--method", method, "--setting", setting, "--out", str(out),
               "--checkpoint", str(args.checkpoint), "--shards", str(args.shards), "--split", args.split,
               "--index", str(args.index), "--scene-config", str(args.scene_config), "--prompt-grid", str(args.prompt_grid),
               "--dense-views", str(args.dense_views), "--device", args.device, "--init", init, "--supervision", supervision,
               "--mask-grid", str(args.mask_grid), "--ssim", args.ssim, "--init-points", str(args.init_points)]  # fmt: skip
        for flag, value in (
            ("--iterations", args.iterations),
            ("--max-examples", args.max_examples),
            ("--lpips-vgg", args.lpips_vgg),
        ):
            if value is not None:
                cmd += [flag, str(value)]
        if args.no_progress:
            cmd += ["--no-progress"]
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL)  # stderr (progress bar, errors) goes to the user
        if done.returncode != 0:
            raise BaselineFailed(f"baseline {method} ({setting}, init {init}, supervision {supervision}) failed with "
                                 f"exit code {done.returncode} (its output is above); the report folder is as it was")  # fmt: skip
        results.append(json.loads(out.read_text()))
        save_json(args.out / name, results[-1])
        r = results[-1]
        print(f"[compare] {method} ({setting}, {init}/{supervision}) done: reconstruction {r['reconstruction_s']:.1f} s/scene, "
              f"evaluation {r['evaluation_s']:.1f} s/scene", flush=True)  # fmt: skip
    ff_time = max(ff["reconstruction_s"], 1e-9)
    ratio = {
        f"{r['method']}_{r['setting']}{'_oracle' if r.get('oracle') else ''}": r["reconstruction_s"] / ff_time
        for r in results[1:]
    }
    save_json(args.out / "compare.json", {"results": results, "reconstruction_time_ratio_vs_feed_forward": ratio})
    print(write_table(results, args.out / "compare.md"))


@contextmanager
def writing(out: Path):
    """The outputs written inside appear together when the block succeeds; a failure leaves nothing of this
    run (and every earlier file as it was); a full disk is one ``error:`` line."""
    try:
        with transaction():
            yield
    except OSError as exc:
        raise InputError(f"--out: cannot write {out}: {exc.strerror or exc} (nothing was written)") from exc


if __name__ == "__main__":
    sys.exit(main())
