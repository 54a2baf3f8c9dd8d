"""What keeps a training run honest: config checks before anything starts, non-finite loss/gradient
steps skipped and counted (stop after ``optim.max_nonfinite_steps`` in a row), checkpoints that are
never written with non-finite weights, and auto-resume that falls back from a damaged ``last.ckpt``
to the newest intact ``step=N.ckpt``.
"""

from __future__ import annotations

import logging
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ffsplat.core.errors import InputError, check_input_dir, check_input_file, check_number

log = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Training produced too many non-finite losses or gradients in a row."""


class NonFiniteCheckpointError(RuntimeError):
    """A checkpoint about to be written holds non-finite weights."""


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of floating-point tensors in ``state`` with NaN or inf."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


class NonFiniteGuard(L.Callback):
    """Skip optimiser steps whose loss or gradients are not finite; stop after ``max_consecutive`` in a row.

    A bad step's gradients are dropped (``grad = None``: Adam leaves those parameters and their
    moments untouched), so the weights stay finite. Under DDP gradients are all-reduced before
    this hook, so every rank makes the same decision. ``skipped`` counts all skipped steps; the
    count is logged as ``train/skipped_nonfinite``.
    """

    def __init__(self, max_consecutive: int = 5):
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0
        self._bad = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._bad = False

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if params and not all(torch.isfinite(p.grad).all() for p in params):
            self._bad = True
        if self._bad:
            for p in params:
                p.grad = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss) and not torch.isfinite(loss).all():
            self._bad = True
        if not self._bad:
            self.consecutive = 0
            return
        self.skipped += 1
        self.consecutive += 1
        log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row, %d in total)",
                    trainer.global_step, self.consecutive, self.skipped)  # fmt: skip
        pl_module.log("train/skipped_nonfinite", float(self.skipped), batch_size=1)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(
                f"{self.consecutive} training steps in a row had a non-finite loss or gradient (optim.max_nonfinite_steps="
                f"{self.max_consecutive}; {self.skipped} skipped in total, last at step {trainer.global_step}); stopped without "
                "writing model.pt. Check the shards (data_prep/verify_shards.py), the teacher features and optim.lr"
            )

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not an intact ``torch.save`` file (zip CRCs checked, nothing unpickled), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if bad is None else f"member {bad} fails its CRC check"


_STEP = re.compile(r"^step=(\d+)\.ckpt$")


def find_resume(run_dir: Path) -> tuple[str | None, str | None]:
    """``(checkpoint, note)`` for ``checkpoint.resume=auto``: ``last.ckpt`` if intact, else the newest
    intact ``step=N.ckpt`` (``note`` says which was damaged and what is used instead)."""
    last = run_dir / "last.ckpt"
    steps = sorted((int(m.group(1)), p) for p in run_dir.glob("step=*.ckpt") if (m := _STEP.match(p.name)))
    damaged = []
    for candidate in ([last] if last.is_file() else []) + [p for _, p in reversed(steps)]:
        problem = checkpoint_problem(candidate)
        if problem is None:
            note = (
                None
                if not damaged
                else f"checkpoint.resume=auto: {'; '.join(damaged)}; resuming from {candidate.name} instead"
            )
            return str(candidate), note
        damaged.append(f"{candidate.name} is damaged ({problem})")
    if damaged:
        return (
            None,
            f"checkpoint.resume=auto: no intact checkpoint in {run_dir} ({'; '.join(damaged)}); starting from scratch",
        )
    return None, None


def check_train_config(cfg) -> None:
    """Refuse a config that cannot work before anything is loaded or written (:class:`InputError`)."""
    from ffsplat.core.errors import one_line
    from ffsplat.data.shards import manifest_shards, manifest_split

    d, o = cfg.data, cfg.optim
    from ffsplat.data.remote import check_remote_root, is_remote

    if is_remote(d.root):  # a URL or pipe: root: the manifest read below is the check
        try:
            check_remote_root(str(d.root))
        except ValueError as exc:
            raise InputError(f"data.root: {exc}") from exc
    else:
        check_input_dir("data.root", Path(d.root), "shard folder")
    try:
        manifest_split(d.root, d.train_split)
        if not d.eval_index:
            manifest_split(d.root, d.val_split)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        split = "data.train_split/data.val_split"
        raise InputError(f"data.root/{split}: {one_line(exc)}") from exc
    if d.scenes:
        try:
            manifest_shards(d.root, d.train_split, d.scenes)
        except ValueError as exc:
            raise InputError(one_line(exc)) from exc
    if d.eval_index:
        check_input_file("data.eval_index", Path(d.eval_index), "evaluation index")
    check_mask_source(cfg)
    check_number("data.batch_size", d.batch_size, low=1, integer=True)
    check_number("data.num_workers", d.num_workers, low=0, integer=True)
    check_number("optim.lr", o.lr, low=0, low_open=True)
    check_number("optim.max_steps", o.max_steps, low=1, integer=True)
    check_number("optim.warmup_steps", o.warmup_steps, low=0, integer=True)
    check_number("optim.grad_clip", o.grad_clip, low=0)
    check_number("optim.max_nonfinite_steps", getattr(o, "max_nonfinite_steps", 5), low=1, integer=True)
    if cfg.stage.init_from:
        check_input_file("stage.init_from", Path(cfg.stage.init_from), "model.pt or Lightning checkpoint")
    check_segmenter_source(cfg)
    resume = cfg.checkpoint.resume
    if resume not in (None, "auto"):
        check_input_file("checkpoint.resume", Path(resume), "Lightning checkpoint")
        problem = checkpoint_problem(Path(resume))
        if problem:
            raise InputError(f"checkpoint.resume: {resume} is damaged ({problem})")


def check_segmenter_source(cfg) -> None:
    """A model with ``model.semantic.segmenter`` gets its frozen weights from
    ``model.semantic.segmenter_checkpoint`` (an existing file) or, without one, from a
    ``stage.init_from`` whose segmentation group is loaded (``stage.init_groups``)."""
    sem = cfg.model.semantic
    if not sem.segmenter:
        return
    if sem.segmenter_checkpoint:
        check_input_file(
            "model.semantic.segmenter_checkpoint", Path(sem.segmenter_checkpoint), f"{sem.segmenter} weights"
        )
        return
    groups = cfg.stage.init_groups
    if not cfg.stage.init_from or (groups and "segmentation" not in groups):
        raise InputError(
            f"model.semantic.segmenter={sem.segmenter!r} needs its published weights: set "
            "model.semantic.segmenter_checkpoint to the local file (or stage.init_from to a model.pt that has "
            "them, with 'segmentation' in stage.init_groups)"
        )


def check_mask_source(cfg) -> None:
    """``teachers.masks`` is a known source; where the stage uses the masks (``lang`` with
    ``loss.hcam``), ``cached`` finds masks cached in ``data.root``'s shards (the manifest's
    ``masks`` entry) and ``sam`` without such a cache has SAM's prompt decoder to compute them."""
    from ffsplat.data.shards import read_manifest
    from ffsplat.objectives.policy import MASK_SOURCES, resolve_prompt_decoder
    from ffsplat.training.stages import get_stage

    masks = cfg.teachers.masks
    if masks not in MASK_SOURCES:
        raise InputError(f"teachers.masks={masks!r}; choose one of {', '.join(MASK_SOURCES)}")
    if "lang" not in get_stage(cfg.stage.name).losses or not cfg.loss.hcam or masks not in ("cached", "sam"):
        return
    cached = bool(read_manifest(cfg.data.root).get("masks"))
    decoder = resolve_prompt_decoder(cfg.teachers.prompt_decoder, cfg.teachers.segmentation.name)
    if masks == "sam" and not cached and decoder != "sam":
        raise InputError(
            f"teachers.masks=sam: the shards in {cfg.data.root} hold no cached masks, and computing them online "
            f"needs SAM's prompt decoder (teachers.prompt_decoder=sam, or auto with teachers.segmentation.name=sam); "
            f"got prompt_decoder={cfg.teachers.prompt_decoder!r}, segmentation.name={cfg.teachers.segmentation.name!r}"
        )
    if masks == "cached" and not cached:
        raise InputError(
            f"teachers.masks=cached but the shards in {cfg.data.root} hold no cached masks (manifest.json has no "
            "masks entry): write them with data_prep/make_shards.py --teacher sam_masks:checkpoint=..., "
            "or set teachers.masks=sam"
        )


def print_data_report(summary: dict, path: Path | None = None) -> None:
    """Print the run's bad-shard summary (and write it to ``path`` as JSON) when anything was skipped."""
    import json

    if not summary.get("bad"):
        return
    shards = ", ".join(
        f"{Path(s).name} ({v['count']}: {v['members'][0]['member'] if v['members'] else '?'})"
        for s, v in summary["by_shard"].items()
    )
    print(
        f"warning: skipped {summary['bad']} bad shard samples/reads: {shards}"
        + (f"; details in {path}" if path else ""),
        file=sys.stderr,
    )
    if path is not None:
        from ffsplat.core.atomic import atomic_open

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "w") as f:
            json.dump(summary, f, indent=1)
