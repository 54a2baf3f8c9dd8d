"""The library's layers (docs/conventions.md, "Layout"): a module may import its own layer or lower ones, never a
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
FORBIDDEN = {
    ("inference", "training"),
    ("teachers", "data"),
    ("checkpoint", "training"),
    ("checkpoint", "inference"),
    ("inference", "evaluation"),
    ("data", "synthetic"),
}
"""Same-level pairs forbidden outright: inference needs neither Lightning nor the evaluation code
(colour maps live in ``render.colormap``); synthetic rooms are a data source built on ``data``, so
``data`` never imports them."""
EXEMPT = {"__init__", "_torchvision_cpu", "__main__"}
"""The package root (the public facade, which imports lazily) and the torchvision shim sit outside the layers."""


def part_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "ffsplat" else None


def imports(path: Path, root: Path | None = None) -> list[tuple[int, str]]:
    """``(line, module)`` for every absolute or relative import in ``path`` (a file under ``root``)."""
    package = ".".join(path.relative_to((root or PACKAGE).parent).with_suffix("").parts[:-1])
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
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]  # a submodule or a name
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
                f"{rel}: module outside the known layers {sorted(LAYERS)} (add it to the layout in docs/conventions.md and LAYERS)"
            )
            continue
        seen = set()
        for line, module in imports(path, root):
            target = part_of(module)
            if target is None or target == layer or target in EXEMPT or (line, target) in seen:
                continue
            seen.add((line, target))
            if target not in LAYERS:
                bad.append(f"{rel}:{line}: imports {module} (unknown layer {target})")
            elif LAYERS[target] > LAYERS[layer] or (layer, target) in FORBIDDEN:
                bad.append(
                    f"{rel}:{line}: {layer} (level {LAYERS[layer]}) imports {module} ({target}, level {LAYERS[target]})"
                )
    return bad


def test_no_import_goes_up_a_layer():
    assert violations() == []


def import_cycles(root: Path = PACKAGE) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (imports inside
    functions included; the package root, a lazy facade, excluded)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    top = root.name

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name if name and name != top else None

    graph = {}
    for module, path in modules.items():
        edges = set()
        for _, name in imports(path, root):
            target = resolve(name) if name.startswith(top) else None
            if target and target != module:
                edges.add(target)
        graph[module] = edges
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle():
    assert import_cycles() == []


def test_the_cycle_check_catches_two_networks_importing_each_other(tmp_path):
    root = tmp_path / "ffsplat"
    (root / "model" / "mvsplat").mkdir(parents=True)
    for f in ("__init__.py", "model/__init__.py", "model/mvsplat/__init__.py"):
        (root / f).write_text("")
    (root / "model" / "network.py").write_text("import ffsplat.model.mvsplat.net\n")
    (root / "model" / "mvsplat" / "net.py").write_text("def f():\n    from ffsplat.model import network\n")
    (root / "model" / "registry.py").write_text("")
    assert import_cycles(root) == [["ffsplat.model.mvsplat.net", "ffsplat.model.network"]]


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
        (
            "inference/x.py",
            "from ffsplat.evaluation.figures import colorize_labels\n",
            "inference (level 3) imports ffsplat.evaluation",
        ),
        (
            "data/x.py",
            "def f():\n    from ffsplat.synthetic.config import SCENE_META\n",
            "data (level 1) imports ffsplat.synthetic",
        ),
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
