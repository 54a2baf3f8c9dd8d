"""Inference policy shared by the training module and the inference :class:`~ffsplat.inference.predictor.Predictor`.

What evaluation needs from a model is declared once (:class:`SemanticModel`), and the decisions
behind it are made once, here, for both implementations:

* :func:`teacher_maps` -- teacher features by role, cached in the views (shards) or computed online;
* :func:`resolve_prompt_decoder` / :func:`build_prompt_decoder` -- which decoder turns point
  prompts on segmentation embeddings into masks (SAM's own decoder for models distilled from SAM,
  whether or not the network is conditioned on SAM; the similarity stand-in otherwise);
* :func:`hcam_masks` -- the three-scale masks of hierarchical pooling: cached in the shards,
  SAM's automatic masks online, or the ground-truth stand-in;
* :func:`classify` -- per-pixel classes and confidences by cosine against class embeddings
  (ids from :func:`ffsplat.objectives.metrics.classify_by_embeddings`, confidences at
  :data:`CLASS_LOGIT_SCALE`; 0 where the model's background embedding is closest);
* :func:`match_query` -- the pixels (Gaussians) whose best label is a query.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ffsplat.core.types import Views
from ffsplat.objectives.metrics import class_similarity, label_ids, label_rows
from ffsplat.objectives.prompting import SimilarityPromptDecoder, label_hierarchy_masks

ROLES = ("segmentation", "language")
PROMPT_DECODERS = ("auto", "sam", "similarity")
MASK_SOURCES = ("auto", "cached", "sam", "labels", "none")
"""Choices of ``teachers.masks`` (see :func:`hcam_masks`)."""

CLASS_LOGIT_SCALE = 1.0 / 0.07
"""Temperature of the class softmax behind per-pixel confidences: CLIP's / LSeg's logit scale
(``ffsplat.teachers.lseg.LOGIT_SCALE``); confidences only, class ids are the plain cosine argmax."""


@runtime_checkable
class SemanticModel(Protocol):
    """What evaluation (``ffsplat.evaluation``), figures and the baselines comparison need from a model.

    Implemented by :class:`ffsplat.inference.predictor.Predictor` (a loaded ``model.pt``) and by
    ``ffsplat.training.module.SemanticSplatModule`` (during training).

    Attributes:
        model: the network (``SemanticSplatNet``: ``decode_fields``, ...).
        prompt_decoder: point prompts on segmentation embeddings -> masks (``decode``).
        class_embeddings: ``[K, C]`` classes in the language teacher's space.
        conditioned: whether the network takes teacher maps as input.
    """

    model: nn.Module
    class_embeddings: Tensor

    @property
    def prompt_decoder(self) -> nn.Module: ...

    @property
    def conditioned(self) -> bool: ...

    def teacher_maps(self, views: Views) -> dict[str, Tensor]:
        """Teacher features by role -> ``[B, V, C, h, w]``."""
        ...

    def __call__(self, context: Views, teacher: dict[str, Tensor] | None = None):
        """Context views (+ teacher maps when conditioned) -> ``NetworkOutput``."""
        ...


def teacher_maps(
    views: Views, names: dict[str, str], teachers: dict[str, nn.Module] | None = None, prefer_cached: bool = True
) -> dict[str, Tensor]:
    """Teacher features by role (``segmentation``/``language``) -> ``[B, V, C, h, w]``.

    Args:
        views: ``[B, V]`` views; ``views.teacher`` holds cached features by teacher name.
        names: role -> teacher name (e.g. ``{"segmentation": "sam", "language": "lseg"}``).
        teachers: loaded teachers by name, used when the features are not cached (or always when
            ``prefer_cached`` is False); None/empty: cached features are required.
    Raises:
        KeyError: naming the missing features when they are neither cached nor computable.
    """
    cached = all(name in views.teacher for name in names.values())
    if cached and (prefer_cached or not teachers):
        return {role: views.teacher[name] for role, name in names.items()}
    if teachers and all(name in teachers for name in names.values()):
        from ffsplat.teachers.features import teacher_features

        b, v = views.images.shape[:2]
        flat = lambda t: None if t is None else t.flatten(0, 1)  # noqa: E731
        feats = teacher_features(
            {name: teachers[name] for name in names.values()},
            views.images.flatten(0, 1),
            flat(views.labels),
            flat(views.instances),
        )
        return {role: feats[name].unflatten(0, (b, v)) for role, name in names.items()}
    missing = sorted(name for name in names.values() if name not in views.teacher)
    raise KeyError(
        f"no cached {missing} teacher features in the views (have {sorted(views.teacher)}) and no such teachers loaded: "
        "write shards with --teacher ..., set teachers.source=online, or give the teachers' weights"
    )


def resolve_prompt_decoder(choice: str, segmentation_teacher: str) -> str:
    """``auto``/``sam``/``similarity`` + the segmentation teacher's name -> ``"sam"`` or ``"similarity"``.

    ``auto`` is SAM's decoder whenever the segmentation field was distilled from SAM (conditioned
    or not), the similarity stand-in otherwise.
    """
    if choice not in PROMPT_DECODERS:
        raise ValueError(f"teachers.prompt_decoder={choice!r}; choose one of {', '.join(PROMPT_DECODERS)}")
    if choice == "auto":
        return "sam" if segmentation_teacher == "sam" else "similarity"
    if choice == "sam" and segmentation_teacher != "sam":
        raise ValueError("teachers.prompt_decoder=sam needs teachers.segmentation.name=sam")
    return choice


def build_prompt_decoder(
    choice: str, segmentation_teacher: str, segmentation_kwargs: dict, loaded: dict[str, nn.Module] | None = None
) -> nn.Module:
    """The prompt decoder :func:`resolve_prompt_decoder` picks: an already ``loaded`` SAM teacher, SAM
    built from ``segmentation_kwargs`` (its local ``checkpoint``), or :class:`SimilarityPromptDecoder`."""
    if resolve_prompt_decoder(choice, segmentation_teacher) == "similarity":
        return SimilarityPromptDecoder()
    if loaded and "sam" in loaded:
        return loaded["sam"]
    from ffsplat.teachers.features import load_teachers

    return load_teachers({"sam": segmentation_kwargs})["sam"]


def hcam_masks(
    target: Views, choice: str, segmentation_teacher: str, prompt_decoder: nn.Module | None, shards: str | None = None
) -> list[dict[str, Tensor]] | None:
    """Three-scale masks per target view for hierarchical pooling (``teachers.masks``), or None.

    ``cached``: the masks cached in the shards (``make_shards --teacher sam_masks:...``; SAM is
    never run); without them one ``ValueError`` naming the key and the shard folder ``shards``.
    ``sam``: the cached masks when the views carry them, else SAM's automatic masks computed
    online (the ``prompt_decoder`` must be SAM). ``auto``: the cache when present, else SAM online
    when the segmentation teacher is SAM, else ``labels``. ``labels``: the stand-in from
    ground-truth instances and classes (:func:`~ffsplat.objectives.prompting.label_hierarchy_masks`).
    ``none``: no pooling.

    Args:
        target: ``[B, V]`` views; ``target.masks`` holds cached masks at the image size, if any.
    Returns:
        ``B * V`` dicts ``{"small", "medium", "large"} -> [K, H, W] bool`` (views flattened), or None.
    """
    if choice not in MASK_SOURCES:
        raise ValueError(f"teachers.masks={choice!r}; choose one of {', '.join(MASK_SOURCES)}")
    if choice == "none":
        return None
    cached = target.masks is not None
    if choice == "cached" and not cached:
        raise ValueError(
            f"teachers.masks=cached but the shards in {shards or '?'} hold no cached masks (no masks.npz): "
            "write them with data_prep/make_shards.py --teacher sam_masks:checkpoint=..., or set teachers.masks=sam"
        )
    if cached and choice in ("cached", "sam", "auto"):
        return target.masks.to(target.images.device).to_masks()
    if choice == "auto":
        choice = "sam" if segmentation_teacher == "sam" else "labels"
    if choice == "labels":
        if target.labels is None or target.instances is None:
            raise ValueError("teachers.masks=labels needs labels and instances in the shards")
        return [
            label_hierarchy_masks(lab, ins)
            for lab, ins in zip(target.labels.flatten(0, 1), target.instances.flatten(0, 1))
        ]
    if not hasattr(prompt_decoder, "automatic_masks"):
        raise ValueError(
            "teachers.masks=sam without cached masks needs the SAM prompt decoder (teachers.prompt_decoder=sam); "
            "or cache the masks with make_shards.py --teacher sam_masks:checkpoint=..."
        )
    return prompt_decoder.automatic_masks(target.images.flatten(0, 1))


@torch.no_grad()
def classify(features: Tensor, class_embeddings: Tensor, background: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-pixel class ids and confidences.

    Args:
        features: ``[N, C, H, W]`` language features (expanded to the teacher's space).
        class_embeddings: ``[K, C]``.
        background: ``[C]`` or None: the model's ``background_embedding`` (a closed-vocabulary
            teacher's "none of the classes" output); where it is the closest, the id is 0.
    Returns:
        ids ``[N, H, W]`` int64 in ``1..K``, or 0 for background (the cosine argmax, as
        :func:`~ffsplat.objectives.metrics.classify_by_embeddings`), confidence ``[N, H, W]``: the
        softmax over the classes (and background) of ``CLASS_LOGIT_SCALE * cos`` at the winner.
    """
    cos = class_similarity(features, label_rows(class_embeddings, background))
    conf = (cos * CLASS_LOGIT_SCALE).softmax(dim=1).max(dim=1).values
    return label_ids(cos, background), conf


