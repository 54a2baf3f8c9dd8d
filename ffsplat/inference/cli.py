"""Photos -> semantic 3D Gaussians (.ply), with optional renders and open-vocabulary queries.

    python infer.py --views a.png b.png c.png                             # poses registered with COLMAP
    python infer.py --views a.png b.png c.png --cameras cams.json --render
    python infer.py --views a.jpg b.jpg --cameras colmap/sparse/0 --save-depth
    python infer.py --views a.png b.png --query chair --query "table"

Cameras: ``--cameras`` is a JSON with per-view pixel intrinsics and camera-to-world poses in OpenCV
axes (schema: ``ffsplat/inference/cameras.py``, example: ``examples/demo/cameras.json``), a COLMAP
sparse model folder, a nerfstudio ``transforms.json`` or a ScanNet exported scene folder (converted;
views matched by file name). Without poses (no ``--cameras``, or an intrinsics-only cameras JSON),
2 or more views are registered with COLMAP (``ffsplat/inference/pose.py``): two views by their
two-view geometry, more by incremental mapping. Intrinsics per view, first that applies:
``--intrinsics fx,fy,cx,cy``, ``--focal`` (principal point at the centre), the photo's EXIF focal
length, ``--fov``, else a 60 degree horizontal field of view (said so). The distance between the
first two cameras is set to ``--baseline`` metres (photos alone have no absolute scale).

Outputs (all written atomically, only after every input checked out):
``--out`` scene.ply (3DGS layout + ``seg_*``/``lang_*`` fields + per-Gaussian ``class_id`` and
``class_conf``; ``class_id`` 0 = "unlabelled", none of the model's classes), ``<out>.json`` (class
names, Gaussians per class, cameras, timings), with ``--render`` PNGs of RGB,
depth and class maps, with ``--query`` a relevance map per view and ``<out stem>_<query>.ply``, with
``--save-depth`` each input view's predicted depth at the working size as ``<out stem>_depth/view_<i>.png``
(uint16 millimetres, 0 = beyond 65.535 m or invalid) and ``.npy`` (float32 metres); ``<out>.json``
records each view's resize and crop.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from ffsplat.core.errors import InputError, check_device, check_number, check_outputs, run_command  # noqa: E402
from ffsplat.checkpoint import DEFAULT_DEPTH_RANGE, depth_range  # noqa: E402


def _demo_checkpoint() -> Path:
    from ffsplat.core.config import DEMO_CHECKPOINT  # the checkout's, or bundled in an installed wheel

    return DEMO_CHECKPOINT


DEFAULT_CHECKPOINT = _demo_checkpoint()
SMALL_RUN_PIXELS = 2 * 256 * 256
"""Runs of at most this many working pixels (views x size^2) skip the memory estimate unless
--max-memory-gb is given (2 views at 256: 0.9 GB peak measured on CPU with the demo model)."""
MIN_IMAGE_SIDE = 16
"""Images with a side shorter than this (pixels) are refused: upscaling them invents the scene."""
MAX_UPSCALE = 4.0
"""Upscaling an image by more than this to the working size prints a warning."""


def check_view_path(path: Path) -> None:
    """An existing image file; a folder gets its own message (not "not found")."""
    if path.is_dir():
        raise InputError(f"--views: {path} is a folder; give the image files themselves (e.g. --views {path}/*.jpg)")
    if not path.is_file():
        raise InputError(f"--views: image not found: {path}")


def load_image(path: Path, rotated: list[Path] | None = None) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` as a photo viewer shows it (:func:`ffsplat.data.image_ops.read_photo`:
    EXIF orientation applied, gray / gray+alpha / 1-bit / palette / 16-bit made RGB, other modes
    refused); the paths whose EXIF orientation was applied are appended to ``rotated``."""
    from PIL import UnidentifiedImageError

    from ffsplat.data.image_ops import read_photo

    check_view_path(path)
    try:
        image, turned = read_photo(path)
    except ValueError as exc:
        raise InputError(f"--views: {exc}") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"--views: cannot read image {path}: {exc}") from exc
    if turned and rotated is not None:
        rotated.append(path)
    return image


def check_output(path: Path) -> None:
    if path.is_dir():
        raise InputError(f"--out: {path} is an existing folder; expected the path of a .ply file (nothing was written)")
    if path.suffix != ".ply":
        raise InputError(f"--out must end in .ply, got {path}")
    if str(path.resolve()).startswith("/proc/") or str(path.resolve()).startswith("/sys/"):
        raise InputError(f"--out: {path} is in a kernel file system; expected a path in an ordinary folder")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise InputError(f"--out: {parent} is not a directory")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise InputError(f"--out: cannot write to {parent} (no write permission)")


