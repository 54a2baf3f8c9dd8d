"""The training stages (SemanticSplat sec. 3.6) as data: what each stage trains, which loss terms
make up its total, which rendered fields it needs and which teacher supplies its targets.

=========  =============================  ==========================  ===============  ==============
stage      trained parameter groups       loss terms                  rendered fields  target teacher
=========  =============================  ==========================  ===============  ==============
geometry   geometry                       rgb, depth                  --               --
seg        geometry, segmentation         rgb, depth, seg, mask       seg              segmentation
semantic   segmentation                   seg, mask                   seg              segmentation
lang       language                       lang                        lang             language
=========  =============================  ==========================  ===============  ==============

``semantic`` is stage 1 on a frozen geometry: the segmentation branch alone, distilled onto Gaussians
whose positions no longer move (a geometry-only model, e.g. MVSplat's released weights, or a ``seg``
run continued on the scenes where the teacher is meaningful, ``data.scenes``). No RGB is scored, so
it needs no LPIPS, and no gradient flows through the geometry.

Loss terms (each a scalar; the stage's total is ``sum(weight(term) * term)``, see :func:`term_weight`):

- ``rgb``: L1 + ``loss.lpips_weight`` * LPIPS on the target views (weight 1);
- ``depth``: log-depth L1 against sensor depth (weight ``loss.depth_weight``; 0 leaves it out);
- ``seg``: 1 - cos between the decoded segmentation field and the segmentation teacher (weight 1);
- ``mask``: focal + dice between masks the prompt decoder gives for the decoded field and for the
  teacher (weight ``loss.mask_weight``; 0 leaves it out);
- ``lang``: 1 - cos between the decoded language field and the language teacher, pooled over
  three-scale masks when ``loss.hcam`` (HCAM, ``teachers.masks`` picks the masks) (weight 1).

The teachers that *condition* the network on the context views are not a stage property: they
follow the model's ``conditioning`` (``SemanticSplatModule.context_roles``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ffsplat.model.network import LANG, SEG

LOSS_TERMS = ("rgb", "depth", "seg", "mask", "lang")
"""Every loss term a stage can declare, in the order they are summed."""

PARAMETER_GROUPS = ("geometry", "segmentation", "language")
"""The network's parameter groups (``SemanticSplatNet.parameter_groups``)."""

TEACHER_ROLES = ("segmentation", "language")
"""Teacher roles (``teachers.segmentation`` / ``teachers.language``)."""


@dataclass(frozen=True)
class Stage:
    """One training stage.

    Attributes:
        name: the ``stage.name`` config value.
        trains: parameter groups that get gradients (the others are frozen, out of the optimiser).
        losses: loss terms summed into the total (a subset of :data:`LOSS_TERMS`, in that order).
        fields: semantic fields rendered for the target views (``seg`` and/or ``lang``).
        target_teacher: the teacher role whose target-view features the stage distils (None: none).
    """

    name: str
    trains: tuple[str, ...]
    losses: tuple[str, ...]
    fields: tuple[str, ...] = ()
    target_teacher: str | None = None

    def __post_init__(self) -> None:
        unknown = [t for t in self.losses if t not in LOSS_TERMS]
        if unknown or list(self.losses) != sorted(self.losses, key=LOSS_TERMS.index):
            raise ValueError(f"stage {self.name}: losses {self.losses} must be in the order of {LOSS_TERMS}")
        if not set(self.trains) <= set(PARAMETER_GROUPS):
            raise ValueError(f"stage {self.name}: trains {self.trains}; groups are {PARAMETER_GROUPS}")
        if self.target_teacher not in (None, *TEACHER_ROLES):
            raise ValueError(f"stage {self.name}: target_teacher {self.target_teacher!r}; roles are {TEACHER_ROLES}")

    @property
    def photometric(self) -> bool:
        """Whether the stage renders and scores RGB (LPIPS is built only then)."""
        return "rgb" in self.losses

    def active_terms(self, loss_cfg) -> tuple[str, ...]:
        """The declared terms whose weight under ``loss_cfg`` (:class:`LossConfig`) is not zero."""
        return tuple(t for t in self.losses if term_weight(t, loss_cfg) != 0)

    def total(self, terms: dict, loss_cfg):
        """``sum(term_weight(t) * terms[t])`` over :meth:`active_terms` (``terms`` must hold exactly those)."""
        active = self.active_terms(loss_cfg)
        if set(terms) != set(active):
            raise KeyError(f"stage {self.name}: loss terms {sorted(terms)} given, {list(active)} expected")
        total = None
        for term in active:
            value = term_weight(term, loss_cfg) * terms[term]
            total = value if total is None else total + value
        return total


def term_weight(term: str, loss_cfg) -> float:
    """The weight of a loss term under ``loss_cfg`` (:class:`ffsplat.training.config.LossConfig`)."""
    weights = {"rgb": 1.0, "depth": loss_cfg.depth_weight, "seg": 1.0, "mask": loss_cfg.mask_weight, "lang": 1.0}
    if term not in weights:
        raise KeyError(f"unknown loss term {term!r}; terms are {LOSS_TERMS}")
    return weights[term]


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("geometry", trains=("geometry",), losses=("rgb", "depth")),
        Stage(
            "seg",
            trains=("geometry", "segmentation"),
            losses=("rgb", "depth", "seg", "mask"),
            fields=(SEG,),
            target_teacher="segmentation",
        ),
        Stage(
            "semantic", trains=("segmentation",), losses=("seg", "mask"), fields=(SEG,), target_teacher="segmentation"
        ),
        Stage("lang", trains=("language",), losses=("lang",), fields=(LANG,), target_teacher="language"),
    )
}
"""The registry: ``stage.name`` -> :class:`Stage`."""


def get_stage(name: str) -> Stage:
    """The stage called ``name``; an unknown name raises one error naming ``stage.name`` and the choices."""
    if name not in STAGES:
        from ffsplat.core.errors import InputError

        raise InputError(f"stage.name={name!r}; choose one of {sorted(STAGES)}")
    return STAGES[name]
