"""hydra-submitit's local launcher with a cap on the jobs running at once and one GPU per job
(`hydra/launcher=local`, configured by phases/config/launcher.py). Here because Hydra takes launchers only
from the `hydra_plugins` namespace.

The plugin starts every job of a sweep at once and shows each the same GPUs. This launcher hands it
the jobs in chunks of `max_parallel_jobs` (each chunk waits for its slowest job); every job sees all
GPUs and takes GPU (job number mod GPUs) (`phases.training.device.resolve_device`): jobs of a chunk are
numbered consecutively, so with one job per GPU no two share one. The jobs share the CPU cores:
each gets cores / max_parallel_jobs threads (OMP_NUM_THREADS, unless set), since OpenMP threads
oversubscribing the cores slowed a 4-job test sweep on 2 cores 15-fold (335 s instead of 22 s).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as SubmititLocalLauncher


class LocalLauncher(SubmititLocalLauncher):
    def __init__(self, max_parallel_jobs: int, **params) -> None:
        if max_parallel_jobs < 1:
            raise ValueError(f"hydra.launcher.max_parallel_jobs={max_parallel_jobs} is invalid: a number >= 1")
        super().__init__(**params)  # the plugin passes every other parameter on to submitit
        self.max_parallel_jobs = max_parallel_jobs

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        # The job processes inherit this process's environment.
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.max_parallel_jobs)))
        results: list[JobReturn] = []
        for start in range(0, len(job_overrides), self.max_parallel_jobs):
            chunk = job_overrides[start : start + self.max_parallel_jobs]
            results += super().launch(chunk, initial_job_idx + start)
        return results
