"""Which sweeps a run belongs to: every sweep whose job list names it, and the sweep that ran it.

`phases.sweep` writes `<outputs>/sweeps/<sweep>.jobs.json` before it starts any job: the run_id and
overrides of each of its jobs in that outputs folder. Membership cannot come from run.json alone: a
configuration shared by two sweeps run at once is executed by one of them (the other finds it locked
or done), and run.json records only that one. A run no job list names and no sweep ran is a single run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from omegaconf import DictConfig

from phases.store.files import write_json
from phases.store.record import now


class Job(NamedTuple):
    """One job of a sweep: its overrides, its run folder and its composed config."""

    overrides: list[str]
    folder: Path
    cfg: DictConfig


SWEEPS_FOLDER = "sweeps"  # beside Hydra's own multirun folders (conf/config.yaml: hydra.sweep.dir)
JOB_LIST_SUFFIX = ".jobs.json"


def job_list_path(outputs: str | Path, sweep: str) -> Path:
    return Path(outputs) / SWEEPS_FOLDER / f"{sweep}{JOB_LIST_SUFFIX}"


def write_job_list(outputs: str | Path, sweep: str, sweep_file: Path, jobs: list[tuple[str, list[str]]]) -> Path:
    """The sweep's jobs in `outputs`, as (run_id, overrides) pairs; the last writer's list is the sweep's
    (a sweep file edited to fewer seeds no longer claims the others, unless their run.json names it)."""
    path = job_list_path(outputs, sweep)
    write_json(path, {"sweep": sweep, "sweep_file": str(sweep_file), "written_at": now(),
                      "jobs": [{"run_id": run_id, "overrides": overrides} for run_id, overrides in jobs]})
    return path


def parse_job_list(path: Path) -> list[str]:
    """The run_ids a job list names; ValueError (or OSError) when the file is not one."""
    if not path.is_file():  # a pipe would make the read wait forever
        raise ValueError(f"{path} is not a plain file")
    try:
        content = json.loads(path.read_text())
    except (ValueError, RecursionError) as error:  # RecursionError: JSON nested too deep
        raise ValueError(f"not a job list: {error}") from error
    jobs = content.get("jobs") if isinstance(content, dict) else None
    if not isinstance(jobs, list) or not all(isinstance(job, dict) and isinstance(job.get("run_id"), str)
                                             for job in jobs):
        raise ValueError("not a job list: it needs `jobs`, a list of {run_id, overrides}")
    return [job["run_id"] for job in jobs]


def read_job_lists(outputs: Path) -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """({run_id: the sweeps whose job list names it}, [(file, sweep, why it is unreadable)])."""
    members: dict[str, set[str]] = {}
    problems = []
    folder = Path(outputs) / SWEEPS_FOLDER
    for path in sorted(folder.glob(f"*{JOB_LIST_SUFFIX}")) if folder.is_dir() else []:
        sweep = path.name.removesuffix(JOB_LIST_SUFFIX)
        try:
            run_ids = parse_job_list(path)
        except (OSError, ValueError) as error:
            problems.append((f"{SWEEPS_FOLDER}/{path.name}", sweep,
                             f"{error}; the sweep counts only the runs whose run.json names it"))
            continue
        for run_id in run_ids:
            members.setdefault(run_id, set()).add(sweep)
    return members, problems
