"""Teacher cost on CPU: seconds per 256x256 frame (the shard/training size) for every teacher.

SAM (ViT-B, image resized to 1024 as SAM requires) and LSeg (ViT-L/16 + DPT) are built with random
weights at full size: their cost does not depend on the weights. The label-derived stand-ins run on
a synthetic room's labels. Each teacher encodes a batch of frames after one warm-up frame.

    python benchmarks/teachers.py [--size 256] [--frames 2]

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import time


import numpy as np  # noqa: E402
import torch  # noqa: E402

from ffsplat.core.benchmarking import machine  # noqa: E402
from ffsplat.synthetic import SyntheticConfig, make_scene, render_frame  # noqa: E402
from ffsplat.teachers.label_teachers import LabelLanguageTeacher, LabelSegmentationTeacher  # noqa: E402
from ffsplat.teachers.lseg import LSegNet, LSegTeacher  # noqa: E402
from ffsplat.teachers.sam import SAMTeacher  # noqa: E402


def frames(size: int, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    room, poses, k = make_scene(0, SyntheticConfig(height=size, width=size, frames=count + 1))
    rendered = [render_frame(room, pose, k, size, size) for pose in poses]
    images = torch.from_numpy(np.stack([r[0] for r in rendered])).permute(0, 3, 1, 2).float() / 255
    labels = torch.from_numpy(np.stack([r[2] for r in rendered])).long()
    instances = torch.from_numpy(np.stack([r[3] for r in rendered])).long()
    return images, labels, instances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=2)
    args = parser.parse_args()
    from segment_anything import sam_model_registry

    images, labels, instances = frames(args.size, args.frames)
    teachers = {
        "sam_vit_b": SAMTeacher(sam_model_registry["vit_b"](checkpoint=None)),
        "lseg_vit_l16": LSegTeacher(LSegNet()),
        "label_lang": LabelLanguageTeacher(),
        "label_seg": LabelSegmentationTeacher(),
    }
    results = []
    for name, teacher in teachers.items():
        teacher.encode(images[:1], labels[:1], instances[:1])  # warm-up
        start = time.perf_counter()
        feats = teacher.encode(images[1:], labels[1:], instances[1:])
        seconds = (time.perf_counter() - start) / args.frames
        results.append({"teacher": name, "seconds_per_frame": round(seconds, 4), "output": list(feats.shape[1:])})
    report = {
        "benchmark": "teachers",
        "machine": machine(),
        "size": args.size,
        "frames": args.frames,
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
