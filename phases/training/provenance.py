"""What is needed to trust or redo a run: code version, library versions, machine (run.json's provenance)."""

from __future__ import annotations

import platform
import socket
import subprocess
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
    }
