"""One run from its config to its folder: check, load, train, measure, record.

Everything that can be wrong with the input is checked before any folder is written. The run folder
is locked while a process works in it; a finished run is skipped; an unfinished one resumes from its
checkpoint. run.json says at every moment what the run is doing or did (phases.store.record).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from phases.config.options import dataset_option
from phases.config.validation import ConfigError, check_probe_layers, download_allowed, require, validate
from phases.store.files import remove_temporary_files, writable_folder_problem, write_text
from phases.store.identity import optimizer_name, run_id
from phases.store.metrics import write_metrics
from phases.store.record import CONFIG_FILE, METRICS_FILE, RECORD_FILE, RunRecord, RunStatus, now, run_folder, run_lock
from phases.training.checkpoint import Checkpoint
from phases.training.data import DataNotFoundError, ImageSplits, dataset_info, load_image_splits
from phases.training.device import place_model, resolve_device
from phases.training.evaluation import Evaluator, check_activation_memory, check_calibration_memory, check_enabled
from phases.training.loggers import check_logger, metric_mirror
from phases.training.models import ProbedNetwork, build_model
from phases.training.optimizers import build_optimizer
from phases.training.probes import (
    COMPLEMENT_CLASSES,
    OWN_DATASET,
    TRANSFER_PARTNER,
    Probe,
    build_probes,
    probe_datasets,
)
from phases.training.provenance import cluster_job, provenance
from phases.training.run_log import open_run_log, run_logging
from phases.training.train import Interrupted, StageClock, TrainingState, train

# What execute() reports besides a finished run: nothing was run by this process.
SKIPPED, LOCKED = "skipped", "locked"
LOGGER = logging.getLogger(__name__)  # the terminal and run.log (phases.training.run_log)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_datasets(cfg: DictConfig, device: torch.device, partner: str | None,
                  complement: list[int] | None = None) -> dict[str, ImageSplits]:
    """The run's dataset and, when a probe reads it (dataset-switch transfer), its `partner` (with its own
    normalisation and the run's subset sizes); a missing one stops the run before anything is written.
    With `complement` (class-switch transfer), also the run's dataset on those classes, same sizes rule."""
    datasets = {OWN_DATASET: load_image_splits(cfg.dataset, cfg.paths, cfg.seed, device)}
    if complement is not None:
        complement_cfg = OmegaConf.merge(cfg.dataset, {"class_subset": complement})
        datasets[COMPLEMENT_CLASSES] = load_image_splits(complement_cfg, cfg.paths, cfg.seed, device)
    if partner is None:
        return datasets
    partner_cfg = dataset_option(partner)
    partner_cfg.train_size, partner_cfg.test_size = cfg.dataset.train_size, cfg.dataset.test_size
    partner_cfg.download = cfg.dataset.download  # a run told to stay offline stays offline for both
    try:
        datasets[TRANSFER_PARTNER] = load_image_splits(partner_cfg, cfg.paths, cfg.seed, device)
    except DataNotFoundError as error:
        raise DataNotFoundError(f"probe.transfer.tasks includes dataset_switch, which needs {partner}: {error}") \
            from error
    return datasets


def check_batch_statistics(model: ProbedNetwork, cfg: DictConfig) -> None:
    """BatchNorm in training mode cannot normalise a batch of one image whose feature map is 1x1."""
    if any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules()):
        require(cfg.schedule.batch_size >= 2, "schedule.batch_size", cfg.schedule.batch_size,
                f"at least 2 images: arch {cfg.arch.name} normalises with batch statistics (BatchNorm)")


def already_done(cfg: DictConfig, folder: Path) -> bool:
    record = RunRecord.find(folder)
    done = record is not None and record.status == RunStatus.done and not cfg.force
    if done:
        LOGGER.info(f"run {folder.name} is already done: {folder} (add force=true to rerun it)")
    return done


def execute(cfg: DictConfig, job_number: int = 0) -> RunRecord | str:
    """Run (or skip) one configuration: its final RunRecord, or SKIPPED / LOCKED. `job_number` is the
    job's number in a sweep (it picks the GPU of a local sweep). The run's lines go to its run.log until
    the end of this call, or of the caller's enclosing run_logging block."""
    with run_logging():
        return checked_execute(cfg, job_number)


