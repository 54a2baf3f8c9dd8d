"""Console scripts (``[project.scripts]`` in pyproject.toml): ``ffsplat-infer``, ``ffsplat-eval``,
``ffsplat-train``, ``ffsplat-view``; each runs the ``main()`` of its command module (the checkout's ``infer.py``,
``evaluate.py`` and ``train.py`` are the same calls; ``python -m ffsplat.view`` is ``ffsplat-view``)."""

from __future__ import annotations

import sys


def infer() -> None:
    from ffsplat.inference.cli import main

    sys.exit(main())


def evaluate() -> None:
    from ffsplat.evaluation.cli import main

    sys.exit(main())


def train() -> None:
    from ffsplat.training.cli import main

    sys.exit(main())


def view() -> None:
    from ffsplat.view import main

    sys.exit(main())
