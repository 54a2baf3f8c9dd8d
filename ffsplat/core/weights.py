"""Reading a user-named weights file under the error contract (docs/bad-input.md).

Every file of pretrained or trained weights that a config key or option names (a segmenter's
``segmenter_checkpoint``, ``stage.init_from``, ``loss.lpips_vgg_path``, ``--lpips-vgg``, a teacher's
``checkpoint``) is read here with ``torch.load(..., weights_only=True)``: plain tensors and
containers only, never code. A file that would need full unpickling (a pickle of Python objects,
possibly malicious), is not a PyTorch file, or is truncated becomes one :class:`InputError` naming
the key and the file; so do the mismatches the callers find (:func:`mismatch`).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ffsplat.core.errors import InputError


def _first_line(exc: BaseException, limit: int = 100) -> str:
    text = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).strip().split("\n")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unreadable_reason(exc: BaseException, noun: str = "PyTorch file") -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, in a few words on one line."""
    if isinstance(exc, pickle.UnpicklingError):
        return (
            f"not a readable {noun}: refused, it holds Python objects, not only tensors, and loading it would "
            "run code (such files are read with weights_only=True only)"
        )
    return f"not a readable {noun} ({type(exc).__name__}: {_first_line(exc)})"


def read_weights(path: str | Path, key: str, what: str = "weights file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; any failure is one :class:`InputError`
    naming ``key`` (the option or config key) and ``path``. Nothing in the file is ever executed."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{key}: {what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (unsafe pickles, zip/format errors of every kind, truncated files)
        raise InputError(f"{key}: {path}: {unreadable_reason(exc)}; expected: {what}") from None


def state_dict_of(blob: Any, key: str, path: str | Path, what: str) -> dict:
    """``blob`` itself when it is a dict of tensors, else one :class:`InputError`."""
    import torch

    if not isinstance(blob, dict) or not blob or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        got = (
            type(blob).__name__
            if not isinstance(blob, dict)
            else "a dict with non-tensor entries"
            if blob
            else "an empty dict"
        )
        raise InputError(f"{key}: {path}: expected a state dict of tensors ({what}), got {got}")
    return blob


def mismatch(key: str, path: str | Path, what: str, missing, unexpected, shapes=()) -> InputError:
    """One-line :class:`InputError` for a state dict that does not fit: the first few names of each kind."""

    def few(items) -> str:
        items = list(items)
        more = f" and {len(items) - 3} more" if len(items) > 3 else ""
        return f"{items[:3]}{more}"

    parts = [f"missing {few(missing)}" if missing else "", f"unexpected {few(unexpected)}" if unexpected else "",
             f"wrong shapes {few(shapes)}" if shapes else ""]  # fmt: skip
    return InputError(f"{key}: {path} does not fit (expected: {what}): {', '.join(p for p in parts if p)}")