def checked_execute(cfg: DictConfig, job_number: int) -> RunRecord | str:
    validate(cfg)  # every key and range, before anything is built from them
    check_logger(cfg)
    info = dataset_info(cfg.dataset)
    seed_everything(cfg.seed)
    # Pretrained weights (arch=torchvision arch.weights=...) obey the run's offline rule, as its data does.
    model = build_model(cfg.arch, info, download=download_allowed(cfg.dataset.download))
    check_probe_layers(cfg, model.selectable_points())
    check_batch_statistics(model, cfg)
    check_enabled(list(cfg.probe.enabled))
    probes = build_probes(cfg.probe, cfg.seed, info)
    partner, complement = probe_datasets(cfg.dataset, probes)
    device = resolve_device(cfg.device, job_number)
    folder = run_folder(cfg.paths.outputs, run_id(cfg))
    if already_done(cfg, folder):
        return SKIPPED
    problem = writable_folder_problem(folder.parent)
    if problem:
        raise ConfigError("paths.outputs", cfg.paths.outputs, f"a folder this user can write ({problem})")
    datasets = load_datasets(cfg, device, partner, complement)
    probed_gb = check_activation_memory(model, datasets, cfg.probe)
    check_calibration_memory(model, datasets[OWN_DATASET], cfg.probe, probed_gb)
    training_images = len(datasets[OWN_DATASET].train_labels)
    if cfg.schedule.batch_size > training_images:
        raise ConfigError("schedule.batch_size", cfg.schedule.batch_size,
                          f"at most the {training_images} training images")

    with run_lock(folder) as locked:
        if not locked:
            LOGGER.info(f"run {folder.name} is being run by another process right now: skipped ({folder})")
            return LOCKED
        if already_done(cfg, folder):  # finished by another process while this one loaded the data
            return SKIPPED
        return train_and_probe(cfg, model, datasets, probes, device, folder)


def train_and_probe(cfg: DictConfig, model: ProbedNetwork, datasets: dict[str, ImageSplits], probes: list[Probe],
                    device: torch.device, folder: Path) -> RunRecord:
    """Train and measure in `folder` (locked by the caller), resuming from its checkpoint if it has a
    usable one. Whatever stops it from here on is recorded in run.json: interrupted (SIGINT, SIGTERM)
    or failed with the traceback; when run.json itself cannot be written, one line on stderr says so."""
    open_run_log(folder)
    LOGGER.info(f"run {folder.name} started on {device}: {cfg.schedule.max_steps} steps, writing to {folder}")
    record = RunRecord(run_id=folder.name, status=RunStatus.running, command=sys.argv,
                       sweep=os.environ.get("PHASES_SWEEP"),  # set by phases.sweep (make sweep-<name>)
                       data_source=datasets[OWN_DATASET].source, started_at=now())
    started = time.perf_counter()
    try:
        with stop_on_signals() as stop_requested:
            checkpoint, state = attempt(cfg, model, datasets, probes, device, folder, record, stop_requested)
        record.status, record.ended_at = RunStatus.done, now()
        record.wall_time_s = round(time.perf_counter() - started, 3)
        # Summed over every attempt when the run was resumed.
        record.training_time_s = round(state.times.training_seconds, 3)
        record.probing_time_s = round(state.times.evaluation_seconds, 3)
        record.write(folder)
    except BaseException as error:
        record.stop(error, isinstance(error, (Interrupted, KeyboardInterrupt)), round(time.perf_counter() - started, 3))
        problem = record.write_or_explain(folder)
        if problem:
            LOGGER.error(f"error: {problem}")
        # For the front door's message (record_failure): what became of this error in run.json.
        error.run_record = "not recorded: run.json could not be written" if problem \
            else f"recorded in {folder / RECORD_FILE}"
        raise
    checkpoint.remove()  # the metrics are final: nothing left to resume
    LOGGER.info(f"run {folder.name} done in {record.wall_time_s:.0f} s (training {record.training_time_s:.0f} s, "
                f"probing {record.probing_time_s:.0f} s): {folder}")
    return record


