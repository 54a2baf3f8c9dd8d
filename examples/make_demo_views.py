"""Make the example inputs in examples/demo/: two views of a held-out synthetic room (seed 2024, not
in any training set) as PNGs at 192x256, their cameras JSON, and two novel cameras between them.

    python examples/make_demo_views.py
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from PIL import Image  # noqa: E402

from ffsplat.inference.cameras import CameraFile, CameraView, write_cameras  # noqa: E402
from ffsplat.synthetic import SyntheticConfig, make_scene, render_frame  # noqa: E402

OUT = ROOT / "examples" / "demo"
H, W = 192, 256
FRAMES = (4, 10)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    room, poses, k = make_scene(2024, SyntheticConfig(height=H, width=W, frames=16))
    views = []
    for i, frame in enumerate(FRAMES):
        rgb = render_frame(room, poses[frame], k, H, W)[0]
        Image.fromarray(rgb).save(OUT / f"view_{i}.png")
        views.append(CameraView(k, poses[frame], H, W, f"view_{i}.png"))
    write_cameras(OUT / "cameras.json", CameraFile(views, near=0.3, far=8.0))
    novel = [CameraView(k, poses[f], H, W) for f in range(FRAMES[0] + 2, FRAMES[1], 2)]
    write_cameras(OUT / "novel_cameras.json", CameraFile(novel, near=0.3, far=8.0))
    print(f"wrote {OUT}: view_0.png, view_1.png, cameras.json, novel_cameras.json")


if __name__ == "__main__":
    main()
