"""Choose context and target views from clips: random sampling for training, fixed indices for evaluation.

Everything here works on *indices* only (no images). A clip is a list of keyframes of one scene, each
with an integer source frame id (increasing, not necessarily contiguous). A *position* is an index into
that list (``0 .. L-1``); a *frame id* is the source frame number stored in the list.

Training: :func:`sample_views` draws ``V`` context and ``T`` target positions per example, following
MVSplat's "bounded" sampler (outer context views ``gap`` positions apart, targets between them), with an
optional curriculum that widens the allowed gap over training (:class:`ViewSamplerConfig`).

Evaluation index (JSON, frame ids, not positions). Canonical schema: every scene maps to a *list* of
entries; each entry is one evaluation example with its own context and target frame ids::

    {
      "scene0000_00": [
        {"context": [10, 42], "target": [17, 25, 31, 38]}
      ],
      "scene0011_00": [
        {"context": [0, 22], "target": [11]},
        {"context": [33, 55], "target": [44]}
      ]
    }

:func:`load_eval_index` also accepts MVSplat's form, one bare entry per scene
(``{"scene": {"context": [...], "target": [...]}}``), and ``null`` for a scene (MVSplat marks scenes it
skips this way), and normalises both to the list form (``null`` -> ``[]``: the scene has no examples).
Entries must have exactly the keys ``"context"`` (>= 2 distinct non-negative int ids) and ``"target"``
(>= 1 non-negative int ids; repeats allowed, see :func:`sample_views`). :func:`save_eval_index` always
writes the list form. Builders: :func:`build_eval_index` (seeded random, via :func:`sample_views`) and
:func:`build_lsm_index` (the LSM / Uni3R ScanNet test protocol: one entry per target frame).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TypedDict

import numpy as np

from ffsplat.core.atomic import atomic_open


class EvalEntry(TypedDict):
    """One evaluation example: context and target source frame ids."""

    context: list[int]
    target: list[int]


EvalIndex = dict[str, list[EvalEntry]]
"""Scene name -> list of evaluation examples (canonical form, see the module docstring)."""


@dataclass
class ViewSamplerConfig:
    """How :func:`sample_views` picks views from a clip. All distances are in clip positions.

    Attributes:
        num_context: ``V >= 2`` context (input) views per example. The two outermost are ``gap``
            positions apart; the other ``V - 2`` are distinct positions strictly between them.
        num_target: ``T >= 1`` target (supervision / rendering) views per example.
        min_gap: smallest allowed distance between the two outermost context views. Must leave room
            for the inner context views (``>= V - 1``) and, with ``target_range="between"`` and no
            overlap, for at least one target (``>= V``).
        max_gap: largest allowed distance between the outermost context views (``>= min_gap``); it is
            also capped by the clip length (``gap <= L - 1``).
        gap_warmup_steps: MVSplat-style curriculum. If > 0, the effective max gap grows linearly from
            ``min_gap`` at step 0 to ``max_gap`` at this step (floored to an int), then stays there.
            0 disables it (always ``max_gap``).
        target_range: ``"between"`` (default, MVSplat "bounded"): targets lie between the outermost
            context views, inclusive. ``"clip"``: targets anywhere in the clip.
        allow_target_overlap: if False (default) targets are never context positions.
    """

    num_context: int = 2
    num_target: int = 4
    min_gap: int = 5
    max_gap: int = 15
    gap_warmup_steps: int = 0
    target_range: str = "between"  # "between" | "clip" (a str: OmegaConf configs cannot hold Literal)
    allow_target_overlap: bool = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.num_context < 2:
            raise ValueError(f"{name}.num_context must be >= 2, got {self.num_context}")
        if self.num_target < 1:
            raise ValueError(f"{name}.num_target must be >= 1, got {self.num_target}")
        if self.target_range not in ("between", "clip"):
            raise ValueError(f"{name}.target_range must be 'between' or 'clip', got {self.target_range!r}")
        need = self.num_context - 1
        why = f"num_context={self.num_context} distinct context views"
        if self.target_range == "between" and not self.allow_target_overlap:
            need += 1
            why += " plus a free target position (target_range='between', allow_target_overlap=False)"
        if self.min_gap < need:
            raise ValueError(f"{name}.min_gap={self.min_gap} is too small: {why} need min_gap >= {need}")
        if self.max_gap < self.min_gap:
            raise ValueError(f"{name}.max_gap={self.max_gap} must be >= min_gap={self.min_gap}")
        if self.gap_warmup_steps < 0:
            raise ValueError(f"{name}.gap_warmup_steps must be >= 0, got {self.gap_warmup_steps}")

    def current_max_gap(self, step: int) -> int:
        """The curriculum's max gap at training ``step`` (``max_gap`` when there is no warm-up)."""
        if self.gap_warmup_steps <= 0:
            return self.max_gap
        frac = min(max(step, 0) / self.gap_warmup_steps, 1.0)
        return self.min_gap + int((self.max_gap - self.min_gap) * frac)


