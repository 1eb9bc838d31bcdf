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
from phases.device import autocast, uses_channels_last
from phases.schedule import evaluation_steps


class DivergenceError(RuntimeError):
    """The training loss stopped being a finite number."""


@dataclass
class TrainingTimes:
    training_seconds: float = 0.0  # forward, backward and update steps
    evaluation_seconds: float = 0.0  # everything done at evaluation steps: classifier metrics and probes


class TrainingStep:
    """One update on one batch: the same code on CPU (float32) and CUDA (bf16 autocast, channels_last)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
        self.model, self.optimizer, self.device = model, optimizer, device
        self.channels_last = uses_channels_last(device)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The batch's loss, detached and left on the device (reading it would wait for the GPU)."""
        if self.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device):
            loss = F.cross_entropy(self.model(images), labels)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


# Reading the loss makes the host wait for the GPU: do it every this many steps, not every step.
LOSS_READ_INTERVAL = 25


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
    step_once = TrainingStep(model, optimizer, images.device)
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
        loss = step_once(images[batch], labels[batch])
        if step % LOSS_READ_INTERVAL == 0 or step + 1 == schedule.max_steps:
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise DivergenceError(f"training loss became {loss_value} at step {step}")
            bar.set_postfix(loss=f"{loss_value:.3f}", test_accuracy=f"{test_accuracy:.3f}", refresh=False)
        if step_once.device.type == "cuda" and step + 1 in scheduled:
            torch.cuda.synchronize()  # so the training time excludes nothing queued before an evaluation
        times.training_seconds += time.perf_counter() - started
        bar.update(1)
    bar.close()
    return times
