"""One run from its config to its folder: check, load, train, measure, record.

Everything that can be wrong with the input is checked before any folder is written. The run folder
is locked while a process works in it; a finished run is skipped; an unfinished one resumes from its
checkpoint. run.json says at every moment what the run is doing or did (phases.store.record).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from phases.config.options import dataset_option
from phases.config.validation import ConfigError, validate
from phases.store.files import write_text
from phases.store.identity import optimizer_name, run_id
from phases.store.metrics import write_metrics
from phases.store.record import CONFIG_FILE, METRICS_FILE, RunRecord, RunStatus, now, run_folder, run_lock
from phases.training.checkpoint import Checkpoint
from phases.training.data import DataNotFoundError, ImageSplits, dataset_info, load_image_splits, transfer_partner
from phases.training.device import place_model, resolve_device
from phases.training.evaluation import Evaluator, check_activation_memory, check_enabled
from phases.training.models import ProbedNetwork, build_model
from phases.training.probes import OWN_DATASET, TRANSFER_PARTNER, Probe, build_probes
from phases.training.provenance import provenance
from phases.training.train import Interrupted, TrainingState, train

# What execute() reports besides a finished run: nothing was run by this process.
SKIPPED, LOCKED = "skipped", "locked"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_datasets(cfg: DictConfig, device: torch.device, probe_datasets: set[str]) -> dict[str, ImageSplits]:
    """The run's dataset and, when a probe reads it (dataset-switch transfer), its partner (with its own
    normalisation and the run's subset sizes); a missing one stops the run before anything is written."""
    datasets = {OWN_DATASET: load_image_splits(cfg.dataset, cfg.paths, cfg.seed, device)}
    if TRANSFER_PARTNER not in probe_datasets:
        return datasets
    partner = transfer_partner(cfg.dataset.name)
    partner_cfg = dataset_option(partner)
    partner_cfg.train_size, partner_cfg.test_size = cfg.dataset.train_size, cfg.dataset.test_size
    try:
        datasets[TRANSFER_PARTNER] = load_image_splits(partner_cfg, cfg.paths, cfg.seed, device)
    except DataNotFoundError as error:
        raise DataNotFoundError(f"probe.transfer.tasks includes dataset_switch, which needs {partner}: {error}") \
            from error
    return datasets


def already_done(cfg: DictConfig, folder: Path) -> bool:
    record = RunRecord.find(folder)
    done = record is not None and record.status == RunStatus.done and not cfg.force
    if done:
        print(f"run {folder.name} is already done: {folder} (add force=true to rerun it)")
    return done


def execute(cfg: DictConfig, job_number: int = 0) -> RunRecord | str:
    """Run (or skip) one configuration: its final RunRecord, or SKIPPED / LOCKED. `job_number` is the
    job's number in a sweep (it picks the GPU of a local sweep)."""
    info = dataset_info(cfg.dataset)
    seed_everything(cfg.seed)
    model = build_model(cfg.arch, info)
    validate(cfg, model.selectable_points())
    check_enabled(list(cfg.probe.enabled))
    probes = build_probes(cfg.probe, cfg.seed, info)
    probe_datasets = {probe.dataset for probe in probes}
    if TRANSFER_PARTNER in probe_datasets:
        transfer_partner(cfg.dataset.name)  # a dataset without a partner fails here, before any folder
    device = resolve_device(cfg.device, job_number)
    folder = run_folder(cfg.paths.outputs, run_id(cfg))
    if already_done(cfg, folder):
        return SKIPPED
    datasets = load_datasets(cfg, device, probe_datasets)
    check_activation_memory(model, datasets, cfg.probe)
    training_images = len(datasets[OWN_DATASET].train_labels)
    if cfg.schedule.batch_size > training_images:
        raise ConfigError("schedule.batch_size", cfg.schedule.batch_size,
                          f"at most the {training_images} training images")

    with run_lock(folder) as locked:
        if not locked:
            print(f"run {folder.name} is being run by another process right now: skipped ({folder})")
            return LOCKED
        if already_done(cfg, folder):  # finished by another process while this one loaded the data
            return SKIPPED
        return train_and_probe(cfg, model, datasets, probes, device, folder)


