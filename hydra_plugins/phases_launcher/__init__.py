"""The project's launchers (`hydra/launcher=local`, `hydra/launcher=slurm`, configured by
phases/config/launcher.py): hydra-submitit's, with three changes. Here because Hydra takes launchers
only from the `hydra_plugins` namespace.

- A job that ends without a result (killed, out of memory, a lost node) is logged with its SLURM id and
  log, and the sweep goes on: the plugin would raise at the first such job and the sweep's summary
  (phases.multirun) would never be printed. That summary lists the job as crashed and the command
  exits non-zero.
- `slurm` with `wait=false` submits the jobs, logs each one's id and log file, and returns at once.
- `slurm` with `runs_per_device=k` packs the jobs k at a time into one SLURM job, whose GPU and cores the
  k runs share, each in its own process (run_groups.py).
- `local` hands the plugin the jobs in chunks of `max_parallel_jobs` (each chunk waits for its slowest
  job): the plugin starts every job at once and shows each the same GPUs. Every job sees all GPUs and
  takes GPU (job number mod GPUs) (`phases.training.device.resolve_device`): jobs of a chunk are
  numbered consecutively, so with one job per GPU no two share one, and with `runs_per_device=k` (k
  jobs per GPU by default) each GPU gets k. The jobs share the CPU cores: each
  gets cores / max_parallel_jobs threads (OMP_NUM_THREADS, unless set), since OpenMP threads
  oversubscribing the cores slowed a 4-job test sweep on 2 cores 15-fold (335 s instead of 22 s).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from unittest import mock

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as SubmititLocalLauncher
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher

from hydra_plugins.phases_launcher.run_groups import RunGroup, in_groups

log = logging.getLogger(__name__)


class HandedBackJob:
    """Stands in for a submitit job where the plugin does `[job.results()[0] for job in jobs]`; for a run
    group's job, one stands in for each of its runs (`place`: the run's place in the group)."""

    def __init__(self, job: Any, wait: bool, place: int | None = None) -> None:
        self.job, self.wait, self.place = job, wait, place

    def results(self) -> list[JobReturn]:
        if not self.wait:
            if not self.place:  # once per SLURM job
                log.info(f"submitted job {self.job.job_id}: its log {self.job.paths.stdout}")
            return [JobReturn(status=JobStatus.COMPLETED)]
        try:
            return self.job.results() if self.place is None else [self.job.results()[0][self.place]]
        except Exception as error:  # submitit's UncompletedJobError, FailedJobError, ...: the job died
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            log.error(f"job {self.job.job_id} ended without a result ({reason}); its log: {self.job.paths.stderr}")
            # COMPLETED so that Hydra's sweeper goes on to the other jobs; the summary reports this one.
            return [JobReturn(status=JobStatus.COMPLETED)]


@contextmanager
def jobs_handed_back(wait: bool, runs_per_job: int = 1) -> Iterator[None]:
    """While the plugin launches, its executor's map_array returns HandedBackJob stand-ins, after submitting
    the runs `runs_per_job` to a job. A patch, scoped to one launch, because the plugin submits and waits in
    one method with no hook between."""
    import submitit

    original = submitit.AutoExecutor.map_array

    def map_array(executor: Any, function: Any, *iterables: Any) -> list[HandedBackJob]:
        if runs_per_job == 1:
            return [HandedBackJob(job, wait) for job in original(executor, function, *iterables)]
        groups = in_groups(list(zip(*iterables, strict=True)), runs_per_job)
        jobs = original(executor, RunGroup(function), groups)
        return [HandedBackJob(job, wait, place)
                for job, group in zip(jobs, groups, strict=True) for place in range(len(group))]

    with mock.patch.object(submitit.AutoExecutor, "map_array", map_array):
        yield


def require_positive(**settings: int) -> None:
    for key, value in settings.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"hydra.launcher.{key}={value} is invalid: a number >= 1")


class SlurmLauncher(SubmititSlurmLauncher):
    def __init__(self, wait: bool = True, runs_per_device: int = 1, **params: Any) -> None:
        require_positive(runs_per_device=runs_per_device)
        super().__init__(**params)  # the plugin passes every other parameter on to submitit
        self.wait, self.runs_per_device = wait, runs_per_device

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        with jobs_handed_back(self.wait, self.runs_per_device):
            return list(super().launch(job_overrides, initial_job_idx))


class LocalLauncher(SubmititLocalLauncher):
    def __init__(self, max_parallel_jobs: int, runs_per_device: int = 1, **params: Any) -> None:
        # runs_per_device has done its work in max_parallel_jobs' default (phases.config.launcher).
        require_positive(max_parallel_jobs=max_parallel_jobs, runs_per_device=runs_per_device)
        super().__init__(**params)
        self.max_parallel_jobs = max_parallel_jobs

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        # The job processes inherit this process's environment.
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.max_parallel_jobs)))
        results: list[JobReturn] = []
        with jobs_handed_back(wait=True):
            for start in range(0, len(job_overrides), self.max_parallel_jobs):
                chunk = job_overrides[start : start + self.max_parallel_jobs]
                results += super().launch(chunk, initial_job_idx + start)
        return results
