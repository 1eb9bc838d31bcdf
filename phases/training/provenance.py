"""What is needed to trust or redo a run: code version, library versions, machine, and the cluster job
that ran it with where its scheduler's logs are (run.json's provenance)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
import torchvision

import phases


def _git(*arguments: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *arguments], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def slurm_job_id(environment: Mapping[str, str] = os.environ) -> str | None:
    """The SLURM job this process runs in, as squeue and sacct name it: `<array job>_<task>` for a task
    of an array (submitit submits a sweep as one), else SLURM_JOB_ID; None outside SLURM."""
    array_job, task = environment.get("SLURM_ARRAY_JOB_ID"), environment.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return environment.get("SLURM_JOB_ID") or None


def submitit_logs() -> dict[str, str] | None:
    """The stdout and stderr files submitit writes this job's output to (what a crashed job's last words
    are in); None outside a submitit job. Never fails a run: anything going wrong here means no paths."""
    try:
        import submitit  # only with the SLURM launcher's extra installed

        paths = submitit.JobEnvironment().paths  # RuntimeError outside a submitit job
        return {"stdout": str(paths.stdout), "stderr": str(paths.stderr)}
    except Exception:  # noqa: BLE001 - ImportError, RuntimeError, a KeyError of a half-set environment, ...
        return None


def provenance(device: str) -> dict[str, Any]:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "versions": {
            "python": platform.python_version(),
            "phases": phases.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "hydra": hydra.__version__,
        },
        "host": socket.gethostname(),
        "device": device,
        "cpu_threads": torch.get_num_threads(),  # timings depend on it (OMP_NUM_THREADS)
        **cluster_job(),
    }


def cluster_job() -> dict[str, Any]:
    """Where to look for a job's own logs on a cluster: also recorded for a run that failed before it started."""
    return {"slurm_job_id": slurm_job_id(), "submitit_logs": submitit_logs()}
