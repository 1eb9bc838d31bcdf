"""The training loop: SGD on device tensors, evaluations at the scheduled steps."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from phases.data import ImageSplits
from phases.schedule import evaluation_steps


class DivergenceError(RuntimeError):
    """The training loss stopped being a finite number."""


@dataclass
class TrainingTimes:
    training_seconds: float = 0.0  # forward, backward and update steps
    evaluation_seconds: float = 0.0  # everything done at evaluation steps: classifier metrics and probes


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    splits: ImageSplits,
    schedule: DictConfig,
    seed: int,
    evaluate: Callable[[int, float], float | None],
    progress: bool = True,
) -> TrainingTimes:
    """Run `schedule.max_steps` updates; call `evaluate(step, epoch)` before the update of each
    scheduled step and after the last update. `evaluate` may return the test accuracy to display."""
    images, labels = splits.train_images, splits.train_labels
    total, batch_size = len(labels), schedule.batch_size
    # The data order has its own generator so it does not depend on how many random numbers
    # model initialisation or the probes consumed.
    order_generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(total, generator=order_generator).to(images.device)
    position = 0
    scheduled = set(evaluation_steps(schedule.max_steps))
    times = TrainingTimes()
    test_accuracy = float("nan")
    model.train()
    bar = tqdm(total=schedule.max_steps, disable=not progress, unit="step", dynamic_ncols=True)
    for step in range(schedule.max_steps + 1):
        if step in scheduled:
            started = time.perf_counter()
            displayed = evaluate(step, step * batch_size / total)
            times.evaluation_seconds += time.perf_counter() - started
            if displayed is not None:
                test_accuracy = displayed
        if step == schedule.max_steps:
            break
        started = time.perf_counter()
        if position + batch_size > total:  # a new epoch: reshuffle, drop the incomplete last batch
            order = torch.randperm(total, generator=order_generator).to(images.device)
            position = 0
        batch = order[position : position + batch_size]
        position += batch_size
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        loss.backward()
        optimizer.step()
        loss_value = loss.item()
        times.training_seconds += time.perf_counter() - started
        if not math.isfinite(loss_value):
            raise DivergenceError(f"training loss became {loss_value} at step {step}")
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", test_accuracy=f"{test_accuracy:.3f}", refresh=False)
    bar.close()
    return times
