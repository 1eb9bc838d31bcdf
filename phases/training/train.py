"""The training loop: SGD on device tensors, evaluations at the scheduled steps."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from phases.training.data import ImageSplits
from phases.training.device import autocast, uses_channels_last
from phases.training.schedule import evaluation_steps


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


class Interrupted(Exception):
    """A stop was requested (SIGINT or SIGTERM); the state was checkpointed first, so a rerun resumes."""


@dataclass
class TrainingState:
    """Where the loop stands: with the model and optimizer states, all a resumed run needs to continue
    exactly as an uninterrupted one would."""

    step: int = 0  # the next step to process
    evaluated: bool = False  # whether `step`'s scheduled evaluation is already recorded
    position: int = 0  # images of the current epoch's order already used
    order: torch.Tensor | None = None  # the current epoch's order of the training images
    order_generator_state: torch.Tensor | None = None
    test_accuracy: float = float("nan")  # last measured, for the progress bar
    times: TrainingTimes = field(default_factory=TrainingTimes)

    def as_plain(self) -> dict[str, Any]:
        """The state as tensors, numbers and dicts: what `torch.load(weights_only=True)` reads back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_plain(cls, plain: Any, max_steps: int, training_images: int) -> TrainingState:
        """Rebuild a state saved by `as_plain`; ValueError when `plain` is not one, or does not fit a
        run of `max_steps` updates on `training_images` images (train() would fail on it, every rerun)."""
        expected = {entry.name for entry in dataclasses.fields(cls)}
        if not isinstance(plain, dict) or set(plain) != expected:
            raise ValueError(f"the training state needs exactly the keys {sorted(expected)}")
        times = plain["times"]
        if not isinstance(times, dict) or set(times) != {entry.name for entry in dataclasses.fields(TrainingTimes)} \
                or not all(isinstance(value, float) for value in times.values()):
            raise ValueError("the training state's times are not the training and evaluation seconds")
        order, generator_state = plain["order"], plain["order_generator_state"]
        fits = {
            "step": _is_integer(plain["step"]) and 0 <= plain["step"] <= max_steps,
            "evaluated": isinstance(plain["evaluated"], bool),
            "position": _is_integer(plain["position"]) and 0 <= plain["position"] <= training_images,
            "order": isinstance(order, torch.Tensor) and order.dtype == torch.int64
            and order.shape == (training_images,),
            "order_generator_state": isinstance(generator_state, torch.Tensor)
            and generator_state.dtype == torch.uint8 and generator_state.shape == GENERATOR_STATE_SHAPE,
            "test_accuracy": isinstance(plain["test_accuracy"], float),
        }
        wrong = [name for name, fitting in fits.items() if not fitting]
        if wrong:
            raise ValueError(f"the training state's {', '.join(wrong)} do not fit this run "
                             f"({max_steps} steps, {training_images} training images)")
        return cls(**{**plain, "order": order.cpu(), "order_generator_state": generator_state.cpu(),
                      "times": TrainingTimes(**times)})


# The shape of a CPU generator's state, which the data order's generator restores.
GENERATOR_STATE_SHAPE = torch.Generator().get_state().shape


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class StageClock:
    """Seconds of probing per task (the activations pass, each probe, each output metric, the metrics file),
    summed over the evaluations it times: a stage lasts until the next one starts or `stop`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.task: str | None = None
        self.since = 0.0

    def start(self, task: str | None) -> None:
        """End the running stage, if any, and start `task`'s (None: no stage runs until the next start)."""
        now = time.perf_counter()
        if self.task is not None:
            self.seconds[self.task] = self.seconds.get(self.task, 0.0) + now - self.since
        self.task, self.since = task, now

    def stop(self) -> None:
        self.start(None)

    def showing(self, show: Callable[[str], None]) -> Callable[[Any], None]:
        """`show` for an Evaluator: each stage (an EvaluationStage) is timed under its task and displayed."""

        def timed(stage: Any) -> None:
            self.start(stage.task)
            show(str(stage))

        return timed


