"""Run, or list, the sweep of one experiment file in sweeps/: what `make sweep-<name>` calls.

    python -m phases.sweep sweeps/smoke.yaml             # prints the command it runs, runs it, sums up
    python -m phases.sweep sweeps/smoke.yaml --dry-run   # every job: run_id and status; runs nothing
    python -m phases.sweep sweeps/smoke.yaml --dry-run --estimate   # and each job's wall time here (make ... DRY=1)
    python -m phases.sweep sweeps/smoke.yaml -- paths.outputs=/scratch/runs   # extra overrides

A sweep file holds `description`, `cost` and `overrides`: Hydra overrides, where `key=a,b` sweeps
over values, exactly as typed after `python -m phases.run -m`. An experiment that one cartesian
product cannot express (e.g. a generated dataset with its own keys, plus a real one) gives `overrides`
as a list of such lists: one multirun each, run in order, summed up together. Jobs already done are
skipped by the runs themselves; a job that fails does not stop the others; the summary lists done,
skipped and failed jobs with their reasons and the exit status is non-zero when any failed. An optional
`environment:` mapping is set for the runs, e.g. OMP_NUM_THREADS for networks too small to use threads.

The file is checked before any job starts (exit status 2, one paragraph): no other top-level key,
every job composes, and nothing in it (or after `--`) names code to run. Before dispatching, the jobs'
run_ids are written to `<outputs>/sweeps/<name>.jobs.json`, so the figures count a run in every sweep
that lists it, whichever sweep's process ran it. `--estimate` calibrates each configuration once on this
machine (phases.training.cost); a sweep whose configurations are all calibrated ends by saying how far
off the estimate was.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig

from phases.config.compose import compose
from phases.store.identity import run_id
from phases.store.progress import duration, job_status, paragraph  # shared with phases.status and phases.multirun
from phases.store.record import run_folder
from phases.store.sweep_jobs import Job, write_job_list

if TYPE_CHECKING:
    from phases.training.cost import Launch

TOP_LEVEL_KEYS = ("description", "cost", "overrides", "environment")
# The variables a sweep file may set for its runs: thread counts and the choice of GPU. Others can make
# the runs load code from elsewhere (LD_PRELOAD, PYTHONPATH, MPLCONFIGDIR's matplotlibrc backend, ...):
# whoever runs a colleague's sweep file sets those in their own shell, knowingly.
ENVIRONMENT_NAME = re.compile(r"(OMP|MKL|OPENBLAS|BLIS|NUMEXPR|VECLIB|KMP)_[A-Z0-9_]+"
                              r"|CUDA_VISIBLE_DEVICES|CUBLAS_WORKSPACE_CONFIG|PYTORCH_CUDA_ALLOC_CONF")
# Of Hydra's own settings an override may set only the launcher's: the search path, callbacks and
# logging configuration can import or load code from any folder. `setup` is a launcher's shell
# commands: only from the user's own command line (after `--`), never from a file.
HYDRA_ALLOWED = ("hydra/launcher", "hydra.launcher.")
SHELL_SETTINGS = ("hydra.launcher.setup",)
# Settings that name code to import: arch=custom's class. Like `setup`, only from the user's own command line.
CODE_SETTINGS = ("arch.target",)


class SweepFileError(Exception):
    """A sweep file or extra override refused before any job starts; the message is one paragraph."""


def load_sweep(path: Path) -> dict:
    try:
        sweep = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise SweepFileError(f"cannot read sweep file {path}: {paragraph(error)}") from error
    if not isinstance(sweep, dict) or not isinstance(sweep.get("overrides"), list) or not sweep["overrides"]:
        raise SweepFileError(f"{path} needs a list `overrides:` of Hydra overrides, e.g. [arch=vgg8,mlp, seed=0,1]"
                             ", or a list of such lists (one multirun each)")
    unknown = [str(key) for key in sweep if key not in TOP_LEVEL_KEYS]
    if unknown:
        raise SweepFileError(f"{path}: unknown top-level key `{unknown[0]}`; a sweep file holds only "
                             f"{', '.join(TOP_LEVEL_KEYS)} (a setting of the runs goes into `overrides`)")
    for key in ("description", "cost"):
        if isinstance(sweep.get(key), (dict, list)):
            raise SweepFileError(f"{path}: `{key}` is text, not a {type(sweep[key]).__name__}")
    environment = sweep.get("environment") or {}
    if not isinstance(environment, dict):
        raise SweepFileError(f"{path}: `environment` is a mapping of variable names to values "
                             f"(e.g. OMP_NUM_THREADS: 1), not a {type(environment).__name__}")
    for name, value in environment.items():
        if not isinstance(value, (str, int, float, bool)):
            raise SweepFileError(f"{path}: environment variable {name} is given {value!r}; its value is one "
                                 "number or text")
        if not isinstance(name, str) or not ENVIRONMENT_NAME.fullmatch(name):
            raise SweepFileError(f"{path}: a sweep file may not set the environment variable {name}: only thread "
                                 f"counts and GPU choices ({ENVIRONMENT_NAME.pattern.replace('|', ', ')}); other "
                                 "variables can make the runs load code, so set them in your own shell if you mean to")
    return sweep


def multiruns(overrides: list, path: Path) -> list[list[str]]:
    """A sweep file's `overrides` as a list of multiruns: one list of overrides, or several."""
    nested = [isinstance(item, list) for item in overrides]
    if any(nested) and not all(nested):
        raise SweepFileError(f"{path}: `overrides:` mixes overrides and lists of overrides; use one form or the other")
    groups = overrides if all(nested) else [overrides]
    for override in (override for group in groups for override in group):
        if not isinstance(override, str):
            raise SweepFileError(f"{path}: `overrides:` holds {override!r}; each override is text, key=value as typed "
                                 "after `python -m phases.run -m` (quote it if YAML reads it otherwise)")
    return [list(group) for group in groups]


