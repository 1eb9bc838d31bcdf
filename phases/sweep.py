"""Run, or list, the sweep of one experiment file in sweeps/: what `make sweep-<name>` calls.

    python -m phases.sweep sweeps/smoke.yaml             # prints the command it runs, runs it, sums up
    python -m phases.sweep sweeps/smoke.yaml --dry-run   # every job: run_id and status; runs nothing
    python -m phases.sweep sweeps/smoke.yaml -- paths.outputs=/scratch/runs   # extra overrides

A sweep file holds `description`, `cost` and `overrides`: Hydra overrides, where `key=a,b` sweeps
over values, exactly as typed after `python -m phases.run -m`. An experiment that one cartesian
product cannot express (e.g. a generated dataset with its own keys, plus a real one) gives `overrides`
as a list of such lists: one multirun each, run in order, summed up together. Jobs already done are
skipped by the runs themselves; a job that fails does not stop the others; the summary lists done,
skipped and failed jobs with their reasons and the exit status is non-zero when any failed. An optional
`environment:` mapping is set for the runs, e.g. OMP_NUM_THREADS for networks too small to use threads.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from phases.config.compose import compose
from phases.store.identity import run_id
from phases.store.record import CHECKPOINT_FILE, RunRecord, RunStatus, run_folder


def load_sweep(path: Path) -> dict:
    try:
        sweep = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SystemExit(f"error: cannot read sweep file {path}: {error}") from error
    if not isinstance(sweep, dict) or not isinstance(sweep.get("overrides"), list) or not sweep["overrides"]:
        raise SystemExit(f"error: {path} needs a list `overrides:` of Hydra overrides, e.g. [arch=vgg8,mlp, seed=0,1]"
                         ", or a list of such lists (one multirun each)")
    return sweep


def multiruns(overrides: list) -> list[list[str]]:
    """A sweep file's `overrides` as a list of multiruns: one list of overrides, or several."""
    nested = [isinstance(item, list) for item in overrides]
    if any(nested) and not all(nested):
        raise SystemExit("error: `overrides:` mixes overrides and lists of overrides; use one form or the other")
    groups = overrides if all(nested) else [overrides]
    return [[str(override) for override in group] for group in groups]


def job_overrides(overrides: list[str]) -> list[list[str]]:
    """The cartesian product of the sweep's overrides, as Hydra's basic sweeper forms it."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = [[f"{override.get_key_element()}={value}" for value in override.sweep_string_iterator()]
               if override.is_sweep_override() else [override.input_line] for override in parsed]
    return [list(combination) for combination in itertools.product(*choices)]


def job_status(folder: Path) -> tuple[str, str]:
    """(status, detail) of one job's run folder."""
    record = RunRecord.find(folder)
    if record is None:
        return "pending", ""
    if record.status == RunStatus.done:
        return "done", ""
    if record.status == RunStatus.failed:
        return "failed", record.error or ""
    if (folder / CHECKPOINT_FILE).is_file():
        step = "?" if record.steps_evaluated is None else record.steps_evaluated
        return "partly done", f"resumes after step {step}"
    return "pending", f"an earlier attempt stopped ({record.status.value})"


def list_jobs(overrides: list[str]) -> list[tuple[list[str], Path]]:
    jobs = []
    for job in job_overrides(overrides):
        cfg = compose(job)
        jobs.append((job, run_folder(cfg.paths.outputs, run_id(cfg))))
    return jobs


def print_jobs(jobs: list[tuple[list[str], Path]], before: dict[Path, str] | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job, folder in jobs:
        status, detail = job_status(folder)
        if before is not None and status == "done" and before.get(folder) == "done":
            status = "skipped (done before)"
        counts[status] = counts.get(status, 0) + 1
        print(f"  {status:<21} {folder.name}  {' '.join(job)}" + (f"\n      {detail}" if detail else ""))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a file in sweeps/")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs and their status, run nothing")
    own, extra = [*sys.argv[1:]], []
    if "--" in own:  # what follows `--` are more overrides, for the runs
        separator = own.index("--")
        own, extra = own[:separator], own[separator + 1 :]
    arguments = parser.parse_args(own)
    sweep = load_sweep(arguments.sweep)
    groups = [group + extra for group in multiruns(sweep["overrides"])]
    group_jobs = [list_jobs(overrides) for overrides in groups]
    jobs = [job for each in group_jobs for job in each]
    print(f"{arguments.sweep.stem}: {sweep.get('description', '').strip()}")
    if sweep.get("cost"):
        print(f"cost: {str(sweep['cost']).strip()}")
    environment = {str(key): str(value) for key, value in (sweep.get("environment") or {}).items()}
    prefix = "".join(f"{key}={shlex.quote(value)} " for key, value in environment.items())
    if len(groups) > 1:
        print(f"{len(jobs)} jobs in {len(groups)} multiruns:")
    for overrides, each in zip(groups, group_jobs, strict=True):
        print(f"{len(each)} jobs: {prefix}python -m phases.run -m {shlex.join(overrides)}")
    if arguments.dry_run:
        counts = print_jobs(jobs)
        print(", ".join(f"{count} {status}" for status, count in sorted(counts.items())))
        return 0
    before = {folder: job_status(folder)[0] for _, folder in jobs}
    returncode = 0
    for overrides in groups:  # in order; a failed multirun does not stop the next one
        command = [sys.executable, "-m", "phases.run", "-m", *overrides]
        # PHASES_SWEEP: each run records its sweep in run.json, so the report can group runs by sweep.
        run_environment = {**os.environ, **environment, "PHASES_SWEEP": arguments.sweep.stem}
        returncode = subprocess.run(command, env=run_environment, check=False).returncode or returncode
    print(f"summary of {arguments.sweep.stem}:")
    counts = print_jobs(jobs, before)
    print(", ".join(f"{count} {status}" for status, count in sorted(counts.items())))
    unfinished = any(status != "done" and not status.startswith("skipped") for status in counts)
    return 1 if returncode != 0 or unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
