"""Photos -> semantic 3D Gaussians (.ply), with optional renders and open-vocabulary queries.

    python infer.py --views a.png b.png                  # cameras registered with COLMAP
    python infer.py --views a.png b.png --cameras cams.json --render --query chair

The command lives in :mod:`ffsplat.inference.cli` (also installed as ``ffsplat-infer``); the Python
API is ``ffsplat.load(checkpoint).predict(images, cameras)``. ``--help`` lists every option.
"""

import sys

from ffsplat.inference.cli import main

if __name__ == "__main__":
    sys.exit(main())
