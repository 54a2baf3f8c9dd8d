"""Run ffsplat.training.fit.fit from a JSON config in a fresh process (DDP and kill/resume tests).

    python tests/scripts/train_driver.py CONFIG.json [--kill-at-step N] [--report-dir DIR]

--kill-at-step N: hard-exit (as a killed job would) when the global step reaches N.
--report-dir DIR: each rank writes rank<r>.json with the weights' checksum at the end of training,
and the global step + optimiser state checksum when training (re)starts.
--samples FILE: append one JSON line per training batch: the global step and the batch's sample
ids (scene, context and target frame ids), to compare data streams across a kill and resume.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path


import ffsplat  # noqa: F401,E402
import lightning as L  # noqa: E402
import torch  # noqa: E402

from ffsplat.core.config import to_dataclass  # noqa: E402
from ffsplat.training.fit import fit  # noqa: E402
from ffsplat.training.config import TrainConfig  # noqa: E402


def checksum(tensors) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def optimizer_checksum(optimizer) -> str:
    state = optimizer.state_dict()["state"]
    return checksum([v for k in sorted(state) for v in state[k].values() if torch.is_tensor(v)])


class Probe(L.Callback):
    def __init__(self, kill_at: int | None, report_dir: Path | None, samples: Path | None = None):
        self.kill_at, self.report_dir, self.samples = kill_at, report_dir, samples
        self.report: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.samples is not None:
            ids = [
                [scene, batch.context.frame_ids[i].tolist(), batch.target.frame_ids[i].tolist()]
                for i, scene in enumerate(batch.scenes)
            ]
            with self.samples.open("a") as f:
                f.write(json.dumps({"step": trainer.global_step, "ids": ids}) + "\n")

    def on_train_start(self, trainer, pl_module):
        self.report["start_step"] = trainer.global_step
        self.report["start_optimizer"] = optimizer_checksum(trainer.optimizers[0])
        self.report["start_lr"] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.kill_at is not None and trainer.global_step >= self.kill_at:
            os._exit(137)

    def on_train_end(self, trainer, pl_module):
        self.report["end_step"] = trainer.global_step
        self.report["weights"] = checksum(p for p in pl_module.model.parameters())
        if self.report_dir is not None:
            self.report_dir.mkdir(parents=True, exist_ok=True)
            (self.report_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.report))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--report-dir", type=Path)
    parser.add_argument("--samples", type=Path)
    args = parser.parse_args()
    cfg = to_dataclass(TrainConfig, json.loads(args.config.read_text()))
    fit(cfg, callbacks=[Probe(args.kill_at_step, args.report_dir, args.samples)])


if __name__ == "__main__":
    main()
