"""`make status`: where every run under paths.outputs stands, one line each, at once.

    python -m phases.status                                # the runs under outputs/
    python -m phases.status --outputs /scratch/phases      # another paths.outputs
    python -m phases.status --sweep paper_phases           # one sweep's jobs, pending ones included

Each line: the run, its status (done; running: its process holds the run's lock; crashed: recorded as
running, but its process is gone: a rerun resumes it; failed, with the first line of its error;
interrupted; pending: nothing recorded yet; unreadable: its run.json is not a run record), the last step
evaluated out of schedule.max_steps, the last reconstruction loss of the penultimate layer (test split)
and the last test accuracy ('-' when none yet), and the time since the run last wrote a file. The last
line counts the statuses. Reads files only (no torch, no Hydra), and never waits for a run's lock.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from phases.analysis.selectors import classifier_accuracy, penultimate_reconstruction
from phases.store.metrics import read_metrics
from phases.store.progress import paragraph, read_record, run_state
from phases.store.record import CONFIG_FILE, METRICS_FILE, RunRecord, run_folder, run_folders
from phases.store.sweep_jobs import JOB_LIST_SUFFIX, SWEEPS_FOLDER, job_list_path, parse_job_list

if TYPE_CHECKING:
    import pandas as pd

NONE_YET = "-"
COLUMNS = ("run", "status", "step", "penultimate RL", "test accuracy", "age", "")
RIGHT_ALIGNED = {"step", "penultimate RL", "test accuracy", "age"}
READ_ERRORS = (OSError, ValueError, RecursionError)  # RecursionError: JSON or YAML nested too deep


class StatusError(Exception):
    """The runs cannot be listed (an unknown sweep, an unreadable job list); the message says why."""


def age(seconds: float) -> str:
    """`45s`, `3m`, `2h`, `1d`: the largest unit that is at least one, rounded down."""
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{int(seconds // length)}{unit}"
    return f"{max(int(seconds), 0)}s"


def last_update(folder: Path) -> float | None:
    """When the run last wrote a file of its folder (run.log, metrics.parquet, run.json, ...)."""
    try:
        return max([folder.stat().st_mtime, *(entry.stat().st_mtime for entry in folder.iterdir())])
    except OSError:
        return None


def max_steps(folder: Path) -> str:
    """schedule.max_steps from the run's config.yaml, written when the run starts; '?' before that."""
    try:
        config = yaml.safe_load((folder / CONFIG_FILE).read_text())
        return str(int(config["schedule"]["max_steps"]))
    except (*READ_ERRORS, yaml.YAMLError, KeyError, TypeError):
        return "?"


def last_value(curve: pd.DataFrame) -> float | None:
    """The value at the curve's last step, or None for an empty curve."""
    return None if curve.empty else curve.sort_values("step", kind="stable")["value"].iloc[-1]


def measured(folder: Path, record: RunRecord | None) -> tuple[str, str, str, str]:
    """(last step evaluated, penultimate RL, test accuracy, why the metrics could not be read or '').
    The step comes from metrics.parquet, rewritten after every evaluation, else from run.json."""
    step = record.steps_evaluated if record is not None else None
    reconstruction = accuracy = None
    problem = ""
    if (folder / METRICS_FILE).is_file():
        try:
            metrics = read_metrics(folder / METRICS_FILE)
        except READ_ERRORS as error:  # pyarrow's errors are ValueErrors and OSErrors
            problem = f"{METRICS_FILE}: {paragraph(error)}"
        else:
            if not metrics.empty:
                step = int(metrics["step"].max())
            reconstruction = last_value(penultimate_reconstruction(metrics))
            accuracy = last_value(classifier_accuracy(metrics))
    return (NONE_YET if step is None else str(step),
            NONE_YET if reconstruction is None else f"{reconstruction:.4g}",
            NONE_YET if accuracy is None else f"{accuracy:.3f}", problem)


def run_line(folder: Path, now: float) -> dict[str, str]:
    state = run_state(folder)
    step, reconstruction, accuracy, problem = measured(folder, state.record) if folder.is_dir() \
        else (NONE_YET, NONE_YET, NONE_YET, "")
    updated = last_update(folder) if folder.is_dir() else None
    return {"run": folder.name, "status": state.status, "step": f"{step}/{max_steps(folder)}",
            "penultimate RL": reconstruction, "test accuracy": accuracy,
            "age": NONE_YET if updated is None else age(now - updated),
            "": "; ".join(part for part in (state.detail, problem) if part)}


def sweep_members(outputs: Path, sweep: str) -> list[str]:
    """The run_ids of `sweep`: its job list's (pending jobs too), and the runs whose run.json says the
    sweep ran them (phases.store.sweep_jobs)."""
    path = job_list_path(outputs, sweep)
    if not path.exists():
        known = sorted(entry.name.removesuffix(JOB_LIST_SUFFIX) for entry in path.parent.glob(f"*{JOB_LIST_SUFFIX}"))
        listing = ", ".join(known) if known else f"none (phases.sweep writes them into {SWEEPS_FOLDER}/)"
        raise StatusError(f"no job list {path}: the sweeps of {outputs} are {listing}")
    try:
        listed = parse_job_list(path)
    except READ_ERRORS as error:
        raise StatusError(f"cannot read the job list {path}: {paragraph(error)}") from error
    ran = [folder.name for folder in run_folders(outputs)
           if getattr(read_record(folder)[0], "sweep", None) == sweep]
    # A job list is a file anyone may have edited: a name that is no folder name reads nothing elsewhere.
    folder_names = {run_id for run_id in listed if run_id and "/" not in run_id and run_id not in (".", "..")}
    return sorted(folder_names | set(ran))


def table(lines: list[dict[str, str]]) -> list[str]:
    """The lines as aligned columns under a header."""
    widths = {column: max(len(column), *(len(line[column]) for line in lines)) for column in COLUMNS}

    def cells(values: dict[str, str]) -> str:
        return "  ".join(values[column].rjust(widths[column]) if column in RIGHT_ALIGNED
                         else values[column].ljust(widths[column]) for column in COLUMNS).rstrip()

    return [cells({column: column for column in COLUMNS}), *(cells(line) for line in lines)]


def status_lines(outputs: Path, sweep: str | None) -> list[str]:
    """What the command prints: the table and the count of each status."""
    run_ids = sweep_members(outputs, sweep) if sweep else [folder.name for folder in run_folders(outputs)]
    if not run_ids:
        return [f"no runs under {Path(outputs) / 'runs'}" + (f" in sweep {sweep}" if sweep else "")]
    now = time.time()
    lines = [run_line(run_folder(outputs, run_id), now) for run_id in sorted(run_ids)]
    counts: dict[str, int] = {}
    for line in lines:
        counts[line["status"]] = counts.get(line["status"], 0) + 1
    summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    return [*table(lines), f"{len(lines)} run{'s' if len(lines) > 1 else ''}: {summary}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outputs", default="outputs", type=Path, help="paths.outputs of the runs")
    parser.add_argument("--sweep", help="only the runs of this sweep (its <outputs>/sweeps/<name>.jobs.json)")
    arguments = parser.parse_args(argv)
    try:
        lines = status_lines(arguments.outputs, arguments.sweep)
    except StatusError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # an outputs folder that cannot be listed: what and where, not a traceback
        where = f": {error.filename}" if error.filename else ""
        print(f"error: cannot read the runs of {arguments.outputs}: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
