"""A run's folder: its identity, its metrics table, its provenance; every file written atomically.

`<paths.outputs>/runs/<run_id>/` holds `config.yaml`, `run.json` and `metrics.parquet`. Each file
is written to a temporary name and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from phases.config import optimizer_name

# Settings that change where or how fast a run happens but never its results: left out of the hash.
NON_RESULT_KEYS = ("paths", "device", "force", "progress", "probe.batch_size", "schedule.checkpoint_minutes")

# The long ("tidy") metrics table: one row per step, layer, probe, metric and split.
METRICS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("dataset", pa.string()),
        ("arch", pa.string()),
        ("optimizer", pa.string()),
        ("seed", pa.int64()),
        ("step", pa.int64()),
        ("epoch", pa.float64()),  # passes over the training split completed before this step
        ("layer", pa.string()),  # a probe point, or "output" for the classifier itself
        ("depth", pa.float64()),  # share of the network's conv/linear layers before the point (output: 1)
        ("probe", pa.string()),  # "classifier", "reconstruction", "linear", ...
        ("metric", pa.string()),  # "accuracy", "cross_entropy", "mse", ...
        ("split", pa.string()),  # "train" or "test"
        ("value", pa.float64()),
    ]
)


def config_hash(cfg: DictConfig) -> str:
    """8 hex digits over every setting that can change results."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    for key in NON_RESULT_KEYS:
        *parents, leaf = key.split(".")
        node = settings
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def run_id(cfg: DictConfig) -> str:
    """Readable and stable, e.g. `fashion_mnist-vgg8-sgd-s0-1a2b3c4d`."""
    return f"{cfg.dataset.name}-{cfg.arch.name}-{optimizer_name(cfg)}-s{cfg.seed}-{config_hash(cfg)}"


def run_folder(cfg: DictConfig) -> Path:
    return Path(cfg.paths.outputs) / "runs" / run_id(cfg)


def _current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


CURRENT_UMASK = _current_umask()


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temporary_path)` then rename it over `path`: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        write(Path(temporary))
        # mkstemp makes the file private (0600); a result file gets the mode any new file would, so a
        # lab's shared outputs folder (report.html, figures, metrics) stays readable by the group.
        os.chmod(temporary, 0o666 & ~CURRENT_UMASK)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(text))


def write_json(path: Path, content: dict[str, Any]) -> None:
    write_text(path, json.dumps(content, indent=2, sort_keys=True) + "\n")


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)
    write_atomically(path, lambda temporary: pq.write_table(table, temporary))


@contextmanager
def run_lock(folder: Path) -> Iterator[bool]:
    """Hold an exclusive lock on a run folder for the block; yields False when another process holds it.

    A lock on an open file (flock) dies with its process, so a killed run never leaves a stale lock.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_run_record(folder: Path) -> dict[str, Any] | None:
    """A run's run.json, or None when there is no readable one."""
    try:
        return json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return None


def read_run_status(folder: Path) -> str | None:
    """The `status` recorded in a run's run.json, or None when there is no readable run.json."""
    return (read_run_record(folder) or {}).get("status")


def _git(*arguments: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *arguments], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def provenance(device: str) -> dict[str, Any]:
    """Code version, library versions and machine: what is needed to trust or redo a run."""
    import hydra
    import torch
    import torchvision

    import phases

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


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
