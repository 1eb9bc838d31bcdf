"""How fast one configuration runs on this machine: the rates a sweep's cost estimate is made of.

A calibration is a short piece of the run itself, in this process: the data loaded and the model built as
the run would, a few hundred milliseconds of the real training loop (phases.training.train, with its
per-step bookkeeping), and two real evaluations at initialisation (the first also chooses what a probe
chooses once per run, e.g. the decoder's ridge by cross-validation; the second is what every later
evaluation costs). Nothing is written into the outputs but the rates (phases.store.cost caches them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from phases.config.validation import download_allowed
from phases.training.data import ImageSplits, dataset_info
from phases.training.device import place_model, resolve_device
from phases.training.evaluation import Evaluator, check_enabled
from phases.training.execute import load_datasets, seed_everything
from phases.training.models import build_model
from phases.training.optimizers import build_optimizer
from phases.training.probes import OWN_DATASET, build_probes, probe_datasets
from phases.training.train import train

# The training loop is timed over at least this long (and this many steps), so that per-step rates are
# not those of the first, slower steps alone (allocations, kernel choices) nor of timer noise.
MINIMUM_TRAINING_SECONDS = 1.0
FIRST_TRAINING_STEPS = 8


@dataclass(frozen=True)
class Rates:
    """Seconds one configuration takes on one machine, per part of a run."""

    setup_s: float  # data loaded (or generated), model built and placed
    step_s: float  # one training update in the real loop
    first_evaluation_s: float  # the run's first evaluation (with what probes choose once per run)
    evaluation_s: float  # each later evaluation


def measure_rates(cfg: DictConfig) -> Rates:
    """Time the parts of `cfg`'s run on this machine (threads as torch has them now)."""
    started = time.perf_counter()
    info = dataset_info(cfg.dataset)
    check_enabled(list(cfg.probe.enabled))
    seed_everything(cfg.seed)
    model = build_model(cfg.arch, info, download=download_allowed(cfg.dataset.download))
    probes = build_probes(cfg.probe, cfg.seed, info)
    device = resolve_device(cfg.device)
    datasets = load_datasets(cfg, device, *probe_datasets(cfg.dataset, probes))
    model = place_model(model, device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    setup_s = time.perf_counter() - started

    evaluator = Evaluator(model, datasets, probes, cfg.probe, cfg.seed, cfg.schedule.batch_size)
    evaluations = []
    for _ in range(2):
        started = time.perf_counter()
        evaluator()
        evaluations.append(time.perf_counter() - started)
    return Rates(setup_s, training_step_seconds(cfg, model, optimizer, datasets), *evaluations)


def training_step_seconds(cfg: DictConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                          datasets: dict[str, ImageSplits]) -> float:
    """Seconds per update of the real training loop (its evaluations made free), over a run long
    enough to time: steps doubled until the loop took MINIMUM_TRAINING_SECONDS or the run's own length."""
    steps = min(FIRST_TRAINING_STEPS, cfg.schedule.max_steps)
    while True:
        schedule = OmegaConf.merge(cfg.schedule, {"max_steps": steps})
        state = train(model, optimizer, datasets[OWN_DATASET], schedule, cfg.seed,
                      evaluate=lambda step, epoch, show: None, progress=False)
        if state.times.training_seconds >= MINIMUM_TRAINING_SECONDS or steps >= cfg.schedule.max_steps:
            return state.times.training_seconds / steps
        steps = min(steps * 4, cfg.schedule.max_steps)