class Progress:
    def __init__(self, total: int):
        self.total, self.step, self.start = total, 0, time.perf_counter()
        self.times: dict[str, float] = {}
        self._last = self.start

    def __call__(self, name: str, message: str) -> None:
        now = time.perf_counter()
        self.step += 1
        self.times[name] = now - self._last
        self._last = now
        print(f"[{self.step}/{self.total}] {message} ({self.times[name]:.2f}s)", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--views", type=Path, nargs="+", required=True, help="2 or more images")
    p.add_argument(
        "--cameras",
        type=Path,
        help="cameras JSON (OpenCV axes, c2w, pixel intrinsics; c2w may be omitted), "
        "a COLMAP sparse model folder, a nerfstudio transforms.json or a ScanNet scene folder",
    )
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="a model.pt from training")
    p.add_argument("--out", type=Path, default=Path("outputs/scene.ply"))
    p.add_argument(
        "--size", type=int, default=None, help="square working size (default: the size the model was trained at)"
    )
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--bf16", action="store_true",
                   help="run the network's learned layers under bf16 autocast (geometry stays float32; for GPUs)")  # fmt: skip
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network (the first run compiles: seconds to minutes; for repeated runs)")  # fmt: skip
    p.add_argument("--max-memory-gb", type=float, help="memory the run may use (default: what the machine has available "
                   "now; CUDA: the GPU's free memory); a --size whose estimated peak exceeds it is refused")  # fmt: skip
    p.add_argument("--intrinsics", help="fx,fy,cx,cy in pixels of the input images, for every view (no poses needed)")
    p.add_argument(
        "--focal", type=float, help="focal length in pixels of the input images, principal point at the centre"
    )
    p.add_argument("--fov", type=float, help="horizontal field of view (degrees) for photos without EXIF focal length")
    p.add_argument("--baseline", type=float, default=0.3, help="metres between the first two registered cameras")
    p.add_argument(
        "--refine-intrinsics", action="store_true", help="refine focal lengths in COLMAP's bundle adjustment (3+ views)"
    )
    p.add_argument(
        "--save-depth",
        action="store_true",
        help="write each input view's predicted depth (16-bit mm PNG + float metres .npy)",
    )
    p.add_argument(
        "--near",
        type=float,
        help="nearest scene depth in metres (default: the cameras JSON's, else the model's training range, else 0.5)",
    )
    p.add_argument(
        "--far",
        type=float,
        help="farthest scene depth in metres (default: the cameras JSON's, else the model's training range, else 10)",
    )
    p.add_argument("--render", action="store_true", help="write RGB/depth/class PNGs at the input views")
    p.add_argument("--render-cameras", type=Path, help="cameras JSON of novel views to render (implies --render)")
    p.add_argument("--query", action="append", default=[], help="open-vocabulary text query (repeatable)")
    p.add_argument("--clip-path", help="local CLIP text model directory for --query (models trained with real LSeg)")
    p.add_argument("--view", action="store_true", help="then open the scene in the browser viewer (ffsplat-view)")
    p.add_argument("--view-port", type=int, default=8080, help="port of --view's viewer on 127.0.0.1 (0: a free one)")
    p.add_argument("--sam-checkpoint", help="local weights of the segmentation teacher of a conditioned model "
                   "(e.g. SAM), replacing the path stored in model.pt")  # fmt: skip
    p.add_argument("--lseg-checkpoint", help="local weights of the language teacher of a conditioned model "
                   "(e.g. LSeg), replacing the path stored in model.pt")  # fmt: skip
    return p.parse_args(argv)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def check_options(args: argparse.Namespace) -> None:
    """Range checks of every numeric option and the device (before anything is loaded or written)."""
    check_number("--fov", args.fov, low=1.0, high=170.0)
    check_number("--focal", args.focal, low=0.0, low_open=True)
    check_number("--baseline", args.baseline, low=0.0, low_open=True, high=1000.0)
    check_number("--size", args.size, low=16, high=4096, integer=True, multiple_of=4)
    check_number("--max-memory-gb", args.max_memory_gb, low=0, low_open=True)
    check_number("--near", args.near, low=0.0, low_open=True)
    check_number("--far", args.far, low=0.0, low_open=True)
    if args.near is not None and args.far is not None and not args.near < args.far:
        raise InputError(f"--near/--far: need near < far, got {args.near:g}, {args.far:g}")
    check_device("--device", args.device)
    if args.view:
        check_number("--view-port", args.view_port, low=0, high=65535, integer=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    import torch

    import ffsplat  # noqa: F401
    from ffsplat.inference.cameras import CameraFileError, read_cameras
    from ffsplat.inference.pose import PoseEstimationError
    from ffsplat.inference.fast import FastInferenceConfig
    from ffsplat.inference.predictor import CheckpointError, Predictor, teacher_overrides

    check_options(args)
    progress = Progress(6 + bool(args.render or args.render_cameras) + bool(args.query) + args.save_depth)
    if len(args.views) < 2:
        raise InputError(f"--views: need at least 2 images, got {len(args.views)}")
    for view in args.views:  # before the model is loaded
        check_view_path(view)
    check_output(args.out)
    check_outputs(*planned_outputs(args))  # before any work: never an input or a user's folder overwritten
    try:
        overrides = teacher_overrides(args.sam_checkpoint, args.lseg_checkpoint)
        fast = FastInferenceConfig(bf16=args.bf16, compile=args.compile) if (args.bf16 or args.compile) else None
        predictor = Predictor(args.checkpoint, args.device, overrides, fast=fast)
    except FileNotFoundError as exc:  # a conditioned model's teacher weights
        raise InputError(
            f"--checkpoint {args.checkpoint}: the model is conditioned on a teacher whose weights are missing ({exc}); "
            "give them with --sam-checkpoint / --lseg-checkpoint"
        ) from exc
    except (CheckpointError, KeyError) as exc:
        raise InputError(f"--checkpoint: {exc}") from exc
    if predictor.needs_labels:
        raise InputError(
            f"--checkpoint: {args.checkpoint} is conditioned on label-derived stand-in teachers, which need ground-truth "
            "labels; it can be evaluated on labelled shards (evaluate.py) but not run on new photos"
        )
    progress(
        "load",
        f"loaded {args.checkpoint} (trained on {predictor.meta.get('trained_on', '?')}, stage {predictor.meta.get('stage', '?')})",
    )

    rotated: list[Path] = []
    images = [load_image(p, rotated) for p in args.views]
    if rotated:
        print(f"info: applied the EXIF orientation of {', '.join(str(p) for p in rotated)} (as photo viewers do); "
              "sizes, intrinsics and --cameras refer to the displayed images", file=sys.stderr)  # fmt: skip
    size = _first(args.size, predictor.meta.get("image_size"), 256)
    size_from = (
        "--size"
        if args.size is not None
        else f"the working size (the training size {args.checkpoint} records; change it with --size)"
    )
    check_number(size_from, size, low=16, high=4096, integer=True, multiple_of=4)
    check_image_sizes(images, args.views, size)
    novel = None
    try:
        novel = read_cameras(args.render_cameras) if args.render_cameras else None
        ks, c2ws, near, far, how, registration = resolve_cameras(args, images, depth_range(predictor.meta))
    except (CameraFileError, PoseEstimationError) as exc:
        raise InputError(str(exc)) from exc
    if not 0 < near < far:
        raise InputError(f"--near/--far: need 0 < near < far, got {near}, {far}")
    progress("cameras", how)

    queries = query_embeddings(args, predictor)  # before anything is written: a bad query writes nothing
    check_memory(args, predictor, images, ks, c2ws, near, far, size, size_from)
    context, size = prepare_views(images, ks, c2ws, near, far, size, predictor.device, size_from)
    progress("prepare", f"{len(images)} views resized/cropped to {size}x{size} with their intrinsics")

    teacher = predictor.teacher_maps(context) if predictor.conditioned else None
    out = predictor(context, teacher)
    gaussians = out.gaussians
    progress("network", f"predicted {gaussians.num_gaussians} Gaussians")

    from ffsplat.model.network import LANG
    from ffsplat.render.renderer import render

    with torch.no_grad():
        rendered = render(gaussians, context.cameras, features=[LANG])  # only LANG is decoded
        lang = predictor.model.decode_fields({LANG: rendered.features[LANG]}, {"lseg": (size, size)})["lseg"][0]
    class_id, class_conf = classify(lang, predictor)
    counts = class_counts(class_id, predictor.class_names)
    shown = ", ".join(f"{n} {name}" for name, n in list(counts.items())[:6])
    progress("semantics", f"classified Gaussians into {len(predictor.class_names)} classes: {shown}")

    from ffsplat.core.atomic import transaction

    try:
        with transaction():  # every output appears together, or none does (earlier outputs stay as they were)
            write_outputs(args, predictor, gaussians, context, novel, lang, class_id, class_conf, queries, how, near, far,
                          size, progress, registration=registration, depth=out.depth.depth[0], images=images, rendered=rendered)  # fmt: skip
    except OSError as exc:  # full disk, quota, a folder that vanished: nothing of this run is left behind
        raise InputError(
            f"--out: cannot write the outputs beside {args.out}: {exc.strerror or exc} (nothing was written)"
        ) from exc
    trained = predictor.meta.get("trained_groups")
    if trained is not None and "language" not in trained:
        print(f"warning: {args.checkpoint}: the language field was never trained (model.pt trained_groups: "
              f"{list(trained)}), so these classes are not meaningful; train stage=lang first", file=sys.stderr)  # fmt: skip
    print(f"done in {time.perf_counter() - progress.start:.2f}s")
    if args.view:
        from ffsplat.inference.viewer import load_scene, serve

        serve(load_scene(args.out), port=args.view_port)


def query_stem(stem: Path, query: str) -> Path:
    """``<out stem>_<query>`` with every character that is not a letter or digit replaced by ``_``."""
    return Path(f"{stem}_{''.join(c if c.isalnum() else '_' for c in query)}")


def planned_outputs(args) -> tuple[dict, dict, dict]:
    """``(files, inputs, folders)`` for :func:`~ffsplat.core.errors.check_outputs`: every path this run
    may write, and every path it reads."""
    stem = args.out.with_suffix("")
    files: dict = {"--out": args.out, "the summary (<out>.json)": Path(f"{stem}.json")}
    folders: dict = {}
    if args.render or args.render_cameras:
        folders["--render (<out>_render/)"] = Path(f"{stem}_render")
    if args.save_depth:
        folders["--save-depth (<out>_depth/)"] = Path(f"{stem}_depth")
    for query in args.query:
        q = query_stem(stem, query)
        files[f"--query {query!r}"] = [Path(f"{q}.ply")] + [Path(f"{q}_view_{v}.png") for v in range(len(args.views))]
    inputs = {"--views": list(args.views), "--cameras": args.cameras, "--checkpoint": args.checkpoint,
              "--render-cameras": args.render_cameras, "--clip-path": args.clip_path and Path(args.clip_path),
              "--sam-checkpoint": args.sam_checkpoint and Path(args.sam_checkpoint),
              "--lseg-checkpoint": args.lseg_checkpoint and Path(args.lseg_checkpoint)}  # fmt: skip
    return files, inputs, folders


def write_outputs(args, predictor, gaussians, context, novel, lang, class_id, class_conf, queries, how, near, far, size,
                  progress, registration=None, depth=None, images=None, rendered=None) -> None:  # fmt: skip
    """Write the .ply, renders, depth maps, query results and the summary JSON (inside the caller's
    :func:`~ffsplat.core.atomic.transaction`, so they appear together). ``depth [V, size, size]`` and the
    input ``images`` are for ``--save-depth``; ``registration`` is the COLMAP report (or None);
    ``rendered`` is the semantics render at the context cameras, reused by ``--render``."""
    from ffsplat.core.atomic import atomic_open, make_dirs
    from ffsplat.render.ply import write_ply

    make_dirs(args.out.parent)
    g0 = gaussians[0].to("cpu")
    write_ply(args.out, g0, extra={"class_id": class_id.reshape(-1).cpu().numpy().astype(np.int32),
                                   "class_conf": class_conf.reshape(-1).cpu().numpy().astype(np.float32)})  # fmt: skip
    summary = {
        "ply": str(args.out),
        "gaussians": g0.num_gaussians,
        "class_names": ["unlabelled"] + predictor.class_names,
        "class_counts": class_counts(class_id, predictor.class_names),
        "cameras": {
            "how": how,
            "K": context.cameras.intrinsics[0].tolist(),
            "c2w": context.cameras.extrinsics[0].tolist(),
            "size": size,
            "near": near,
            "far": far,
        },  # fmt: skip
    }
    if registration is not None:
        summary["cameras"]["registration"] = registration.report.to_dict()
    progress("write", f"wrote {args.out} ({g0.num_gaussians} Gaussians, class_id/class_conf attributes)")

    stem = args.out.with_suffix("")
    if args.render or novel is not None:
        targets = context.cameras if novel is None else novel_cameras(novel, size, predictor.device)
        # At the context cameras the semantics render above is the --render output: reuse it.
        paths = write_renders(predictor, gaussians, targets, stem, reuse=(rendered, lang) if novel is None else None)
        summary["renders"] = paths
        progress("render", f"rendered {len(paths)} images to {stem}_render/")
    if args.save_depth:
        summary["depth"] = write_depth(depth, images, size, stem)
        progress("depth", f"wrote {len(images)} depth maps to {stem}_depth/ (16-bit mm PNG + float metres .npy)")
    if args.query:
        summary["queries"] = write_queries(queries, predictor, g0, lang, stem)
        matched = sum(1 for r in summary["queries"].values() if r["gaussians"])
        progress("query", f"{matched} of {len(queries)} quer{'y' if len(queries) == 1 else 'ies'} matched Gaussians")
    summary["seconds"] = {
        **{k: round(v, 3) for k, v in progress.times.items()},
        "total": round(time.perf_counter() - progress.start, 3),
    }
    with atomic_open(Path(f"{stem}.json"), "w") as f:
        json.dump(summary, f, indent=2)


def parse_intrinsics(text: str) -> np.ndarray:
    """``"fx,fy,cx,cy"`` -> ``[3, 3]``, or InputError."""
    try:
        fx, fy, cx, cy = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise InputError(f"--intrinsics: expected four numbers fx,fy,cx,cy in pixels, got {text!r}") from exc
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def view_intrinsics(args, images) -> tuple[list[np.ndarray], list[str]]:
    """Per-view pixel intrinsics and where each came from: --intrinsics, --focal, EXIF, --fov, 60 deg."""
    from ffsplat.inference.cameras import check_intrinsics, exif_focal
    from ffsplat.inference.pose import default_intrinsics

    given = [o for o in ("intrinsics", "focal") if getattr(args, o) is not None]
    if len(given) > 1:
        raise InputError("--intrinsics and --focal both give the focal length; use one")
    if args.focal is not None and not (math.isfinite(args.focal) and args.focal > 0):
        raise InputError(f"--focal: expected a positive number of pixels, got {args.focal}")
    if args.fov is not None and not 0 < args.fov < 180:
        raise InputError(f"--fov: expected degrees in (0, 180), got {args.fov}")
    ks, sources = [], []
    for path, image in zip(args.views, images):
        h, w = image.shape[:2]
        if args.intrinsics is not None:
            k, source = parse_intrinsics(args.intrinsics), "--intrinsics"
            check_intrinsics(k, h, w, f"--intrinsics (for {path.name}, {w}x{h})")
        elif args.focal is not None:
            k, source = np.array([[args.focal, 0, w / 2], [0, args.focal, h / 2], [0, 0, 1.0]]), "--focal"
        elif (exif := exif_focal(path, h, w)) is not None:
            k, source = np.array([[exif[0], 0, w / 2], [0, exif[0], h / 2], [0, 0, 1.0]]), exif[1]
        elif args.fov is not None:
            k, source = default_intrinsics(h, w, args.fov), f"--fov {args.fov:g} deg"
        else:
            k, source = (
                default_intrinsics(h, w, 60.0),
                "assumed 60 deg field of view (no EXIF focal length; give --focal or --intrinsics)",
            )
        ks.append(k)
        sources.append(source)
    return ks, sources


def resolve_cameras(args, images, default_range: tuple[float, float] = DEFAULT_DEPTH_RANGE):
    """(ks, c2ws [V, 4, 4], near, far, how, registration or None) from --cameras or COLMAP registration.

    near/far: --near/--far, else the cameras file's, else ``default_range`` (the model's training
    depth range, :func:`ffsplat.checkpoint.depth_range`)."""
    from ffsplat.inference.cameras import load_cameras
    from ffsplat.inference.pose import RegistrationConfig, register_views

    near, far, intrinsics_from = args.near, args.far, None
    if args.cameras:
        if args.intrinsics is not None or args.focal is not None or args.fov is not None:
            raise InputError("--intrinsics/--focal/--fov cannot be combined with --cameras (its intrinsics are used)")
        cams, fmt = load_cameras(args.cameras, [p.name for p in args.views], [im.shape[:2] for im in images])
        if len(cams.views) != len(images):
            raise InputError(
                f"--cameras: {args.cameras} has {len(cams.views)} views but {len(images)} images were given"
            )
        for i, (view, image, path) in enumerate(zip(cams.views, images, args.views)):
            if (view.height, view.width) != image.shape[:2]:
                raise InputError(
                    f"--cameras: views[{i}] is {view.width}x{view.height} but {path} is {image.shape[1]}x{image.shape[0]}"
                )
            if view.image and Path(view.image).name != path.name:
                raise InputError(f"--cameras: views[{i}] names {view.image} but the image given is {path.name}")
        near, far = near or cams.near, far or cams.far
        ks = [v.k for v in cams.views]
        if cams.views[0].c2w is not None:
            if args.refine_intrinsics:
                raise InputError("--refine-intrinsics applies to registration; --cameras already gives poses")
            how = f"cameras from {args.cameras} ({fmt})"
            c2ws = np.stack([v.c2w for v in cams.views])
            check_distinct_poses(c2ws, f"--cameras: {args.cameras}")
            return ks, c2ws, near or default_range[0], far or default_range[1], how, None
        sources = [f"{args.cameras}"] * len(images)
        intrinsics_from = f"intrinsics from {args.cameras}"
    else:
        ks, sources = view_intrinsics(args, images)
    if not (math.isfinite(args.baseline) and args.baseline > 0):
        raise InputError(f"--baseline: expected a positive number of metres, got {args.baseline}")
    cfg = RegistrationConfig(refine_intrinsics=args.refine_intrinsics)
    try:
        reg = register_views(images, ks, baseline=args.baseline, names=[p.name for p in args.views], config=cfg)
    except ValueError as exc:
        raise InputError(f"--refine-intrinsics: {exc}" if args.refine_intrinsics else str(exc)) from exc
    if intrinsics_from is None:
        unique = sorted(set(sources), key=sources.index)
        intrinsics_from = "intrinsics from " + (
            "; ".join(f"{p.name}: {s}" for p, s in zip(args.views, sources)) if len(unique) > 1 else unique[0]
        )
    how = f"{reg.report.summary()}; {intrinsics_from}" + ("; focal lengths refined" if args.refine_intrinsics else "")
    return list(reg.k), reg.c2w, near or default_range[0], far or default_range[1], how, reg


def write_depth(depth, images, size: int, stem: Path) -> dict:
    """Each input view's predicted depth ``depth [V, size, size]`` (metres) as a uint16 millimetre PNG
    and a float32 metres ``.npy`` at the working size, and each view's resize/crop from its photo."""
    from PIL import Image

    from ffsplat.core.atomic import atomic_open, make_dirs
    from ffsplat.core.types import center_crop_offsets, cover_size

    folder = make_dirs(f"{stem}_depth")
    views = []
    for v, image in enumerate(images):
        metres = depth[v].float().cpu().numpy().astype(np.float32)
        mm = np.where(np.isfinite(metres) & (metres > 0), np.round(metres * 1000.0), 0)
        mm = np.where(mm > 65535, 0, mm).astype(np.uint16)
        png, npy = folder / f"view_{v}.png", folder / f"view_{v}.npy"
        with atomic_open(png) as f:
            Image.fromarray(mm).save(f, format="PNG")
        with atomic_open(npy) as f:
            np.save(f, metres)
        h, w = image.shape[:2]
        cover = cover_size((h, w), (size, size))
        top, left = center_crop_offsets(cover, (size, size))
        views.append({"png_mm": str(png), "npy_m": str(npy), "input_size": [h, w], "resized_to": list(cover),
                      "crop_top_left": [top, left], "crop_size": [size, size], "scale_xy": [cover[1] / w, cover[0] / h]})  # fmt: skip
    return {"units": {"png": "uint16 millimetres (0 = invalid or beyond 65.535 m)", "npy": "float32 metres"},
            "pixel_map": "working pixel (x, y) = input (x, y) * scale_xy - (left, top); pixel centres at +0.5", "views": views}  # fmt: skip


def check_memory(args, predictor, images, ks, c2ws, near, far, size: int, size_from: str) -> None:
    """Refuse, before the network runs at ``size``, a run whose estimated peak memory exceeds the
    limit (:mod:`ffsplat.inference.memory`: the network and its rendering measured at two probe sizes)."""
    import torch

    from ffsplat.inference.memory import available_bytes, estimate_bytes, resident_bytes
    from ffsplat.model.network import LANG
    from ffsplat.render.renderer import render

    if size * size * len(images) <= SMALL_RUN_PIXELS and args.max_memory_gb is None:
        return  # the default workload (2 views at 256): under 1 GB measured, not worth the probes' seconds
    device = predictor.device
    if args.max_memory_gb is not None:
        limit, what = int(args.max_memory_gb * 2**30), "--max-memory-gb"
    else:
        free = available_bytes(device)
        if free is None:
            return
        cpu = torch.device(device).type == "cpu"
        limit = free + (resident_bytes() if cpu else 0)
        what = "the memory available on this machine" if cpu else f"the free memory of {device}"

    def run_at(probe: int) -> None:
        with torch.no_grad():
            context, _ = prepare_views(images, ks, c2ws, near, far, probe, device, size_from)
            # eager float32: an upper bound for --bf16, and no torch.compile of the probe sizes
            out = predictor(context, predictor.teacher_maps(context) if predictor.conditioned else None, eager=True)
            render(out.gaussians, context.cameras, features=[LANG])

    need = estimate_bytes(run_at, size, device)
    if need > limit:
        raise InputError(
            f"{size_from}: {size}x{size} with {len(images)} views needs about {need / 2**30:.3g} GB (estimated) but "
            f"the limit is {limit / 2**30:.3g} GB ({what}); use a smaller --size, fewer views, or --max-memory-gb"
        )


def prepare_views(images, ks, c2ws, near: float, far: float, size: int, device, size_from: str = "--size"):
    """Resize/centre-crop every image to ``size x size`` with its intrinsics -> context Views
    (``size_from``: where the size came from, for the error message)."""
    import torch

    from ffsplat.data.image_ops import resize_and_center_crop
    from ffsplat.core.types import Cameras, Views

    if size % 4:
        raise InputError(f"{size_from}: expected a multiple of 4, got {size}")
    crops, kk = zip(*(resize_and_center_crop(im, k, (size, size)) for im, k in zip(images, ks)))
    tensor = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255)[None]
    cams = Cameras(
        torch.tensor(np.stack(kk), dtype=torch.float32)[None],
        torch.tensor(c2ws, dtype=torch.float32)[None],
        (size, size),
    )
    try:
        cams.validate("cameras")
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    return Views(tensor, cams, torch.tensor([near]), torch.tensor([far])).to(device), size


