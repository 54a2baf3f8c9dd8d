"""A trained model ready for inference and evaluation, loaded from a ``model.pt`` (:mod:`ffsplat.checkpoint`).

It implements :class:`ffsplat.objectives.policy.SemanticModel`, the interface evaluation needs
(as the training module does, on the same helpers): ``predictor(context, teacher_maps) ->
NetworkOutput``, ``teacher_maps(views)``, ``prompt_decoder``, ``class_embeddings``, ``conditioned``.
Teachers are only built when the network is conditioned on them (their weights come from local
paths stored in the checkpoint or given as overrides); a model trained without conditioning needs
nothing but images. The prompt decoder is built on first use (SAM's decoder for a model distilled
from SAM, which then needs SAM's weights; the similarity stand-in otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ffsplat.checkpoint import ROLE_CONDITION, CheckpointError, load_model
from ffsplat.core.config import to_dataclass
from ffsplat.core.types import Views
from ffsplat.inference.fast import FastInferenceConfig, inference_forward
from ffsplat.model.network import ModelConfig, NetworkOutput, build_model
from ffsplat.objectives import policy
from ffsplat.teachers.features import load_teachers

__all__ = ["CheckpointError", "Predictor", "resolve_weight_paths", "teacher_overrides"]


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
        fast: run the network through :func:`ffsplat.inference.fast.inference_forward` (inference
            mode, ``bf16`` autocast of the learned layers, ``torch.compile``); None: eager float32
            under ``no_grad`` (the default until the GPU check shows the fast path right and faster).
    """

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "cpu",
        teacher_overrides: dict[str, dict] | None = None,
        fast: FastInferenceConfig | None = None,
    ):
        super().__init__()
        self.path = Path(path)  # the model file read (outputs never overwrite it)
        blob = load_model(path)
        self.meta = {
            k: v for k, v in blob.items() if k not in ("state_dict", "class_embeddings", "background_embedding")
        }
        model_cfg = to_dataclass(ModelConfig, blob["model_config"])
        model_cfg.pretrained = None
        roles = {role: dict(spec) for role, spec in blob["teachers"].items()}
        for spec in roles.values():
            spec["kwargs"] = resolve_weight_paths(spec.get("kwargs", {}), Path(path))
        for role, kwargs in (teacher_overrides or {}).items():
            roles[role]["kwargs"] = {**roles[role].get("kwargs", {}), **kwargs}
        self.cfg = _Cfg(model_cfg, roles)
        self.model = build_model(model_cfg).eval()
        try:
            missing, unexpected = self.model.load_state_dict(blob["state_dict"], strict=False)
        except RuntimeError as exc:  # tensor shapes that do not fit the stored config
            raise CheckpointError(
                f"{path}: weights do not fit the stored model config ({' '.join(str(exc).split())[:300]})"
            ) from exc
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: weights do not match the stored model config (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        self.class_names: list[str] = list(blob["class_names"])
        self.register_buffer("class_embeddings", blob["class_embeddings"].float(), persistent=False)
        # [C] or None: where the language field is closest to it, no class (id 0; see ffsplat.checkpoint)
        background = blob.get("background_embedding")
        self.register_buffer(
            "background_embedding", None if background is None else background.float(), persistent=False
        )
        self._teachers: dict[str, nn.Module] = {}
        if model_cfg.conditioning.names:
            needed = {roles[r]["name"]: roles[r].get("kwargs", {}) for r in ("segmentation", "language")}
            self._teachers = load_teachers(needed, device)
        self.prompt_decoder_name = policy.resolve_prompt_decoder(
            blob.get("prompt_decoder", "auto"), roles["segmentation"]["name"]
        )
        self._lazy: dict[str, nn.Module] = {}
        self.to(device)
        self.fast = fast
        # The network's forward: eager under no_grad, or the inference mode of ffsplat.inference.fast
        # (inference_mode, optional bf16 autocast of the learned layers, optional torch.compile).
        self._network = inference_forward(self.model, fast) if fast is not None else None

    @property
    def conditioned(self) -> bool:
        return bool(self.cfg.model.conditioning.names)

    @property
    def prompt_decoder(self) -> nn.Module:
        """Point prompts -> masks (``policy.build_prompt_decoder``), built on first use."""
        if "prompt_decoder" not in self._lazy:
            seg = self.cfg.roles["segmentation"]
            decoder = policy.build_prompt_decoder(
                self.prompt_decoder_name, seg["name"], seg.get("kwargs", {}), self._teachers
            )
            self._lazy["prompt_decoder"] = decoder.to(self.device)
        return self._lazy["prompt_decoder"]

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
        names = {role: self.cfg.roles[role]["name"] for role in policy.ROLES}
        return policy.teacher_maps(views, names, self._teachers)

    @torch.no_grad()
    def forward(self, context: Views, teacher: dict[str, Tensor] | None = None, eager: bool = False) -> NetworkOutput:
        """The network on ``context`` (teacher maps by role for a conditioned model); ``eager``: the plain
        float32 network even when a fast path is configured (no compile for a one-off size)."""
        conditions = {ROLE_CONDITION[role]: f for role, f in (teacher or {}).items()}
        if self._network is not None and not eager:
            return self._network(context, conditions if self.conditioned else None)
        return self.model(context, conditions if self.conditioned else None)


WEIGHT_KEYS = ("checkpoint", "clip_path")
"""Teacher config keys that name local weights (files or folders)."""


def resolve_weight_paths(kwargs: dict, model_path: Path) -> dict:
    """A teacher's stored config with relative weight paths resolved: as given (relative to the
    working directory) when that exists, else relative to the model file's folder or one of its
    parents (a checkout's ``checkpoints/demo/model.pt`` stores ``../shared/weights/...`` relative to
    the repository root, so it runs from any directory). Paths found nowhere are kept as given, so
    the teacher's own error names them."""
    out = dict(kwargs)
    for key in WEIGHT_KEYS:
        value = out.get(key)
        if not isinstance(value, str) or not value or Path(value).is_absolute() or Path(value).exists():
            continue
        for folder in Path(model_path).resolve().parents:
            if (folder / value).exists():
                out[key] = str(folder / value)
                break
    return out


def teacher_overrides(sam_checkpoint: str | None = None, lseg_checkpoint: str | None = None) -> dict[str, dict]:
    """Per-role teacher config overrides from command-line weight paths."""
    overrides: dict[str, dict] = {}
    if sam_checkpoint:
        overrides["segmentation"] = {"checkpoint": sam_checkpoint}
    if lseg_checkpoint:
        overrides["language"] = {"checkpoint": lseg_checkpoint}
    return overrides
