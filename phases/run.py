"""Train one classifier and measure its learning phases; the Hydra entry point.

    python -m phases.run                                   # Fashion-MNIST, VGG-8, 2048 steps on CPU
    python -m phases.run schedule.max_steps=256 seed=1     # overrides
    python -m phases.run -m seed=0,1,2                     # a sweep: one run per seed
    python -m phases.run --cfg job                         # print the composed config, run nothing

Results go to <paths.outputs>/runs/<run_id>/ (metrics.parquet, config.yaml, run.json).
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
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from phases import store
from phases.config import ConfigError, dataset_option, optimizer_name, validate
from phases.data import DataFormatError, DataNotFoundError, ImageSplits, dataset_info, load_image_splits
from phases.device import place_model, resolve_device
from phases.evaluation import Evaluator, check_activation_memory
from phases.models import build_model
from phases.probes.transfer import DATASET_SWITCH
from phases.train import Interrupted, TrainingState, train


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_switch_dataset(cfg: DictConfig, device: torch.device) -> ImageSplits | None:
    """The paired dataset of a dataset_switch transfer probe, with its own normalisation and the
    run's subset sizes; its absence stops the run before anything is written."""
    if "transfer" not in cfg.probe.enabled or "dataset_switch" not in cfg.probe.transfer.tasks:
        return None
    other = DATASET_SWITCH.get(cfg.dataset.name)
    if other is None:
        raise ConfigError("probe.transfer.tasks", "dataset_switch",
                          f"datasets with a partner: {', '.join(f'{a} -> {b}' for a, b in DATASET_SWITCH.items())}")
    other_cfg = dataset_option(other)
    other_cfg.train_size, other_cfg.test_size = cfg.dataset.train_size, cfg.dataset.test_size
    try:
        return load_image_splits(other_cfg, cfg.paths, cfg.seed, device)
    except DataNotFoundError as error:
        message = f"probe.transfer.tasks includes dataset_switch, which needs {other}: {error}"
        raise DataNotFoundError(message) from error


def already_done(cfg: DictConfig, folder: Path) -> bool:
    done = store.read_run_status(folder) == "done" and not cfg.force
    if done:
        print(f"run {folder.name} is already done: {folder} (add force=true to rerun it)")
    return done


def job_number() -> int:
    """This job's number in a multirun sweep (0 in a single run)."""
    return HydraConfig.get().job.num if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN else 0


def execute(cfg: DictConfig) -> dict[str, Any]:
    """Run (or skip) one configuration; returns its run.json content."""
    # Everything that can be wrong with the input is checked before any folder is written.
    info = dataset_info(cfg.dataset)
    seed_everything(cfg.seed)
    model = build_model(cfg.arch, info)
    validate(cfg, model.selectable_points())
    device = resolve_device(cfg.device, job_number())
    folder = store.run_folder(cfg)
    identifier = folder.name
    if already_done(cfg, folder):
        return {"run_id": identifier, "status": "skipped"}
    splits = load_image_splits(cfg.dataset, cfg.paths, cfg.seed, device)
    other_splits = load_switch_dataset(cfg, device)
    check_activation_memory(model, splits, cfg.probe, datasets=1 if other_splits is None else 2)
    if cfg.schedule.batch_size > len(splits.train_labels):
        raise ConfigError("schedule.batch_size", cfg.schedule.batch_size,
                          f"at most the {len(splits.train_labels)} training images")

    with store.run_lock(folder) as locked:
        if not locked:
            print(f"run {identifier} is being run by another process right now: skipped ({folder})")
            return {"run_id": identifier, "status": "locked"}
        if already_done(cfg, folder):  # finished by another process while this one loaded the data
            return {"run_id": identifier, "status": "skipped"}
        return _train_and_probe(cfg, model, splits, other_splits, device, folder)


