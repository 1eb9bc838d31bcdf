"""What `python -m phases.run -m ...` does around its jobs, with every launcher (basic, local, slurm).

A Hydra callback (conf/config.yaml, `hydra.callbacks`), run by the process that submits the sweep:
- before any job is dispatched: every job's config is composed (a job that does not compose stops the
  sweep, naming the override), and every dataset the jobs need is made available once, here: compute
  nodes often have no internet, and N jobs must never race to download the same files. Missing files
  that may not (`dataset.download=false`) or cannot be fetched stop the sweep with one message.
- after the jobs: the summary `make sweep-<name>` prints (done, skipped, failed with the reason) and
  exit status 1 when any job did not finish. A launcher that does not wait for its jobs
  (`hydra/launcher=slurm hydra.launcher.wait=false`) gets, instead, where to watch them.
Under `phases.sweep` (PHASES_SWEEP set) the summary is left to it: it sums up all its multiruns together.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from phases.config.validation import ConfigError
from phases.fetch import make_available
from phases.store.identity import run_id
from phases.store.progress import job_status
from phases.store.record import run_folder
from phases.sweep import SweepFileError, composed_jobs, print_jobs
from phases.training.data import DataFormatError, DataNotFoundError


class SweepCallback(Callback):
    def __init__(self) -> None:
        self.jobs: list[tuple[list[str], Path]] = []
        self.before: dict[Path, str] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            jobs = composed_jobs(list(config.hydra.overrides.task), "the command line")
        except SweepFileError as error:
            stop(2, f"{error}; no job was started")
        configs = [cfg for _, cfg in jobs]
        self.jobs = [(job, run_folder(cfg.paths.outputs, run_id(cfg))) for job, cfg in jobs]
        try:
            for line in make_available(configs):
                print(line, flush=True)
        # Missing data; a malformed image folder; a bad data_checksums file.
        except (DataNotFoundError, DataFormatError, ConfigError) as error:
            stop(2, f"{error}\nno job was started")
        self.before = {folder: job_status(folder)[0] for _, folder in self.jobs}

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.launcher.get("wait", True) is False:
            outputs = Path(str(config.paths.outputs))
            print(f"{len(self.jobs)} jobs submitted; this command does not wait for them. Their progress:\n"
                  f"  python -m phases.status --outputs {outputs}   (or: make status OUTPUTS={outputs})\n"
                  f"their figures, from whatever has finished:\n  python -m phases.figures --outputs {outputs}")
            return
        if os.environ.get("PHASES_SWEEP"):
            return
        print("summary of the sweep:")
        shared = set.intersection(*(set(job) for job, _ in self.jobs)) if len(self.jobs) > 1 else set()
        # Each job by what sets it apart; the overrides every job shares were typed once, on the command line.
        counts = print_jobs([([override for override in job if override not in shared], folder)
                             for job, folder in self.jobs], self.before)
        print(", ".join(f"{count} {status}" for status, count in sorted(counts.items())), flush=True)
        if any(status != "done" and not status.startswith("skipped") for status in counts):
            sys.exit(1)


def stop(status: int, message: str) -> None:
    """End the sweep with one message and no traceback (Hydra would print the callback's)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)