def classify(lang, predictor):
    """Per-pixel (= per-Gaussian, they are in pixel order) class ids 1..K (0: the model's background)
    and softmax confidence."""
    from ffsplat.objectives.policy import classify as classify_pixels

    return classify_pixels(lang, predictor.class_embeddings, predictor.background_embedding)


def class_counts(class_id, class_names: list[str]) -> dict[str, int]:
    """``{name: Gaussians}`` for the classes that occur, most frequent first; id 0 is ``"unlabelled"``
    (the model's background: none of its classes)."""
    ids = class_id.reshape(-1).cpu()
    counts = ids.bincount(minlength=len(class_names) + 1).tolist()
    names = ["unlabelled", *class_names]
    return {names[i]: n for i, n in sorted(enumerate(counts), key=lambda item: -item[1]) if n}


def novel_cameras(cam_file, size: int, device):
    import torch

    from ffsplat.core.types import Cameras

    cams = Cameras(
        torch.tensor(np.stack([v.k for v in cam_file.views]), dtype=torch.float32),
        torch.tensor(np.stack([v.c2w for v in cam_file.views]), dtype=torch.float32),
        (cam_file.views[0].height, cam_file.views[0].width),
    )
    if any((v.height, v.width) != cams.image_size for v in cam_file.views):
        raise InputError("--render-cameras: all novel views must share one image size")
    return cams.resize_and_center_crop(size, size)[None].to(device)


