"""Train ffsplat (Hydra entry point).

    python train.py experiment=synthetic_seg                          # small model, synthetic rooms, CPU
    python train.py model=paper data=scannet teacher=real stage=seg trainer=gpu
    python train.py model=paper data=scannet teacher=real stage=seg trainer=multigpu trainer.num_nodes=2
    python train.py ... stage=lang stage.init_from=checkpoints/<stage-1 run>/model.pt

Config groups and every field: configs/train.yaml and ffsplat/training/config.py. Checkpoints go
to checkpoints/<run_name>/ (last.ckpt resumes automatically, or the newest intact step=N.ckpt when
last.ckpt is damaged; model.pt is what infer.py loads). A config that cannot work (missing data
root, split, evaluation index, init/resume checkpoint, out-of-range numbers) ends with one
``error:`` line and exit code 2 before anything is written; too many non-finite steps in a row end
with an ``error:`` line and exit code 1, without model.pt, as do shards with no usable sample.
"""

from __future__ import annotations

import errno
import re
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

import ffsplat  # noqa: F401  (installs the torchvision shim before Lightning imports torchvision)
from ffsplat.core.config import CONFIG_DIR, to_dataclass
from ffsplat.core.errors import InputError, report
from ffsplat.training.config import TrainConfig


def run(cfg: TrainConfig) -> int:
    """Check the config, train, and map failures to the error contract; returns the exit code."""
    from ffsplat.data.shards import TrainingDataError
    from ffsplat.training.guards import NonFiniteCheckpointError, NonFiniteTrainingError, check_train_config
    from ffsplat.training.fit import fit

    try:
        check_train_config(cfg)
        fit(cfg)
    except InputError as exc:
        return report(exc)
    except (NonFiniteTrainingError, NonFiniteCheckpointError, TrainingDataError) as exc:
        report(exc)
        return 1
    except OSError as exc:  # full disk or quota while writing a checkpoint or model.pt (each written atomically)
        if exc.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        return report(
            f"checkpoint.dir: cannot write {exc.filename or cfg.checkpoint.dir}: {exc.strerror}; earlier checkpoints "
            "are intact: free space and run again with checkpoint.resume=auto"
        )
    return 0


def _remove_hydra_run_dir() -> None:
    """Bad input writes nothing: drop what Hydra wrote for this run (the config copies in ``.hydra/`` and
    this run's lines of the job log), and each folder only if that leaves it empty. A folder the user
    pointed ``hydra.run.dir`` at keeps everything else it holds, an earlier run's log lines included."""
    from hydra.core.hydra_config import HydraConfig

    try:
        hc = HydraConfig.get()
    except ValueError:  # not running under Hydra
        return
    run_dir = Path(hc.runtime.output_dir)
    if hc.output_subdir:
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):  # what Hydra writes there
            (run_dir / hc.output_subdir / name).unlink(missing_ok=True)
        _rmdir_if_empty(run_dir / hc.output_subdir)
    _drop_this_runs_log_lines(run_dir / f"{hc.job.name}.log")
    _rmdir_if_empty(run_dir)


_STARTED = time.time()  # at import: before Hydra opens (appends to) the job log
_LOG_TIME = re.compile(rb"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d{3}\]")  # Hydra's job log: [%(asctime)s]...


def _drop_this_runs_log_lines(log: Path) -> None:
    """Cut ``log`` back to the lines earlier runs wrote (Hydra appends to an existing job log); remove it
    when none are left."""
    import logging

    from ffsplat.core.atomic import atomic_open

    for handler in logging.getLogger().handlers:
        handler.flush()
    try:
        lines = log.read_bytes().splitlines(keepends=True)
    except OSError:
        return
    first = next(
        (i for i, line in enumerate(lines)
         if (m := _LOG_TIME.match(line)) and time.mktime(time.strptime(m.group(1).decode(), "%Y-%m-%d %H:%M:%S")) >= int(_STARTED)),
        len(lines),
    )  # fmt: skip
    if first == 0:
        log.unlink(missing_ok=True)
    elif first < len(lines):
        with atomic_open(log) as f:
            f.writelines(lines[:first])


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def config_error_line(exc: BaseException) -> str:
    """A Hydra / OmegaConf config error (unknown key, wrong type, unknown group option, unparsable
    override) as one line naming the key: ``config: <key>: <what>``."""
    parts = []
    for e in (exc, exc.__cause__):
        if e is None:
            continue
        lines = []
        for line in str(e).split("\n"):
            line = line.strip()
            if line.startswith(("Config search path", "See https://hydra.cc", "Set the environment variable")):
                break
            if line and not line.startswith(("full_key:", "object_type=", "reference_type=", "provider=")):
                lines.append(line)
        text = " ".join(lines).replace("Available options in", "; available options in")
        if text and text not in parts:
            parts.append(text)
    key = next((k for e in (exc, exc.__cause__) if (k := getattr(e, "full_key", None))), None)
    if key is None and getattr(exc, "override", None):  # an override Hydra cannot parse
        key = f"override {exc.override!r}"
    return (
        f"config: {key + ': ' if key else ''}{'; '.join(parts)} (see configs/train.yaml and ffsplat/training/config.py)"
    )


_ENTERED = False  # set when Hydra has composed the config and runs the task function


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="train")  # bundled configs when installed
def _hydra_main(cfg: DictConfig) -> None:
    global _ENTERED
    _ENTERED = True
    _restore_full_error()
    try:
        config = to_dataclass(TrainConfig, cfg)
    except Exception as exc:  # noqa: BLE001  (wrong types / unknown keys in the user's config)
        _remove_hydra_run_dir()
        sys.exit(report(InputError(config_error_line(exc))))
    code = run(config)
    if code == 2:
        _remove_hydra_run_dir()
    if code:
        sys.exit(code)


_SAVED_FULL_ERROR: list[str | None] = []


def _restore_full_error() -> None:
    import os

    if _SAVED_FULL_ERROR:
        old = _SAVED_FULL_ERROR.pop()
        if old is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = old


def main() -> None:
    """``train.py``: Hydra composes the config from the command line, then :func:`run` trains.

    A mistake in the overrides (an unknown key, a value of the wrong type, an unknown config-group
    option, an override Hydra cannot parse) ends with one ``error:`` line naming the key and exit
    code 2, before anything is written. (Hydra alone prints several lines and exits 1: its errors
    are made to propagate here with ``HYDRA_FULL_ERROR`` until the config is composed; a user who
    sets ``HYDRA_FULL_ERROR=1`` keeps Hydra's full report.)"""
    import os

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    global _ENTERED
    _ENTERED = False
    user_full_error = os.environ.get("HYDRA_FULL_ERROR")
    if user_full_error == "1":
        return _hydra_main()
    _SAVED_FULL_ERROR[:] = [user_full_error]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except (HydraException, OmegaConfBaseException) as exc:
        if _ENTERED:
            raise
        sys.exit(report(InputError(config_error_line(exc))))
    finally:
        _restore_full_error()


main.__wrapped__ = _hydra_main.__wrapped__  # the task function on a composed config (tests call it directly)

if __name__ == "__main__":
    main()
