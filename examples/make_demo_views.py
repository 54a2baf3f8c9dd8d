"""Make the example inputs in examples/demo/: two views of a held-out synthetic room (seed 2024, not
in any training set) as PNGs at 192x256, their cameras JSON, and two novel cameras between them.

    python examples/make_demo_views.py
    python examples/make_demo_views.py --real ../shared/data/hololens-office --out examples/demo_real

With ``--real SEQUENCE`` the views are real frames 224 and 232 of the HoloLens office sequence
(inside the tail that examples/train_demo.sh holds out), copied as JPEGs at their native size with
their true intrinsics and poses, and the novel cameras are frames 226, 228 and 230.
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


REAL_FRAMES = (224, 232)


def real_views(sequence: Path, out: Path) -> None:
    import shutil

    from ffsplat.data.sequence import RGBDSequence

    seq = RGBDSequence(sequence)
    out.mkdir(parents=True, exist_ok=True)
    views, novel = [], []
    for i, frame in enumerate(REAL_FRAMES):
        f = seq.read_frame(frame, with_labels=False)
        shutil.copyfile(sequence / "color" / f"{frame}.jpg", out / f"view_{i}.jpg")
        h, w = f.color.shape[:2]
        views.append(CameraView(f.color_intrinsics, f.c2w, h, w, f"view_{i}.jpg"))
    for frame in range(REAL_FRAMES[0] + 2, REAL_FRAMES[1], 2):
        f = seq.read_frame(frame, with_labels=False)
        novel.append(CameraView(f.color_intrinsics, f.c2w, *f.color.shape[:2]))
    # No near/far: like a user's photos, infer.py then uses the depth range the model was trained over.
    write_cameras(out / "cameras.json", CameraFile(views))
    write_cameras(out / "novel_cameras.json", CameraFile(novel))
    print(f"wrote {out}: view_0.jpg, view_1.jpg (frames {REAL_FRAMES}), cameras.json, novel_cameras.json")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--real", type=Path, help="a real RGB-D sequence folder (hololens-office) instead of a synthetic room"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.real:
        real_views(args.real, args.out)
        return
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