@torch.no_grad()
def match_query(
    features: Tensor, class_embeddings: Tensor, query: int | Tensor, background: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Pixels (= Gaussians, in pixel order) whose best label is a query.

    The query competes with every class and, if the model has one, the background: a pixel matches
    when the query is the cosine argmax among them.

    Args:
        features: ``[N, C, H, W]`` language features (teacher space).
        class_embeddings: ``[K, C]``.
        query: a class index ``0..K-1`` (a known class name) or an embedding ``[C]`` (e.g. CLIP text),
            appended to the classes.
        background: ``[C]`` or None (see :func:`classify`).
    Returns:
        match ``[N, H, W]`` bool, relevance ``[N, H, W]``: the softmax probability of the query over
        the classes (+ query) (+ background) at ``CLASS_LOGIT_SCALE``.
    """
    table = class_embeddings
    if isinstance(query, Tensor):
        table, index = torch.cat([class_embeddings, query.reshape(1, -1).to(class_embeddings)]), len(class_embeddings)
    else:
        index = int(query)
        if not 0 <= index < len(class_embeddings):
            raise ValueError(f"match_query: class index {index} outside 0..{len(class_embeddings) - 1}")
    cos = class_similarity(features, label_rows(table, background))
    relevance = (cos * CLASS_LOGIT_SCALE).softmax(dim=1)[:, index]
    return cos.argmax(dim=1) == index, relevance
