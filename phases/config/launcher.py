"""The configuration of the project's launchers (the classes are in hydra_plugins/phases_launcher):
`hydra/launcher=local`, hydra-submitit's local processes with a cap on how many run at once and one
GPU per job; `hydra/launcher=slurm`, hydra-submitit's SLURM launcher that can also return as soon as
its jobs are submitted.

Registered by `phases.config.compose.register_configs` before Hydra composes a sweep: the schemas
`local_launcher_schema` and `slurm_launcher_schema` (outside the config groups) and the resolvers
`${visible_gpu_count:}` and `${local_job_slots:}`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
from omegaconf import OmegaConf

CPU_CORES_PER_LOCAL_JOB = 4  # a training run keeps about this many cores busy (BLAS threads, data)


def visible_gpu_count() -> int:
    import torch  # here, not at the top: composing a config needs no torch

    return torch.cuda.device_count()


def local_job_slots(runs_per_device: int = 1) -> int:
    """Jobs at once by default: `runs_per_device` per GPU or, without GPUs, per CPU_CORES_PER_LOCAL_JOB cores."""
    devices = visible_gpu_count() or max(1, (os.cpu_count() or 1) // CPU_CORES_PER_LOCAL_JOB)
    return devices * runs_per_device


@dataclass
class PhasesLocalQueueConf(LocalQueueConf):
    _target_: str = "hydra_plugins.phases_launcher.LocalLauncher"  # Hydra takes launchers only from there
    # Runs sharing one GPU (or one group of CPU_CORES_PER_LOCAL_JOB cores), each its own process and CUDA
    # context: a small network leaves a GPU mostly idle, so k runs at once finish a sweep up to k times sooner.
    runs_per_device: int = 1
    max_parallel_jobs: int = "${local_job_slots:${.runs_per_device}}"  # type: ignore[assignment]  # jobs at once
    timeout_min: int = 4320  # 3 days: the plugin's 60 minutes would kill longer runs and start them over
    gpus_per_node: int = "${visible_gpu_count:}"  # type: ignore[assignment]  # 0 on a machine without GPUs
    cpus_per_task: int | None = None


@dataclass
class PhasesSlurmQueueConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.phases_launcher.SlurmLauncher"
    # false: submit the jobs, print their ids and logs, and return (a login-node session need not outlive
    # them); `python -m phases.status` shows their progress. true: wait for every job and sum them up.
    wait: bool = True
    # Runs packed into one SLURM job, sharing its GPU, cores (cpus_per_task) and memory (mem_gb), each its
    # own process: SLURM gives every job a GPU of its own, which one small network leaves mostly idle.
    runs_per_device: int = 1


def register() -> None:
    for name, resolver in (("visible_gpu_count", visible_gpu_count), ("local_job_slots", local_job_slots)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
    ConfigStore.instance().store(name="local_launcher_schema", node=PhasesLocalQueueConf, provider="phases")
    ConfigStore.instance().store(name="slurm_launcher_schema", node=PhasesSlurmQueueConf, provider="phases")
