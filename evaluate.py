"""Evaluate a trained model on an evaluation index: the numbers to compare with papers.

    python evaluate.py --checkpoint checkpoints/scannet_lang/model.pt --shards data/shards/scannet \
        --split val --index index/scannet_lsm.json --out reports/scannet_lsm

The command lives in :mod:`ffsplat.evaluation.cli` (also installed as ``ffsplat-eval``); the
library call is :func:`ffsplat.evaluation.evaluate.evaluate_model`. ``--help`` lists every option.
"""

import sys

from ffsplat.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
