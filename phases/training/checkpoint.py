"""A run's checkpoint: what a rerun resumes from, written atomically after every evaluation (and every
schedule.checkpoint_minutes between them), removed once the metrics are final."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from phases.store.files import write_atomically
from phases.store.record import CHECKPOINT_FILE
from phases.training.train import TrainingState


class Checkpoint:
    def __init__(self, folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rows: list[dict[str, Any]]):
        """`rows` is the run's list of metric rows, saved with the weights so a resumed run writes them all."""
        self.path = folder / CHECKPOINT_FILE
        self.model, self.optimizer, self.rows = model, optimizer, rows

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self, device: torch.device) -> TrainingState:
        """Restore the model, the optimizer and the rows so far; returns the training loop's state."""
        # Our own file, written atomically: it holds the loop state and the metric rows so far.
        checkpoint = torch.load(self.path, map_location=device, weights_only=False)
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.rows[:] = checkpoint["rows"]
        return checkpoint["state"]

    def save(self, state: TrainingState) -> None:
        payload = {"state": state, "rows": self.rows, "model": self.model.state_dict(),
                   "optimizer": self.optimizer.state_dict()}
        write_atomically(self.path, lambda temporary: torch.save(payload, temporary))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
