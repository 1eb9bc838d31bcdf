"""Every run's metrics in one tidy table (no torch: the analysis side only reads files).

Reads `<outputs>/runs/*/metrics.parquet`, checks each file's schema against the one runs write,
attaches each run's status, sweeps and settings (from run.json, config.yaml and the sweeps' job lists,
phases.store.sweep_jobs) and writes `tables/metrics.parquet` (the finished runs' rows, once per sweep
the run belongs to) and `tables/runs.csv` (a row per run and sweep: its status and why it is left
out). Runs that failed, are unfinished or unreadable, stray files in `runs/` and unreadable job lists
are listed with their reason, never mixed in: no file under `outputs` can stop the others being drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import yaml

from phases.store.files import write_atomically
from phases.store.identity import NON_RESULT_KEYS
from phases.store.metrics import METRICS_SCHEMA, read_metrics
from phases.store.record import CONFIG_FILE, METRICS_FILE, RECORD_FILE, RunRecord, RunStatus, is_crashed
from phases.store.sweep_jobs import read_job_lists

# Settings that never tell two experiments apart (the seed is what seeds aggregate over; the rest is
# where or how fast a run happened, or a name repeated in the metrics' own columns).
NOT_SETTINGS = ("seed", "dataset.name", "arch.name", *NON_RESULT_KEYS)
NO_SWEEP = "single runs"  # runs started by `python -m phases.run` / `make demo` that no sweep lists
# Statuses only the analysis gives, beside RunStatus's: no run.json it can read, a done run whose
# metrics.parquet or config.yaml it cannot use, a run whose process died while running (its lock is
# free), and an entry of `runs/` that is no run folder.
UNREADABLE, INVALID, CRASHED, UNEXPECTED = "unreadable", "invalid", "crashed", "unexpected"
RUN_COLUMNS = ("run_id", "sweep", "status", "reason", "started_at", "ended_at", "training_time_s", "probing_time_s")
# Columns a measurement cannot lack: the tables group and the figures draw by them.
KEY_COLUMNS = [field.name for field in METRICS_SCHEMA if field.name != "value"]
READ_ERRORS = (OSError, ValueError, RecursionError)  # RecursionError: JSON or YAML nested too deep


@dataclass
class Runs:
    metrics: pd.DataFrame  # rows of finished runs, with `sweep` and one column per setting that varies
    runs: pd.DataFrame  # one row per run folder and sweep: run_id, sweep, status, reason, wall times
    settings: dict[str, list[str]]  # per sweep: the setting columns that vary between its runs


@dataclass
class Inspected:
    row: dict  # the run's row for runs.csv, without its sweep
    recorded_sweep: str | None  # the sweep run.json says ran it
    metrics: pd.DataFrame | None = None  # when the run is finished and its files are usable
    settings: dict | None = None  # its flat settings, when finished


def flatten(node: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become their text, so they can be compared and grouped."""
    flat: dict[str, object] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value) if isinstance(value, list) else value
    return flat


def is_setting(key: str) -> bool:
    # A setting named like a metrics column would overwrite that column when it becomes one.
    if key in METRICS_SCHEMA.names or key == "sweep":
        return False
    return not key.endswith("_target_") and not any(key == skip or key.startswith(f"{skip}.") for skip in NOT_SETTINGS)


def regular_file(path: Path) -> Path:
    """`path`, after checking it is a plain file: reading a pipe planted under a run's name would wait forever."""
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a plain file")
    return path


def read_settings(folder: Path) -> dict[str, object]:
    path = regular_file(folder / CONFIG_FILE)
    try:
        settings = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:  # its first line says what; the rest draws where, over many lines
        raise ValueError(f"{path} is not YAML: {str(error).splitlines()[0]}") from error
    if not isinstance(settings, dict):
        raise ValueError(f"{folder / CONFIG_FILE} is not a mapping of settings but {type(settings).__name__}")
    return {key: value for key, value in flatten(settings).items() if is_setting(key)}