def parse(override: str, source: str) -> Override:
    try:
        return OverridesParser.create().parse_overrides([override])[0]
    except Exception as error:  # Hydra's parser raises its own types; all mean "not an override"
        raise SweepFileError(f"{source}: `{override}` is not an override: {paragraph(error)}") from error


def refuse_code(override: str, source: str, from_file: bool) -> None:
    """Refuse an override that would have a run call, import or load code named by the text (`_target_`
    can only be spelt out: Hydra's grammar has no escape that would make it of other characters)."""
    why = None
    if override.lstrip().startswith("-"):
        why = "it is a command-line flag of Hydra, not an override"
    elif "_target_" in override:
        why = "`_target_` names a function to call"
    elif re.search(r"\boc\.(decode|create)\s*:", override):
        why = "oc.decode and oc.create build config nodes from text when the run starts, which could name code"
    if why is None:
        key = parse(override, source).key_or_group
        if (key == "hydra" or key.startswith(("hydra.", "hydra/"))) and not key.startswith(HYDRA_ALLOWED):
            why = "of Hydra's own settings only the launcher's may be set (hydra/launcher=..., hydra.launcher.*)"
        elif from_file and key in SHELL_SETTINGS:
            why = "it runs shell commands; give it after `--` on your own command line if you mean it"
        elif from_file and key in CODE_SETTINGS:
            why = ("it names code to import (arch=custom's class); give it after `--` on your own command line if "
                   "you mean it")
    if why:
        raise SweepFileError(f"{source}: `{override}` is refused: {why}")