def write_renders(predictor, gaussians, cameras, stem: Path, reuse=None) -> list[str]:
    """RGB/depth/class PNGs per view; ``reuse`` = ``(RenderOutput with LANG, decoded lang [V, 512, H, W])``
    already computed at ``cameras`` skips rendering and decoding again."""
    import torch
    from PIL import Image

    from ffsplat.core.atomic import atomic_open, make_dirs
    from ffsplat.model.network import LANG
    from ffsplat.render.renderer import render
    from ffsplat.render.colormap import colorize_depth, colorize_labels, to_uint8

    if reuse is not None:
        r, lang = reuse
    else:
        with torch.no_grad():
            r = render(gaussians, cameras, features=[LANG])
            h, w = cameras.image_size
            lang = predictor.model.decode_fields({LANG: r.features[LANG]}, {"lseg": (h, w)})["lseg"][0]
    ids, _ = classify(lang, predictor)
    folder = make_dirs(f"{stem}_render")
    paths = []
    for v in range(r.rgb.shape[1]):
        for name, image in (
            ("rgb", r.rgb[0, v]),
            ("depth", colorize_depth(r.depth[0, v])),
            ("classes", colorize_labels(ids[v])),
        ):
            path = folder / f"view_{v}_{name}.png"
            with atomic_open(path) as f:
                Image.fromarray(to_uint8(image).numpy()).save(f, format="PNG")
            paths.append(str(path))
    return paths


