"""The library's layers (README "Layout"): a module may import its own layer or lower ones, never a
higher one; and two pairs on the same level are forbidden outright (inference -> training: an
installed ``ffsplat-infer`` must not load Lightning; teachers -> data: teachers work on tensors).
Every ``import``/``from ... import`` is walked with ``ast``, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ffsplat"

LAYERS = {
    "core": 0,
    "render": 1, "data": 1, "synthetic": 1, "model": 1, "teachers": 1,
    "objectives": 2,
    "checkpoint": 3, "inference": 3, "training": 3, "evaluation": 3, "baselines": 3, "view": 3,
    "cli": 4,
}  # fmt: skip
FORBIDDEN = {("inference", "training"), ("teachers", "data"), ("checkpoint", "training"), ("checkpoint", "inference")}
EXEMPT = {"__init__", "_torchvision_cpu", "__main__"}
"""The package root (the public facade, which imports lazily) and the torchvision shim sit outside the layers."""


def part_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "ffsplat" else None


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every absolute or relative import in ``path``."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if base == "ffsplat"]
    return found


def violations(root: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        layer = rel.parts[0].removesuffix(".py")
        if layer in EXEMPT:
            continue
        if layer not in LAYERS:
            bad.append(
                f"{rel}: module outside the known layers {sorted(LAYERS)} (add it to the README layout and LAYERS)"
            )
            continue
        for line, module in imports(path):
            target = part_of(module)
            if target is None or target == layer or target in EXEMPT:
                continue
            if target not in LAYERS:
                bad.append(f"{rel}:{line}: imports {module} (unknown layer {target})")
            elif LAYERS[target] > LAYERS[layer] or (layer, target) in FORBIDDEN:
                bad.append(
                    f"{rel}:{line}: {layer} (level {LAYERS[layer]}) imports {module} ({target}, level {LAYERS[target]})"
                )
    return bad


def test_no_import_goes_up_a_layer():
    assert violations() == []


@pytest.mark.parametrize(
    "where, source, expected",
    [
        (
            "inference/x.py",
            "from ffsplat.training.module import SLIM_FORMAT\n",
            "inference (level 3) imports ffsplat.training.module",
        ),
        (
            "teachers/x.py",
            "def f():\n    from ffsplat.data.labels import EVAL_CLASSES\n",
            "teachers (level 1) imports ffsplat.data.labels",
        ),
        ("core/x.py", "import ffsplat.model.network\n", "core (level 0) imports ffsplat.model.network"),
        ("model/x.py", "from ffsplat import objectives\n", "imports ffsplat.objectives"),
        ("teachers/x.py", "from ..data import labels\n", "imports ffsplat.data"),
        ("weird/x.py", "import os\n", "outside the known layers"),
    ],
)
def test_the_checker_catches_upward_imports(tmp_path, where, source, expected):
    path = tmp_path / "ffsplat" / where
    path.parent.mkdir(parents=True)
    path.write_text(source)
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "ffsplat"
    try:
        found = violations(PACKAGE)
    finally:
        PACKAGE = saved
    assert len(found) == 1 and expected in found[0], found


def test_allowed_imports_pass(tmp_path):
    path = tmp_path / "ffsplat" / "training" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text(
        "from ffsplat.inference.predictor import Predictor\nfrom ffsplat.core.types import Views\nimport torch\n"
    )
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "ffsplat"
    try:
        assert violations(PACKAGE) == []
    finally:
        PACKAGE = saved
