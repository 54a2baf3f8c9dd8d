"""YAML -> typed dataclass configs (the MVSplat pattern: OmegaConf structured configs).

A YAML file (or Hydra's composed DictConfig) is merged onto the dataclass schema, so unknown keys
and wrong types fail with the full key path, then converted to the dataclass tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

T = TypeVar("T")


def resource_path(installed: str, checkout: str) -> Path:
    """A file/folder shipped with ffsplat: ``ffsplat/<installed>`` inside an installed wheel (copied
    there at build time by ``setup.py``), else ``<checkout>`` in the source tree (editable install or
    a plain checkout)."""
    package = Path(__file__).resolve().parents[1]
    bundled = package / installed
    return bundled if bundled.exists() else package.parent / checkout


CONFIG_DIR = resource_path("_configs", "configs")
"""The ``configs/`` folder: bundled in the wheel as ``ffsplat/_configs``, else the checkout's ``configs/``."""

DEMO_CHECKPOINT = resource_path("_demo/model.pt", "checkpoints/demo/model.pt")
"""The demo ``model.pt``: bundled as ``ffsplat/_demo/model.pt``, else the checkout's ``checkpoints/demo/model.pt``."""


RENAMED_KEYS: dict[str, dict[str, str]] = {
    "conditioning": {
        "use_sam": "use_seg_teacher",
        "use_lseg": "use_lang_teacher",
        "sam_dim": "seg_teacher_dim",
        "lseg_dim": "lang_teacher_dim",
    },
    "semantic": {"sam_dim": "seg_teacher_dim", "lseg_dim": "lang_teacher_dim"},
}
"""Config keys renamed for one vocabulary of semantic fields (CONTRIBUTING.md, "Vocabulary"):
section name (``model.conditioning``, ``model.semantic``) -> {old key: new key}. A config that uses
an old key is refused with an error naming the new one (:func:`check_renamed_keys`); model files
written before the rename are read with the keys mapped (:func:`upgrade_renamed_keys`)."""


def _renamed(tree: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted section path, old, new)`` for every renamed key in a nested mapping."""
    found = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict):
                for old, new in RENAMED_KEYS.get(str(key), {}).items():
                    if old in value:
                        found.append((path, old, new))
                found += _renamed(value, path + ".")
    return found


def check_renamed_keys(source: DictConfig | dict[str, Any]) -> None:
    """Refuse a config that uses a renamed key: one :class:`~ffsplat.core.errors.InputError` naming
    the old key and the new one."""
    from ffsplat.core.errors import InputError

    tree = OmegaConf.to_container(source, resolve=False) if isinstance(source, DictConfig) else source
    found = _renamed(tree)
    if found:
        renames = ", ".join(f"{path}.{old} -> {path}.{new}" for path, old, new in found)
        raise InputError(f"renamed config keys (one name per semantic field, see CONTRIBUTING.md): {renames}")


def upgrade_renamed_keys(tree: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``tree`` (e.g. a ``model.pt``'s stored ``model_config``) with old keys renamed; a
    key present under both names keeps the new one."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            value = upgrade_renamed_keys(value)
            for old, new in RENAMED_KEYS.get(str(key), {}).items():
                if old in value:
                    old_value = value.pop(old)
                    value.setdefault(new, old_value)
        out[key] = value
    return out


def to_dataclass(schema: type[T], *sources: DictConfig | dict[str, Any] | str | Path) -> T:
    """Merge ``sources`` (dicts, DictConfigs or YAML paths; later ones win) onto ``schema``. A renamed
    key (:data:`RENAMED_KEYS`) raises an error naming its new name."""
    merged = OmegaConf.structured(schema)
    for source in sources:
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"config file not found: {path}")
            source = OmegaConf.load(path)
        check_renamed_keys(source)
        merged = OmegaConf.merge(merged, source)
    return OmegaConf.to_object(merged)


def group_file(group: str, name: str) -> Path:
    """``configs/<group>/<name>.yaml``, or ``name`` itself if it is a path to a YAML file."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        raise FileNotFoundError(f"no config {group}={name!r}; choose one of {options} or give a YAML path")
    return path