def _first(*values):
    """The first value that is not None (an explicit 0 is kept, so that range checks see it)."""
    return next(v for v in values if v is not None)


def check_distinct_poses(c2ws: np.ndarray, where: str, min_baseline: float = 1e-6) -> None:
    """Refuse cameras that all sit at one point: two views with no baseline give no depth from parallax."""
    centres = np.asarray(c2ws)[:, :3, 3]
    spread = np.linalg.norm(centres[:, None] - centres[None], axis=-1).max()
    if spread < min_baseline:
        raise InputError(
            f"{where}: all views have the same camera position (zero baseline); the views must be taken from different places"
        )


def check_image_sizes(images: list[np.ndarray], paths: list[Path], size: int) -> None:
    """Refuse images too small to reconstruct from; warn when one is upscaled a lot to ``size``."""
    for image, path in zip(images, paths):
        h, w = image.shape[:2]
        if min(h, w) < MIN_IMAGE_SIDE:
            raise InputError(f"--views: {path} is {w}x{h}; images need at least {MIN_IMAGE_SIDE} pixels per side")
        if size / min(h, w) > MAX_UPSCALE:
            print(f"warning: {path} ({w}x{h}) is upscaled {size / min(h, w):.1f}x to the working size {size}; "
                  "expect blurry results", file=sys.stderr)  # fmt: skip


