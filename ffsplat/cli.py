"""Console scripts (``[project.scripts]`` in pyproject.toml): ``ffsplat-infer``, ``ffsplat-eval``,
``ffsplat-train``.

Each runs ``main()`` of the matching entry point: ``ffsplat/_scripts/<name>.py`` in an installed
wheel (bundled by ``setup.py``), else the checkout's top-level ``<name>.py`` (editable install).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def entry_point(name: str) -> ModuleType:
    """The module of entry point ``name`` (``infer``, ``evaluate`` or ``train``)."""
    try:
        return importlib.import_module(f"ffsplat._scripts.{name}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("ffsplat._scripts", f"ffsplat._scripts.{name}"):
            raise
    path = Path(__file__).resolve().parents[1] / f"{name}.py"
    if not path.is_file():
        raise SystemExit(f"error: ffsplat-{name}: neither a bundled entry point nor {path} (reinstall ffsplat)")
    spec = importlib.util.spec_from_file_location(f"_ffsplat_entry_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def infer() -> None:
    sys.exit(entry_point("infer").main())


def evaluate() -> None:
    sys.exit(entry_point("evaluate").main())


def train() -> None:
    sys.exit(entry_point("train").main())
