"""A job's wall time before it runs: its configuration's measured rates times what the run will do.

Rates (phases.training.calibration) are measured once per machine and configuration and cached in
`<outputs>/calibration/<signature>.json`. The signature covers the machine (host, device, torch threads,
torch version) and every setting that can change the run's work, except the two a sweep varies without
changing the cost of one step or one evaluation: the seed, and the number of steps (it is multiplied in).
So three seeds of one configuration share one calibration, and a sweep that adds a seed costs nothing
to estimate. A run's estimate: its setup, its updates, its first evaluation and every later one; for a
run that resumes, only what is left after its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch
from omegaconf import DictConfig

from phases.config.compose import compose
from phases.store.files import write_json
from phases.store.identity import result_settings
from phases.store.progress import duration, job_status, read_record
from phases.store.record import CHECKPOINT_FILE
from phases.store.sweep_jobs import Job
from phases.training.calibration import Rates, measure_rates
from phases.training.device import resolve_device
from phases.training.schedule import evaluation_steps

CALIBRATION_FOLDER = "calibration"
# Settings that change what a run computes but not how long one step or one evaluation takes.
COST_FREE_KEYS = ("seed", "schedule.max_steps")


def machine(device_setting: str) -> dict[str, str | int]:
    """What a rate measured here depends on besides the configuration."""
    device = resolve_device(device_setting)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} cores"
    return {"host": socket.gethostname(), "device": f"{device.type}: {name}", "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def signature(cfg: DictConfig) -> tuple[str, dict]:
    """(12 hex digits, what they cover) for the calibration of `cfg` on this machine."""
    settings = {key: value for key, value in result_settings(cfg).items() if key not in COST_FREE_KEYS}
    covered = {"machine": machine(cfg.device), "settings": settings, "probe.batch_size": cfg.probe.batch_size}
    return hashlib.sha256(json.dumps(covered, sort_keys=True, default=str).encode()).hexdigest()[:12], covered


def calibration_path(cfg: DictConfig) -> Path:
    return Path(cfg.paths.outputs) / CALIBRATION_FOLDER / f"{signature(cfg)[0]}.json"


def cached_rates(cfg: DictConfig) -> Rates | None:
    path = calibration_path(cfg)
    try:
        return Rates(**json.loads(path.read_text())["rates"]) if path.is_file() else None
    except (OSError, ValueError, TypeError, KeyError):  # an unreadable calibration is measured again
        return None


def configuration_rates(cfg: DictConfig) -> Rates:
    """The cached rates of `cfg` on this machine, measured (and cached) when there are none."""
    found = cached_rates(cfg)
    if found is not None:
        return found
    measured = measure_rates(cfg)
    key, covered = signature(cfg)
    write_json(calibration_path(cfg), {"signature": key, **covered, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                       "rates": asdict(measured)})
    return measured


def run_seconds(rates: Rates, max_steps: int, evaluated_step: int | None = None) -> float:
    """Wall seconds of a run of `max_steps` updates; `evaluated_step`: the last step a resumable run
    evaluated, so only the updates and evaluations after it are left (its once-per-run choices are kept)."""
    evaluations = [step for step in evaluation_steps(max_steps) if evaluated_step is None or step > evaluated_step]
    seconds = rates.setup_s + (max_steps - (evaluated_step or 0)) * rates.step_s
    if evaluations and evaluated_step is None:
        return seconds + rates.first_evaluation_s + (len(evaluations) - 1) * rates.evaluation_s
    return seconds + len(evaluations) * rates.evaluation_s


def process_start_seconds(outputs: str | Path, measure: bool) -> float | None:
    """What one `python -m phases.run -m` process takes before its first job: the interpreter and the
    imports (torch, Hydra), measured in a fresh process once per machine (cached beside the rates);
    None when it is not cached and `measure` is False."""
    described = machine("cpu")
    key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(outputs) / CALIBRATION_FOLDER / f"process-{key}.json"
    try:
        return float(json.loads(path.read_text())["process_start_s"])
    except (OSError, ValueError, TypeError, KeyError):  # none yet, or unreadable: measured again
        if not measure:
            return None
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import phases.run"], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    write_json(path, {"machine": described, "process_start_s": seconds})
    return seconds


class Launch(NamedTuple):
    """How a multirun's jobs run: how many at once, with how many torch threads each (None: torch's default)."""

    parallel: int
    threads: int | None
    where: str  # "here" (this machine's processes) or "slurm"
    per_device: int = 1  # SLURM: runs packed into one job, sharing its device (hydra.launcher.runs_per_device)


def launch_of(jobs: list[Job], environment: dict[str, str]) -> Launch:
    """As the multirun's launcher will start its jobs: one after another in one process (Hydra's basic
    launcher), max_parallel_jobs local processes with the cores split between them, or SLURM jobs."""
    threads = int(environment["OMP_NUM_THREADS"]) if environment.get("OMP_NUM_THREADS", "").isdigit() else None
    launcher = compose(jobs[0].overrides, hydra_config=True).hydra.launcher
    target = str(launcher.get("_target_", ""))
    if target.endswith("SlurmLauncher"):
        return Launch(1, threads, "slurm", int(launcher.get("runs_per_device", 1)))
    if target.endswith("LocalLauncher"):
        parallel = int(launcher.max_parallel_jobs)
        return Launch(parallel, threads or max(1, (os.cpu_count() or 1) // parallel), "here")
    return Launch(1, threads, "here")


@contextmanager
def torch_threads(count: int | None):
    """This process's torch threads as a multirun's jobs will have them, while a calibration measures them."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def estimate(groups: list[list[Job]], environment: dict[str, str],
             measure: bool) -> dict[Path, tuple[float, Launch]] | None:
    """(wall seconds left, its launch) of each job not done, each multirun's process start counted with its
    first job; None when a rate is not cached and `measure` is False."""
    estimates: dict[Path, tuple[float, Launch]] = {}
    for jobs in groups:
        launch = launch_of(jobs, environment)
        process_start = None
        with torch_threads(launch.threads):
            for job in jobs:
                record, _ = read_record(job.folder)
                if job_status(job.folder)[0] == "done":
                    continue
                rates = cached_rates(job.cfg)
                if rates is None and not measure:
                    return None
                if rates is None:
                    print(f"calibrating {job.folder.name} (once per configuration and machine, kept in "
                          f"{calibration_path(job.cfg)})", flush=True)
                    rates = configuration_rates(job.cfg)
                resumes = record is not None and (job.folder / CHECKPOINT_FILE).is_file()
                seconds = run_seconds(rates, job.cfg.schedule.max_steps, record.steps_evaluated if resumes else None)
                if process_start is None:
                    process_start = process_start_seconds(job.cfg.paths.outputs, measure)
                    if process_start is None:
                        return None
                    seconds += process_start
                estimates[job.folder] = (seconds, launch)
    return estimates