def query_embeddings(args, predictor) -> dict:
    """``{query: embedding [C]}`` for every ``--query``, checked before anything is written."""
    names = predictor.class_names
    queries, unknown = {}, []
    for query in args.query:
        if not query.strip():
            raise InputError("--query: empty query text")
        if query in names:
            queries[query] = predictor.class_embeddings[names.index(query)]
        else:
            unknown.append(query)
    if unknown and not args.clip_path:
        raise InputError(
            f"--query {unknown[0]!r}: this model knows the classes {names}; other words need --clip-path (a local CLIP text model)"
        )
    if unknown:
        from ffsplat.teachers.clip_text import ClipTextEncoder

        try:
            encoder = ClipTextEncoder.from_pretrained(args.clip_path)
            encoded = encoder(unknown)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"--clip-path: cannot load a CLIP text model from {args.clip_path}: {exc}") from exc
        if encoded.shape[-1] != predictor.class_embeddings.shape[-1]:
            raise InputError(
                f"--clip-path: {args.clip_path} gives {encoded.shape[-1]}-d text embeddings, the model's language field is {predictor.class_embeddings.shape[-1]}-d"
            )
        for query, emb in zip(unknown, encoded):
            queries[query] = emb.to(predictor.device)
    return queries


def write_queries(queries: dict, predictor, gaussians, lang, stem: Path) -> dict:
    """Relevance map per view and a .ply of the Gaussians whose best label is the query.

    A query that no Gaussian matches writes nothing and says so."""
    from PIL import Image

    from ffsplat.core.atomic import atomic_open
    from ffsplat.objectives.policy import match_query
    from ffsplat.render.ply import write_ply

    names = predictor.class_names
    results = {}
    for query, embedding in queries.items():
        target = names.index(query) if query in names else embedding
        match, relevance = match_query(lang, predictor.class_embeddings, target, predictor.background_embedding)
        keep = match.reshape(-1).cpu()
        count = int(keep.sum())
        if count == 0:
            print(
                f"query {query!r}: no Gaussian matched (every one is closer to another class or to the background); nothing written for it",
                flush=True,
            )
            results[query] = {"relevance_maps": [], "ply": None, "gaussians": 0}
            continue
        q = query_stem(stem, query)
        maps = []
        for v in range(len(relevance)):
            path = Path(f"{q}_view_{v}.png")
            heat = (relevance[v].clamp(0, 1) * 255).round().byte().cpu().numpy()
            with atomic_open(path) as f:
                Image.fromarray(heat).save(f, format="PNG")
            maps.append(str(path))
        ply = Path(f"{q}.ply")
        write_ply(ply, gaussians.select(keep))
        print(f"query {query!r}: {count} of {len(keep)} Gaussians matched -> {ply}", flush=True)
        results[query] = {"relevance_maps": maps, "ply": str(ply), "gaussians": count}
    return results


if __name__ == "__main__":
    sys.exit(main())
