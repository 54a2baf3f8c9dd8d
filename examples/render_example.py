"""Render a procedural room of Gaussians to PNG and export it as a 3DGS .ply.

The room (floor, ceiling, four walls, a table and a sofa-sized block, all textured) is built
directly as flat Gaussians lying on the surfaces, then rendered with ``ffsplat.render.renderer`` from a few
cameras along a hand-held-like path. Outputs in ``--out``: ``view_<i>_rgb.png``,
``view_<i>_depth.png`` (near = bright) and ``room.ply`` (opens in SuperSplat / gsplat viewers).

    python examples/render_example.py --out outputs/example
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path


import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ffsplat import Cameras, Gaussians
from ffsplat.render import RasterSettings, render  # noqa: E402
from ffsplat.core.atomic import atomic_open  # noqa: E402
from ffsplat.core.geometry import rotmat_to_quat  # noqa: E402
from ffsplat.render.ply import write_ply  # noqa: E402
from ffsplat.core.sh import rgb_to_sh_dc  # noqa: E402


def surface(origin, u_axis, v_axis, spacing, texture) -> dict[str, torch.Tensor]:
    """Flat Gaussians on the rectangle ``origin + a u + b v`` (a, b in [0, 1]), one per grid cell."""
    origin, u_axis, v_axis = (torch.tensor(x, dtype=torch.float32) for x in (origin, u_axis, v_axis))
    nu = max(2, int(u_axis.norm() / spacing))
    nv = max(2, int(v_axis.norm() / spacing))
    a, b = torch.meshgrid((torch.arange(nu) + 0.5) / nu, (torch.arange(nv) + 0.5) / nv, indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    means = origin + a[:, None] * u_axis + b[:, None] * v_axis
    normal = torch.linalg.cross(u_axis, v_axis)
    rot = torch.stack([u_axis / u_axis.norm(), v_axis / v_axis.norm(), normal / normal.norm()], dim=1)
    return {
        "means": means,
        "scales": torch.tensor([0.7 * u_axis.norm() / nu, 0.7 * v_axis.norm() / nv, 1e-3]).expand(len(a), 3),
        "quats": rotmat_to_quat(rot).expand(len(a), 4),
        "rgb": texture(a * u_axis.norm(), b * v_axis.norm()),
    }


def checker(c1, c2, period):
    c1, c2 = torch.tensor(c1), torch.tensor(c2)
    return lambda s, t: torch.where((((s // period) + (t // period)) % 2 == 0)[:, None], c1, c2)


def stripes(c1, c2, period):
    c1, c2 = torch.tensor(c1), torch.tensor(c2)
    return lambda s, t: c1 + (c2 - c1) * (0.5 + 0.5 * torch.sin(2 * math.pi * s / period))[:, None]


def box(lo, hi, spacing, texture) -> list[dict[str, torch.Tensor]]:
    (x0, y0, z0), (x1, y1, z1) = lo, hi
    return [
        surface([x0, y0, z0], [x1 - x0, 0, 0], [0, 0, z1 - z0], spacing, texture),  # top (y down)
        surface([x0, y0, z0], [x1 - x0, 0, 0], [0, y1 - y0, 0], spacing, texture),  # front
        surface([x0, y0, z1], [0, y1 - y0, 0], [x1 - x0, 0, 0], spacing, texture),  # back
        surface([x0, y0, z0], [0, y1 - y0, 0], [0, 0, z1 - z0], spacing, texture),  # left
        surface([x1, y0, z0], [0, 0, z1 - z0], [0, y1 - y0, 0], spacing, texture),  # right
    ]


def room(spacing: float = 0.035) -> Gaussians:
    """A 4 x 2.4 x 4 m room; OpenCV-style world: y points down, the floor is at y = +1.2."""
    parts = [
        surface([-2, 1.2, -2], [4, 0, 0], [0, 0, 4], spacing, checker([0.55, 0.45, 0.35], [0.35, 0.28, 0.2], 0.5)),
        surface([-2, -1.2, -2], [0, 0, 4], [4, 0, 0], spacing, checker([0.92, 0.92, 0.9], [0.85, 0.85, 0.83], 1.0)),
        surface([-2, -1.2, 2], [4, 0, 0], [0, 2.4, 0], spacing, stripes([0.3, 0.5, 0.7], [0.8, 0.85, 0.9], 0.6)),
        surface([-2, -1.2, -2], [0, 0, 4], [0, 2.4, 0], spacing, stripes([0.7, 0.4, 0.3], [0.9, 0.8, 0.7], 0.4)),
        surface([2, -1.2, -2], [0, 2.4, 0], [0, 0, 4], spacing, stripes([0.3, 0.6, 0.35], [0.8, 0.9, 0.75], 0.5)),
        surface([-2, -1.2, -2], [0, 2.4, 0], [4, 0, 0], spacing, stripes([0.5, 0.5, 0.5], [0.7, 0.7, 0.7], 0.8)),
        *box([-0.6, 0.45, 0.6], [0.6, 1.2, 1.4], spacing, checker([0.45, 0.25, 0.1], [0.6, 0.35, 0.15], 0.2)),
        *box([0.9, 0.7, -0.5], [1.8, 1.2, 1.2], spacing, stripes([0.2, 0.2, 0.6], [0.4, 0.4, 0.8], 0.15)),
    ]
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    n = len(cat["means"])
    return Gaussians(
        means=cat["means"],
        scales=cat["scales"].contiguous(),
        rotations=cat["quats"].contiguous(),
        opacities=torch.full((n,), 0.95),
        sh=rgb_to_sh_dc(cat["rgb"])[:, None, :],
    )


def camera_path(views: int, height: int, width: int) -> Cameras:
    """Cameras at 1.5 m height sweeping left to right, looking at the far wall."""
    c2ws = []
    for i in range(views):
        t = i / max(views - 1, 1) - 0.5
        eye = torch.tensor([1.2 * t, 0.1, -1.6])
        target = torch.tensor([0.4 * t, 0.5, 1.5])
        forward = (target - eye) / (target - eye).norm()
        right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), forward)
        right = right / right.norm()
        down = torch.linalg.cross(forward, right)
        c2w = torch.eye(4)
        c2w[:3, :3] = torch.stack([right, down, forward], dim=1)
        c2w[:3, 3] = eye
        c2ws.append(c2w)
    focal = 0.8 * width
    k = torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]])
    return Cameras(k.expand(views, 3, 3).clone(), torch.stack(c2ws), (height, width))


def save_png(path: Path, array: np.ndarray) -> None:
    with atomic_open(path) as stream:
        Image.fromarray(array).save(stream, format="PNG")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/example"))
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--backend", default="auto", choices=["auto", "gsplat", "torch"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    gaussians = room()
    cameras = camera_path(args.views, args.height, args.width)
    print(f"[1/3] built a room of {gaussians.num_gaussians} Gaussians")
    out = render(
        gaussians.to(args.device), cameras.to(args.device),
        background=[1.0, 1.0, 1.0], settings=RasterSettings(backend=args.backend),
    )  # fmt: skip
    print(f"[2/3] rendered {args.views} views at {args.height}x{args.width} in {time.perf_counter() - start:.1f}s")
    for i in range(args.views):
        rgb = (out.rgb[i].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        depth = out.depth[i].cpu()
        inv = torch.where(depth > 0, 1 / depth.clamp_min(1e-6), torch.zeros_like(depth))
        gray = (255 * inv / inv.max().clamp_min(1e-6)).round().to(torch.uint8).numpy()
        save_png(args.out / f"view_{i}_rgb.png", rgb)
        save_png(args.out / f"view_{i}_depth.png", gray)
    write_ply(args.out / "room.ply", gaussians)
    print(
        f"[3/3] wrote {args.views} RGB + depth PNGs and room.ply to {args.out} ({time.perf_counter() - start:.1f}s total)"
    )


if __name__ == "__main__":
    main()
