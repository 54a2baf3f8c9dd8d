"""Every command shown in the README and docs/ parses (issue 31): for each entry point, each
``--option`` a documented command passes (in fenced ``bash`` blocks and inline code) is one its ``--help`` lists, and a documented subcommand
exists. ``train.py``'s ``key=value`` overrides are checked by ``tests/test_docs_recipes.py``."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.test_docs_recipes import DOCS, doc_commands

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = re.compile(
    r"^(?:python3? |OMP_NUM_THREADS=\d+ (?:nice -n \d+ )?python3? |nice -n \d+ python3? )?(\S+\.py)\b(.*)$"
)
MODULE = re.compile(r"^python3? -m (ffsplat\.\w+)(?: (run|compare))?\b(.*)$")
CONSOLE = {"ffsplat-view": ["-m", "ffsplat.view"], "ffsplat-infer": ["infer.py"], "ffsplat-eval": ["evaluate.py"]}


def entry_points() -> dict[tuple[str, ...], set[str]]:
    """``(argv prefix) -> options`` used by the documented commands (not train.py: Hydra)."""
    found: dict[tuple[str, ...], set[str]] = {}
    for page in DOCS:
        inline = re.findall(r"`((?:python3? |ffsplat-)[^`]+)`", re.sub(r"```.*?```", "", page.read_text(), flags=re.S))
        for command in doc_commands(page) + inline:
            for part in command.split("&&"):
                part = part.strip()
                if not part:
                    continue
                m, mm = SCRIPT.match(part), MODULE.match(part)
                first = part.split()[0]
                if mm:
                    key, rest = ("-m", mm.group(1), *([mm.group(2)] if mm.group(2) else [])), mm.group(3)
                elif first in CONSOLE:
                    key, rest = tuple(CONSOLE[first]), part[len(first) :]
                elif m and m.group(1) != "train.py" and (ROOT / m.group(1)).is_file():
                    key, rest = (m.group(1),), m.group(2)
                else:
                    continue
                found.setdefault(key, set()).update(re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", rest))
    return found


@cache
def help_text(key: tuple[str, ...]) -> str:
    done = subprocess.run([sys.executable, *key, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (key, done.stderr[-1500:])
    return done.stdout


def test_the_docs_show_the_entry_points():
    keys = entry_points()
    assert ("infer.py",) in keys and ("evaluate.py",) in keys and ("data_prep/make_shards.py",) in keys
    assert ("-m", "ffsplat.view") in keys and any(k[:2] == ("-m", "ffsplat.baselines") for k in keys), sorted(keys)


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(entry_points()), ids=lambda k: " ".join(k))
def test_every_documented_option_is_accepted(key):
    text = help_text(key)
    unknown = sorted(o for o in entry_points()[key] if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text))
    assert not unknown, f"{' '.join(key)}: the docs pass {unknown}, which its --help does not list"
