"""The configuration of the local launcher (`hydra/launcher=local`, the class is in
hydra_plugins/phases_launcher): hydra-submitit's local processes, with a cap on how many run at once
and one GPU per job.

Registered by `phases.config.compose.register_configs` before Hydra composes a sweep: the schema
`local_launcher_schema` (outside the config groups) and the resolvers `${visible_gpu_count:}` and
`${local_job_slots:}`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf
from omegaconf import OmegaConf

CPU_CORES_PER_LOCAL_JOB = 4  # a training run keeps about this many cores busy (BLAS threads, data)


def visible_gpu_count() -> int:
    import torch  # here, not at the top: composing a config needs no torch

    return torch.cuda.device_count()


def local_job_slots() -> int:
    """Jobs at once by default: one per GPU, or one per CPU_CORES_PER_LOCAL_JOB cores without GPUs."""
    return visible_gpu_count() or max(1, (os.cpu_count() or 1) // CPU_CORES_PER_LOCAL_JOB)


@dataclass
class PhasesLocalQueueConf(LocalQueueConf):
    _target_: str = "hydra_plugins.phases_launcher.LocalLauncher"  # Hydra takes launchers only from there
    max_parallel_jobs: int = "${local_job_slots:}"  # type: ignore[assignment]  # jobs at once
    timeout_min: int = 4320  # 3 days: the plugin's 60 minutes would kill longer runs and start them over
    gpus_per_node: int = "${visible_gpu_count:}"  # type: ignore[assignment]  # 0 on a machine without GPUs
    cpus_per_task: int | None = None


def register() -> None:
    for name, resolver in (("visible_gpu_count", visible_gpu_count), ("local_job_slots", local_job_slots)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
    ConfigStore.instance().store(name="local_launcher_schema", node=PhasesLocalQueueConf, provider="phases")
