"""Lightning training: the two distillation stages (plus an optional geometry warm-up), data,
checkpoints and the slim model export that ``infer.py`` loads.

Stages (SemanticSplat sec. 3.6):

=========  ====================================================  ================================
stage      loss                                                  trained
=========  ====================================================  ================================
geometry   L_rgb = L1 + 0.05 LPIPS on target views               geometry (backbone ... Gaussians)
seg        L_rgb + (1 - cos(expand(S), SAM)) + 0.2 L_mask        geometry + segmentation branch
lang       L_lang = 1 - cos(HCAM-pooled expand(L), LSeg)         language head + decoder only
=========  ====================================================  ================================

Frozen parameters get ``requires_grad = False`` and are left out of the optimiser.

Checkpoints hold the network, optimiser, LR schedule and loop state only: teachers, LPIPS and the
prompt decoder are helpers kept out of the module tree (:meth:`SemanticSplatModule._helper`), so a
checkpoint is the same size with real or stand-in teachers and resumes under any teacher setting.
Each stage computes only the teacher features it uses (conditioning for the context views; SAM
targets in ``seg``, LSeg targets in ``lang``).
"""

from __future__ import annotations

import math
import os
import sys
import uuid
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ffsplat.checkpoint import ROLE_CONDITION, CheckpointError, load_weights, save_model
from ffsplat.data.labels import EVAL_CLASSES
from ffsplat.data.shards import ClipExamples, EvalIndexDataset, collate_examples, manifest_shards, scene_frame_ids
from ffsplat.data.sampling import build_eval_index, load_eval_index
from ffsplat.objectives.losses import (
    LPIPS_VGG_KEY, cosine_distillation, depth_loss, language_loss, make_lpips, mask_consistency_loss, photometric_loss,
)  # fmt: skip
from ffsplat.objectives.metrics import SegmentationMeter, classify_by_embeddings, depth_metrics, psnr
from ffsplat.model.network import LANG, SEG, build_model
from ffsplat.model.semantic_heads import resize_field
from ffsplat.objectives import policy
from ffsplat.objectives.prompting import sample_prompt_points
from ffsplat.render.renderer import render
from ffsplat.teachers.features import load_teachers
from ffsplat.training.config import TrainConfig
from ffsplat.core.types import Example, Views

STAGE_GROUPS = {"geometry": ("geometry",), "seg": ("geometry", "segmentation"), "lang": ("language",)}
"""Stage -> parameter groups (``SemanticSplatNet.parameter_groups``) that are trained."""

STAGE_TARGET_ROLE = {"seg": "segmentation", "lang": "language"}
"""Stage -> the teacher role whose target-view features it distils."""


