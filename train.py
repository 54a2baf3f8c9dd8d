"""Train ffsplat (Hydra entry point).

    python train.py experiment=synthetic_seg                          # small model, synthetic rooms, CPU
    python train.py model=paper data=scannet teacher=real stage=seg trainer=gpu
    python train.py model=paper data=scannet teacher=real stage=seg trainer=multigpu trainer.num_nodes=2
    python train.py ... stage=lang stage.init_from=checkpoints/<stage-1 run>/model.pt

Config groups and every field: configs/train.yaml and ffsplat/training/config.py. Checkpoints go
to checkpoints/<run_name>/ (last.ckpt resumes automatically; model.pt is what infer.py loads).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import ffsplat  # noqa: F401  (installs the torchvision shim before Lightning imports torchvision)
from ffsplat.core.config import CONFIG_DIR, to_dataclass
from ffsplat.training.config import TrainConfig


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="train")  # bundled configs when installed
def main(cfg: DictConfig) -> None:
    from ffsplat.training.module import fit

    fit(to_dataclass(TrainConfig, cfg))


if __name__ == "__main__":
    main()