def attempt(cfg: DictConfig, model: ProbedNetwork, datasets: dict[str, ImageSplits], probes: list[Probe],
            device: torch.device, folder: Path, record: RunRecord,
            stop_requested: Callable[[], bool]) -> tuple[Checkpoint, TrainingState]:
    """train_and_probe's work: from a fresh start or the checkpoint to the last evaluation."""
    metrics_path = folder / METRICS_FILE
    record.provenance = provenance(str(device))
    model = place_model(model, device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    rows: list[dict[str, Any]] = []
    checkpoint = Checkpoint(folder, model, optimizer, rows)
    state = start_or_resume(cfg, checkpoint, folder, device, record, len(datasets[OWN_DATASET].train_labels))
    write_text(folder / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    record.write(folder)

    evaluator = Evaluator(model, datasets, probes, cfg.probe, cfg.seed, cfg.schedule.batch_size)
    evaluator.restore(rows)  # a resumed run's rows: what its probes chose at the first evaluation
    identity = {"run_id": folder.name, "dataset": cfg.dataset.name, "arch": cfg.arch.name,
                "optimizer": optimizer_name(cfg), "seed": cfg.seed}
    clock = StageClock()
    with metric_mirror(cfg, folder, 0 if state is None else state.step, rows) as mirror:

        def evaluate(step: int, epoch: float, show: Callable[[str], None]) -> float:
            started = time.perf_counter()
            measured = evaluator(clock.showing(show))
            clock.start("metrics file")
            new_rows = [{**identity, "step": step, "epoch": epoch, **row} for row in measured]
            rows.extend(new_rows)
            # Rewritten whole after every evaluation: a reader sees the steps so far, never a partial file.
            write_metrics(metrics_path, rows)
            record.steps_evaluated = step
            mirror.log_rows(new_rows)
            clock.stop()
            accuracy = next(row["value"] for row in measured
                            if row["probe"] == "classifier" and row["metric"] == "accuracy" and row["split"] == "test")
            LOGGER.info(f"run {folder.name}: step {step} evaluated in {time.perf_counter() - started:.1f} s, "
                        f"test accuracy {accuracy:.3f}")
            return accuracy

        state = train(model, optimizer, datasets[OWN_DATASET], cfg.schedule, cfg.seed, evaluate, checkpoint.save,
                      state, stop_requested, progress=cfg.progress, log_loss=mirror.log_loss)
    record.probing_time_by_task_s = {task: round(seconds, 3) for task, seconds in clock.seconds.items()}
    return checkpoint, state


def start_or_resume(cfg: DictConfig, checkpoint: Checkpoint, folder: Path, device: torch.device, record: RunRecord,
                    training_images: int) -> TrainingState | None:
    """Clear what killed attempts leave, then the checkpoint's state (model, optimizer and rows
    restored), or None to start from scratch: there is none, force=true, or it was not usable."""
    removed = remove_temporary_files(folder)
    if removed:
        LOGGER.info(f"run {folder.name}: removed the temporary files of interrupted writes: {', '.join(removed)}")
    if cfg.force:
        checkpoint.remove()
    previous = RunRecord.find(folder)
    state = checkpoint.resume(device, cfg.schedule.max_steps, training_images)
    if checkpoint.rejected:
        record.rejected_checkpoint = checkpoint.rejected
        LOGGER.warning(f"warning: run {folder.name}: its checkpoint could not be used and was moved aside "
                       f"({checkpoint.rejected}); starting again from step 0")
    if state is None:
        (folder / METRICS_FILE).unlink(missing_ok=True)  # left by an attempt killed before its first checkpoint
        return None
    LOGGER.info(f"run {folder.name}: resuming from its checkpoint at step {state.step}")
    record.resumed_from_step = state.step
    # A checkpoint rejected by an earlier attempt stays in the run's record while the run goes on from it.
    record.rejected_checkpoint = previous.rejected_checkpoint if previous else None
    return state


@contextmanager
def stop_on_signals():
    """While the block runs, SIGINT (Ctrl-C) and SIGTERM (kill, scancel, a local launcher's timeout) ask
    the training loop to checkpoint and stop at the next step instead of dying mid-step or mid-write. A
    second signal stops at once (KeyboardInterrupt): the last checkpoint stands, so that is resumable too."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield requested.is_set
        return

    def request_stop(number: int, _frame: Any) -> None:
        name = signal.Signals(number).name
        if requested.is_set():
            raise KeyboardInterrupt(f"a second {name}")
        requested.set()
        # os.write, not print: the handler may run while the progress bar is writing to sys.stderr.
        os.write(2, f"{name}: stopping at the next step after a checkpoint; send it again to stop now\n".encode())

    # An ignored SIGINT stays ignored: a shell starts background jobs that way so that Ctrl-C spares them.
    handled = [number for number in (signal.SIGINT, signal.SIGTERM)
               if number == signal.SIGTERM or signal.getsignal(number) is not signal.SIG_IGN]
    previous = {number: signal.signal(number, request_stop) for number in handled}
    try:
        yield requested.is_set
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def record_failure(cfg: DictConfig, error: BaseException, write: bool) -> str | None:
    """What became of `error` in the run's run.json, for the front door's error line: recorded by the
    run itself (train_and_probe), or, with `write` (a sweep, whose summary reads run.json), recorded now
    for a run that never started, unless its run.json keeps an earlier attempt's resumable state."""
    outcome = getattr(error, "run_record", None)
    if outcome is not None or not write:
        return outcome
    try:
        folder = run_folder(cfg.paths.outputs, run_id(cfg))
    except Exception:  # noqa: BLE001 - a config too broken to name its run has nowhere to be recorded
        return "not recorded: the config names no run folder"
    existing = RunRecord.find(folder)
    if existing is not None and existing.status != RunStatus.failed:
        return f"not recorded: {folder / RECORD_FILE} keeps the status {existing.status.value} of an earlier attempt"
    record = RunRecord(run_id=folder.name, status=RunStatus.failed, provenance=cluster_job())
    record.stop(error, interrupted=False)
    problem = record.write_or_explain(folder)
    if problem:
        return f"not recorded: {problem}"
    open_run_log(folder)  # the front door's error line, with its traceback, goes beside run.json too
    return f"recorded in {folder / RECORD_FILE}"
