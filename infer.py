"""Photos -> semantic 3D Gaussians (.ply), with optional renders and open-vocabulary queries.

    python infer.py --views a.png b.png                                   # poses estimated (2 views)
    python infer.py --views a.png b.png c.png --cameras cams.json --render
    python infer.py --views a.png b.png --query chair --query "table"

Cameras: ``--cameras`` JSON with per-view pixel intrinsics and camera-to-world poses in OpenCV axes
(schema: ``ffsplat/inference/cameras.py``, example: ``examples/demo/cameras.json``). Without it, two views
are registered with SIFT + the essential matrix, intrinsics from ``--fov`` (or ``--focal``), and the
translation scaled to ``--baseline`` metres (a two-view reconstruction has no absolute scale).

Outputs (all written atomically, only after every input checked out):
``--out`` scene.ply (3DGS layout + ``seg_*``/``lang_*`` fields + per-Gaussian ``class_id`` and
``class_conf``), ``<out>.json`` (class names, cameras, timings), with ``--render`` PNGs of RGB,
depth and class maps, with ``--query`` a relevance map per view and ``<out stem>_<query>.ply``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "demo" / "model.pt"


class InputError(ValueError):
    """Bad user input; the message names the file/option and what was expected."""


def load_image(path: Path) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]``; grayscale is expanded, RGBA's alpha dropped, other modes refused."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"--views: image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("RGB", "RGBA", "L"):
                raise InputError(f"--views: {path} has {len(im.getbands())} channels (mode {im.mode}); expected RGB, RGBA or grayscale")
            return np.asarray(im.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"--views: cannot read image {path}: {exc}") from exc


def check_output(path: Path) -> None:
    if path.suffix != ".ply":
        raise InputError(f"--out must end in .ply, got {path}")
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
    p.add_argument("--cameras", type=Path, help="cameras JSON (OpenCV axes, c2w, pixel intrinsics)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="a model.pt from training")
    p.add_argument("--out", type=Path, default=Path("outputs/scene.ply"))
    p.add_argument("--size", type=int, default=None, help="square working size (default: the size the model was trained at)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--fov", type=float, default=60.0, help="horizontal field of view (degrees) when no cameras are given")
    p.add_argument("--focal", type=float, help="focal length in pixels of the input images (overrides --fov)")
    p.add_argument("--baseline", type=float, default=0.3, help="metres between the two estimated cameras")
    p.add_argument("--near", type=float, help="nearest scene depth in metres (default: cameras JSON or 0.5)")
    p.add_argument("--far", type=float, help="farthest scene depth in metres (default: cameras JSON or 10)")
    p.add_argument("--render", action="store_true", help="write RGB/depth/class PNGs at the input views")
    p.add_argument("--render-cameras", type=Path, help="cameras JSON of novel views to render (implies --render)")
    p.add_argument("--query", action="append", default=[], help="open-vocabulary text query (repeatable)")
    p.add_argument("--clip-path", help="local CLIP text model directory for --query (models trained with real LSeg)")
    p.add_argument("--sam-checkpoint", help="local SAM weights (models conditioned on SAM)")
    p.add_argument("--lseg-checkpoint", help="local LSeg weights (models conditioned on LSeg)")
    return p.parse_args(argv)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> None:
    import torch

    import ffsplat  # noqa: F401
    from ffsplat.inference.cameras import CameraFileError, read_cameras
    from ffsplat.inference.pose import PoseEstimationError, default_intrinsics, estimate_relative_pose
    from ffsplat.inference.predictor import CheckpointError, Predictor, teacher_overrides

    progress = Progress(6 + bool(args.render or args.render_cameras) + bool(args.query))
    if len(args.views) < 2:
        raise InputError(f"--views: need at least 2 images, got {len(args.views)}")
    check_output(args.out)
    try:
        predictor = Predictor(args.checkpoint, args.device, teacher_overrides(args.sam_checkpoint, args.lseg_checkpoint))
    except (CheckpointError, FileNotFoundError, KeyError) as exc:
        raise InputError(f"--checkpoint: {exc}") from exc
    if predictor.needs_labels:
        raise InputError(
            f"--checkpoint: {args.checkpoint} is conditioned on label-derived stand-in teachers, which need ground-truth "
            "labels; it can be evaluated on labelled shards (evaluate.py) but not run on new photos"
        )
    progress("load", f"loaded {args.checkpoint} (trained on {predictor.meta.get('trained_on', '?')}, stage {predictor.meta.get('stage', '?')})")

    images = [load_image(p) for p in args.views]
    novel = None
    try:
        novel = read_cameras(args.render_cameras) if args.render_cameras else None
        if args.cameras:
            cams = read_cameras(args.cameras)
            if len(cams.views) != len(images):
                raise InputError(f"--cameras: {args.cameras} has {len(cams.views)} views but {len(images)} images were given")
            for i, (view, image, path) in enumerate(zip(cams.views, images, args.views)):
                if (view.height, view.width) != image.shape[:2]:
                    raise InputError(f"--cameras: views[{i}] is {view.width}x{view.height} but {path} is {image.shape[1]}x{image.shape[0]}")
                if view.image and Path(view.image).name != path.name:
                    raise InputError(f"--cameras: views[{i}] names {view.image} but the image given is {path.name}")
            ks, c2ws = [v.k for v in cams.views], np.stack([v.c2w for v in cams.views])
            near, far = args.near or cams.near or 0.5, args.far or cams.far or 10.0
            how = f"cameras from {args.cameras}"
        else:
            if len(images) != 2:
                raise InputError(f"pose estimation registers exactly 2 views; give --cameras for {len(images)} views")
            ks = [default_intrinsics(*im.shape[:2], args.fov) if args.focal is None else
                  np.array([[args.focal, 0, im.shape[1] / 2], [0, args.focal, im.shape[0] / 2], [0, 0, 1.0]]) for im in images]  # fmt: skip
            pose = estimate_relative_pose(images[0], images[1], ks[0], ks[1], baseline=args.baseline)
            c2ws, near, far = pose.c2w, args.near or 0.5, args.far or 10.0
            how = (f"estimated relative pose ({pose.matches} matches, {pose.inliers} inliers; "
                   f"intrinsics from {'--focal' if args.focal else f'{args.fov:g} deg FOV'}; baseline scaled to {args.baseline} m)")  # fmt: skip
    except (CameraFileError, PoseEstimationError) as exc:
        raise InputError(str(exc)) from exc
    if not 0 < near < far:
        raise InputError(f"--near/--far: need 0 < near < far, got {near}, {far}")
    progress("cameras", how)

    context, size = prepare_views(images, ks, c2ws, near, far, args.size or predictor.meta.get("image_size") or 256, predictor.device)
    progress("prepare", f"{len(images)} views resized/cropped to {size}x{size} with their intrinsics")

    teacher = predictor.teacher_maps(context) if predictor.cfg.model.conditioning.names else None
    out = predictor(context, teacher)
    gaussians = out.gaussians
    progress("network", f"predicted {gaussians.num_gaussians} Gaussians")

    from ffsplat.model.network import LANG
    from ffsplat.render.renderer import render

    with torch.no_grad():
        rendered = render(gaussians, context.cameras, features=[LANG])  # only LANG is decoded
        lang = predictor.model.decode_fields({LANG: rendered.features[LANG]}, {"lseg": (size, size)})["lseg"][0]
    class_id, class_conf = classify(lang, predictor.class_embeddings)
    progress("semantics", f"classified Gaussians into {len(predictor.class_names)} classes")

    from ffsplat.core.atomic import atomic_open
    from ffsplat.render.ply import write_ply

    args.out.parent.mkdir(parents=True, exist_ok=True)
    g0 = gaussians[0].to("cpu")
    write_ply(args.out, g0, extra={"class_id": class_id.reshape(-1).cpu().numpy().astype(np.int32),
                                   "class_conf": class_conf.reshape(-1).cpu().numpy().astype(np.float32)})  # fmt: skip
    summary = {
        "ply": str(args.out), "gaussians": g0.num_gaussians, "class_names": ["unlabelled"] + predictor.class_names,
        "cameras": {"how": how, "K": context.cameras.intrinsics[0].tolist(), "c2w": context.cameras.extrinsics[0].tolist(),
                    "size": size, "near": near, "far": far},  # fmt: skip
    }
    progress("write", f"wrote {args.out} ({g0.num_gaussians} Gaussians, class_id/class_conf attributes)")

    stem = args.out.with_suffix("")
    if args.render or novel is not None:
        targets = context.cameras if novel is None else novel_cameras(novel, size, predictor.device)
        # At the context cameras the semantics render above is the --render output: reuse it.
        paths = write_renders(predictor, gaussians, targets, stem, reuse=(rendered, lang) if novel is None else None)
        summary["renders"] = paths
        progress("render", f"rendered {len(paths)} images to {stem}_render/")
    if args.query:
        summary["queries"] = write_queries(args, predictor, g0, lang, stem)
        progress("query", f"wrote relevance maps and matching Gaussians for {len(args.query)} quer{'y' if len(args.query) == 1 else 'ies'}")
    summary["seconds"] = {**{k: round(v, 3) for k, v in progress.times.items()}, "total": round(time.perf_counter() - progress.start, 3)}
    with atomic_open(Path(f"{stem}.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"done in {summary['seconds']['total']:.2f}s")


def prepare_views(images, ks, c2ws, near: float, far: float, size: int, device):
    """Resize/centre-crop every image to ``size x size`` with its intrinsics -> context Views."""
    import torch

    from ffsplat.data.image_ops import resize_and_center_crop
    from ffsplat.core.types import Cameras, Views

    if size % 4:
        raise InputError(f"--size must be a multiple of 4, got {size}")
    crops, kk = zip(*(resize_and_center_crop(im, k, (size, size)) for im, k in zip(images, ks)))
    tensor = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255)[None]
    cams = Cameras(torch.tensor(np.stack(kk), dtype=torch.float32)[None], torch.tensor(c2ws, dtype=torch.float32)[None], (size, size))
    try:
        cams.validate("cameras")
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    return Views(tensor, cams, torch.tensor([near]), torch.tensor([far])).to(device), size


def classify(lang, class_embeddings):
    """Per-pixel (= per-Gaussian, they are in pixel order) class ids 1..K and softmax confidence."""
    import torch

    feats = torch.nn.functional.normalize(lang, dim=1)
    logits = torch.einsum("vchw,kc->vkhw", feats, torch.nn.functional.normalize(class_embeddings, dim=-1)) / 0.07
    conf, idx = logits.softmax(dim=1).max(dim=1)
    return idx + 1, conf


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

    from ffsplat.core.atomic import atomic_open
    from ffsplat.model.network import LANG
    from ffsplat.render.renderer import render
    from ffsplat.evaluation.figures import colorize_depth, colorize_labels, to_uint8

    if reuse is not None:
        r, lang = reuse
    else:
        with torch.no_grad():
            r = render(gaussians, cameras, features=[LANG])
            h, w = cameras.image_size
            lang = predictor.model.decode_fields({LANG: r.features[LANG]}, {"lseg": (h, w)})["lseg"][0]
    ids, _ = classify(lang, predictor.class_embeddings)
    folder = Path(f"{stem}_render")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for v in range(r.rgb.shape[1]):
        for name, image in (("rgb", r.rgb[0, v]), ("depth", colorize_depth(r.depth[0, v])), ("classes", colorize_labels(ids[v]))):
            path = folder / f"view_{v}_{name}.png"
            with atomic_open(path) as f:
                Image.fromarray(to_uint8(image).numpy()).save(f, format="PNG")
            paths.append(str(path))
    return paths


def write_queries(args, predictor, gaussians, lang, stem: Path) -> dict:
    """Relevance map per view and a .ply of the Gaussians whose best label is the query."""
    import torch
    from PIL import Image

    from ffsplat.core.atomic import atomic_open
    from ffsplat.render.ply import write_ply

    names = predictor.class_names
    results = {}
    for query in args.query:
        if query in names:
            embedding = predictor.class_embeddings[names.index(query)]
        elif args.clip_path:
            from ffsplat.teachers.clip_text import ClipTextEncoder

            embedding = ClipTextEncoder.from_pretrained(args.clip_path)([query])[0].to(predictor.device)
        else:
            raise InputError(f"--query {query!r}: this model knows the classes {names}; other words need --clip-path (a local CLIP text model)")
        table = torch.cat([predictor.class_embeddings, embedding[None]]) if query not in names else predictor.class_embeddings
        q_index = len(names) if query not in names else names.index(query)
        feats = torch.nn.functional.normalize(lang, dim=1)
        cos = torch.einsum("vchw,kc->vkhw", feats, torch.nn.functional.normalize(table, dim=-1))
        match = cos.argmax(dim=1) == q_index  # [V, H, W]
        relevance = cos.softmax(dim=1)[:, q_index]
        safe = "".join(c if c.isalnum() else "_" for c in query)
        maps = []
        for v in range(len(relevance)):
            path = Path(f"{stem}_{safe}_view_{v}.png")
            heat = (relevance[v].clamp(0, 1) * 255).round().byte().cpu().numpy()
            with atomic_open(path) as f:
                Image.fromarray(heat).save(f, format="PNG")
            maps.append(str(path))
        keep = match.reshape(-1).cpu()
        ply = Path(f"{stem}_{safe}.ply")
        if keep.any():
            write_ply(ply, gaussians.select(keep))
        results[query] = {"relevance_maps": maps, "ply": str(ply) if keep.any() else None, "gaussians": int(keep.sum())}
    return results


if __name__ == "__main__":
    sys.exit(main())