def train_and_probe(cfg: DictConfig, model: ProbedNetwork, datasets: dict[str, ImageSplits], probes: list[Probe],
                    device: torch.device, folder: Path) -> RunRecord:
    """Train and measure in `folder` (locked by the caller), resuming from its checkpoint if it has one."""
    metrics_path = folder / METRICS_FILE
    model = place_model(model, device)
    optimizer = hydra.utils.instantiate(cfg.optimizer, params=model.parameters())
    rows: list[dict[str, Any]] = []
    checkpoint = Checkpoint(folder, model, optimizer, rows)
    if cfg.force:
        checkpoint.remove()
    state = None
    if checkpoint.exists():
        state = checkpoint.load(device)
        print(f"run {folder.name}: resuming from its checkpoint at step {state.step}")
    else:
        metrics_path.unlink(missing_ok=True)  # left by an attempt killed before its first checkpoint
    write_text(folder / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    record = RunRecord(run_id=folder.name, status=RunStatus.running, command=sys.argv,
                       sweep=os.environ.get("PHASES_SWEEP"),  # set by phases.sweep (make sweep-<name>)
                       data_source=datasets[OWN_DATASET].source, started_at=now(),
                       resumed_from_step=None if state is None else state.step, provenance=provenance(str(device)))
    record.write(folder)
    started = time.perf_counter()

    evaluator = Evaluator(model, datasets, probes, cfg.probe, cfg.seed, cfg.schedule.batch_size)
    identity = {"run_id": folder.name, "dataset": cfg.dataset.name, "arch": cfg.arch.name,
                "optimizer": optimizer_name(cfg), "seed": cfg.seed}

    def evaluate(step: int, epoch: float) -> float:
        measured = evaluator()
        rows.extend({**identity, "step": step, "epoch": epoch, **row} for row in measured)
        # Rewritten whole after every evaluation: a reader sees the steps so far, never a partial file.
        write_metrics(metrics_path, rows)
        record.steps_evaluated = step
        return next(row["value"] for row in measured
                    if row["probe"] == "classifier" and row["metric"] == "accuracy" and row["split"] == "test")

    def save_checkpoint(training_state: TrainingState) -> None:
        checkpoint.save(training_state)

    try:
        with stop_on_signals() as stop_requested:
            state = train(model, optimizer, datasets[OWN_DATASET], cfg.schedule, cfg.seed, evaluate, save_checkpoint,
                          state, stop_requested, progress=cfg.progress)
    except BaseException as error:
        record.status = RunStatus.interrupted if isinstance(error, Interrupted) else RunStatus.failed
        record.error = f"{type(error).__name__}: {error}"
        record.ended_at, record.wall_time_s = now(), round(time.perf_counter() - started, 3)
        record.write(folder)
        raise
    record.status, record.ended_at = RunStatus.done, now()
    record.wall_time_s = round(time.perf_counter() - started, 3)
    # Summed over every attempt when the run was resumed.
    record.training_time_s = round(state.times.training_seconds, 3)
    record.probing_time_s = round(state.times.evaluation_seconds, 3)
    record.write(folder)
    checkpoint.remove()  # the metrics are final: nothing left to resume
    print(f"run {folder.name} done in {record.wall_time_s:.0f} s (training {record.training_time_s:.0f} s, "
          f"probing {record.probing_time_s:.0f} s): {folder}")
    return record


@contextmanager
def stop_on_signals():
    """While the block runs, SIGTERM (kill, scancel, a local launcher's timeout) asks the training loop
    to checkpoint and stop at the next step instead of dying mid-step."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield requested.is_set
        return
    previous = signal.signal(signal.SIGTERM, lambda _signal, _frame: requested.set())
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)


def record_failure_before_start(cfg: DictConfig, error: Exception) -> None:
    """In a sweep, a job whose input is wrong leaves a run.json saying why, so the sweep's summary
    can report it; nothing else is written for it."""
    try:
        folder = run_folder(cfg.paths.outputs, run_id(cfg))
    except Exception:  # noqa: BLE001 - a config too broken to name its run has nowhere to be recorded
        return
    existing = RunRecord.find(folder)
    if existing is None or existing.status == RunStatus.failed:
        RunRecord(run_id=folder.name, status=RunStatus.failed, ended_at=now(),
                  error=f"{type(error).__name__}: {error}").write(folder)