def read_run_metrics(folder: Path) -> pd.DataFrame:
    path = regular_file(folder / METRICS_FILE)
    try:
        metrics = read_metrics(path)
    except (*READ_ERRORS, pa.ArrowException) as error:  # pyarrow's reason does not say which file
        raise ValueError(str(error) if str(path) in str(error) else f"{path}: {error}") from error
    if metrics.empty:  # a run is done once its evaluations are written: step 0 at least
        raise ValueError(f"{path} holds no measurements")
    empty = [column for column in KEY_COLUMNS if metrics[column].isna().any()]
    if empty:
        raise ValueError(f"{path} has empty cells in {', '.join(empty)}")
    others = sorted(set(metrics["run_id"]) - {folder.name})
    if others:  # the settings of the folder would be attached to another run's measurements
        raise ValueError(f"{path} holds rows of run {others[0]}, not of {folder.name}")
    return metrics


def open_status(folder: Path, record: RunRecord) -> tuple[str, str | None]:
    """(status, reason) of a run not done: a `running` run whose process died shows as crashed."""
    try:
        crashed = is_crashed(folder, record)
    except OSError:  # a lock that cannot be opened tells nothing: the recorded status stands
        crashed = False
    if crashed:
        return CRASHED, record.error or "its process died while running: rerun its command to resume"
    reasons = {RunStatus.running: "still running (its process holds the run's lock)",
               RunStatus.interrupted: "interrupted: rerun its command to resume"}
    return record.status.value, record.error or reasons.get(record.status)


def inspect_run(folder: Path) -> Inspected:
    """A run folder's row for runs.csv, its sweep, and its metrics and settings if it is finished."""
    try:
        regular_file(folder / RECORD_FILE)
        record = RunRecord.read(folder)
        if record.sweep is not None and not isinstance(record.sweep, str):
            raise ValueError(f"{folder / RECORD_FILE}: sweep {record.sweep!r} is not a name")
    except READ_ERRORS as error:
        return Inspected(dict.fromkeys(RUN_COLUMNS) | {"run_id": folder.name, "status": UNREADABLE,
                                                       "reason": f"{RECORD_FILE}: {error}"}, None)
    # The status as its plain text: runs.csv and the report show "done", not the enum's name.
    row = {"run_id": folder.name, "status": record.status.value, "reason": record.error,
           "started_at": record.started_at, "ended_at": record.ended_at,
           "training_time_s": record.training_time_s, "probing_time_s": record.probing_time_s}
    recorded_sweep = record.sweep or None
    if record.status is not RunStatus.done:
        row["status"], row["reason"] = open_status(folder, record)
        return Inspected(row, recorded_sweep)
    try:
        metrics, settings = read_run_metrics(folder), read_settings(folder)
    except READ_ERRORS as error:
        row.update(status=INVALID, reason=str(error))
        return Inspected(row, recorded_sweep)
    return Inspected(row, recorded_sweep, metrics, settings)


def stray_row(name: str, sweep: str, status: str, reason: str) -> dict:
    return dict.fromkeys(RUN_COLUMNS) | {"run_id": name, "sweep": sweep, "status": status, "reason": reason}


def run_entries(outputs: Path) -> tuple[list[Path], list[dict]]:
    """(the folders of `<outputs>/runs/`, a row for each other entry there)."""
    runs_folder = outputs / "runs"
    if not runs_folder.exists():
        return [], []
    if not runs_folder.is_dir():
        return [], [stray_row("runs", NO_SWEEP, UNEXPECTED, "runs/ is not a folder")]
    folders, strays = [], []
    for entry in sorted(runs_folder.iterdir()):
        if entry.is_dir():
            folders.append(entry)
        else:
            strays.append(stray_row(f"runs/{entry.name}", NO_SWEEP, UNEXPECTED,
                                    "not a run folder: runs/ holds only the folders runs write"))
    return folders, strays


