"""What keeps a training run honest: config checks before anything starts, non-finite loss/gradient
steps skipped and counted (stop after ``optim.max_nonfinite_steps`` in a row), checkpoints that are
never written with non-finite weights, and auto-resume that falls back from a damaged ``last.ckpt``
to the newest intact ``step=N.ckpt``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ffsplat.core.errors import InputError, check_input_dir, check_input_file, check_number, check_outputs, one_line

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

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Refuse to save non-finite weights, decided by every rank together (Lightning builds the
        checkpoint on every rank but only rank 0 writes it: an error raised by the writer alone would
        leave the other ranks waiting at the next collective). Any rank's non-finite tensor stops all."""
        bad = nonfinite_tensors(checkpoint.get("state_dict", {}))
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            where = f"{len(bad)} tensors (e.g. {bad[:3]})" if bad else "another rank's weights"
            raise NonFiniteCheckpointError(
                f"refusing to write the checkpoint of step {trainer.global_step}: non-finite weights in {where}"
            )

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
    """``(checkpoint, note)`` for ``checkpoint.resume=auto``: the newest intact checkpoint of any name
    in ``run_dir`` (``last.ckpt``, ``last-v*.ckpt``, ``step=N.ckpt``; newest by modification time,
    ``last*`` first on a tie).

    A damaged checkpoint is moved aside to ``<name>.damaged-<UTC time>`` (kept for inspection, never
    deleted), so training writes ``last.ckpt`` again instead of Lightning's versioned ``last-vN.ckpt``
    and later restarts do not skip over it again. ``note`` says what was damaged and what is used.
    """
    import time

    def newest_first(p: Path) -> tuple[int, int]:
        try:
            return (p.stat().st_mtime_ns, p.name.startswith("last"))
        except FileNotFoundError:
            return (-1, 0)

    candidates = sorted((p for p in Path(run_dir).glob("*.ckpt") if p.is_file()), key=newest_first, reverse=True)
    damaged = []
    for candidate in candidates:
        problem = checkpoint_problem(candidate)
        if problem is None:
            note = (
                None
                if not damaged
                else f"checkpoint.resume=auto: {'; '.join(damaged)}; resuming from {candidate.name} instead"
            )
            return str(candidate), note
        aside = candidate.with_name(f"{candidate.name}.damaged-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
        try:
            os.replace(candidate, aside)
            damaged.append(f"{candidate.name} is damaged ({problem}), moved aside to {aside.name}")
        except OSError:  # another rank moved it already, or a read-only folder
            damaged.append(f"{candidate.name} is damaged ({problem})")
    if damaged:
        return (
            None,
            f"checkpoint.resume=auto: no intact checkpoint in {run_dir} ({'; '.join(damaged)}); starting from scratch",
        )
    return None, None


def check_shard_hashes(d) -> dict:
    """``data.verify_hashes``: every shard of the training and validation splits matches
    ``manifest.json`` (hashed once, cached by size and mtime), else one :class:`InputError`."""
    from ffsplat.data.shard_hashes import CachedDigests
    from ffsplat.data.shards import verify_shards

    digests = CachedDigests(d.root)
    splits = sorted({d.train_split} | ({d.val_split} if not d.eval_index else set()))
    result = verify_shards(d.root, splits, digest=digests.digest)
    digests.save()
    if result["bad"]:
        first = result["bad"][0]
        raise InputError(
            f"data.verify_hashes: {len(result['bad'])} of {result['checked']} shards in {d.root} differ from manifest.json "
            f"(e.g. {first['shard']}: {first['problem']}); rebuild them with make_shards.py or check them with "
            "data_prep/verify_shards.py"
        )
    return result | {"hashed": digests.hashed}


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
    if d.verify_hashes:
        check_shard_hashes(d)
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
        problem = checkpoint_problem(Path(cfg.stage.init_from))
        if problem:
            raise InputError(f"stage.init_from: {cfg.stage.init_from} is not a readable checkpoint ({problem})")
    if not d.resampled and planned_world_size(cfg.trainer) > 1:
        raise InputError(
            f"data.resampled=false with {planned_world_size(cfg.trainer)} ranks: each rank would end its epoch after "
            "its own shards, at a different batch, and DDP would hang; keep data.resampled=true for multi-GPU runs"
        )
    resume = cfg.checkpoint.resume
    if resume not in (None, "auto"):
        check_input_file("checkpoint.resume", Path(resume), "Lightning checkpoint")
        problem = checkpoint_problem(Path(resume))
        if problem:
            raise InputError(f"checkpoint.resume: {resume} is damaged ({problem})")
    check_resume_matches(cfg)
    check_segmenter_source(cfg)
    check_teacher_sources(cfg)
    check_pretrained(cfg)
    check_train_outputs(cfg)


RESUME_KEYS = ("data.name", "data.root", "data.train_split", "data.scenes", "teachers", "model", "stage.name")
"""Config entries a resumed run must share with its checkpoint (unless ``checkpoint.allow_config_change``)."""


def _flatten(tree: Any, prefix: str) -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out |= _flatten(value, f"{prefix}.{key}")
        return out
    return {prefix: list(tree) if isinstance(tree, tuple) else tree}


def config_differences(saved: dict, current: dict) -> list[str]:
    """Dotted keys under :data:`RESUME_KEYS` whose values differ between two ``asdict(TrainConfig)`` trees
    (a checkpoint's saved config, old key names upgraded, and this run's); config fields only one has
    (added since) are skipped, a teacher's ``kwargs`` entry only one has is not."""
    from ffsplat.core.config import upgrade_renamed_keys

    saved = upgrade_renamed_keys(saved)
    diffs = []
    for entry in RESUME_KEYS:
        a, b = _flatten(_select(saved, entry), entry), _flatten(_select(current, entry), entry)
        keys = a.keys() & b.keys() | {k for k in a.keys() ^ b.keys() if ".kwargs." in k}  # fields added since: defaults
        diffs += sorted(k for k in keys if a.get(k, "<unset>") != b.get(k, "<unset>"))
    return diffs


def _select(tree: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def check_resume_matches(cfg) -> None:
    """Refuse to resume from a checkpoint whose saved config differs in :data:`RESUME_KEYS`
    (:class:`InputError` naming the keys), unless ``checkpoint.allow_config_change``."""
    from dataclasses import asdict

    resume = cfg.checkpoint.resume
    if resume is None:
        return
    path, note = find_resume(Path(cfg.checkpoint.dir) / cfg.run_name) if resume == "auto" else (resume, None)
    if note:  # said here, once: a damaged checkpoint has now been moved aside
        print(f"warning: {note}", file=sys.stderr, flush=True)
    if path is None:
        return
    try:
        saved = (
            torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {}).get("config")
        )
    except Exception as exc:  # noqa: BLE001  (an unreadable checkpoint: resuming reports it)
        log.warning("could not read the saved config of %s (%s)", path, exc)
        return
    if not isinstance(saved, dict):
        return
    diffs = config_differences(saved, asdict(cfg))
    shown = ", ".join(diffs[:8]) + (f" (+{len(diffs) - 8} more)" if len(diffs) > 8 else "")
    if diffs and cfg.checkpoint.allow_config_change:
        from ffsplat.training.stages import get_stage

        language = [d for d in diffs if d.startswith("teachers.language")]
        if language and "language" not in get_stage(cfg.stage.name).trains:
            raise InputError(
                f"checkpoint.allow_config_change: {path}'s language field was trained with another language teacher "
                f"({', '.join(language[:4])}) and stage {cfg.stage.name!r} does not train it, so model.pt would carry a "
                "class table the field was never trained against; resume with the checkpoint's teachers or train stage=lang"
            )
        print(
            f"warning: checkpoint.allow_config_change: resuming {path} with other settings ({shown})", file=sys.stderr
        )
        return
    if diffs:
        raise InputError(
            f"checkpoint.resume={resume}: {path} was trained with other settings ({shown}); resuming would mix "
            "them. Use another run_name, checkpoint.resume=null to start fresh, or checkpoint.allow_config_change=true"
        )


def run_teacher_roles(cfg) -> list[str]:
    """Teacher roles whose features the run reads: those conditioning the network
    (``model.conditioning``) and the stage's target teacher."""
    from ffsplat.training.stages import get_stage

    roles = conditioning_roles(cfg)
    target = get_stage(cfg.stage.name).target_teacher
    return roles + ([target] if target and target not in roles else [])


WEIGHT_KWARGS = ("checkpoint", "clip_path")
"""Teacher ``kwargs`` entries that name local weight files or folders."""


def check_online_teachers_load(cfg) -> None:
    """``teachers.source=online``: build each teacher the run will build (SAM, LSeg, ESPNetv2...) from its
    weights once, here, so that a file in the wrong format or of the wrong model is one ``error:`` line
    naming ``teachers.<role>`` before any rank starts, not a traceback per rank (the teachers are built
    on the CPU and freed; the run builds them again on its device)."""
    from ffsplat.teachers.features import TeacherWeightsNotFound, load_teachers

    for role in ("segmentation", "language"):
        spec = getattr(cfg.teachers, role)
        try:
            load_teachers({spec.name: dict(spec.kwargs or {})})
        except (InputError, TeacherWeightsNotFound) as exc:
            raise InputError(f"teachers.{role} ({spec.name}) does not load: {one_line(exc)}") from exc


def check_teacher_sources(cfg) -> None:
    """``teachers.source=cached``: every scene of the training and validation splits cached the
    features of every teacher the run reads (:func:`run_teacher_roles`; the manifest's per-scene
    ``settings.teachers``). ``online``: every weight file the teachers load exists (both roles'
    ``kwargs.checkpoint`` / ``kwargs.clip_path``, torch files intact) -- checked here, before any
    rank starts, instead of a traceback per rank once the teachers load."""
    from ffsplat.data.shards import read_manifest

    t = cfg.teachers
    if t.clip_path:
        check_input_dir("teachers.clip_path", Path(t.clip_path), "CLIP text model folder")
    roles = run_teacher_roles(cfg)
    if t.source == "online":
        for role in ("segmentation", "language"):
            spec = getattr(t, role)
            for key in WEIGHT_KWARGS:
                value = (spec.kwargs or {}).get(key)
                if not value:
                    continue
                name = f"teachers.{role}.kwargs.{key}"
                path = Path(value)
                if key == "clip_path":
                    check_input_dir(name, path, "CLIP text model folder")
                    continue
                check_input_file(name, path, f"{spec.name} weights")
                problem = checkpoint_problem(path) if zipfile.is_zipfile(path) else None
                if problem:
                    raise InputError(f"{name}: {path} is damaged ({problem})")
        check_online_teachers_load(cfg)
        return
    if not roles:
        return
    manifest = read_manifest(cfg.data.root)
    splits = {d for d in (cfg.data.train_split, None if cfg.data.eval_index else cfg.data.val_split) if d}
    for role in roles:
        name = getattr(t, role).name
        lacking = sorted(
            scene
            for scene, entry in manifest.get("scenes", {}).items()
            if entry.get("split") in splits
            and (not cfg.data.scenes or scene in cfg.data.scenes or entry.get("split") != cfg.data.train_split)
            and name not in (entry.get("settings", {}).get("teachers") or {})
        )
        if lacking:
            why = "conditions the network" if role in conditioning_roles(cfg) else "is the stage's target"
            raise InputError(
                f"teachers.source=cached: the shards in {cfg.data.root} hold no {name!r} features (teachers.{role}.name, "
                f"which {why}) for {len(lacking)} scenes (e.g. {lacking[0]}): write them with data_prep/make_shards.py "
                f"--teacher {name}:..., or set teachers.source=online with local weights"
            )


def conditioning_roles(cfg) -> list[str]:
    """Teacher roles whose features condition the network (``model.conditioning``)."""
    from ffsplat.checkpoint import ROLE_CONDITION

    return [role for role, name in ROLE_CONDITION.items() if name in cfg.model.conditioning.names]


def check_pretrained(cfg) -> None:
    """``model.pretrained.path`` exists and loads into the configured network (keys and shapes), as
    the run will load it: one :class:`InputError` instead of a traceback per rank."""
    pre = cfg.model.pretrained
    if pre is None or not pre.path:
        return
    from ffsplat.model.network import build_model

    check_input_file("model.pretrained.path", Path(pre.path), f"{pre.format} checkpoint")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the run prints its own load report
            build_model(cfg.model)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        from ffsplat.core.errors import one_line

        message = one_line(exc)
        raise InputError(message if message.startswith("model.") else f"model.pretrained.path: {message}") from exc


def planned_world_size(trainer) -> int:
    """Ranks the run will have: ``WORLD_SIZE`` when a launcher (torchrun, SLURM) set it, else
    ``trainer.devices`` (an int, a list of ids, or "auto"/-1: every visible GPU) x ``trainer.num_nodes``."""
    if os.environ.get("WORLD_SIZE", "").isdigit():
        return int(os.environ["WORLD_SIZE"])
    devices = trainer.devices
    if isinstance(devices, (list, tuple)) or (hasattr(devices, "__len__") and not isinstance(devices, str)):
        count = len(devices)
    elif isinstance(devices, str) and "," in devices:
        count = len([x for x in devices.split(",") if x.strip()])
    elif devices in ("auto", -1, "-1"):
        count = torch.cuda.device_count() if trainer.accelerator in ("gpu", "cuda", "auto") else 1
    else:
        try:
            count = int(devices)
        except (TypeError, ValueError):
            count = 1
    return max(1, count) * max(1, int(trainer.num_nodes))


def deterministic_mode(trainer) -> bool | str:
    """What to give Lightning's ``Trainer(deterministic=...)``.

    On CUDA, deterministic cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` (set here to ``:4096:8`` when
    unset, before any CUDA work), and the backward passes of ``grid_sample`` and bilinear upsampling
    (the cost volume, the feature upsamplers) have no deterministic CUDA kernels: torch would raise at
    the first backward. Those run non-deterministically (``"warn"``: torch warns; one line here says so)
    and everything else is deterministic. On CPU every kernel is deterministic: ``True``.
    """
    if not trainer.deterministic:
        return False
    on_gpu = trainer.accelerator in ("gpu", "cuda") or (trainer.accelerator == "auto" and torch.cuda.is_available())
    if not on_gpu:
        return True
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    print(
        "warning: trainer.deterministic=true on CUDA: CUBLAS_WORKSPACE_CONFIG="
        f"{os.environ['CUBLAS_WORKSPACE_CONFIG']}; grid_sample and bilinear-upsample backward have no deterministic "
        "CUDA kernels and stay non-deterministic (runs agree to float rounding, not bit for bit)",
        file=sys.stderr,
        flush=True,
    )
    return "warn"


def check_train_outputs(cfg) -> None:
    """Refuse a run folder that would overwrite what the run reads (docs/bad-input.md): its ``model.pt``,
    ``last.ckpt`` and ``bad_samples.json`` are never an input, and no input lies inside it (e.g.
    ``stage.init_from`` pointing at the ``model.pt`` of a run with the same ``run_name``). ``checkpoint.resume``
    is the one input that may lie there: resuming continues that run's own checkpoints."""
    run_dir = Path(cfg.checkpoint.dir) / cfg.run_name
    sem = cfg.model.semantic
    inputs = {
        "data.root": Path(cfg.data.root),
        "data.eval_index": cfg.data.eval_index and Path(cfg.data.eval_index),
        "stage.init_from": cfg.stage.init_from and Path(cfg.stage.init_from),
        "loss.lpips_vgg_path": cfg.loss.lpips_vgg_path and Path(cfg.loss.lpips_vgg_path),
        "model.semantic.segmenter_checkpoint": getattr(sem, "segmenter_checkpoint", None)
        and Path(sem.segmenter_checkpoint),
    }
    names = ("model.pt", "last.ckpt", "bad_samples.json")
    check_outputs(
        {"checkpoint.dir/run_name": [run_dir / n for n in names]}, inputs, {"checkpoint.dir/run_name": run_dir}
    )


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
