"""The ``model.pt`` format: one home for writing, reading and checking a trained model (no Lightning).

A ``model.pt`` is a ``torch.save``'d dict, read back with ``torch.load(..., weights_only=True)``
(nothing in it needs arbitrary unpickling):

======================  ==========================================================================
key                     value
======================  ==========================================================================
format                  ``"ffsplat-model"`` (:data:`SLIM_FORMAT`)
version                 :data:`FORMAT_VERSION` (2: with checksum; 1: written before checksums)
model_config            ``dataclasses.asdict(ModelConfig)``
state_dict              network weights, ``{name: Tensor}`` on CPU
teachers                ``{"segmentation": {"name", "kwargs"}, "language": {"name", "kwargs"}}``
class_names             the evaluation classes (``ffsplat.data.labels.EVAL_CLASSES``), ``list[str]``
class_embeddings        ``[K, C]`` float, the classes in the language teacher's space
background_embedding    ``[C]`` float or absent: a closed-vocabulary language teacher's "none of the
                        classes" output (ESPNetv2: PASCAL's background); pixels and Gaussians closest to
                        it are labelled 0 (unlabelled) and match no query. Absent for open-vocabulary
                        teachers (LSeg) and in older files: every Gaussian then gets its closest class
checksum                ``{"algorithm": "sha256", "tensors": hex}`` over ``state_dict``, ``class_embeddings``
                        and ``background_embedding``
prompt_decoder          ``"sam"`` or ``"similarity"`` (``ffsplat.objectives.policy.resolve_prompt_decoder``)
stage, trained_on,      metadata (str / int / None)
image_size,
global_step
trained_groups          the parameter groups trained so far, over the stages chained by ``stage.init_from``
                        (``geometry``, ``segmentation``, ``language``; absent in older files): ``infer.py``
                        warns when ``language`` is missing
depth_range             ``[near, far]`` metres: the median depth range of the training clips, which the
                        cost volume's candidates were learned over; inference uses it when neither the
                        user nor the cameras file gives near/far (absent in older files: 0.5, 10)
======================  ==========================================================================

The checksum (:func:`tensor_checksum`) hashes every tensor's name, dtype, shape and raw bytes in
sorted key order, so a flipped byte inside a weight is caught on load. :func:`save_model` refuses
non-finite weights and writes atomically (temporary file + rename).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ffsplat.core.config import upgrade_renamed_keys
from ffsplat.core.weights import unreadable_reason

SLIM_FORMAT = "ffsplat-model"
FORMAT_VERSION = 2
REQUIRED_KEYS = ("model_config", "state_dict", "teachers", "class_names", "class_embeddings")

ROLE_CONDITION = {"segmentation": "sam", "language": "lseg"}
"""Teacher role -> the conditioning input name of the network."""


class CheckpointError(ValueError):
    """A checkpoint file that is missing, not an ffsplat model, corrupted or inconsistent with its config."""


def _checksum_items(blob: Mapping[str, Any]) -> dict[str, Tensor]:
    items = {f"state_dict/{k}": v for k, v in blob["state_dict"].items()}
    items["class_embeddings"] = blob["class_embeddings"]
    if blob.get("background_embedding") is not None:
        items["background_embedding"] = blob["background_embedding"]
    return items


def tensor_checksum(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 hex digest over ``name, dtype, shape, raw bytes`` of every tensor, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def non_finite_tensors(tensors: Mapping[str, Tensor]) -> list[str]:
    """Names of floating-point tensors that hold a NaN or an infinity."""
    return [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def save_model(
    path: str | Path,
    *,
    model_config: dict,
    state_dict: Mapping[str, Tensor],
    teachers: dict[str, dict],
    class_names: list[str],
    class_embeddings: Tensor,
    background_embedding: Tensor | None = None,
    **meta: Any,
) -> Path:
    """Write a ``model.pt`` atomically (see the module docstring for the fields).

    Args:
        meta: extra plain fields (``stage``, ``trained_on``, ``image_size``, ``global_step``).
    Raises:
        CheckpointError: if a weight or the class embeddings are not finite (names them).
    """
    from ffsplat.core.atomic import atomic_open

    blob = {
        "format": SLIM_FORMAT,
        "version": FORMAT_VERSION,
        "model_config": model_config,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "teachers": teachers,
        "class_names": list(class_names),
        "class_embeddings": class_embeddings.detach().cpu(),
        **meta,
    }
    if background_embedding is not None:
        blob["background_embedding"] = background_embedding.detach().cpu()
    bad = non_finite_tensors(_checksum_items(blob))
    if bad:
        shown = ", ".join(bad[:8]) + (f" (+{len(bad) - 8} more)" if len(bad) > 8 else "")
        raise CheckpointError(f"{path}: refusing to save non-finite weights in {len(bad)} tensor(s): {shown}")
    blob["checksum"] = {"algorithm": "sha256", "tensors": tensor_checksum(_checksum_items(blob))}
    with atomic_open(path) as f:
        torch.save(blob, f)
    return Path(path)


def validate(blob: Any, path: str | Path) -> dict:
    """Check a loaded blob: format, required keys, types and (version >= 2) the checksum."""
    if not isinstance(blob, dict) or blob.get("format") != SLIM_FORMAT:
        hint = (
            " (a Lightning last.ckpt? use the run's model.pt)"
            if isinstance(blob, dict) and "state_dict" in blob
            else ""
        )
        raise CheckpointError(f"{path}: not an ffsplat model file{hint}")
    for key in REQUIRED_KEYS:
        if key not in blob:
            raise CheckpointError(f"{path}: ffsplat model file without {key!r}")
    if not isinstance(blob["state_dict"], dict) or not all(isinstance(v, Tensor) for v in blob["state_dict"].values()):
        raise CheckpointError(f"{path}: 'state_dict' must map names to tensors")
    if not isinstance(blob["class_embeddings"], Tensor) or blob["class_embeddings"].ndim != 2:
        raise CheckpointError(f"{path}: 'class_embeddings' must be a [K, C] tensor")
    if len(blob["class_names"]) != blob["class_embeddings"].shape[0]:
        raise CheckpointError(
            f"{path}: {len(blob['class_names'])} class_names but {blob['class_embeddings'].shape[0]} class_embeddings"
        )
    background = blob.get("background_embedding")
    if background is not None and (
        not isinstance(background, Tensor) or tuple(background.shape) != (blob["class_embeddings"].shape[1],)
    ):
        raise CheckpointError(
            f"{path}: 'background_embedding' must be a [{blob['class_embeddings'].shape[1]}] tensor (the class embeddings' width)"
        )
    for role in ROLE_CONDITION:
        if role not in blob["teachers"] or "name" not in blob["teachers"][role]:
            raise CheckpointError(f"{path}: 'teachers' has no {role!r} entry with a 'name'")
    version = blob.get("version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: model file version {version!r}; this ffsplat reads versions 1..{FORMAT_VERSION}"
        )
    if version >= 2:
        stored = blob.get("checksum") or {}
        if stored.get("algorithm") != "sha256" or not isinstance(stored.get("tensors"), str):
            raise CheckpointError(f"{path}: model file without a sha256 'checksum'")
        if tensor_checksum(_checksum_items(blob)) != stored["tensors"]:
            raise CheckpointError(f"{path}: checksum mismatch: the weights are corrupted (file damaged or edited)")
    else:
        warnings.warn(f"{path}: version-1 model file has no checksum; its weights are not verified", stacklevel=3)
    return blob


def load_model(path: str | Path) -> dict:
    """Read (``weights_only=True``) and :func:`validate` a ``model.pt``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable or unsafe file
        raise CheckpointError(f"{path}: {unreadable_reason(exc, 'checkpoint')}; expected an ffsplat model.pt") from exc
    blob = validate(blob, path)
    # files written before the vocabulary rename (e.g. use_sam -> use_seg_teacher) load unchanged
    if isinstance(blob["model_config"], dict):
        blob["model_config"] = upgrade_renamed_keys(blob["model_config"])
    return blob


def load_weights(path: str | Path) -> dict[str, Tensor]:
    """Network weights from a ``model.pt`` or a Lightning checkpoint (keys under ``model.``), read with
    ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: {unreadable_reason(exc, 'checkpoint')}; use the run's model.pt") from exc
    if isinstance(blob, dict) and blob.get("format") == SLIM_FORMAT:
        return validate(blob, path)["state_dict"]
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict):
        raise CheckpointError(f"{path}: neither an ffsplat model file nor a Lightning checkpoint")
    return {k[len("model.") :]: v for k, v in blob["state_dict"].items() if k.startswith("model.")}


DEFAULT_DEPTH_RANGE = (0.5, 10.0)
"""near/far (metres) for a model file that records no ``depth_range``."""


def depth_range(meta: Mapping[str, Any]) -> tuple[float, float]:
    """The model's default ``(near, far)``: its recorded training ``depth_range``, else :data:`DEFAULT_DEPTH_RANGE`."""
    value = meta.get("depth_range")
    if value is None:
        return DEFAULT_DEPTH_RANGE
    near, far = (float(v) for v in value)
    return near, far