def varying_settings(metrics: pd.DataFrame, settings_frame: pd.DataFrame) -> dict[str, list[str]]:
    """Per sweep, the settings that differ between its runs on one dataset and arch (e.g.
    dataset.atypical_fraction); settings that differ only because the dataset or arch does
    (dataset.mean, ...) would repeat what those columns say."""
    cells = metrics.groupby(["sweep", "run_id"])[["dataset", "arch"]].first().reset_index()
    varying: dict[str, list[str]] = {}
    for sweep, sweep_cells in cells.groupby("sweep"):
        keys: set[str] = set()
        for _, cell in sweep_cells.groupby(["dataset", "arch"]):
            frame = settings_frame.loc[cell["run_id"]].astype(str)
            keys |= {key for key in frame.columns if frame[key].nunique() > 1}
        varying[sweep] = sorted(keys)
    return varying


def load_runs(outputs: Path) -> Runs:
    outputs = Path(outputs)
    members, job_list_problems = read_job_lists(outputs)
    folders, rows = run_entries(outputs)
    rows += [stray_row(name, sweep, UNREADABLE, reason) for name, sweep, reason in job_list_problems]
    tables, settings_of = [], {}
    for folder in folders:
        inspected = inspect_run(folder)
        # In every sweep that lists it, whichever process ran it; a row (and the metrics) once per sweep.
        sweeps = sorted(members.get(folder.name, set()) | ({inspected.recorded_sweep} - {None})) or [NO_SWEEP]
        rows += [inspected.row | {"sweep": sweep} for sweep in sweeps]
        if inspected.metrics is not None:
            tables += [inspected.metrics.assign(sweep=sweep) for sweep in sweeps]
            settings_of[folder.name] = inspected.settings
    runs = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    if not tables:
        return Runs(pd.DataFrame(), runs, {})
    metrics = pd.concat(tables, ignore_index=True)
    # One row per finished run, also for a run with no settings at all (from_dict would drop it).
    settings_frame = pd.DataFrame(list(settings_of.values()), index=list(settings_of))
    varying = varying_settings(metrics, settings_frame)
    for key in sorted({key for keys in varying.values() for key in keys}):
        metrics[key] = metrics["run_id"].map(settings_frame[key])
    return Runs(metrics, runs, varying)


def typed_setting(column: pd.Series) -> pd.Series:
    """A setting column with one parquet type: numbers stay numbers (`dataset.atypical_fraction` 0.2 and
    0.05 filter and plot as numbers), flags stay booleans, anything mixed becomes text; unset is null."""
    values = column.dropna()
    if values.map(lambda value: isinstance(value, bool)).all():
        return column.astype("boolean")
    if values.map(lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)).all():
        return pd.to_numeric(column)
    return column.map(lambda value: None if value is None or value != value else str(value)).astype("string")


def write_tables(runs: Runs, outputs: Path) -> list[Path]:
    folder = outputs / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "runs.csv"]
    write_atomically(written[0], lambda temporary: runs.runs.to_csv(temporary, index=False))
    if not runs.metrics.empty:
        written.append(folder / "metrics.parquet")
        frame = runs.metrics.assign(**{key: typed_setting(runs.metrics[key])
                                       for key in {key for keys in runs.settings.values() for key in keys}})
        write_atomically(written[1], lambda temporary: frame.to_parquet(temporary, index=False))
    return written


def summary(runs: Runs) -> str:
    """Runs per sweep and status, then every run left out and why."""
    if runs.runs.empty:
        return "no runs"
    lines = [runs.runs.groupby(["sweep", "status"]).size().rename("runs").to_string()]
    left_out = runs.runs[runs.runs["status"] != RunStatus.done.value]
    if not left_out.empty:
        lines.append(f"{len(left_out)} run(s) or file(s) left out of figures and tables:")
        lines += [f"  {row.run_id} ({row.sweep}): {row.status}" + (f": {row.reason}" if row.reason else "")
                  for row in left_out.itertuples()]
    return "\n".join(lines)
