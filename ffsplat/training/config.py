"""The training configuration tree (``configs/train.yaml`` + groups fill it; see ``train.py``).

Choices are validated when the tree is built (``__post_init__``, which
:func:`ffsplat.core.config.to_dataclass` runs when it converts YAML/Hydra configs): a bad
``stage.name``, ``model.name``, teacher name, ``teachers.source`` / ``prompt_decoder`` / ``masks`` or
``logging.wandb_mode`` raises one :class:`~ffsplat.core.errors.InputError` naming the key, the value
and the allowed choices, before any model, teacher or data is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ffsplat.core.errors import InputError
from ffsplat.data.sampling import ViewSamplerConfig
from ffsplat.model.network import MODELS, ModelConfig

TEACHER_SOURCES = ("cached", "online")
"""``teachers.source`` choices."""

"""``teachers.masks`` choices (hierarchical masks for HCAM pooling)."""

WANDB_MODES = ("offline", "online", "disabled")
"""``logging.wandb_mode`` choices."""


def check_choice(key: str, value: Any, choices) -> None:
    """Raise one :class:`InputError` naming ``key``, the bad ``value`` and the ``choices``."""
    if value not in choices:
        raise InputError(f"{key}={value!r}; choose one of {', '.join(map(str, choices))}")


@dataclass
class DataConfig:
    """Where examples come from.

    Attributes:
        name: a label for logs (``synthetic``, ``scannet``...).
        root: shard folder with ``manifest.json`` (written by ``data_prep/make_shards.py``): a path, or a
            URL (``https://``, ``s3://``, ``gs://``, ``pipe:<command with {}>``; see :mod:`ffsplat.data.remote`).
        train_split, val_split: manifest splits for training and validation.
        eval_index: evaluation index JSON for validation; None builds one from ``val_split`` with
            ``sampler`` (seeded, deterministic).
        val_examples: use at most this many validation examples (None: all).
        batch_size: examples per step per device.
        num_workers: DataLoader workers per device.
        shuffle_buffer: samples held for shuffling.
        resampled: draw shards with replacement (required for multi-GPU: keeps ranks in step).
        epoch_length: samples per epoch per device when ``resampled``.
        sampler: how context/target views are drawn from each clip.
        scenes: train only on the clips of these scenes of ``train_split`` (names as in the manifest,
            e.g. ``[hololens-office]``); empty = all. For a stage whose teacher is meaningful on some
            scenes only (ESPNetv2 on synthetic renders says "background" with noise). An unknown name
            is an error at start-up naming this key.
        verify_hashes: before training, check every shard of ``train_split`` and ``val_split``
            against ``manifest.json`` (exists, size, SHA-256; as ``data_prep/verify_shards.py``) and
            refuse to start (one ``error:`` line, exit 2) if one differs. Each file is hashed once:
            the digests are cached in ``<root>/.sha256_cache.json`` by size and mtime.
    """

    name: str = "synthetic"
    root: str = "data/shards/synthetic"
    train_split: str = "train"
    val_split: str = "val"
    eval_index: str | None = None
    val_examples: int | None = 16
    batch_size: int = 1
    num_workers: int = 0
    shuffle_buffer: int = 64
    resampled: bool = True
    epoch_length: int = 1000
    sampler: ViewSamplerConfig = field(
        default_factory=lambda: ViewSamplerConfig(num_context=2, num_target=4, min_gap=4, max_gap=12)
    )
    scenes: list[str] = field(default_factory=list)
    verify_hashes: bool = False


@dataclass
class TeacherRole:
    """One teacher: a registry name and its config (e.g. ``{"checkpoint": "weights/sam_vit_b_01ec64.pth"}``)."""

    name: str = "label_seg"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TeachersConfig:
    """Which teachers the fields are distilled from, and where their features come from.

    Attributes:
        segmentation: the SAM role (``sam`` or the ``label_seg`` stand-in); its features condition
            the network (as ``"sam"``) and are the segmentation field's target.
        language: the LSeg role (``lseg`` or the ``label_lang`` stand-in); conditions the network
            (as ``"lseg"``) and is the language field's target.
        source: ``"cached"`` reads features stored in the shards; ``"online"`` computes them per
            batch on the training device.
        clip_path: local CLIP ViT-B/32 text model directory for class-name embeddings (with
            ``lseg``); the ``label_lang`` stand-in uses its own class table.
        prompt_decoder: decoder of point prompts for the mask loss and promptable evaluation:
            ``"sam"`` (needs ``segmentation.name == "sam"``), ``"similarity"`` (the stand-in for
            label-derived embeddings), or ``"auto"`` (SAM when the segmentation teacher is SAM).
        masks: three-scale masks for hierarchical pooling (stage ``lang`` with ``loss.hcam``):
            ``"cached"`` (SAM's automatic masks cached in the shards by ``make_shards.py --teacher
            sam_masks:checkpoint=...``; SAM never runs; an error naming this key and the shard
            folder when the shards lack them), ``"sam"`` (the cache when the shards have it, else
            SAM's automatic masks computed online per step: needs the SAM prompt decoder),
            ``"labels"`` (stand-in from ground-truth instances/classes), ``"auto"`` (the cache when
            present, else SAM online with the SAM teacher, else labels) or ``"none"``.
    """

    segmentation: TeacherRole = field(default_factory=lambda: TeacherRole("label_seg"))
    language: TeacherRole = field(default_factory=lambda: TeacherRole("label_lang"))
    source: str = "cached"
    clip_path: str | None = None
    prompt_decoder: str = "auto"
    masks: str = "auto"

    def __post_init__(self) -> None:
        from ffsplat.objectives.policy import MASK_SOURCES, PROMPT_DECODERS, resolve_prompt_decoder
        from ffsplat.teachers.base import teacher_names

        names = teacher_names()
        check_choice("teachers.segmentation.name", self.segmentation.name, names)
        check_choice("teachers.language.name", self.language.name, names)
        check_choice("teachers.source", self.source, TEACHER_SOURCES)
        check_choice("teachers.prompt_decoder", self.prompt_decoder, PROMPT_DECODERS)
        check_choice("teachers.masks", self.masks, MASK_SOURCES)
        try:
            resolve_prompt_decoder(self.prompt_decoder, self.segmentation.name)
        except ValueError as exc:
            raise InputError(f"{exc} (got teachers.segmentation.name={self.segmentation.name!r})") from exc
        # Whether teachers.masks=sam/cached can be served depends on the shards (cached masks or
        # not): checked at start-up by guards.check_mask_source.


@dataclass
class StageConfig:
    """Which training stage runs (SemanticSplat sec. 3.6).

    Attributes:
        name: ``geometry`` (photometric only: a warm start), ``seg`` (stage 1: L_rgb + L_sam),
            ``semantic`` (L_sam alone on a frozen geometry: the segmentation branch only) or
            ``lang`` (stage 2: L_clip with the segmentation branch and geometry frozen); see
            :mod:`ffsplat.training.stages`.
        init_from: checkpoint of the previous stage to start from (a ``last.ckpt`` or a slim
            ``model.pt``); None starts from the config's initial weights.
        init_groups: the parameter groups (``geometry``, ``segmentation``, ``language``) taken from
            ``init_from``, with their modules' buffers; the others keep their initialisation
            (``[]`` = all groups). E.g. ``[geometry]`` retrains a collapsed semantic branch from
            scratch on a trained geometry.
    """

    name: str = "seg"
    init_from: str | None = None
    init_groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from ffsplat.training.stages import PARAMETER_GROUPS, get_stage

        get_stage(self.name)  # an unknown name: one InputError naming stage.name and the choices
        self.init_groups = tuple(self.init_groups)
        for group in self.init_groups:
            check_choice("stage.init_groups", group, list(PARAMETER_GROUPS))
        if self.init_groups and not self.init_from:
            raise InputError(f"stage.init_groups={list(self.init_groups)} needs stage.init_from")


@dataclass
class LossConfig:
    """Loss weights and options.

    Attributes:
        lpips_weight: weight of LPIPS in the photometric loss (paper: 0.05).
        lpips_vgg_path: local torchvision VGG16 weights for LPIPS; without them LPIPS is off: one
            warning at start naming this key, and ``photometric_loss: l1`` in the run's
            hyperparameters and in ``model.pt``.
        mask_weight: weight of the SAM-decoder mask consistency loss (paper: 0.2).
        num_prompts: point prompts sampled per target view for the mask loss.
        hcam: use hierarchical-context-aware pooling in the language loss.
        depth_weight: weight of the depth supervision (``geometry`` and ``seg`` stages), L1 of log
            depth against valid sensor depth on the predicted context depth and on the rendered
            target depth (:func:`ffsplat.objectives.losses.depth_loss`); 0 disables it (paper
            config), batches without sensor depth skip it.
        class_balance: exponent of inverse-frequency weighting of the teacher's classes in the
            stage's distillation loss (``seg`` in stages ``seg``/``semantic``, ``lang`` in stage 2; see
            :func:`ffsplat.objectives.losses.class_balance_weights`): 0 = uniform pixels (the paper),
            1 = every class present in a batch weighs the same, 0.5 = inverse square root. Only for
            closed-vocabulary teachers (``espnetv2``, ``espnetv2_seg``, ``label_lang``), whose
            features are mixtures of known class rows; refused when the config loads for others (SAM,
            LSeg) and for the ``geometry`` stage.
        class_ce: weight of a closed-vocabulary cross-entropy added to the same distillation term
            (:func:`ffsplat.objectives.losses.class_cross_entropy`: cosine logits against the
            teacher's class rows at temperature 0.1, labels the teacher's argmax class, weighted by
            ``class_balance``'s weights), as LSeg trains; 0 = off (the paper). Same teachers and
            stages as ``class_balance``.
    """

    lpips_weight: float = 0.05
    lpips_vgg_path: str | None = None
    mask_weight: float = 0.2
    num_prompts: int = 8
    hcam: bool = True
    depth_weight: float = 0.0
    class_balance: float = 0.0
    class_ce: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.class_balance, (int, float)) or not 0 <= self.class_balance <= 1:
            raise InputError(f"loss.class_balance: expected a number in [0, 1], got {self.class_balance!r}")
        if not isinstance(self.class_ce, (int, float)) or self.class_ce < 0:
            raise InputError(f"loss.class_ce: expected a number >= 0, got {self.class_ce!r}")


@dataclass
class OptimConfig:
    """Adam with linear warm-up then cosine decay (paper: lr 1e-4, cosine).

    Attributes:
        lr: peak learning rate.
        warmup_steps: linear warm-up steps from 0.
        max_steps: training steps of this stage (paper: 5000 per stage).
        min_lr_ratio: the cosine decays to ``lr * min_lr_ratio``.
        grad_clip: gradient-norm clipping (0 disables).
        max_nonfinite_steps: a step whose loss or gradient is NaN/inf is skipped and counted; this
            many in a row stop training with an error (and no model.pt).
    """

    lr: float = 1e-4
    warmup_steps: int = 200
    max_steps: int = 5000
    min_lr_ratio: float = 0.01
    grad_clip: float = 0.5
    max_nonfinite_steps: int = 5


@dataclass
class TrainerConfig:
    """Lightning Trainer settings.

    Attributes:
        accelerator: ``cpu``, ``gpu`` or ``auto``.
        devices: devices per node (int or ``"auto"``).
        num_nodes: nodes (multi-node DDP through torchrun/SLURM).
        strategy: ``auto``, ``ddp``, ``ddp_spawn``...
        precision: ``32-true`` or ``bf16-mixed`` (GPU).
        val_every_n_steps: validate every this many training steps (0: only at the end).
        log_every_n_steps: scalar logging interval.
        seed: global seed (each rank and worker derives its own).
        deterministic: ask torch for deterministic algorithms: two runs of the same config are then
            bit-identical on CPU (without it they differ by ~5e-7 after a few steps); use it to
            compare runs or check a resume. Can be slower on GPU.
    """

    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    val_every_n_steps: int = 500
    log_every_n_steps: int = 10
    seed: int = 0
    deterministic: bool = False


@dataclass
class LoggingConfig:
    """Weights & Biases logging.

    Attributes:
        wandb_mode: ``offline`` (default: a local run directory, sync later with ``wandb sync``),
            ``online`` or ``disabled``.
        project: wandb project.
        save_dir: where wandb (and Hydra) write run files.
        images_every_n_steps: log renders, depth, feature PCA and class maps this often (0: never).
        progress_every_n_steps: print a plain progress line (step, loss, steps/s, ETA) to stderr
            this often, readable in a redirected log (0: never).
    """

    wandb_mode: str = "offline"
    project: str = "ffsplat"
    save_dir: str = "outputs"
    images_every_n_steps: int = 500
    progress_every_n_steps: int = 50

    def __post_init__(self) -> None:
        check_choice("logging.wandb_mode", self.wandb_mode, WANDB_MODES)


@dataclass
class CheckpointConfig:
    """Checkpoints (written atomically).

    Attributes:
        dir: root folder; a run writes ``<dir>/<run_name>/``: ``last.ckpt`` (full state, for
            resuming), ``step=<n>.ckpt`` and the slim ``model.pt`` that ``infer.py`` loads.
        every_n_steps: checkpoint interval.
        resume: ``"auto"`` resumes from ``<dir>/<run_name>/last.ckpt`` when it exists; a path
            resumes from that file; ``null`` always starts fresh.
        allow_config_change: resume even when the checkpoint's saved config differs from this one in
            the data (``data.name``, ``root``, ``train_split``, ``scenes``), the teachers, the model or
            the stage (``guards.RESUME_KEYS``). Off: such a resume stops at start-up with one error
            naming the differing keys (so a re-run with other settings never rewrites a finished run's
            ``model.pt``); pick another ``run_name`` or set ``checkpoint.resume=null`` to start fresh.
    """

    dir: str = "checkpoints"
    every_n_steps: int = 500
    resume: str | None = "auto"
    allow_config_change: bool = False


@dataclass
class TrainConfig:
    """Everything ``train.py`` needs; ``run_name`` names the checkpoint and wandb run."""

    run_name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        check_choice("model.name", self.model.name, sorted(MODELS))
        for key in ("class_balance", "class_ce"):
            if getattr(self.loss, key):
                self._check_class_table_option(key)
        if self.model.semantic.fields == "classes":
            self._check_class_fields()

    def _check_class_fields(self) -> None:
        """``model.semantic.fields: classes`` needs both teachers to have a class table over the
        segmenter's classes, as wide as the model's teacher spaces."""
        from ffsplat.teachers.base import teacher_class_table

        sem = self.model.semantic
        k = sem.seg_dim  # = the segmenter's classes (SemanticConfig checks it)
        for role, dim_key in (("segmentation", "seg_teacher_dim"), ("language", "lang_teacher_dim")):
            teacher = getattr(self.teachers, role)
            table = teacher_class_table(teacher.name, teacher.kwargs)
            if table is None:
                raise InputError(
                    f"model.semantic.fields=classes: teachers.{role}.name={teacher.name!r} has no closed class "
                    f"vocabulary; use a teacher over the {sem.segmenter} segmenter's classes (espnetv2, espnetv2_seg)"
                )
            if tuple(table.shape) != (k, getattr(sem, dim_key)):
                raise InputError(
                    f"model.semantic.fields=classes: teachers.{role} ({teacher.name}) has a {table.shape[0]} x "
                    f"{table.shape[1]} class table; expected {k} classes (the {sem.segmenter} segmenter's) x "
                    f"model.semantic.{dim_key}={getattr(sem, dim_key)}"
                )

    def _check_class_table_option(self, key: str) -> None:
        """``loss.<key>`` (class_balance, class_ce) needs a stage with a teacher target whose teacher
        has a class table."""
        from ffsplat.teachers.base import teacher_class_table
        from ffsplat.training.stages import get_stage

        value = getattr(self.loss, key)
        role = get_stage(self.stage.name).target_teacher
        if role is None:
            raise InputError(f"loss.{key}={value}: stage {self.stage.name!r} distils no teacher; set it to 0")
        teacher = getattr(self.teachers, role)
        if teacher_class_table(teacher.name, teacher.kwargs) is None:
            raise InputError(
                f"loss.{key}={value}: teachers.{role}.name={teacher.name!r} has no closed class vocabulary "
                "(espnetv2, espnetv2_seg and label_lang have one); set it to 0"
            )
