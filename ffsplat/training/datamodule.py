"""The training data: shuffled clip examples from shards for training (resumable at the exact
batch), a fixed evaluation index for validation."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from ffsplat.data.sampling import build_eval_index, load_eval_index
from ffsplat.data.shards import (
    ClipExamples,
    EvalIndexDataset,
    collate_examples,
    manifest_shards,
    read_manifest,
    scene_frame_ids,
)
from ffsplat.training.config import TrainConfig


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
        urls = manifest_shards(d.root, d.train_split, d.scenes)
        self.train_set = ClipExamples(
            urls, d.sampler, d.shuffle_buffer, d.resampled, d.epoch_length, self.cfg.trainer.seed,
            teacher_stats=read_manifest(d.root).get("teacher_stats"),  # samples far outside them: skipped, named
        )  # fmt: skip
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