def photometric_loss_name(cfg: TrainConfig, have_lpips: bool) -> str:
    """The photometric loss a run actually optimises: ``"l1+<w>*lpips"``, ``"l1"`` (LPIPS off or
    without weights) or ``"none"`` (stage ``lang`` has no photometric term)."""
    if cfg.stage.name == "lang":
        return "none"
    return f"l1+{cfg.loss.lpips_weight:g}*lpips" if have_lpips else "l1"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes to a temporary file and renames it into place, so a
    kill during saving never leaves a truncated ``last.ckpt``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        from ffsplat.training.guards import NonFiniteCheckpointError, nonfinite_tensors

        bad = nonfinite_tensors(checkpoint.get("state_dict", {}))
        if bad:  # never write a checkpoint that resumes into NaN
            raise NonFiniteCheckpointError(
                f"refusing to write {path}: non-finite weights in {len(bad)} tensors (e.g. {bad[:3]})"
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class SemanticSplatModule(L.LightningModule):
    """The network, its teachers and losses, for one training stage."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        if cfg.stage.name not in STAGE_GROUPS:
            raise ValueError(f"stage.name={cfg.stage.name!r}; choose one of {sorted(STAGE_GROUPS)}")
        self.cfg = cfg
        self.model = build_model(cfg.model)
        if cfg.stage.init_from:
            load_model_weights(self.model, cfg.stage.init_from)
        self.trained_groups = STAGE_GROUPS[cfg.stage.name]
        for group, params in self.model.parameter_groups().items():
            for p in params:
                p.requires_grad_(group in self.trained_groups)
        # Helpers that are not part of the checkpoint (frozen, or rebuilt from the config).
        roles = {"segmentation": cfg.teachers.segmentation, "language": cfg.teachers.language}
        self._online = (
            load_teachers({r.name: r.kwargs for r in roles.values()}) if cfg.teachers.source == "online" else {}
        )
        for teacher in self._online.values():
            self._helper(None, teacher)
        uses_lpips = cfg.stage.name != "lang" and cfg.loss.lpips_weight > 0
        with warnings.catch_warnings():  # one warning below, naming the key and what is used instead
            warnings.simplefilter("ignore")
            self._helper("_lpips", make_lpips(cfg.loss.lpips_vgg_path) if uses_lpips else None)
        self.photometric_loss = photometric_loss_name(cfg, self._lpips is not None)
        if uses_lpips and self._lpips is None:
            rank_zero_warn(
                f"loss.lpips_weight={cfg.loss.lpips_weight} but {LPIPS_VGG_KEY} has no local VGG16 weights: "
                f"training with photometric loss {self.photometric_loss!r} (recorded in the run config and model.pt)"
            )
        self.save_hyperparameters({"config": asdict(cfg), "photometric_loss": self.photometric_loss})
        self._helper("prompt_decoder", self._make_prompt_decoder())
        self.class_embeddings = eval_class_embeddings(cfg)
        self.class_names = eval_class_names(cfg)
        self._val_meter = SegmentationMeter(num_classes=len(EVAL_CLASSES))
        self._val_scalars: dict[str, list[float]] = {}

    # ------------------------------------------------------------------ helpers
    def _helper(self, name: str | None, module):
        """Keep a frozen helper (teacher, LPIPS, prompt decoder) out of the module tree: it is not in
        ``state_dict()`` (so not in checkpoints), not trained, and moved by :meth:`_move_helpers`."""
        if isinstance(module, nn.Module):
            module.eval().requires_grad_(False)
        if name is not None:
            self._modules.pop(name, None)
            object.__setattr__(self, name, module)
        return module

    def _make_prompt_decoder(self):
        seg = self.cfg.teachers.segmentation
        return policy.build_prompt_decoder(self.cfg.teachers.prompt_decoder, seg.name, seg.kwargs, self._online)

    @property
    def conditioned(self) -> bool:
        return bool(self.cfg.model.conditioning.names)

    def _move_helpers(self) -> None:
        for module in list(self._online.values()) + [self._lpips, self.prompt_decoder]:
            if isinstance(module, nn.Module):
                module.to(self.device)
        self.class_embeddings = self.class_embeddings.to(self.device)

    def on_fit_start(self) -> None:
        self._move_helpers()

    def on_validation_start(self) -> None:
        self._move_helpers()

    def context_roles(self) -> list[str]:
        """Teacher roles whose features condition the network (per the model's conditioning)."""
        return [role for role, name in ROLE_CONDITION.items() if name in self.cfg.model.conditioning.names]

    def teacher_maps(self, views: Views, roles: Sequence[str] = ("segmentation", "language")) -> dict[str, Tensor]:
        """Teacher features of the requested roles (``segmentation``/``language``) -> ``[B, V, C, h, w]``;
        online teachers run only for those roles."""
        all_names = {"segmentation": self.cfg.teachers.segmentation.name, "language": self.cfg.teachers.language.name}
        names = {role: all_names[role] for role in roles}
        if not names:
            return {}
        if self.cfg.teachers.source == "online":
            return policy.teacher_maps(views, names, self._online, prefer_cached=False)
        return policy.teacher_maps(views, names)

    def forward(self, context: Views, teacher: dict[str, Tensor] | None = None):
        conditions = {ROLE_CONDITION[role]: feats for role, feats in (teacher or {}).items()}
        return self.model(context, conditions)

    # ------------------------------------------------------------------ losses
    def compute_losses(self, batch: Example) -> tuple[Tensor, dict[str, Tensor]]:
        stage = self.cfg.stage.name
        ctx_roles = self.context_roles()
        ctx_teacher = self.teacher_maps(batch.context, ctx_roles) if ctx_roles else None
        out = self(batch.context, ctx_teacher)
        fields = {"geometry": [], "seg": [SEG], "lang": [LANG]}[stage]
        target = batch.target
        rendered = render(out.gaussians, target.cameras, features=fields)
        logs: dict[str, Tensor] = {}
        if stage in ("geometry", "seg"):
            photo = photometric_loss(rendered.rgb, target.images, self._lpips, self.cfg.loss.lpips_weight)
            logs.update({f"rgb_{k}": v for k, v in photo.items()})
            total = photo["total"]
            if self.cfg.loss.depth_weight > 0:  # depth supervision where sensor depth exists
                total = total + self.cfg.loss.depth_weight * self.depth_supervision(out, rendered, batch, logs)
        if stage == "geometry":
            return total, logs
        tgt_teacher = self.teacher_maps(target, [STAGE_TARGET_ROLE[stage]])
        if stage == "seg":
            teacher = tgt_teacher["segmentation"]
            expanded = self.model.decode_fields({SEG: rendered.features[SEG]}, {"sam": teacher.shape[-2:]})["sam"]
            logs["sam_cos"] = cosine_distillation(expanded, teacher)
            total = total + logs["sam_cos"]
            if self.cfg.loss.mask_weight > 0:
                logs["sam_mask"] = self.mask_loss(expanded, teacher, target)
                total = total + self.cfg.loss.mask_weight * logs["sam_mask"]
        else:
            teacher = tgt_teacher["language"]
            h, w = target.images.shape[-2:]
            expanded = self.model.decode_fields({LANG: rendered.features[LANG]}, {"lseg": (h, w)})["lseg"]
            masks = self.hcam_masks(target) if self.cfg.loss.hcam else None
            lang = language_loss(expanded.flatten(0, 1), teacher.flatten(0, 1), masks)
            logs.update({f"lang_{k}": v for k, v in lang.items()})
            total = lang["total"]
        logs["total"] = total
        return total, logs

    def depth_supervision(self, out, rendered, batch: Example, logs: dict[str, Tensor]) -> Tensor:
        """Depth loss on the predicted context depth and the rendered target depth (views that
        carry sensor depth only); logged as ``depth_context`` / ``depth_target``."""
        loss = out.depth.depth.new_zeros(())
        if batch.context.depths is not None:
            logs["depth_context"] = depth_loss(out.depth.depth, batch.context.depths)
            loss = loss + logs["depth_context"]
        if batch.target.depths is not None:
            # empty render pixels (alpha < 0.5) have no defined depth: left out
            logs["depth_target"] = depth_loss(rendered.depth, batch.target.depths, mask=rendered.alpha > 0.5)
            loss = loss + logs["depth_target"]
        return loss

    def mask_loss(self, expanded: Tensor, teacher: Tensor, target: Views) -> Tensor:
        """Focal + dice/20 between masks decoded from our embeddings and from the teacher's."""
        h, w = target.images.shape[-2:]
        pred, ref = expanded.flatten(0, 1), teacher.flatten(0, 1)
        grid = getattr(self.prompt_decoder, "output_size", None)
        if grid is not None:  # SAM's decoder wants its own grid layout
            size = grid(h, w)
            pred, ref = resize_field(pred, size), resize_field(ref, size)
        gen = torch.Generator().manual_seed(int(self.global_step))
        points = sample_prompt_points(pred.shape[0], self.cfg.loss.num_prompts, (h, w), gen).to(pred)
        pred_logits = self.prompt_decoder.decode(pred, points, image_size=(h, w))[0]  # [N, P, 3, H, W]
        with torch.no_grad():
            ref_logits = self.prompt_decoder.decode(ref, points, image_size=(h, w))[0]
        return mask_consistency_loss(pred_logits, ref_logits)

    def hcam_masks(self, target: Views) -> list[dict[str, Tensor]] | None:
        """Three-scale masks per target view for hierarchical pooling (or None): ``teachers.masks``,
        see :func:`ffsplat.objectives.policy.hcam_masks` (cached in the shards, SAM online, labels)."""
        t = self.cfg.teachers
        return policy.hcam_masks(target, t.masks, t.segmentation.name, self.prompt_decoder, self.cfg.data.root)

    # ------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch: Example, batch_idx: int) -> Tensor:
        self.image_size = int(batch.context.images.shape[-1])  # recorded in the slim export
        total, logs = self.compute_losses(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in logs.items()}, prog_bar=False, batch_size=len(batch.scenes))
        self.log("loss", total.detach(), prog_bar=True, batch_size=len(batch.scenes))
        return total

    def validation_step(self, batch: Example, batch_idx: int) -> None:
        for name, value in self.evaluate_batch(batch).items():
            self._val_scalars.setdefault(name, []).append(value)

    @torch.no_grad()
    def evaluate_batch(self, batch: Example) -> dict[str, float]:
        """Target-view PSNR and depth error; language-field labels go into the mIoU meter."""
        ctx_roles = self.context_roles()
        out = self(batch.context, self.teacher_maps(batch.context, ctx_roles) if ctx_roles else None)
        target = batch.target
        rendered = render(out.gaussians, target.cameras, features=[LANG])
        scalars = {"psnr": float(psnr(rendered.rgb.clamp(0, 1), target.images).mean())}
        if target.depths is not None:
            scalars["depth_abs_rel"] = float(depth_metrics(rendered.depth, target.depths)["abs_rel"])
        if target.labels is not None and self.class_names == list(EVAL_CLASSES):
            h, w = target.images.shape[-2:]
            lang = self.model.decode_fields({LANG: rendered.features[LANG]}, {"lseg": (h, w)})["lseg"]
            pred = classify_by_embeddings(lang.flatten(0, 1), self.class_embeddings)
            self._val_meter.update(pred, target.labels.flatten(0, 1))
        return scalars

    def on_validation_epoch_end(self) -> None:
        # Each rank scored its share of the evaluation index: sum scalars, counts and confusion
        # matrices over ranks, then every rank logs the same totals.
        names = ("psnr", "depth_abs_rel")
        sums = [float(sum(self._val_scalars.get(k, []))) for k in names] + [
            float(len(self._val_scalars.get(k, []))) for k in names
        ]
        packed = torch.cat([torch.tensor(sums, dtype=torch.float64), self._val_meter.confusion.double().flatten()]).to(
            self.device
        )
        packed = self.trainer.strategy.reduce(packed, reduce_op="sum") if self.trainer.world_size > 1 else packed
        packed = packed.cpu()
        self._val_meter.confusion = (
            packed[2 * len(names) :].reshape(self._val_meter.confusion.shape).to(self._val_meter.confusion.dtype)
        )
        scores = {
            k: float(packed[i] / packed[len(names) + i]) for i, k in enumerate(names) if packed[len(names) + i] > 0
        }
        if int(self._val_meter.confusion.sum()) > 0:
            seg = self._val_meter.compute()
            scores.update({"miou": float(seg["miou"]), "acc": float(seg["acc"])})
        self.log_dict({f"val/{k}": v for k, v in scores.items()})
        self.last_val_metrics = scores
        self._val_scalars = {}
        self._val_meter.reset()

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.cfg.optim.lr)
        o = self.cfg.optim
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_lambda(s, o.warmup_steps, o.max_steps, o.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def eval_class_names(cfg: TrainConfig) -> list[str]:
    """Class names of the model's language field: the closed vocabulary of the ``espnetv2``
    teacher (PASCAL VOC's 20 object classes), else the 8 evaluation classes."""
    if cfg.teachers.language.name == "espnetv2":
        from ffsplat.teachers.espnetv2 import PASCAL_CLASSES

        return list(PASCAL_CLASSES[1:])
    return list(EVAL_CLASSES)


def eval_class_embeddings(cfg: TrainConfig) -> Tensor:
    """``[K, C]`` embeddings of :func:`eval_class_names` in the language teacher's space."""
    lang = cfg.teachers.language
    if lang.name == "espnetv2":
        from ffsplat.teachers.espnetv2 import pascal_class_embeddings

        kw = lang.kwargs
        return pascal_class_embeddings(int(kw.get("dim", 512)), int(kw.get("seed", 7)))
    if lang.name == "label_lang":
        from ffsplat.teachers.label_teachers import LabelLanguageTeacher

        return LabelLanguageTeacher(**lang.kwargs).class_embeddings()
    if not cfg.teachers.clip_path:
        return torch.zeros(len(EVAL_CLASSES), cfg.model.semantic.lseg_dim)  # mIoU unavailable without CLIP
    from ffsplat.teachers.clip_text import ClipTextEncoder

    return ClipTextEncoder.from_pretrained(cfg.teachers.clip_path)(list(EVAL_CLASSES))


def load_model_weights(model: nn.Module, path: str | Path) -> None:
    """Load network weights from a slim ``model.pt`` or a Lightning checkpoint (``model.`` prefix)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stage.init_from: no checkpoint at {path}")
    try:  # weights_only=True: a user-named file never runs code
        state = load_weights(path)
    except CheckpointError as exc:
        raise ValueError(f"stage.init_from={path}: {exc}") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"stage.init_from={path}: missing {missing[:5]}, unexpected {unexpected[:5]} (different model config?)"
        )


def export_slim(module: SemanticSplatModule, path: str | Path) -> Path:
    """Write the weights + model config + teacher/class metadata that ``infer.py`` loads (``ffsplat.checkpoint``)."""
    cfg = module.cfg
    return save_model(
        path,
        model_config=asdict(cfg.model),
        state_dict=module.model.state_dict(),
        teachers={"segmentation": asdict(cfg.teachers.segmentation), "language": asdict(cfg.teachers.language)},
        class_names=list(module.class_names),
        class_embeddings=module.class_embeddings,
        stage=cfg.stage.name,
        trained_on=cfg.data.name,
        image_size=getattr(module, "image_size", None),
        global_step=int(module.global_step),
        photometric_loss=getattr(module, "photometric_loss", None),
        prompt_decoder=policy.resolve_prompt_decoder(cfg.teachers.prompt_decoder, cfg.teachers.segmentation.name),
    )


class ClipDataModule(L.LightningDataModule):
    """Training examples from clip shards; validation on a fixed evaluation index."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.cfg = cfg
        self.train_set: ClipExamples | None = None
        self.epoch, self.epoch_start_step = 0, 0  # saved in checkpoints (state_dict) for resuming

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "epoch_start_step": self.epoch_start_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.epoch_start_step = int(state["epoch"]), int(state["epoch_start_step"])

    def start_epoch(self, epoch: int, global_step: int) -> None:
        """A new epoch starts at ``global_step`` (called before its iterator is created)."""
        self.epoch, self.epoch_start_step = epoch, global_step
        if self.train_set is not None:
            self.train_set.set_position(epoch, global_step, 0, self.cfg.data.batch_size)

    def train_dataloader(self) -> DataLoader:
        d = self.cfg.data
        urls = manifest_shards(d.root, d.train_split)
        self.train_set = ClipExamples(
            urls, d.sampler, d.shuffle_buffer, d.resampled, d.epoch_length, self.cfg.trainer.seed
        )
        # Resuming: the checkpoint restored the global step and this module's epoch start, so the
        # stream continues after the batches the interrupted run already trained on.
        step = int(self.trainer.global_step) if self.trainer is not None else 0
        consumed = max(0, step - self.epoch_start_step)
        self.train_set.set_position(self.epoch, self.epoch_start_step, consumed, d.batch_size)
        self.train_set.corrupt.sink = str(Path(self.cfg.checkpoint.dir) / self.cfg.run_name / "bad_samples")
        return DataLoader(
            self.train_set, batch_size=d.batch_size, num_workers=d.num_workers, collate_fn=collate_examples
        )

    def val_dataloader(self) -> DataLoader:
        d = self.cfg.data
        if d.eval_index:
            index = load_eval_index(d.eval_index)
        else:
            index = build_eval_index(
                scene_frame_ids(d.root, d.val_split), d.sampler, seed=self.cfg.trainer.seed, skip_short=True
            )
        if d.val_examples is not None:
            kept, count = {}, 0
            for scene in sorted(index):
                if count >= d.val_examples:
                    break
                kept[scene] = index[scene][: d.val_examples - count]
                count += len(kept[scene])
            index = kept
        return DataLoader(
            EvalIndexDataset(d.root, d.val_split, index), batch_size=None, collate_fn=lambda e: collate_examples([e])
        )


class EpochAndStep(L.Callback):
    """Tell the streaming dataset where each epoch starts: its number (reshuffling) and first global
    step (view-gap curriculum; the workers derive each sample's step from it, see
    :mod:`ffsplat.data.shards`). Lightning creates the first epoch's iterator before this hook, which
    :meth:`ClipDataModule.train_dataloader` covers; later epochs' iterators come after it."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if isinstance(dm, ClipDataModule) and (trainer.current_epoch, trainer.global_step) != (
            dm.epoch,
            dm.epoch_start_step,
        ):
            dm.start_epoch(trainer.current_epoch, trainer.global_step)


def resume_path(cfg: TrainConfig) -> str | None:
    """The checkpoint to resume from: ``checkpoint.resume`` resolved (``auto`` -> existing last.ckpt)."""
    resume = cfg.checkpoint.resume
    if resume is None:
        return None
    if resume == "auto":
        from ffsplat.training.guards import find_resume

        path, note = find_resume(Path(cfg.checkpoint.dir) / cfg.run_name)
        if note:
            print(f"warning: {note}", file=sys.stderr, flush=True)
        return path
    if not Path(resume).is_file():
        raise FileNotFoundError(f"checkpoint.resume: no checkpoint at {resume}")
    return resume


def make_logger(cfg: TrainConfig):
    mode = cfg.logging.wandb_mode
    if mode == "disabled":
        return False
    if mode not in ("offline", "online"):
        raise ValueError(f"logging.wandb_mode={mode!r}; choose offline, online or disabled")
    from lightning.pytorch.loggers import WandbLogger

    Path(cfg.logging.save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=cfg.logging.project, name=cfg.run_name, save_dir=cfg.logging.save_dir,
        offline=mode == "offline", config=asdict(cfg),
    )  # fmt: skip


def fit(cfg: TrainConfig, callbacks: list[L.Callback] | None = None) -> SemanticSplatModule:
    """Train one stage as configured; resumes from ``last.ckpt`` when asked; writes ``model.pt``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ffsplat.training.guards import NonFiniteGuard, print_data_report
    from ffsplat.training.logs import ImageLogger, ProgressLog

    L.seed_everything(cfg.trainer.seed, workers=True)
    run_dir = Path(cfg.checkpoint.dir) / cfg.run_name
    checkpoints = ModelCheckpoint(
        dirpath=run_dir, filename="step={step}", auto_insert_metric_name=False,
        every_n_train_steps=cfg.checkpoint.every_n_steps, save_last=True, save_top_k=-1,
    )  # fmt: skip
    t = cfg.trainer
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=t.precision, max_steps=cfg.optim.max_steps, logger=make_logger(cfg),
        callbacks=[checkpoints, EpochAndStep(), ImageLogger(cfg.logging.images_every_n_steps),
                   ProgressLog(cfg.logging.progress_every_n_steps),
                   NonFiniteGuard(cfg.optim.max_nonfinite_steps)] + list(callbacks or []),
        plugins=[AtomicCheckpointIO()], gradient_clip_val=cfg.optim.grad_clip or None,
        val_check_interval=t.val_every_n_steps or None, check_val_every_n_epoch=None if t.val_every_n_steps else 1,
        log_every_n_steps=t.log_every_n_steps, deterministic=t.deterministic, use_distributed_sampler=False,
        default_root_dir=cfg.logging.save_dir,
    )  # fmt: skip
    module = SemanticSplatModule(cfg)
    data = ClipDataModule(cfg)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_path(cfg))
    finally:
        if trainer.is_global_zero and data.train_set is not None:  # the run's list of skipped bad shard data
            print_data_report(data.train_set.corrupt.summary(), run_dir / "bad_samples.json")
    if trainer.is_global_zero:
        export_slim(module, run_dir / "model.pt")
    return module
