"""A run's checkpoint: what a rerun resumes from, written atomically after every evaluation (and every
schedule.checkpoint_minutes between them), removed once the metrics are final.

`checkpoint.pt` is plain data that `torch.load(weights_only=True)` reads without creating any object
but tensors, numbers, strings, lists and dicts: {"format": 1, "state": TrainingState.as_plain(),
"rows": the metric rows so far, "model": its state_dict, "optimizer": its state_dict}. It is only ever
loaded that way: a run folder may be writable by a whole group, and a full unpickler would run
whatever code a planted file names. A file that does not load so, or whose content does not fit the
run, is moved aside to `checkpoint.pt.corrupt-<UTC time>` and the run starts from scratch: a bad file
never blocks a run.
"""

from __future__ import annotations

import copy
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from phases.store.files import write_atomically
from phases.store.metrics import METRICS_SCHEMA
from phases.store.record import CHECKPOINT_FILE
from phases.training.train import TrainingState

FORMAT = 1  # raised when the payload's layout changes, so an older file is rejected, not misread
PAYLOAD_KEYS = {"format", "state", "rows", "model", "optimizer"}
CORRUPT_SUFFIX = ".corrupt-"  # checkpoint.pt.corrupt-<UTC time>: a rejected checkpoint, kept to inspect


class Checkpoint:
    def __init__(self, folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rows: list[dict[str, Any]]):
        """`rows` is the run's list of metric rows, saved with the weights so a resumed run writes them all."""
        self.path = folder / CHECKPOINT_FILE
        self.model, self.optimizer, self.rows = model, optimizer, rows
        self.rejected: str | None = None  # "<where the file went>: <why>" once resume() rejected it

    def exists(self) -> bool:
        # Anything at the path counts, a folder or a dangling link too: it is loaded or moved aside,
        # never left there to make every save fail.
        return self.path.exists() or self.path.is_symlink()

    def load(self, device: torch.device, max_steps: int, training_images: int) -> TrainingState:
        """Restore the model, the optimizer and the rows so far; returns the training loop's state.
        Raises when the file is not a checkpoint of this run (nothing is restored then, unless the
        model's or the optimizer's own load_state_dict fails half-way)."""
        payload = torch.load(self.path, map_location=device, weights_only=True)
        if not isinstance(payload, dict) or set(payload) != PAYLOAD_KEYS or payload["format"] != FORMAT:
            raise ValueError(f"not a format-{FORMAT} checkpoint (a dict of {', '.join(sorted(PAYLOAD_KEYS))})")
        state = TrainingState.from_plain(payload["state"], max_steps, training_images)
        rows = checked_rows(payload["rows"])
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.rows[:] = rows
        return state

    def resume(self, device: torch.device, max_steps: int, training_images: int) -> TrainingState | None:
        """The saved state, with the model, the optimizer and the rows restored; None when there is no
        checkpoint or it was rejected: moved aside, `self.rejected` saying where and why, and the
        model and optimizer as they were, so the run starts exactly as a fresh one."""
        if not self.exists():
            return None
        # load_state_dict copies into the live tensors: keep copies of the fresh ones to put back.
        fresh_model = copy.deepcopy(self.model.state_dict())
        fresh_optimizer = copy.deepcopy(self.optimizer.state_dict())
        try:
            return self.load(device, max_steps, training_images)
        except Exception as error:  # noqa: BLE001 - whatever the file holds, the run must go on without it
            self.model.load_state_dict(fresh_model)
            self.optimizer.load_state_dict(fresh_optimizer)
            self.rows.clear()
            self.rejected = f"{self.move_aside().name}: {one_line(error)}"
            return None

    def move_aside(self) -> Path:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")  # no ':' so that any file system takes it
        target = self.path.with_name(f"{self.path.name}{CORRUPT_SUFFIX}{stamp}")
        attempt = 1
        while target.exists() or target.is_symlink():  # two rejections within a second keep both files
            attempt += 1
            target = self.path.with_name(f"{self.path.name}{CORRUPT_SUFFIX}{stamp}-{attempt}")
        os.replace(self.path, target)
        return target

    def save(self, state: TrainingState) -> None:
        payload = {"format": FORMAT, "state": state.as_plain(), "rows": self.rows, "model": self.model.state_dict(),
                   "optimizer": self.optimizer.state_dict()}
        write_atomically(self.path, lambda temporary: torch.save(payload, temporary))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def checked_rows(rows: Any) -> list[dict[str, Any]]:
    """The saved metric rows, if they are rows of the metrics table: {column: text or number}."""
    columns = set(METRICS_SCHEMA.names)

    def is_row(row: Any) -> bool:
        return isinstance(row, dict) and set(row) == columns and all(
            isinstance(value, (str, int, float)) for value in row.values())

    if not isinstance(rows, list) or not all(is_row(row) for row in rows):
        raise ValueError(f"the metric rows are not a list of {{column: text or number}} with the columns "
                         f"{', '.join(sorted(columns))}")
    return rows


def one_line(error: BaseException) -> str:
    """The error in one line. PyTorch's unpickling errors are paragraphs that also suggest loading with
    weights_only=False, the one thing never to do with a file of unknown origin: keep only their cause."""
    text = str(error).split("WeightsUnpickler error:", 1)[-1].split(" Please use", 1)[0]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first[:300]}"
