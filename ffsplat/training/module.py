"""The Lightning module of one training stage: the network, its frozen helpers (teachers, LPIPS,
the prompt decoder), the losses of the stage, validation, and the slim ``model.pt`` export.

What a stage trains and which loss terms make up its total come from the stage registry
(:mod:`ffsplat.training.stages`, SemanticSplat sec. 3.6); this module implements each term once
(:meth:`SemanticSplatModule.loss_terms`) and sums the stage's declared terms with their weights.
Frozen parameters get ``requires_grad = False`` and are left out of the optimiser. Data:
:mod:`ffsplat.training.datamodule`; the Trainer and the run: :mod:`ffsplat.training.fit`.

Checkpoints hold the network, optimiser, LR schedule and loop state only: teachers, LPIPS and the
prompt decoder are helpers kept out of the module tree (:meth:`SemanticSplatModule._helper`), so a
checkpoint is the same size with real or stand-in teachers and resumes under any teacher setting.
Each stage computes only the teacher features it uses (conditioning for the context views; the
stage's ``target_teacher`` for the target views).
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from ffsplat.checkpoint import ROLE_CONDITION, CheckpointError, load_weights, save_model
from ffsplat.core.errors import InputError, one_line
from ffsplat.data.labels import EVAL_CLASSES
from ffsplat.objectives.losses import (
    LPIPS_VGG_KEY, class_balance_weights, class_cross_entropy, cosine_distillation, depth_loss, language_loss, make_lpips,
    mask_consistency_loss, photometric_loss,
)  # fmt: skip
from ffsplat.objectives.metrics import SegmentationMeter, classify_by_embeddings, depth_metrics, psnr
from ffsplat.model.network import LANG, SEG, build_model
from ffsplat.model.semantic_heads import SemanticConfig, resize_field
from ffsplat.objectives import policy
from ffsplat.objectives.prompting import sample_prompt_points
from ffsplat.render.renderer import render
from ffsplat.teachers.base import teacher_class_table
from ffsplat.teachers.features import load_teachers
from ffsplat.training.config import TrainConfig
from ffsplat.training.guards import check_segmenter_source
from ffsplat.training.stages import Stage, get_stage
from ffsplat.core.types import Example, Views


def photometric_loss_name(cfg: TrainConfig, have_lpips: bool) -> str:
    """The photometric loss a run actually optimises: ``"l1+<w>*lpips"``, ``"l1"`` (LPIPS off or
    without weights) or ``"none"`` (a stage without the ``rgb`` term, e.g. ``lang``)."""
    if not get_stage(cfg.stage.name).photometric:
        return "none"
    return f"l1+{cfg.loss.lpips_weight:g}*lpips" if have_lpips else "l1"


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
        self.stage: Stage = get_stage(cfg.stage.name)
        self.cfg = cfg
        self.model = build_model(cfg.model)
        self.trained_groups = self.stage.trains
        init_keys = group_state_keys(self.model, cfg.stage.init_groups) if cfg.stage.init_groups else None
        check_segmenter_source(cfg)  # the rule train.py checks at start-up, also for the Python API
        segmenter_loaded = load_segmenter(self.model, cfg.model.semantic)
        if cfg.stage.init_from:
            groups = self.model.parameter_groups()
            trained = {id(p) for g in self.trained_groups for p in groups[g]}
            addable = [
                n for n, p in self.model.named_parameters() if id(p) in trained and n.startswith(ADDABLE_MODULES)
            ]
            if segmenter_loaded:  # a frozen segmenter loaded from its own file may be new to the init model
                addable += [n for n in self.model.state_dict() if n.startswith(SEGMENTER_PREFIX)]
            added = load_model_weights(self.model, cfg.stage.init_from, addable, init_keys)
            rank_zero_info(f"[init] loaded {cfg.stage.init_from} (stage.init_from; groups: "
                           f"{', '.join(cfg.stage.init_groups) or 'all'})")  # fmt: skip
            if init_keys is not None:
                rank_zero_info(f"[train] stage.init_groups={list(cfg.stage.init_groups)}: only these groups come from "
                               f"{cfg.stage.init_from}; the others start from their initialisation")  # fmt: skip
            if added:
                rank_zero_info(f"[train] stage.init_from={cfg.stage.init_from} lacks {len(added)} tensors of the new "
                               f"modules {sorted({k.rsplit('.', 1)[0].split('.')[1] for k in added})}: they start from their "
                               "initialisation (a segmenter from model.semantic.segmenter_checkpoint)")  # fmt: skip
        if cfg.model.semantic.fields == "classes":  # the teachers' tables, also over an init_from's
            self.model.set_class_tables(*(teacher_class_table(r.name, r.kwargs) for r in (cfg.teachers.segmentation, cfg.teachers.language)))  # fmt: skip
        self.depth_ranges: list[tuple[float, float]] = []  # training clips' (near, far): model.pt's depth_range
        # A stage that does not train the geometry keeps the depth range it was trained over.
        self.inherited_depth_range = (
            init_depth_range(cfg.stage.init_from)
            if cfg.stage.init_from and "geometry" not in self.trained_groups
            else None
        )
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
        uses_lpips = self.stage.photometric and cfg.loss.lpips_weight > 0
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
        self.background_embedding = eval_background_embedding(cfg)
        self._class_table: Tensor | None = None  # the target teacher's, for loss.class_balance / class_ce
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
        if self.background_embedding is not None:
            self.background_embedding = self.background_embedding.to(self.device)

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
        """``(total, logs)``: the stage's declared loss terms (:meth:`loss_terms`), each times its
        weight (:func:`ffsplat.training.stages.term_weight`), summed; ``logs["total"]`` is the total."""
        terms, logs = self.loss_terms(batch)
        total = self.stage.total(terms, self.cfg.loss)
        logs["total"] = total
        return total, logs

    def loss_terms(self, batch: Example) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(terms, logs)``: the unweighted scalar of each active loss term of the stage (declared,
        weight not zero) and the finer values logged under ``train/`` (``rgb_l1``, ``sam_cos``...)."""
        stage = self.stage
        active = stage.active_terms(self.cfg.loss)
        ctx_roles = self.context_roles()
        ctx_teacher = self.teacher_maps(batch.context, ctx_roles) if ctx_roles else None
        out = self(batch.context, ctx_teacher)
        target = batch.target
        rendered = render(out.gaussians, target.cameras, features=list(stage.fields))
        teacher = self.teacher_maps(target, [stage.target_teacher]) if stage.target_teacher else {}
        terms: dict[str, Tensor] = {}
        logs: dict[str, Tensor] = {}
        if "rgb" in active:
            photo = photometric_loss(rendered.rgb, target.images, self._lpips, self.cfg.loss.lpips_weight)
            logs.update({f"rgb_{k}": v for k, v in photo.items()})
            terms["rgb"] = photo["total"]
        if "depth" in active:  # depth supervision where sensor depth exists
            terms["depth"] = self.depth_supervision(out, rendered, batch, logs)
        if "seg" in active or "mask" in active:
            sam = teacher["segmentation"]
            expanded = self.model.decode_fields({SEG: rendered.features[SEG]}, {"sam": sam.shape[-2:]})["sam"]
            if "seg" in active:
                weights = self.class_weights(sam)
                terms["seg"] = logs["sam_cos"] = cosine_distillation(expanded, sam, weights)
                if self.cfg.loss.class_ce:
                    logs["sam_ce"] = class_cross_entropy(expanded, sam, self.class_table(), weights)
                    terms["seg"] = terms["seg"] + self.cfg.loss.class_ce * logs["sam_ce"]
            if "mask" in active:
                terms["mask"] = logs["sam_mask"] = self.mask_loss(expanded, sam, target)
        if "lang" in active:
            h, w = target.images.shape[-2:]
            expanded = self.model.decode_fields({LANG: rendered.features[LANG]}, {"lseg": (h, w)})["lseg"]
            masks = self.hcam_masks(target) if self.cfg.loss.hcam else None
            target_lang = teacher["language"].flatten(0, 1)
            weights = self.class_weights(target_lang)
            lang = language_loss(expanded.flatten(0, 1), target_lang, masks, weights)
            logs.update({f"lang_{k}": v for k, v in lang.items()})
            terms["lang"] = lang["total"]
            if self.cfg.loss.class_ce:
                logs["lang_ce"] = class_cross_entropy(expanded.flatten(0, 1), target_lang, self.class_table(), weights)
                terms["lang"] = terms["lang"] + self.cfg.loss.class_ce * logs["lang_ce"]
        return terms, logs

    def class_weights(self, target: Tensor) -> Tensor | None:
        """Per-pixel weights of the stage's distillation loss on teacher features ``target [..., C, h, w]``:
        :func:`class_balance_weights` with ``loss.class_balance`` (None when it is 0: uniform)."""
        power = self.cfg.loss.class_balance
        if not power:
            return None
        return class_balance_weights(target, self.class_table().to(target.device), power)

    def class_table(self) -> Tensor:
        """``[K, C]`` class rows of the stage's target teacher (closed vocabularies only: checked when
        the config loads for ``loss.class_balance`` and ``loss.class_ce``), on the model's device."""
        if self._class_table is None:
            spec = getattr(self.cfg.teachers, self.stage.target_teacher)
            self._class_table = teacher_class_table(spec.name, spec.kwargs)
        return self._class_table.to(self.device)

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
    DEPTH_RANGE_WINDOW = 10_000
    """Training clips' (near, far) kept for the exported ``depth_range`` (the most recent ones)."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["depth_ranges"] = list(self.depth_ranges)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.depth_ranges = [tuple(r) for r in checkpoint.get("depth_ranges", [])]

    def training_depth_range(self) -> list[float] | None:
        """Median near and median far of the training clips seen (None before any step); for a stage
        that does not train the geometry, the ``stage.init_from`` model's range when it records one
        (the clips of such a stage, e.g. ``data.scenes``, say nothing about the geometry)."""
        if self.inherited_depth_range is not None:
            return list(self.inherited_depth_range)
        if not self.depth_ranges:
            return None
        ranges = torch.tensor(self.depth_ranges, dtype=torch.float64)
        return [float(ranges[:, 0].median()), float(ranges[:, 1].median())]

    def training_step(self, batch: Example, batch_idx: int) -> Tensor:
        self.image_size = int(batch.context.images.shape[-1])  # recorded in the slim export
        self.depth_ranges.extend(zip(batch.context.near.tolist(), batch.context.far.tolist()))
        del self.depth_ranges[: -self.DEPTH_RANGE_WINDOW]
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
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:  # also to the console / redirected log
            shown = " ".join(f"{k} {v:.4f}" for k, v in scores.items()) or "no scores (no labels or depth)"
            print(f"[val] step {self.global_step}: {shown}", file=sys.stderr, flush=True)
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
        return torch.zeros(len(EVAL_CLASSES), cfg.model.semantic.lang_teacher_dim)  # mIoU unavailable without CLIP
    from ffsplat.teachers.clip_text import ClipTextEncoder

    return ClipTextEncoder.from_pretrained(cfg.teachers.clip_path)(list(EVAL_CLASSES))


def eval_background_embedding(cfg: TrainConfig) -> Tensor | None:
    """``[C]`` "none of the classes" embedding of a closed-vocabulary language teacher (the ``espnetv2``
    teacher's PASCAL background row), else None (open vocabularies have no background)."""
    lang = cfg.teachers.language
    if lang.name == "espnetv2":
        from ffsplat.teachers.espnetv2 import pascal_background_embedding

        return pascal_background_embedding(int(lang.kwargs.get("dim", 512)), int(lang.kwargs.get("seed", 7)))
    return None


ADDABLE_MODULES = ("semantic_trunk.image_encoder.", "semantic_trunk.image_proj.")
"""Modules a stage that trains them may add to a model it starts from (``semantic.image_encoder``
and ``semantic.segmenter``: their projection starts at zero, so the loaded model's outputs are
unchanged until the stage trains them)."""

SEGMENTER_PREFIX = "semantic_trunk.segmenter."
"""State-dict prefix of the frozen ``semantic.segmenter``: a ``stage.init_from`` model may lack it
when ``semantic.segmenter_checkpoint`` supplies it."""


def load_segmenter(model: nn.Module, cfg: SemanticConfig) -> bool:
    """Load ``semantic.segmenter_checkpoint`` into the model's frozen segmenter; True when loaded.
    Without a checkpoint the weights must come from ``stage.init_from``
    (:func:`ffsplat.training.guards.check_segmenter_source` refuses a model that would keep a
    randomly initialised "pretrained" segmenter)."""
    if not (cfg.segmenter and cfg.segmenter_checkpoint):
        return False
    model.semantic_trunk.segmenter.load_weights(cfg.segmenter_checkpoint)
    return True


def init_depth_range(path: str | Path) -> list[float] | None:
    """The training depth range a ``stage.init_from`` file records: ``depth_range`` of a ``model.pt``,
    the median of a Lightning checkpoint's ``depth_ranges``; None when it records none."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)  # read before by load_model_weights
    if isinstance(blob, dict) and blob.get("depth_range") is not None:
        return [float(v) for v in blob["depth_range"]]
    ranges = blob.get("depth_ranges") if isinstance(blob, dict) else None
    if ranges:
        table = torch.tensor(ranges, dtype=torch.float64)
        return [float(table[:, 0].median()), float(table[:, 1].median())]
    return None


def group_state_keys(model: nn.Module, groups: Sequence[str]) -> set[str]:
    """State-dict keys (parameters and buffers) of the top-level modules whose parameters are in
    ``groups`` of ``model.parameter_groups()`` (``stage.init_groups``)."""
    table = model.parameter_groups()
    ids = {id(p) for g in groups for p in table[g]}
    modules = {name.split(".")[0] for name, p in model.named_parameters() if id(p) in ids}
    return {k for k in model.state_dict() if k.split(".")[0] in modules}


def load_model_weights(
    model: nn.Module, path: str | Path, addable: Sequence[str] = (), keys: set[str] | None = None
) -> list[str]:
    """Load network weights from a slim ``model.pt`` or a Lightning checkpoint (``model.`` prefix).

    Args:
        addable: parameter names the file may lack (they keep their initialisation).
        keys: load only these state-dict keys (``stage.init_groups``; None = all): the others keep
            their initialisation, and the file's tensors of the modules not loaded are ignored
            (their layout may differ, e.g. ``semantic.fields``).
    Returns:
        the names of ``addable`` that the file lacked.
    Raises:
        RuntimeError naming ``stage.init_from`` for any other missing or unexpected key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stage.init_from: no checkpoint at {path}")
    try:  # weights_only=True: a user-named file never runs code
        state = load_weights(path)
    except CheckpointError as exc:
        raise InputError(f"stage.init_from={path}: {one_line(exc)}") from None
    if keys is not None:
        own = model.state_dict()
        skipped = {k.split(".")[0] for k in own} - {k.split(".")[0] for k in keys}
        state = {k: v for k, v in state.items() if k in keys or k.split(".")[0] not in skipped}  # others: reported
        missing, unexpected = model.load_state_dict(
            state | {k: v for k, v in own.items() if k not in keys}, strict=False
        )
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
    added = [k for k in missing if k in set(addable)]
    missing = [k for k in missing if k not in set(addable)]
    if missing or unexpected:
        hint = "different model config?"
        if any(k.startswith(SEGMENTER_PREFIX) for k in missing):
            hint = "it has no semantic.segmenter: set model.semantic.segmenter_checkpoint to the segmenter's weights"
        raise InputError(f"stage.init_from={path}: missing {missing[:5]}, unexpected {unexpected[:5]} ({hint})")
    return added


def trained_groups(module: SemanticSplatModule) -> list[str]:
    """Parameter groups (``geometry``, ``segmentation``, ``language``) trained so far: this stage's,
    ``geometry`` when ``model.pretrained`` gave it, and those the ``stage.init_from`` model.pt records."""
    cfg = module.cfg
    groups = set(module.stage.trains)
    if cfg.model.pretrained is not None and cfg.model.pretrained.path:
        groups.add("geometry")
    if cfg.stage.init_from:
        try:
            blob = torch.load(cfg.stage.init_from, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001  (a Lightning checkpoint written by an older version: no record)
            blob = {}
        init = blob.get("trained_groups") if isinstance(blob, dict) else None
        taken = set(cfg.stage.init_groups or ("geometry", "segmentation", "language"))
        groups |= set(init or ()) & taken
        if isinstance(blob, dict) and blob.get("hyper_parameters"):  # a Lightning checkpoint of a stage
            stage = blob["hyper_parameters"].get("config", {}).get("stage", {}).get("name")
            groups |= set(get_stage(stage).trains) & taken if stage else set()
    return sorted(groups)


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
        background_embedding=module.background_embedding,
        stage=module.stage.name,
        trained_on=cfg.data.name,
        trained_groups=trained_groups(module),
        image_size=getattr(module, "image_size", None),
        global_step=int(module.global_step),
        photometric_loss=getattr(module, "photometric_loss", None),
        depth_range=module.training_depth_range(),
        prompt_decoder=policy.resolve_prompt_decoder(cfg.teachers.prompt_decoder, cfg.teachers.segmentation.name),
    )