def _train_and_probe(cfg: DictConfig, model, splits: ImageSplits, other_splits: ImageSplits | None,
                     device: torch.device, folder: Path) -> dict[str, Any]:
    """Train and measure in `folder` (locked by the caller), resuming from its checkpoint if it has one."""
    identifier = folder.name
    checkpoint_path, metrics_path = folder / "checkpoint.pt", folder / "metrics.parquet"
    if cfg.force:
        checkpoint_path.unlink(missing_ok=True)
    model = place_model(model, device)
    optimizer = hydra.utils.instantiate(cfg.optimizer, params=model.parameters())
    rows: list[dict[str, Any]] = []
    state = None
    if checkpoint_path.is_file():
        # Our own file, written atomically: it holds the loop state and the metric rows so far.
        checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        state, rows = checkpoint["state"], checkpoint["rows"]
        print(f"run {identifier}: resuming from its checkpoint at step {state.step}")
    else:
        metrics_path.unlink(missing_ok=True)  # left by an attempt killed before its first checkpoint
    store.write_text(folder / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    record: dict[str, Any] = {
        "run_id": identifier,
        "status": "running",
        "error": None,
        "command": sys.argv,
        "sweep": os.environ.get("PHASES_SWEEP"),  # set by phases.sweep (make sweep-<name>); null otherwise
        "data_source": splits.source,
        "started_at": store.now(),
        "resumed_from_step": None if state is None else state.step,
        **store.provenance(str(device)),
    }
    store.write_json(folder / "run.json", record)
    started = time.perf_counter()

    evaluator = Evaluator(model, splits, cfg.probe, cfg.seed, cfg.schedule.batch_size, other_splits)
    identity = {"run_id": identifier, "dataset": cfg.dataset.name, "arch": cfg.arch.name,
                "optimizer": optimizer_name(cfg), "seed": cfg.seed}

    def evaluate(step: int, epoch: float) -> float:
        measured = evaluator()
        rows.extend({**identity, "step": step, "epoch": epoch, **row} for row in measured)
        # Rewritten whole after every evaluation: a reader sees the steps so far, never a partial file.
        store.write_metrics(metrics_path, rows)
        record["steps_evaluated"] = step
        return next(row["value"] for row in measured
                    if row["probe"] == "classifier" and row["metric"] == "accuracy" and row["split"] == "test")

    def save_checkpoint(training_state: TrainingState) -> None:
        payload = {"state": training_state, "rows": rows, "model": model.state_dict(),
                   "optimizer": optimizer.state_dict()}
        store.write_atomically(checkpoint_path, lambda temporary: torch.save(payload, temporary))

    try:
        with stop_on_signals() as stop_requested:
            state = train(model, optimizer, splits, cfg.schedule, cfg.seed, evaluate, save_checkpoint, state,
                          stop_requested, progress=cfg.progress)
    except BaseException as error:
        interrupted = isinstance(error, Interrupted)
        record.update(status="interrupted" if interrupted else "failed", error=f"{type(error).__name__}: {error}",
                      ended_at=store.now(), wall_time_s=round(time.perf_counter() - started, 3))
        store.write_json(folder / "run.json", record)
        raise
    record.update(
        status="done",
        ended_at=store.now(),
        wall_time_s=round(time.perf_counter() - started, 3),
        # Summed over every attempt when the run was resumed.
        training_time_s=round(state.times.training_seconds, 3),
        probing_time_s=round(state.times.evaluation_seconds, 3),
    )
    store.write_json(folder / "run.json", record)
    checkpoint_path.unlink(missing_ok=True)  # the metrics are final: nothing left to resume
    print(f"run {identifier} done in {record['wall_time_s']:.0f} s (training {record['training_time_s']:.0f} s, "
          f"probing {record['probing_time_s']:.0f} s): {folder}")
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
        folder = store.run_folder(cfg)
    except Exception:  # noqa: BLE001 - a config too broken to name its run has nowhere to be recorded
        return
    if store.read_run_status(folder) in (None, "failed"):
        store.write_json(folder / "run.json", {"run_id": folder.name, "status": "failed", "ended_at": store.now(),
                                               "error": f"{type(error).__name__}: {error}"})


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # In a sweep one job's failure must not stop the others: it is recorded in its run.json and the
    # sweep goes on (phases.sweep reports it at the end); a single run exits non-zero instead.
    in_sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        execute(cfg)
    except (ConfigError, DataNotFoundError, DataFormatError) as error:
        # Input errors are the user's to fix: the message says what and how; a traceback would bury it.
        print(f"error: {error}", file=sys.stderr)
        if in_sweep:
            record_failure_before_start(cfg, error)
            return
        sys.exit(2)
    except Interrupted as error:
        print(f"interrupted: {error}; run the same command again to resume", file=sys.stderr)
        sys.exit(3)
    except Exception as error:
        if not in_sweep:
            raise
        print(f"error: run failed ({type(error).__name__}: {error}); recorded in its run.json", file=sys.stderr)


if __name__ == "__main__":
    main()