def job_overrides(overrides: list[str]) -> list[list[str]]:
    """The cartesian product of the sweep's overrides, as Hydra's basic sweeper forms it."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = [[f"{override.get_key_element()}={value}" for value in override.sweep_string_iterator()]
               if override.is_sweep_override() else [override.input_line] for override in parsed]
    return [list(combination) for combination in itertools.product(*choices)]


def first_failing(job: list[str]) -> str:
    """The override at which composing the job first fails, group choices (`arch=linear`) first, since
    the keys they bring (`arch.init_scale`) are only valid after them."""
    ordered = sorted(job, key=lambda override: "." in override.split("=", 1)[0])
    for count in range(1, len(ordered) + 1):
        try:
            compose(ordered[:count])
        except Exception:  # the same failure as the whole job's: this override is where it starts
            return ordered[count - 1]
    return " ".join(job)


def composed_jobs(overrides: list[str], source: str | Path) -> list[tuple[list[str], DictConfig]]:
    """Every job of the overrides with its composed config; SweepFileError naming `source` and the
    override where composing fails (phases.sweep's file, or phases.multirun's command line)."""
    try:
        combinations = job_overrides(overrides)
    except Exception as error:  # a sweep value list Hydra cannot expand, e.g. `seed=range(x)`
        raise SweepFileError(f"{source}: the overrides do not form jobs: {paragraph(error)}") from error
    jobs = []
    for job in combinations:
        try:
            jobs.append((job, compose(job)))
        except Exception as error:  # Hydra's and our config errors have many types; each is the user's input
            raise SweepFileError(f"{source}: the override `{first_failing(job)}` does not compose: "
                                 f"{paragraph(error)} (job: {' '.join(job)})") from error
    return jobs


def list_jobs(overrides: list[str], sweep_file: Path) -> list[Job]:
    return [Job(job, run_folder(cfg.paths.outputs, run_id(cfg)), cfg)
            for job, cfg in composed_jobs(overrides, sweep_file)]


def print_jobs(jobs: list[tuple[list[str], Path]] | list[Job], before: dict[Path, str] | None = None,
               estimates: dict[Path, tuple[float, Launch]] | None = None) -> dict[str, int]:
    """One line per job: its status, run id and overrides, and with `estimates` the wall time left to it."""
    counts: dict[str, int] = {}
    for job, folder, *_ in jobs:
        status, detail = job_status(folder)
        if before is not None and status == "done" and before.get(folder) == "done":
            status = "skipped (done before)"
        counts[status] = counts.get(status, 0) + 1
        left = "" if estimates is None else f"{duration(estimates[folder][0]) if folder in estimates else '-':>13}  "
        print(f"  {status:<21} {left}{folder.name}  {' '.join(job)}" + (f"\n      {detail}" if detail else ""))
    return counts


def write_job_lists(name: str, sweep_file: Path, jobs: list[Job]) -> None:
    """One job list per outputs folder the jobs write to (an override may sweep paths.outputs too)."""
    by_outputs: dict[Path, list[tuple[str, list[str]]]] = {}
    for job, folder, _ in jobs:
        by_outputs.setdefault(folder.parent.parent, []).append((folder.name, job))
    for outputs, listed in by_outputs.items():
        try:
            write_job_list(outputs, name, sweep_file, listed)
        except OSError as error:
            raise SweepFileError(f"cannot write the sweep's job list in {outputs}: {error.strerror or error}"
                                 f"{': ' + str(error.filename) if error.filename else ''}") from error


def prepare(arguments: argparse.Namespace, extra: list[str]) -> tuple[dict, list[list[str]], list[list[Job]]]:
    """The sweep file read and checked, its multiruns and their jobs: SweepFileError on anything refused."""
    sweep = load_sweep(arguments.sweep)
    groups = multiruns(sweep["overrides"], arguments.sweep)
    for override in dict.fromkeys(override for group in groups for override in group):  # in the file's order
        refuse_code(override, str(arguments.sweep), from_file=True)
    for override in extra:
        refuse_code(override, "the overrides after `--`", from_file=False)
    groups = [group + extra for group in groups]
    return sweep, groups, [list_jobs(overrides, arguments.sweep) for overrides in groups]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a file in sweeps/")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs and their status, run nothing")
    parser.add_argument("--estimate", action="store_true",
                        help="estimate each job's wall time on this machine, measuring each configuration's rates "
                             "once (cached in <outputs>/calibration/)")
    own, extra = [*sys.argv[1:]], []
    if "--" in own:  # what follows `--` are more overrides, for the runs
        separator = own.index("--")
        own, extra = own[:separator], own[separator + 1 :]
    arguments = parser.parse_args(own)
    name = arguments.sweep.stem
    try:
        sweep, groups, group_jobs = prepare(arguments, extra)
    except SweepFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    jobs = [job for each in group_jobs for job in each]
    print(f"{name}: {str(sweep.get('description') or '').strip()}")
    if sweep.get("cost"):
        print(f"cost: {str(sweep['cost']).strip()}")
    environment = {str(key): str(value) for key, value in (sweep.get("environment") or {}).items()}
    prefix = "".join(f"{key}={shlex.quote(value)} " for key, value in environment.items())
    if len(groups) > 1:
        print(f"{len(jobs)} jobs in {len(groups)} multiruns:")
    for overrides, each in zip(groups, group_jobs, strict=True):
        print(f"{len(each)} jobs: {prefix}python -m phases.run -m {shlex.join(overrides)}")
    estimates = None
    if arguments.estimate or not arguments.dry_run:  # a plain listing stays quick: no torch, no calibration
        from phases.training.cost import estimate, print_estimate

        try:
            estimates = estimate(group_jobs, environment, measure=arguments.estimate)
        except Exception:  # noqa: BLE001 - without --estimate the estimate is a courtesy: it never stops a sweep
            if arguments.estimate:
                raise
    if arguments.dry_run:
        counts = print_jobs(jobs, estimates=estimates)
        print(", ".join(f"{count} {status}" for status, count in sorted(counts.items())))
        if estimates is not None:
            print_estimate(estimates)
        return 0
    if estimates is not None and arguments.estimate:
        print_estimate(estimates)
    try:
        write_job_lists(name, arguments.sweep, jobs)
    except SweepFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    before = {job.folder: job_status(job.folder)[0] for job in jobs}
    started = time.perf_counter()
    returncode = 0
    for overrides in groups:  # in order; a failed multirun does not stop the next one
        command = [sys.executable, "-m", "phases.run", "-m", *overrides]
        # PHASES_SWEEP: each run records the sweep that ran it in run.json (the job lists add the others).
        run_environment = {**os.environ, **environment, "PHASES_SWEEP": name}
        returncode = subprocess.run(command, env=run_environment, check=False).returncode or returncode
    print(f"summary of {name}:")
    counts = print_jobs(jobs, before)
    print(", ".join(f"{count} {status}" for status, count in sorted(counts.items())))
    here = [seconds / launch.parallel for seconds, launch in (estimates or {}).values() if launch.where == "here"]
    if here and len(here) == len(estimates):  # cached rates for every job, all run here: how far off they were
        took, expected = time.perf_counter() - started, sum(here)
        print(f"took {duration(took)}; estimated {duration(expected)} ({(took - expected) / expected:+.0%})")
    unfinished = any(status != "done" and not status.startswith("skipped") for status in counts)
    return 1 if returncode != 0 or unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
