"""Train ffsplat (Hydra entry point).

    python train.py experiment=synthetic_seg                          # small model, synthetic rooms, CPU
    python train.py model=paper data=scannet teacher=real stage=seg trainer=gpu

The command lives in :mod:`ffsplat.training.cli` (also installed as ``ffsplat-train``); the library
call is :func:`ffsplat.training.fit.fit`. Config groups and every field: configs/train.yaml and
ffsplat/training/config.py.
"""

import sys

from ffsplat.training.cli import main, run  # noqa: F401  (run: the library call behind main)

if __name__ == "__main__":
    sys.exit(main())
