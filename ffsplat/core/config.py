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


def to_dataclass(schema: type[T], *sources: DictConfig | dict[str, Any] | str | Path) -> T:
    """Merge ``sources`` (dicts, DictConfigs or YAML paths; later ones win) onto ``schema``."""
    merged = OmegaConf.structured(schema)
    for source in sources:
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"config file not found: {path}")
            source = OmegaConf.load(path)
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
