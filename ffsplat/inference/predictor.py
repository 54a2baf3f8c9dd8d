"""A trained model ready for inference and evaluation, loaded from a slim ``model.pt``.

It offers what :mod:`ffsplat.evaluation.evaluate` and ``infer.py`` need (the same interface as the training
module): ``predictor(context, teacher_maps) -> NetworkOutput``, ``teacher_maps(views)``,
``prompt_decoder``, ``class_embeddings`` and ``cfg.model``. Teachers are only built when the
network is conditioned on them (their weights come from local paths stored in the checkpoint or
given as overrides); a model trained without conditioning needs nothing but images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ffsplat.core.config import to_dataclass
from ffsplat.model.network import ModelConfig, NetworkOutput, build_model
from ffsplat.objectives.prompting import SimilarityPromptDecoder
from ffsplat.teachers.features import load_teachers, teacher_features
from ffsplat.training.module import SLIM_FORMAT, ROLE_CONDITION
from ffsplat.core.types import Views


class CheckpointError(ValueError):
    """A checkpoint file that is missing, not an ffsplat model, or inconsistent with its config."""


@dataclass
class _Cfg:
    model: ModelConfig
    roles: dict[str, dict] = field(default_factory=dict)


class Predictor(nn.Module):
    """Slim checkpoint -> network + teachers + prompt decoder + class embeddings.

    Args:
        path: ``model.pt`` written by training (``ffsplat.training.module.export_slim``).
        device: where to run.
        teacher_overrides: per role (``segmentation``/``language``), config kwargs replacing the
            stored ones (e.g. ``{"segmentation": {"checkpoint": "/weights/sam_vit_b.pth"}}``).
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", teacher_overrides: dict[str, dict] | None = None):
        super().__init__()
        blob = load_slim(path)
        self.meta = {k: v for k, v in blob.items() if k not in ("state_dict", "class_embeddings")}
        model_cfg = to_dataclass(ModelConfig, blob["model_config"])
        model_cfg.pretrained = None
        roles = {role: dict(spec) for role, spec in blob["teachers"].items()}
        for role, kwargs in (teacher_overrides or {}).items():
            roles[role]["kwargs"] = {**roles[role].get("kwargs", {}), **kwargs}
        self.cfg = _Cfg(model_cfg, roles)
        self.model = build_model(model_cfg).eval()
        try:
            missing, unexpected = self.model.load_state_dict(blob["state_dict"], strict=False)
        except RuntimeError as exc:  # tensor shapes that do not fit the stored config
            raise CheckpointError(f"{path}: weights do not fit the stored model config ({' '.join(str(exc).split())[:300]})") from exc
        if missing or unexpected:
            raise CheckpointError(f"{path}: weights do not match the stored model config (missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.class_names: list[str] = list(blob["class_names"])
        self.register_buffer("class_embeddings", blob["class_embeddings"].float(), persistent=False)
        self._teachers: dict[str, nn.Module] = {}
        if model_cfg.conditioning.names:
            needed = {roles[r]["name"]: roles[r].get("kwargs", {}) for r in ("segmentation", "language")}
            self._teachers = load_teachers(needed, device)
        seg_name = roles["segmentation"]["name"]
        self.prompt_decoder = self._teachers.get("sam") if seg_name == "sam" else SimilarityPromptDecoder()
        self.to(device)

    @property
    def device(self) -> torch.device:
        return self.class_embeddings.device

    @property
    def needs_labels(self) -> bool:
        """True if the network is conditioned on label-derived stand-in teachers: it then runs only
        on labelled data (evaluation shards), never on new photos."""
        return bool(self.cfg.model.conditioning.names) and any(t.needs_labels for t in self._teachers.values())

    def teacher_maps(self, views: Views) -> dict[str, Tensor]:
        """Teacher features by role: cached in ``views.teacher`` (shards) or computed online."""
        names = {role: self.cfg.roles[role]["name"] for role in ("segmentation", "language")}
        if all(name in views.teacher for name in names.values()):
            return {role: views.teacher[name] for role, name in names.items()}
        if not self._teachers:
            raise KeyError(f"no cached {sorted(names.values())} features in the views and no teachers loaded")
        b, v = views.images.shape[:2]
        flat = lambda t: None if t is None else t.flatten(0, 1)  # noqa: E731
        feats = teacher_features(self._teachers, views.images.flatten(0, 1), flat(views.labels), flat(views.instances))
        return {role: feats[name].unflatten(0, (b, v)) for role, name in names.items()}

    @torch.no_grad()
    def forward(self, context: Views, teacher: dict[str, Tensor] | None = None) -> NetworkOutput:
        conditions = {ROLE_CONDITION[role]: f for role, f in (teacher or {}).items()}
        return self.model(context, conditions if self.cfg.model.conditioning.names else None)


def teacher_overrides(sam_checkpoint: str | None = None, lseg_checkpoint: str | None = None) -> dict[str, dict]:
    """Per-role teacher config overrides from command-line weight paths."""
    overrides: dict[str, dict] = {}
    if sam_checkpoint:
        overrides["segmentation"] = {"checkpoint": sam_checkpoint}
    if lseg_checkpoint:
        overrides["language"] = {"checkpoint": lseg_checkpoint}
    return overrides


def load_slim(path: str | Path) -> dict:
    """Read and check a slim checkpoint; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code from a user file
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(blob, dict) or blob.get("format") != SLIM_FORMAT:
        hint = " (a Lightning last.ckpt? use the run's model.pt)" if isinstance(blob, dict) and "state_dict" in blob else ""
        raise CheckpointError(f"{path}: not an ffsplat model file{hint}")
    for key in ("model_config", "state_dict", "teachers", "class_names", "class_embeddings"):
        if key not in blob:
            raise CheckpointError(f"{path}: ffsplat model file without {key!r}")
    return blob
