"""Mirrors of a run's measurements outside metrics.parquet, chosen by the `logger` config group.

`logger=none` (the default) mirrors nothing. `logger=tensorboard` writes every metric row and the
training loss to TensorBoard event files in `<run folder>/tensorboard/` as the run goes, with the
training step as TensorBoard's step: `tensorboard --logdir outputs/runs` shows the runs side by side.
A row's tag is `<probe>/<metric>/<split>/<layer>` (e.g. `reconstruction/mse/test/block5`,
`classifier/accuracy/test/output`), so TensorBoard groups the curves by probe; the loss is `train/loss`.
metrics.parquet stays the record the analysis reads: a mirror only shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from phases.config.schema import LoggerName
from phases.config.validation import ConfigError
from phases.store.record import TENSORBOARD_FOLDER

LOSS_TAG = "train/loss"


def logger_name(cfg: DictConfig) -> LoggerName:
    """The run's `logger` choice; a config composed before the group existed has none."""
    logger = cfg.get("logger")
    return LoggerName(logger.name) if logger is not None else LoggerName.none


def metric_tag(row: dict[str, Any]) -> str:
    return f"{row['probe']}/{row['metric']}/{row['split']}/{row['layer']}"


class NoMirror:
    """logger=none: every call does nothing."""

    def log_rows(self, rows: list[dict[str, Any]]) -> None:
        pass

    def log_loss(self, step: int, loss: float) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardMirror(NoMirror):
    def __init__(self, folder: Path, first_step: int):
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when chosen

        # purge_step: a resumed run's events from its checkpoint's step on, written by the attempt that
        # was interrupted, are hidden, so each curve shows each step once (a fresh start purges all).
        self.writer = SummaryWriter(log_dir=str(folder / TENSORBOARD_FOLDER), purge_step=first_step)

    def log_rows(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.writer.add_scalar(metric_tag(row), row["value"], global_step=row["step"])
        self.writer.flush()  # an evaluation's curves show at once, not when the writer's buffer fills

    def log_loss(self, step: int, loss: float) -> None:
        self.writer.add_scalar(LOSS_TAG, loss, global_step=step)

    def close(self) -> None:
        self.writer.close()  # flushes


def check_logger(cfg: DictConfig) -> None:
    """Fail before anything is built when the chosen logger's package is not installed."""
    if logger_name(cfg) != LoggerName.tensorboard:
        return
    try:
        import tensorboard  # noqa: F401 - torch.utils.tensorboard needs it, and says so only when used
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as error:
        raise ConfigError("logger", LoggerName.tensorboard.value,
                          f"TensorBoard is not installed here ({error}): pip install tensorboard, or leave "
                          "logger=none") from error


@contextmanager
def metric_mirror(cfg: DictConfig, folder: Path, first_step: int,
                  restored_rows: list[dict[str, Any]]) -> Iterator[NoMirror]:
    """The run's mirror for the block, closed (its events flushed) however the block ends. A run resumed
    at `first_step` from its checkpoint's `restored_rows` has that step's evaluation mirrored again (the
    purge hid it with the interrupted attempt's later events)."""
    mirror = TensorBoardMirror(folder, first_step) if logger_name(cfg) == LoggerName.tensorboard else NoMirror()
    try:
        mirror.log_rows([row for row in restored_rows if row["step"] >= first_step])
        yield mirror
    finally:
        mirror.close()
