"""Lightning training: the two distillation stages (plus an optional geometry warm-up), data,
checkpoints and the slim model export that ``infer.py`` loads.

Stages (SemanticSplat sec. 3.6):

=========  ====================================================  ================================
stage      loss                                                  trained
=========  ====================================================  ================================
geometry   L_rgb = L1 + 0.05 LPIPS on target views               geometry (backbone ... Gaussians)
seg        L_rgb + (1 - cos(expand(S), SAM)) + 0.2 L_mask        geometry + segmentation branch
lang       L_clip = 1 - cos(HCAM-pooled expand(L), LSeg)         language head + decoder only
=========  ====================================================  ================================

Frozen parameters get ``requires_grad = False`` and are left out of the optimiser.
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ffsplat.data.labels import EVAL_CLASSES
from ffsplat.data.shards import ClipExamples, EvalIndexDataset, collate_examples, manifest_shards, scene_frame_ids
from ffsplat.data.views import build_eval_index, load_eval_index
from ffsplat.objectives.losses import cosine_distillation, depth_loss, language_loss, make_lpips, mask_consistency_loss, photometric_loss
from ffsplat.objectives.metrics import SegmentationMeter, classify_by_embeddings, depth_metrics, psnr
from ffsplat.model.network import LANG, SEG, build_model
from ffsplat.objectives.prompting import SimilarityPromptDecoder, label_hierarchy_masks, sample_prompt_points
from ffsplat.render.renderer import render
from ffsplat.teachers.features import load_teachers, teacher_features
from ffsplat.training.config import TrainConfig
from ffsplat.core.types import Example, Views

STAGE_GROUPS = {"geometry": ("geometry",), "seg": ("geometry", "segmentation"), "lang": ("language",)}
"""Stage -> parameter groups (``SemanticSplatNet.parameter_groups``) that are trained."""

ROLE_CONDITION = {"segmentation": "sam", "language": "lseg"}
"""Teacher role -> the conditioning input name of the network."""

SLIM_FORMAT = "ffsplat-model"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes to a temporary file and renames it into place, so a
    kill during saving never leaves a truncated ``last.ckpt``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
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
        self.save_hyperparameters({"config": asdict(cfg)})
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
        self._lpips = make_lpips(cfg.loss.lpips_vgg_path) if cfg.stage.name != "lang" else None
        self.prompt_decoder = self._make_prompt_decoder()
        self.class_embeddings = eval_class_embeddings(cfg)
        self._val_meter = SegmentationMeter(num_classes=len(EVAL_CLASSES))
        self._val_scalars: dict[str, list[float]] = {}

    # ------------------------------------------------------------------ helpers
    def _make_prompt_decoder(self):
        choice = self.cfg.teachers.prompt_decoder
        seg_name = self.cfg.teachers.segmentation.name
        if choice == "auto":
            choice = "sam" if seg_name == "sam" else "similarity"
        if choice == "similarity":
            return SimilarityPromptDecoder()
        if choice == "sam":
            if seg_name != "sam":
                raise ValueError("teachers.prompt_decoder=sam needs teachers.segmentation.name=sam")
            return self._online.get("sam") or load_teachers({"sam": self.cfg.teachers.segmentation.kwargs})["sam"]
        raise ValueError(f"teachers.prompt_decoder={choice!r}; choose auto, sam or similarity")

    def _move_helpers(self) -> None:
        for module in list(self._online.values()) + [self._lpips, self.prompt_decoder]:
            if isinstance(module, nn.Module):
                module.to(self.device)
        self.class_embeddings = self.class_embeddings.to(self.device)

    def on_fit_start(self) -> None:
        self._move_helpers()

    def on_validation_start(self) -> None:
        self._move_helpers()

    def teacher_maps(self, views: Views) -> dict[str, Tensor]:
        """Teacher features by role (``segmentation``/``language``) -> ``[B, V, C, h, w]``."""
        b, v = views.images.shape[:2]
        roles = {"segmentation": self.cfg.teachers.segmentation.name, "language": self.cfg.teachers.language.name}
        if self.cfg.teachers.source == "online":
            flat = lambda t: None if t is None else t.flatten(0, 1)  # noqa: E731
            feats = teacher_features(
                {name: self._online[name] for name in roles.values()},
                views.images.flatten(0, 1), flat(views.labels), flat(views.instances),
            )  # fmt: skip
            return {role: feats[name].unflatten(0, (b, v)) for role, name in roles.items()}
        missing = [name for name in roles.values() if name not in views.teacher]
        if missing:
            raise KeyError(
                f"teachers.source=cached but the shards hold no {missing} features (have {sorted(views.teacher)}); "
                "write shards with --teacher ... or set teachers.source=online"
            )
        return {role: views.teacher[name] for role, name in roles.items()}

    def forward(self, context: Views, teacher: dict[str, Tensor] | None = None):
        conditions = {ROLE_CONDITION[role]: feats for role, feats in (teacher or {}).items()}
        return self.model(context, conditions)

    # ------------------------------------------------------------------ losses
    def compute_losses(self, batch: Example) -> tuple[Tensor, dict[str, Tensor]]:
        stage = self.cfg.stage.name
        needs_teacher = stage != "geometry" or self.cfg.model.conditioning.names
        ctx_teacher = self.teacher_maps(batch.context) if needs_teacher else None
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
        tgt_teacher = self.teacher_maps(target)
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
            logs.update({f"clip_{k}": v for k, v in lang.items()})
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
            logs["depth_target"] = depth_loss(rendered.depth, batch.target.depths)
            loss = loss + logs["depth_target"]
        return loss

    def mask_loss(self, expanded: Tensor, teacher: Tensor, target: Views) -> Tensor:
        """Focal + dice/20 between masks decoded from our embeddings and from the teacher's."""
        h, w = target.images.shape[-2:]
        pred, ref = expanded.flatten(0, 1), teacher.flatten(0, 1)
        grid = getattr(self.prompt_decoder, "output_size", None)
        if grid is not None:  # SAM's decoder wants its own grid layout
            size = grid(h, w)
            pred = nn.functional.interpolate(pred, size=size, mode="bilinear", align_corners=False)
            ref = nn.functional.interpolate(ref, size=size, mode="bilinear", align_corners=False)
        gen = torch.Generator().manual_seed(int(self.global_step))
        points = sample_prompt_points(pred.shape[0], self.cfg.loss.num_prompts, (h, w), gen).to(pred)
        pred_logits = self.prompt_decoder.decode(pred, points, image_size=(h, w))[0]  # [N, P, 3, H, W]
        with torch.no_grad():
            ref_logits = self.prompt_decoder.decode(ref, points, image_size=(h, w))[0]
        return mask_consistency_loss(pred_logits, ref_logits)

    def hcam_masks(self, target: Views) -> list[dict[str, Tensor]] | None:
        """Three-scale masks per target view for hierarchical pooling (or None)."""
        source = self.cfg.teachers.masks
        if source == "auto":
            source = "sam" if self.cfg.teachers.segmentation.name == "sam" else "labels"
        if source == "none":
            return None
        if source == "labels":
            if target.labels is None or target.instances is None:
                raise ValueError("teachers.masks=labels needs labels and instances in the shards")
            return [label_hierarchy_masks(l, i) for l, i in zip(target.labels.flatten(0, 1), target.instances.flatten(0, 1))]
        if source == "sam":
            sam = self.prompt_decoder if hasattr(self.prompt_decoder, "automatic_masks") else None
            if sam is None:
                raise ValueError("teachers.masks=sam needs the SAM prompt decoder (teachers.prompt_decoder=sam)")
            return sam.automatic_masks(target.images.flatten(0, 1))
        raise ValueError(f"teachers.masks={source!r}; choose auto, sam, labels or none")

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
        needs_teacher = bool(self.cfg.model.conditioning.names)
        out = self(batch.context, self.teacher_maps(batch.context) if needs_teacher else None)
        target = batch.target
        rendered = render(out.gaussians, target.cameras, features=[LANG])
        scalars = {"psnr": float(psnr(rendered.rgb.clamp(0, 1), target.images).mean())}
        if target.depths is not None:
            scalars["depth_abs_rel"] = float(depth_metrics(rendered.depth, target.depths)["abs_rel"])
        if target.labels is not None:
            h, w = target.images.shape[-2:]
            lang = self.model.decode_fields({LANG: rendered.features[LANG]}, {"lseg": (h, w)})["lseg"]
            pred = classify_by_embeddings(lang.flatten(0, 1), self.class_embeddings)
            self._val_meter.update(pred, target.labels.flatten(0, 1))
        return scalars

    def on_validation_epoch_end(self) -> None:
        scores = {k: sum(v) / len(v) for k, v in self._val_scalars.items()}
        if int(self._val_meter.confusion.sum()) > 0:
            seg = self._val_meter.compute()
            scores.update({"miou": float(seg["miou"]), "acc": float(seg["acc"])})
        self.log_dict({f"val/{k}": v for k, v in scores.items()}, sync_dist=True)
        self.last_val_metrics = scores
        self._val_scalars = {}
        self._val_meter.reset()

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.cfg.optim.lr)
        o = self.cfg.optim
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, o.warmup_steps, o.max_steps, o.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def eval_class_embeddings(cfg: TrainConfig) -> Tensor:
    """``[8, C]`` embeddings of the evaluation classes in the language teacher's space."""
    lang = cfg.teachers.language
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
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if blob.get("format") == SLIM_FORMAT:
        state = blob["state_dict"]
    else:
        state = {k[len("model.") :]: v for k, v in blob["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"stage.init_from={path}: missing {missing[:5]}, unexpected {unexpected[:5]} (different model config?)")


def export_slim(module: SemanticSplatModule, path: str | Path) -> Path:
    """Write the weights + model config + teacher/class metadata that ``infer.py`` loads (atomically)."""
    from ffsplat.core.atomic import atomic_open

    cfg = module.cfg
    blob = {
        "format": SLIM_FORMAT,
        "version": 1,
        "model_config": asdict(cfg.model),
        "state_dict": {k: v.detach().cpu() for k, v in module.model.state_dict().items()},
        "stage": cfg.stage.name,
        "teachers": {"segmentation": asdict(cfg.teachers.segmentation), "language": asdict(cfg.teachers.language)},
        "class_names": list(EVAL_CLASSES),
        "class_embeddings": module.class_embeddings.detach().cpu(),
        "trained_on": cfg.data.name,
        "image_size": getattr(module, "image_size", None),
        "global_step": int(module.global_step),
    }
    with atomic_open(path) as f:
        torch.save(blob, f)
    return Path(path)


class ClipDataModule(L.LightningDataModule):
    """Training examples from clip shards; validation on a fixed evaluation index."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.cfg = cfg
        self.train_set: ClipExamples | None = None

    def train_dataloader(self) -> DataLoader:
        d = self.cfg.data
        urls = manifest_shards(d.root, d.train_split)
        self.train_set = ClipExamples(urls, d.sampler, d.shuffle_buffer, d.resampled, d.epoch_length, self.cfg.trainer.seed)
        return DataLoader(self.train_set, batch_size=d.batch_size, num_workers=d.num_workers, collate_fn=collate_examples)

    def val_dataloader(self) -> DataLoader:
        d = self.cfg.data
        if d.eval_index:
            index = load_eval_index(d.eval_index)
        else:
            index = build_eval_index(scene_frame_ids(d.root, d.val_split), d.sampler, seed=self.cfg.trainer.seed, skip_short=True)
        if d.val_examples is not None:
            kept, count = {}, 0
            for scene in sorted(index):
                if count >= d.val_examples:
                    break
                kept[scene] = index[scene][: d.val_examples - count]
                count += len(kept[scene])
            index = kept
        return DataLoader(EvalIndexDataset(d.root, d.val_split, index), batch_size=None, collate_fn=lambda e: collate_examples([e]))


class EpochAndStep(L.Callback):
    """Tell the streaming dataset the epoch (reshuffling) and step (view-gap curriculum)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if isinstance(dm, ClipDataModule) and dm.train_set is not None:
            dm.train_set.set_epoch(trainer.current_epoch)
            dm.train_set.step = trainer.global_step


def resume_path(cfg: TrainConfig) -> str | None:
    """The checkpoint to resume from: ``checkpoint.resume`` resolved (``auto`` -> existing last.ckpt)."""
    resume = cfg.checkpoint.resume
    if resume is None:
        return None
    if resume == "auto":
        last = Path(cfg.checkpoint.dir) / cfg.run_name / "last.ckpt"
        return str(last) if last.is_file() else None
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

    from ffsplat.training.logs import ImageLogger

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
        callbacks=[checkpoints, EpochAndStep(), ImageLogger(cfg.logging.images_every_n_steps)] + list(callbacks or []),
        plugins=[AtomicCheckpointIO()], gradient_clip_val=cfg.optim.grad_clip or None,
        val_check_interval=t.val_every_n_steps or None, check_val_every_n_epoch=None if t.val_every_n_steps else 1,
        log_every_n_steps=t.log_every_n_steps, deterministic=t.deterministic, use_distributed_sampler=False,
        default_root_dir=cfg.logging.save_dir,
    )  # fmt: skip
    module = SemanticSplatModule(cfg)
    trainer.fit(module, datamodule=ClipDataModule(cfg), ckpt_path=resume_path(cfg))
    if trainer.is_global_zero:
        export_slim(module, run_dir / "model.pt")
    return module