def probing_display(bar: tqdm, step: int) -> Callable[[str], None]:
    """Show `doing` before the bar while the evaluation of `step` runs (a redraw: microseconds, once
    per probe fit; nothing when the bar is disabled)."""
    return lambda doing: bar.set_description_str(f"probing step {step}: {doing}")


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    splits: ImageSplits,
    schedule: DictConfig,
    seed: int,
    evaluate: Callable[[int, float, Callable[[str], None]], float | None],
    save_checkpoint: Callable[[TrainingState], None] = lambda state: None,
    state: TrainingState | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    progress: bool = True,
    log_loss: Callable[[int, float], None] = lambda step, loss: None,
) -> TrainingState:
    """Run `schedule.max_steps` updates from `state` (or from scratch); call `evaluate(step, epoch, show)`
    before the update of each scheduled step and after the last update (it may return the test
    accuracy to display; `show(doing)` puts what it is doing on the progress bar), `save_checkpoint(state)`
    after each evaluation and before stopping, and `log_loss(step, loss)` whenever the loss is read."""
    images, labels = splits.train_images, splits.train_labels
    total, batch_size = len(labels), schedule.batch_size
    step_once = TrainingStep(model, optimizer, images.device)
    # The data order has its own generator so it does not depend on how many random numbers
    # model initialisation or the probes consumed.
    order_generator = torch.Generator().manual_seed(seed)
    if state is None:
        state = TrainingState(order=torch.randperm(total, generator=order_generator))
    else:
        order_generator.set_state(state.order_generator_state)
    order = state.order.to(images.device)
    scheduled = set(evaluation_steps(schedule.max_steps))
    checkpoint_interval = schedule.checkpoint_minutes * 60
    last_checkpoint = time.monotonic()
    model.train()
    bar = tqdm(total=schedule.max_steps, initial=state.step, disable=not progress, unit="step", dynamic_ncols=True)
    for step in range(state.step, schedule.max_steps + 1):
        state.step = step
        if step in scheduled and not state.evaluated:
            started = time.perf_counter()
            # Probing every layer can take most of a run: the bar says which layer and probe it is at.
            displayed = evaluate(step, step * batch_size / total, probing_display(bar, step))
            bar.set_description_str("", refresh=False)
            state.times.evaluation_seconds += time.perf_counter() - started
            state.test_accuracy = state.test_accuracy if displayed is None else displayed
            state.evaluated = True
            state.order_generator_state = order_generator.get_state()
            save_checkpoint(state)
            last_checkpoint = time.monotonic()
        if step == schedule.max_steps:
            break
        if stop_requested() or time.monotonic() - last_checkpoint >= checkpoint_interval:
            state.order_generator_state = order_generator.get_state()
            save_checkpoint(state)
            last_checkpoint = time.monotonic()
            if stop_requested():
                raise Interrupted(f"stopped before step {step}; checkpoint saved")
        started = time.perf_counter()
        if state.position + batch_size > total:  # a new epoch: reshuffle, drop the incomplete last batch
            state.order = torch.randperm(total, generator=order_generator)
            order = state.order.to(images.device)
            state.position = 0
        batch = order[state.position : state.position + batch_size]
        state.position += batch_size
        loss = step_once(images[batch], labels[batch])
        if step % LOSS_READ_INTERVAL == 0 or step + 1 == schedule.max_steps:
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise DivergenceError(f"training loss became {loss_value} at step {step}")
            log_loss(step, loss_value)
            bar.set_postfix(loss=f"{loss_value:.3f}", test_accuracy=f"{state.test_accuracy:.3f}", refresh=False)
        if step_once.device.type == "cuda" and step + 1 in scheduled:
            torch.cuda.synchronize()  # so the training time excludes nothing queued before an evaluation
        state.times.training_seconds += time.perf_counter() - started
        state.evaluated = False
        bar.update(1)
    bar.close()
    return state