def sample_views(
    num_frames: int, config: ViewSamplerConfig, rng: np.random.Generator, step: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw context and target positions from a clip of ``num_frames`` keyframes.

    The gap between the outermost context views is uniform in ``[min_gap, min(current_max_gap(step),
    num_frames - 1)]``, its placement uniform in the clip; the ``V - 2`` inner context views are distinct
    positions strictly between. Targets are drawn without replacement from the candidate positions
    (``target_range`` minus the context views unless ``allow_target_overlap``). If there are fewer
    candidates than ``T``, every candidate is used once and the rest are drawn *with replacement*, so
    targets then repeat.

    Returns:
        ``(context, target)``: sorted int64 arrays of shape ``[V]`` and ``[T]``.

    Raises:
        ValueError: the clip is too short for ``min_gap`` / ``num_context`` (message names the fields).
    """
    c = config
    if num_frames < c.min_gap + 1:
        raise ValueError(
            f"clip has {num_frames} frames, too short for ViewSamplerConfig.min_gap={c.min_gap} "
            f"(num_context={c.num_context}): needs at least min_gap + 1 = {c.min_gap + 1} frames"
        )
    if c.target_range == "clip" and not c.allow_target_overlap and num_frames <= c.num_context:
        raise ValueError(
            f"clip has {num_frames} frames: no target left besides num_context={c.num_context} context views "
            f"(target_range='clip', allow_target_overlap=False); needs at least {c.num_context + 1} frames"
        )
    gap = int(rng.integers(c.min_gap, min(c.current_max_gap(step), num_frames - 1) + 1))
    left = int(rng.integers(0, num_frames - gap))
    right = left + gap
    inner = rng.choice(np.arange(left + 1, right), size=c.num_context - 2, replace=False)
    context = np.sort(np.concatenate([[left, right], inner]).astype(np.int64))

    lo, hi = (left, right) if c.target_range == "between" else (0, num_frames - 1)
    pool = np.arange(lo, hi + 1, dtype=np.int64)
    if not c.allow_target_overlap:
        pool = np.setdiff1d(pool, context)
    if len(pool) >= c.num_target:
        target = rng.choice(pool, size=c.num_target, replace=False)
    else:
        target = np.concatenate([pool, rng.choice(pool, size=c.num_target - len(pool), replace=True)])
    return context, np.sort(target.astype(np.int64))


def positions_for(frame_ids: Sequence[int], wanted: Sequence[int], scene: str | None = None) -> np.ndarray:
    """Positions (int64 ``[len(wanted)]``) of the frame ids ``wanted`` in ``frame_ids``.

    Raises:
        KeyError: a wanted id is not in ``frame_ids`` (message names the id, and the scene if given).
    """
    lookup = {int(f): i for i, f in enumerate(frame_ids)}
    out = np.empty(len(wanted), dtype=np.int64)
    for k, w in enumerate(wanted):
        if int(w) not in lookup:
            where = f"scene {scene!r}" if scene is not None else "the clip"
            span = f"{min(lookup)}..{max(lookup)}" if lookup else "none"
            raise KeyError(f"frame id {int(w)} not found in {where} ({len(lookup)} frame ids, range {span})")
        out[k] = lookup[int(w)]
    return out


# ---------------------------------------------------------------------------------------------------------
# Evaluation index: validation, JSON I/O, builders


def _check_ids(value: Any, key: str, where: str, min_len: int) -> list[int]:
    if isinstance(value, (tuple, np.ndarray)):  # accepted when saving from Python; JSON only has lists
        value = list(value.tolist() if isinstance(value, np.ndarray) else value)
    if not isinstance(value, list):
        raise ValueError(f"{where}: {key!r} must be a list of frame ids, got {type(value).__name__}")
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0]
    if bad:
        raise ValueError(f"{where}: {key!r} must hold non-negative integer frame ids, got {bad[0]!r}")
    if len(value) < min_len:
        what = "is empty" if not value else f"has {len(value)} view(s)"
        raise ValueError(f"{where}: {key!r} {what}; needs at least {min_len}")
    return [int(v) for v in value]


def _normalise(raw: Any, source: str) -> EvalIndex:
    """Validate a decoded index (list or MVSplat single-entry form) and return the canonical list form."""
    if not isinstance(raw, dict):
        raise ValueError(
            f"{source}: evaluation index must be a JSON object {{scene: entries}}, got {type(raw).__name__}"
        )
    index: EvalIndex = {}
    for scene, value in raw.items():
        if not isinstance(scene, str) or not scene:
            raise ValueError(f"{source}: scene names must be non-empty strings, got {scene!r}")
        entries = [] if value is None else [value] if isinstance(value, dict) else value
        if not isinstance(entries, list):
            raise ValueError(
                f"{source}: scene {scene!r}: expected an entry object or a list of them, got {type(value).__name__}"
            )
        out: list[EvalEntry] = []
        for k, entry in enumerate(entries):
            where = f"{source}: scene {scene!r} entry {k}"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected an object with 'context' and 'target', got {type(entry).__name__}")
            for key in ("context", "target"):
                if key not in entry:
                    raise ValueError(f"{where}: missing key {key!r}")
            extra = sorted(set(entry) - {"context", "target"})
            if extra:
                raise ValueError(f"{where}: unknown key(s) {extra}; allowed: 'context', 'target'")
            context = _check_ids(entry["context"], "context", where, 2)
            if len(set(context)) != len(context):
                raise ValueError(f"{where}: 'context' has duplicate frame ids {context}")
            out.append({"context": context, "target": _check_ids(entry["target"], "target", where, 1)})
        index[scene] = out
    return index


def load_eval_index(path: str | os.PathLike) -> EvalIndex:
    """Read and validate an evaluation index JSON file; returns the canonical list form.

    Raises:
        ValueError: invalid JSON or schema; the message names the file, the scene and the problem.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    return _normalise(raw, str(path))


def save_eval_index(path: str | os.PathLike, index: dict[str, Any]) -> None:
    """Validate ``index`` (either form) and write it atomically in the canonical list form, keys sorted.

    An invalid index raises ValueError before anything is written.
    """
    canonical = _normalise(index, f"index for {path}")
    with atomic_open(path, "w") as f:
        f.write(json.dumps(canonical, sort_keys=True, indent=1) + "\n")


def stable_rng(seed: int, scene: str) -> np.random.Generator:
    """A generator seeded from SHA-256 of ``seed`` and ``scene``: identical in every process and
    independent of PYTHONHASHSEED (unlike ``hash()``)."""
    digest = hashlib.sha256(f"{int(seed)}\0{scene}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _frame_ids(scene: str, ids: Sequence[int]) -> np.ndarray:
    arr = np.asarray(ids, dtype=np.int64)
    if arr.ndim != 1 or (len(arr) > 1 and np.any(np.diff(arr) <= 0)):
        raise ValueError(f"scene {scene!r}: frame ids must be a strictly increasing 1-D list")
    return arr


def build_eval_index(
    scenes: dict[str, Sequence[int]],
    config: ViewSamplerConfig,
    seed: int = 0,
    entries_per_scene: int = 1,
    skip_short: bool = False,
) -> EvalIndex:
    """A deterministic random evaluation index: ``entries_per_scene`` draws of :func:`sample_views` per scene.

    Each scene's generator is :func:`stable_rng` ``(seed, scene)``, so a scene's entries do not depend on
    the other scenes, their order, or the process. The curriculum is taken as finished (full ``max_gap``).
    ``scenes`` maps scene names to their (strictly increasing) frame ids; positions are converted back
    to frame ids. Scenes too short for ``config`` raise ValueError naming the scene, or are left out when
    ``skip_short``.
    """
    index: EvalIndex = {}
    for scene in sorted(scenes):
        ids = _frame_ids(scene, scenes[scene])
        rng = stable_rng(seed, scene)
        try:
            draws = [sample_views(len(ids), config, rng, config.gap_warmup_steps) for _ in range(entries_per_scene)]
        except ValueError as exc:
            if skip_short:
                continue
            raise ValueError(f"scene {scene!r}: {exc}") from exc
        index[scene] = [{"context": ids[c].tolist(), "target": ids[t].tolist()} for c, t in draws]
    return index


def build_lsm_index(
    scenes: dict[str, Sequence[int]],
    num_frames: int = 30,
    llff_hold: int = 8,
    test_ids: Sequence[int] = (1, 4),
    skip_short: bool = False,
) -> EvalIndex:
    """The LSM / Uni3R ScanNet test protocol: one entry per target frame, context = its two neighbours.

    Protocol (LSM's ``TestDataset``, ``num_views=2``, ``llff_hold=8``, ``test_ids=[1, 4]``), with our
    assumptions:

    1. A scene's valid frame ids (strictly increasing; invalid poses already dropped) are subsampled to
       ``num_frames`` frames at positions ``np.round(np.linspace(0, n - 1, num_frames))`` (NumPy's
       round-half-to-even; distinct whenever ``n >= num_frames``). Assumption: LSM ships a pre-selected
       frame list per test scene rather than this rule; the even subsampling stands in for it.
    2. Every subsample position ``i`` with ``i % llff_hold in test_ids`` and ``1 <= i <= num_frames - 2``
       is a target; its context is the subsample neighbours ``i - 1`` and ``i + 1`` (sorted). LSM clamps
       ``i - 1`` / ``i + 1`` at the ends (which would duplicate a context view); we drop such positions
       instead. For 30 frames and (1, 4) the two agree: targets at 1, 4, 9, 12, 17, 20, 25, 28.

    Scenes with fewer than ``num_frames`` frames raise ValueError naming the scene, or are left out
    when ``skip_short``.
    """
    if num_frames < 3 or llff_hold < 1:
        raise ValueError(f"build_lsm_index needs num_frames >= 3 and llff_hold >= 1, got {num_frames}, {llff_hold}")
    hold = {int(t) % llff_hold for t in test_ids}
    index: EvalIndex = {}
    for scene in sorted(scenes):
        ids = _frame_ids(scene, scenes[scene])
        if len(ids) < num_frames:
            if skip_short:
                continue
            raise ValueError(f"scene {scene!r}: {len(ids)} frames, LSM protocol needs num_frames={num_frames}")
        sub = ids[np.round(np.linspace(0, len(ids) - 1, num_frames)).astype(np.int64)]
        index[scene] = [
            {"context": [int(sub[i - 1]), int(sub[i + 1])], "target": [int(sub[i])]}
            for i in range(1, num_frames - 1)
            if i % llff_hold in hold
        ]
    return index
