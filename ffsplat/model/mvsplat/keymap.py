"""Loading public geometry checkpoints into ``MVSplatSemanticNet`` (``model.pretrained.format``).

Key maps (source prefix -> ffsplat prefix; the rest of each key is identical):

=========  ===========================================  ==============================
format     source keys                                   ffsplat keys
=========  ===========================================  ==============================
mvsplat    ``encoder.backbone.``                          ``backbone.``
           ``encoder.depth_predictor.``                   ``depth_predictor.``
unimatch   ``backbone.`` (UniMatch's CNN)                 ``backbone.backbone.``
           ``transformer.layers.``                        ``backbone.transformer.layers.``
=========  ===========================================  ==============================

* ``mvsplat``: MVSplat's released Lightning checkpoints (``re10k.ckpt``, ``acid.ckpt``, ...; a
  ``state_dict`` whose ``encoder.*`` keys are its encoder). Strict: every ``encoder.*`` key must map
  onto one of our parameters with the same shape and every geometry parameter of ours
  (``backbone.*``, ``depth_predictor.*``) must be loaded. Keys outside ``encoder.`` (the
  parameter-free decoder, loss networks) are counted as ignored. The conditioning, injection and
  semantic modules are ffsplat's own and keep their initialisation (the injection is zero).
* ``unimatch``: UniMatch/GMDepth checkpoints (``{"model": state_dict}``), as MVSplat's
  ``unimatch_weights_path``: only the CNN and transformer load; every ``backbone.backbone.*`` and
  ``backbone.transformer.*`` parameter of ours must be loaded; UniMatch's other heads are ignored.
* ``ffsplat``: a state dict of this network (``model.pt``, a Lightning ``last.ckpt``), loaded
  strictly after stripping a leading ``model.``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

KEY_MAPS: dict[str, dict[str, str]] = {
    "mvsplat": {"encoder.backbone.": "backbone.", "encoder.depth_predictor.": "depth_predictor."},
    "unimatch": {"backbone.": "backbone.backbone.", "transformer.layers.": "backbone.transformer.layers."},
}
"""Source prefix -> our prefix, per checkpoint format."""

REQUIRED_PREFIXES: dict[str, tuple[str, ...]] = {
    "mvsplat": ("backbone.", "depth_predictor."),
    "unimatch": ("backbone.backbone.", "backbone.transformer."),
}
"""Our parameters that a checkpoint of each format must provide."""

SOURCE_SCOPE: dict[str, tuple[str, ...]] = {"mvsplat": ("encoder.",), "unimatch": ("backbone.", "transformer.")}
"""Source keys that must all be used (anything else in the file is ignored and counted)."""

FORMATS = ("mvsplat", "unimatch", "ffsplat")


class CheckpointMismatchError(ValueError):
    """A pretrained file does not match the network: names the missing/unexpected/mismatched keys."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a local checkpoint (``state_dict`` / ``model`` / plain dict), ``weights_only``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained.path: no checkpoint at {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointMismatchError(
            f"model.pretrained.path: {path} is not a readable PyTorch checkpoint ({exc})"
        ) from exc
    if isinstance(blob, dict):
        for key in ("state_dict", "model"):
            if isinstance(blob.get(key), dict):
                blob = blob[key]
                break
    if not isinstance(blob, dict) or not all(isinstance(v, Tensor) for v in blob.values()):
        raise CheckpointMismatchError(f"model.pretrained.path: {path} holds no state dict of tensors")
    return blob


def map_keys(state: dict[str, Tensor], fmt: str) -> tuple[dict[str, Tensor], list[str], int]:
    """Rename ``state`` by :data:`KEY_MAPS` ``[fmt]``.

    Returns:
        (renamed tensors, source keys inside the format's scope that no prefix maps, count of
        ignored keys outside the scope).
    """
    renamed, unmapped, ignored = {}, [], 0
    for key, value in state.items():
        for src, dst in KEY_MAPS[fmt].items():
            if key.startswith(src):
                renamed[dst + key[len(src) :]] = value
                break
        else:
            if key.startswith(SOURCE_SCOPE[fmt]) and fmt == "mvsplat":
                unmapped.append(key)
            else:
                ignored += 1
    return renamed, unmapped, ignored


def load_geometry_checkpoint(model: nn.Module, state: dict[str, Tensor], fmt: str) -> dict:
    """Load ``state`` (in ``fmt``) into ``model`` strictly, or raise naming every problem.

    Returns:
        ``{"format", "loaded": n, "ignored": n source keys outside the format's scope,
        "kept": our keys left at their initialisation}``.
    Raises:
        CheckpointMismatchError listing missing keys (ours that the file lacks), unexpected keys
        (the file's that we lack) and shape mismatches.
    """
    if fmt not in FORMATS:
        raise CheckpointMismatchError(f"model.pretrained.format={fmt!r}; choose one of {list(FORMATS)}")
    ours = model.state_dict()
    if fmt == "ffsplat":
        renamed = {k.removeprefix("model."): v for k, v in state.items()}
        unexpected, ignored, required = sorted(set(renamed) - set(ours)), 0, tuple(ours)
    else:
        renamed, unmapped, ignored = map_keys(state, fmt)
        if fmt == "unimatch":  # UniMatch's other heads share the prefixes only by name; keep ours
            extra = [k for k in renamed if k not in ours]
            ignored += len(extra)
            renamed = {k: v for k, v in renamed.items() if k in ours}
            unexpected = []
        else:
            unexpected = sorted(unmapped + [k for k in renamed if k not in ours])
        required = tuple(k for k in ours if k.startswith(REQUIRED_PREFIXES[fmt]))
    missing = sorted(k for k in required if k not in renamed)
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(ours[k].shape)}"
        for k, v in renamed.items()
        if k in ours and v.shape != ours[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{len(items)} {name}: {shown}")
        raise CheckpointMismatchError(
            f"model.pretrained ({fmt}) does not match model.name={getattr(getattr(model, 'cfg', None), 'name', '?')}: "
            + "; ".join(parts)
        )
    loadable = {k: v for k, v in renamed.items() if k in ours}
    result = model.load_state_dict(loadable, strict=False)
    assert not result.unexpected_keys
    return {"format": fmt, "loaded": len(loadable), "ignored": ignored, "kept": sorted(set(ours) - set(loadable))}
