"""CLIP text embeddings of class names: the text side of LSeg's pixel-text matching.

LSeg (Li et al., ICLR 2022) classifies a pixel by the cosine between its 512-d feature and the CLIP
ViT-B/32 text embedding of each class name (bare names, no prompt). This module loads that text
tower with ``transformers`` from a LOCAL directory (``teachers.clip_path``; e.g. a snapshot of
``openai/clip-vit-base-patch32`` -- a full ``CLIPModel`` directory works, its text tower and
``text_projection`` are read) and caches the embeddings per label set, in memory and optionally on
disk. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffsplat.core.atomic import atomic_open
from ffsplat.teachers.base import require_file

CLIP_KEY = "teachers.clip_path"
LSEG_TEMPLATE = "{}"
"""LSeg tokenises the bare label names."""
PHOTO_TEMPLATE = "a photo of a {}."
_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


def require_dir(path: str | Path | None, key: str = CLIP_KEY) -> Path:
    """The CLIP model directory at ``path``, or a FileNotFoundError naming ``key`` and the path."""
    return require_file(path, key, directory=True)


def check_tokenizer(tokenizer, vocab_size: int, where: str = "") -> None:
    """Reject placeholder tokenizers.

    Offline, ``CLIPTokenizer.from_pretrained(<anything>)`` silently returns a 2-token tokenizer
    (start/end of text only) that maps every word to ``<|endoftext|>``; all class names would then
    get the same embedding. A real tokenizer has more than a handful of tokens, no more than the
    text model's embedding table, and start/end tokens.
    """
    n = len(tokenizer)
    if n < 3 or n > vocab_size or tokenizer.eos_token_id is None or tokenizer.bos_token_id is None:
        raise ValueError(
            f"{CLIP_KEY}: the CLIP tokenizer{' in ' + where if where else ''} is not usable: {n} tokens "
            f"(text model has {vocab_size}), bos={tokenizer.bos_token_id}, eos={tokenizer.eos_token_id}. "
            "A 2-token tokenizer means its vocab files were not found (offline CLIPTokenizer.from_pretrained "
            "does not raise); the directory needs tokenizer.json or vocab.json + merges.txt."
        )


class ClipTextEncoder(nn.Module):
    """Class names -> L2-normalised CLIP text embeddings ``[K, dim]`` (``dim`` = 512 for ViT-B/32).

    Args:
        model: a ``CLIPTextModelWithProjection`` (frozen; put in eval mode).
        tokenizer: its tokenizer (checked against the 2-token placeholder).
        template: prompt with one ``{}`` for the label (LSeg: ``"{}"``; CLIP style: ``"a photo of a {}."``).
        cache_dir: optional directory for on-disk caches (``clip_text_<hash>.pt``), keyed by labels,
            template and a fingerprint of the model weights.
        batch_size: labels per forward pass.
    """

    def __init__(self, model: nn.Module, tokenizer, *, template: str = LSEG_TEMPLATE,
                 cache_dir: str | Path | None = None, batch_size: int = 256, where: str = "") -> None:  # fmt: skip
        super().__init__()
        if "{}" not in template:
            raise ValueError(f"prompt template {template!r} needs a '{{}}' placeholder for the label")
        check_tokenizer(tokenizer, model.config.vocab_size, where)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.template = template
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.batch_size = batch_size
        self.max_length = int(model.config.max_position_embeddings)
        self._memory: dict[tuple, Tensor] = {}
        self._fingerprint: str | None = None

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @classmethod
    def from_pretrained(cls, path: str | Path | None, **kwargs) -> ClipTextEncoder:
        """Load model and tokenizer from the local directory ``path`` (``teachers.clip_path``)."""
        from transformers import AutoTokenizer, CLIPTextModelWithProjection
        from transformers.utils import logging as hf_logging

        root = require_dir(path)
        if not any(all((root / f).is_file() for f in group) for group in _TOKENIZER_FILES):
            raise FileNotFoundError(
                f"{CLIP_KEY}: no tokenizer files in {root} (need tokenizer.json or vocab.json + merges.txt)"
            )
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a full CLIPModel dir lists every vision weight as "unexpected"
        try:
            model, info = CLIPTextModelWithProjection.from_pretrained(
                str(root), local_files_only=True, output_loading_info=True
            )
            tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(
                f"{CLIP_KEY}: cannot load a CLIP text model + tokenizer from {root}: {err}"
            ) from err
        finally:
            hf_logging.set_verbosity(verbosity)
        bad = sorted(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]
        if bad:
            raise ValueError(
                f"{CLIP_KEY}: the CLIP text weights in {root} are incomplete (missing/mismatched: {bad[:8]})"
            )
        return cls(model, tokenizer, where=str(root), **kwargs)

    def fingerprint(self) -> str:
        """Hash of the text projection weights and config (identifies the model in disk caches)."""
        if self._fingerprint is None:
            h = hashlib.sha1(self.model.config.to_json_string(use_diff=False).encode())
            h.update(self.model.text_projection.weight.detach().float().cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def _cache_path(self, labels: tuple[str, ...]) -> Path | None:
        if self.cache_dir is None:
            return None
        key = json.dumps({"labels": labels, "template": self.template, "model": self.fingerprint()})
        return self.cache_dir / f"clip_text_{hashlib.sha1(key.encode()).hexdigest()[:20]}.pt"

    @torch.no_grad()
    def _embed(self, labels: Sequence[str]) -> Tensor:
        """Run the text tower: ``[K, dim]`` float32 unit vectors on the CPU."""
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(labels), self.batch_size):
            prompts = [self.template.format(label) for label in labels[i : i + self.batch_size]]
            tokens = self.tokenizer(
                prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            tokens = {k: tokens[k].to(device) for k in ("input_ids", "attention_mask")}
            out.append(F.normalize(self.model(**tokens).text_embeds.float(), dim=-1).cpu())
        return torch.cat(out)

    def _read_cache(self, path: Path, labels: tuple[str, ...]) -> Tensor | None:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # unreadable cache: recompute and overwrite it
            return None
        expected = {"labels": list(labels), "template": self.template, "model": self.fingerprint()}
        return blob["embeddings"] if all(blob.get(k) == v for k, v in expected.items()) else None

    def forward(self, labels: Sequence[str]) -> Tensor:
        """``labels`` (K names) -> ``[K, dim]`` unit-norm float32 embeddings on the model's device."""
        labels = tuple(str(label) for label in labels)
        if not labels:
            raise ValueError("no class names given")
        key = (labels, self.template)
        emb = self._memory.get(key)
        if emb is None:
            path = self._cache_path(labels)
            if path is not None and path.is_file():
                emb = self._read_cache(path, labels)
            if emb is None:
                emb = self._embed(labels)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    blob = {
                        "labels": list(labels),
                        "template": self.template,
                        "model": self.fingerprint(),
                        "embeddings": emb,
                    }
                    with atomic_open(path) as stream:
                        torch.save(blob, stream)
            self._memory[key] = emb
        return emb.to(next(self.model.parameters()).device)
