"""A browser viewer of a predicted scene: its Gaussians as splats, coloured by RGB, class, class
confidence or a query's relevance, with the input cameras as frusta.

    ffsplat-view outputs/demo/scene.ply                 # or: python -m ffsplat.view outputs/demo/scene.ply
    ffsplat-view scene.ply --port 8080 --host 0.0.0.0   # serve beyond this machine (default: 127.0.0.1 only)

Built on viser (the splats are rasterised by the browser's WebGL, so no GPU is needed here). It reads
only what ``infer.py`` writes: the .ply (``class_id``/``class_conf`` extras) and the ``<stem>.json``
beside it (class names, the input cameras). A plain 3DGS .ply opens in RGB mode; one line says which
modes are off. In the browser:

- colour modes: RGB (the degree-0 SH colour); class (each Gaussian in its class colour, legend with
  names and counts; unlabelled ones in the grey of their RGB colour); class confidence (dark = low, yellow = high); query relevance (type a class name;
  from a file the relevance of class ``k`` is ``class_conf`` where ``class_id == k``, 0 elsewhere;
  with ``--clip-path`` (and ``--checkpoint``, default the demo model) the model computes it for any
  text, as ``infer.py --query`` does; :meth:`ffsplat.inference.api.Scene.view` uses ``Scene.query``);
- filters: minimum opacity, maximum scale (the largest axis, metres), and one checkbox per class;
- export: the visible Gaussians (after filters and class toggles) as a .ply with the same fields.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ffsplat.core.errors import ArgumentParser, InputError, run_command
from ffsplat.inference.viewer import (  # noqa: F401  (the viewer's names, re-exported for the command's users)
    MODES,
    SceneData,
    Viewer,
    class_colours,
    class_palette,
    load_scene,
    ramp,
    serve,
)

__all__ = ["MODES", "SceneData", "Viewer", "load_scene", "main", "model_query", "serve"]


def model_query(
    data: SceneData, checkpoint: str | Path | None, clip_path: str | None, device: str = "cpu"
) -> Callable[[str], np.ndarray]:
    """``text -> [N] relevance`` from the model, exactly as ``infer.py --query`` computes it: the
    .ply's Gaussians rendered at scene.json's input cameras, the language field decoded, and
    :meth:`ffsplat.inference.api.Scene.query` (class names, or any text with ``clip_path``).

    Raises:
        InputError: no cameras (scene.json), a checkpoint that does not load, or Gaussians that are
            not one per input pixel (not a scene this kind of model predicted).
    """
    from ffsplat.core.types import Cameras
    from ffsplat.inference.api import Scene, load
    from ffsplat.inference.predictor import CheckpointError
    from ffsplat.model.network import LANG
    from ffsplat.render.renderer import render

    if data.c2w is None or not data.has_classes:
        raise InputError(
            "--clip-path: model queries need the class fields and the scene.json infer wrote beside the .ply"
        )
    v, (h, w) = len(data.c2w), data.image_size
    if data.gaussians.num_gaussians != v * h * w:
        raise InputError(
            f"--clip-path: {data.source} has {data.gaussians.num_gaussians} Gaussians, not one per input pixel "
            f"({v} views of {h}x{w}); model queries need the scene as infer wrote it"
        )
    try:
        model = load(checkpoint, device=device, clip_path=clip_path)
    except (CheckpointError, KeyError, FileNotFoundError) as exc:
        raise InputError(f"--checkpoint: {exc}") from exc
    cameras = Cameras(
        torch.tensor(data.intrinsics, dtype=torch.float32)[None],
        torch.tensor(data.c2w, dtype=torch.float32)[None],
        (h, w),
    ).to(device)
    batched = data.gaussians.to(device)._map(lambda t: t[None])
    with torch.no_grad():
        rendered = render(batched, cameras, features=[LANG])
        decoded = model.predictor.model.decode_fields({LANG: rendered.features[LANG]}, {"lseg": (h, w)})
    class_id, class_conf = torch.from_numpy(data.class_id), torch.from_numpy(data.class_conf)
    scene = Scene(model, batched, cameras, decoded["lseg"][0], class_id, class_conf)

    def query(text: str) -> np.ndarray:
        try:
            with torch.no_grad():
                return scene.query(text).relevance.cpu().numpy()
        except (RuntimeError, OSError, FileNotFoundError) as exc:  # e.g. a CLIP of another width
            raise ValueError(f"{text!r}: {exc}") from exc

    return query


# ---------------------------------------------------------------- command
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="ffsplat-view", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ply", type=Path, help="a .ply infer wrote (its <stem>.json beside it adds cameras and names)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (0: a free one)")
    p.add_argument("--mode", choices=MODES, default="RGB", help="colour mode at start (default: RGB)")
    p.add_argument(
        "--clip-path",
        help="local CLIP text model directory: queries of any text, computed by the model (as infer.py --query)",
    )
    p.add_argument(
        "--checkpoint", type=Path, help="the model.pt that predicted the scene (with --clip-path; default: the demo)"
    )
    p.add_argument("--device", default="cpu", help="device of the model for --clip-path queries (default: cpu)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    if args.checkpoint is not None and not args.clip_path:
        raise InputError("--checkpoint: only used for --clip-path queries; give --clip-path too")
    data = load_scene(args.ply)
    query = model_query(data, args.checkpoint, args.clip_path, args.device) if args.clip_path else None
    serve(data, args.host, args.port, mode=args.mode, query=query)


if __name__ == "__main__":
    sys.exit(main())
