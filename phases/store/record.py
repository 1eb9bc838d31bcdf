"""A run's folder: where it lives, its lock, and RunRecord, the only reader and writer of its run.json.

`<paths.outputs>/runs/<run_id>/` holds `config.yaml`, `run.json`, `metrics.parquet`, `run.log` and,
while the run is unfinished, `checkpoint.pt` (and any `checkpoint.pt.corrupt-<time>` a run rejected);
with `logger=tensorboard`, `tensorboard/`. run.json says what the run is doing or did (status, error,
traceback, rejected_checkpoint), where it came from (command, sweep, git commit, versions, host, device,
SLURM job and submitit logs) and how long it took.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from traceback import format_exception
from typing import Any

from phases.store.files import write_json

# The files of a run folder.
RECORD_FILE = "run.json"
CONFIG_FILE = "config.yaml"  # the resolved config
METRICS_FILE = "metrics.parquet"  # phases.store.metrics
CHECKPOINT_FILE = "checkpoint.pt"  # only while the run is unfinished: what a rerun resumes from
LOG_FILE = "run.log"  # what the run said, every attempt appended (phases.training.run_log)
TENSORBOARD_FOLDER = "tensorboard"  # logger=tensorboard: the metrics as TensorBoard event files
LOCK_FILE = ".lock"  # held (flock) by the process running it
LOCK_WAIT_S = 2.0  # how long run_lock retries a lock held by someone else before calling it taken


class RunStatus(str, Enum):
    # Working now, while its process holds the folder's lock; with the lock free, the process died
    # without a chance to say so (SIGKILL, a node failure, a full disk): shown as crashed (is_crashed).
    # A rerun resumes it either way.
    running = "running"
    interrupted = "interrupted"  # stopped on SIGINT (Ctrl-C) or SIGTERM, checkpoint kept: a rerun resumes it
    failed = "failed"  # an error stopped it; `error` says which, `traceback` where: a rerun tries again
    done = "done"  # every evaluation written: a rerun skips it


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunRecord:
    run_id: str
    status: RunStatus
    error: str | None = None  # "<ExceptionType>: <message>" of a failed or interrupted run
    traceback: str | None = None  # of a failed run: where the error arose
    # "<the file's new name>: <why>" when a checkpoint.pt that did not load as a checkpoint of this run
    # was moved aside (phases.training.checkpoint) and the run started again from scratch.
    rejected_checkpoint: str | None = None
    sweep: str | None = None  # the sweeps/<name>.yaml that ran it (PHASES_SWEEP); None for a direct run
    command: list[str] | None = None
    data_source: str | None = None  # the folder the dataset was read from
    started_at: str | None = None
    ended_at: str | None = None
    resumed_from_step: int | None = None
    steps_evaluated: int | None = None  # the last evaluation step whose metrics are written
    wall_time_s: float | None = None  # this attempt
    training_time_s: float | None = None  # summed over every attempt of a resumed run
    probing_time_s: float | None = None
    # This attempt's probing seconds by task: "activations" (the forward passes and the classifier's own
    # metrics), each probe, each output metric, "metrics file"; where probing_time_s goes.
    probing_time_by_task_s: dict[str, float] | None = None
    # Code version, library versions and machine: git_commit, git_dirty, versions, host, device, cpu_threads;
    # under SLURM or submitit, slurm_job_id and submitit_logs (phases.training.provenance).
    provenance: dict[str, Any] = field(default_factory=dict)

    def write(self, folder: Path) -> None:
        content = {key: value for key, value in dataclasses.asdict(self).items() if key != "provenance"}
        content["status"] = self.status.value
        write_json(folder / RECORD_FILE, {**self.provenance, **content})

    def stop(self, error: BaseException, interrupted: bool, wall_time_s: float | None = None) -> None:
        """Say why the attempt ended early: interrupted (a signal; a rerun resumes) or failed, with the
        traceback. Not written yet: see write_or_explain."""
        self.status = RunStatus.interrupted if interrupted else RunStatus.failed
        self.error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        self.traceback = None if interrupted else "".join(format_exception(error))
        self.ended_at, self.wall_time_s = now(), wall_time_s

    def write_or_explain(self, folder: Path) -> str | None:
        """Write run.json, or say in one line why it could not be (a full disk, a lost write permission),
        naming the file and the OS error: for a caller already handling a failure, which must not raise."""
        try:
            self.write(folder)
        except OSError as error:
            return f"could not write {folder / RECORD_FILE} ({self.status.value}): {error.strerror or error}"
        return None

    @classmethod
    def read(cls, folder: Path) -> RunRecord:
        """The folder's run.json; OSError when there is none, ValueError when it is not a run record."""
        content = json.loads((folder / RECORD_FILE).read_text())
        if not isinstance(content, dict) or "run_id" not in content or "status" not in content:
            raise ValueError(f"{folder / RECORD_FILE} is not a run record (needs run_id and status)")
        names = {entry.name for entry in dataclasses.fields(cls)} - {"provenance"}
        known = {key: value for key, value in content.items() if key in names}
        try:
            known["status"] = RunStatus(known["status"])
        except ValueError as error:
            allowed = ", ".join(status.value for status in RunStatus)
            raise ValueError(f"{folder / RECORD_FILE}: status {content['status']!r} is not one of {allowed}") from error
        return cls(**known, provenance={key: value for key, value in content.items() if key not in names})

    @classmethod
    def find(cls, folder: Path) -> RunRecord | None:
        """The folder's run record, or None when it has no readable one."""
        try:
            return cls.read(folder)
        except (OSError, ValueError):
            return None


def run_folder(outputs: str | Path, run_id: str) -> Path:
    return Path(outputs) / "runs" / run_id


def run_folders(outputs: Path) -> list[Path]:
    return sorted(path for path in (Path(outputs) / "runs").glob("*") if path.is_dir())


def is_crashed(folder: Path, record: RunRecord | None) -> bool:
    """A run recorded as running whose lock is free: its process died without saying so (SIGKILL, a
    node failure); a rerun resumes it. A shared lock is only tried, never waited for."""
    if record is None or record.status != RunStatus.running or not (folder / LOCK_FILE).is_file():
        return False
    with open(folder / LOCK_FILE) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # held by the process running it
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


@contextmanager
def run_lock(folder: Path) -> Iterator[bool]:
    """Hold an exclusive lock on a run folder for the block; yields False when another process holds it.

    A lock on an open file (flock) dies with its process, so a killed run never leaves a stale lock.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "w") as handle:
        # is_crashed (a sweep's summary, the analysis) holds a shared lock for a moment: only a lock
        # still held after LOCK_WAIT_S belongs to another run.
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
