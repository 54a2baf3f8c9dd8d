"""The docs as tests (issue 29): every config key that a doc or an error message names is a valid
``train.py`` override, and the docs' training recipes run verbatim (commands taken from the fenced
blocks, only size/step overrides appended) at a tiny size on CPU."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SECTIONS = "model|data|teachers|stage|optim|loss|logging|checkpoint|trainer"
KEY = re.compile(rf"(?<![\w./-])((?:{SECTIONS})(?:\.[a-z_][a-z0-9_]*)+)")
MESSAGE_CALLS = {"print", "warn", "rank_zero_warn", "rank_zero_info", "warning", "info", "error", "InputError",
                 "require_file", "require_dir", "check_input_file", "check_input_dir", "check_number"}  # fmt: skip
NOT_KEYS = (".pt", ".py", ".json", ".yaml", ".ckpt")
CONTEXTS = ([], ["teacher=real"], ["teacher=espnetv2"], ["experiment=scannet_geometry"], ["model=paper"])


def doc_keys() -> set[str]:
    """Config keys named in backticks or as ``key=value`` in the README and docs/."""
    keys = set()
    for path in DOCS:
        text = path.read_text()
        keys |= {k for k in re.findall(rf"`((?:{SECTIONS})\.[a-z_][a-z0-9_.]*)", text)}
        keys |= set(re.findall(rf"(?<![\w./-])((?:{SECTIONS})(?:\.[a-z_][a-z0-9_]*)+)=", text))
    return {k.rstrip(".") for k in keys if not k.endswith(NOT_KEYS)}


def message_keys() -> set[str]:
    """Config keys in the string constants of raise statements and message calls under ffsplat/
    (not the per-scene baselines, whose options are their own)."""
    from ffsplat.objectives.losses import LPIPS_VGG_KEY
    from ffsplat.teachers.clip_text import CLIP_KEY
    from ffsplat.teachers.lseg import CHECKPOINT_KEY

    keys = {LPIPS_VGG_KEY, CLIP_KEY, CHECKPOINT_KEY}
    for path in (ROOT / "ffsplat").rglob("*.py"):
        if "baselines" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            call = (
                isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in MESSAGE_CALLS
            )
            if isinstance(node, ast.Raise) or call:
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                        keys |= set(KEY.findall(sub.value))
    return {k for k in keys if not k.endswith(NOT_KEYS)}


def invalid_keys(keys: set[str]) -> list[str]:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ffsplat.core.config import CONFIG_DIR

    missing = object()
    bad = []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        configs = [(ctx, compose("train", overrides=ctx)) for ctx in CONTEXTS]
        for key in sorted(keys):
            # Hydra accepts an override of a key the composed config has, and refuses any other (no "+")
            if all(OmegaConf.select(cfg, key, default=missing) is missing for _, cfg in configs):
                bad.append(key)
        compose("train", overrides=[*CONTEXTS[1], "teachers.segmentation.kwargs.checkpoint=x.pth"])  # e.g.
        with pytest.raises(Exception, match="sam"):
            compose("train", overrides=[*CONTEXTS[1], "teachers.sam.checkpoint=x.pth"])  # the key docs used to name
    return bad


def test_every_key_named_in_the_docs_is_a_valid_override():
    keys = doc_keys()
    assert {
        "teachers.segmentation.kwargs.checkpoint",
        "checkpoint.allow_config_change",
        "model.pretrained.path",
    } <= keys
    assert invalid_keys(keys) == []


def test_every_key_named_in_an_error_message_is_a_valid_override():
    keys = message_keys()
    assert {
        "teachers.segmentation.kwargs.model_type",
        "teachers.language.kwargs.checkpoint",
        "teachers.clip_path",
    } <= keys
    assert invalid_keys(keys) == []