def print_estimate(estimates: dict[Path, tuple[float, Launch]]) -> None:
    """The sweep's total in run-hours; for the jobs run on this machine, its wall time here; for SLURM's,
    the device-hours they hold, between run-hours / runs_per_device and run-hours."""
    where = machine("auto")
    total = sum(seconds for seconds, _ in estimates.values())
    here = [(seconds, launch) for seconds, launch in estimates.values() if launch.where == "here"]
    # Jobs run at once finish together at best: their wall time is their sum over how many run at once.
    wall = sum(seconds / launch.parallel for seconds, launch in here)
    runs_at_once = sorted({launch.parallel for _, launch in here})
    print(f"estimate on {where['host']} ({where['device']}): {len(estimates)} jobs to run, {duration(total)} of "
          f"run time ({total / 3600:.2f} run-hours, as each configuration ran alone when calibrated)"
          + (f"; wall time here about {duration(wall)} with {'/'.join(map(str, runs_at_once))} at once"
             if here else "")
          + (slurm_cost([(seconds, launch) for seconds, launch in estimates.values() if launch.where == "slurm"])))


def slurm_cost(jobs: list[tuple[float, Launch]]) -> str:
    if not jobs:
        return ""
    alone = sum(seconds for seconds, _ in jobs) / 3600
    shared = sum(seconds / launch.per_device for seconds, launch in jobs) / 3600
    packed = sorted({launch.per_device for _, launch in jobs if launch.per_device > 1})
    # Packed runs slow each other by how much they contend for the device: measured by
    # phases.bench.sweep_throughput, not known here, so both ends are given.
    return (f"; on SLURM the wall time depends on the queue, and the jobs hold {alone:.2f} device-hours"
            + (f" run alone, or down to {shared:.2f} with {'/'.join(map(str, packed))} runs per device if "
               "they do not slow each other" if packed else ""))
