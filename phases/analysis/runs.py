"""Every run's metrics in one tidy table (no torch: the analysis side only reads files).

Reads `<outputs>/runs/*/metrics.parquet`, checks each file's schema against the one runs write,
attaches each run's status, sweep and settings (from run.json and config.yaml) and writes
`tables/metrics.parquet` (the finished runs' rows) and `tables/runs.csv` (every run, its status and
why it is left out). Runs that failed, are unfinished or unreadable are listed, never mixed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from phases.store.files import write_atomically
from phases.store.identity import NON_RESULT_KEYS
from phases.store.metrics import read_metrics
from phases.store.record import CONFIG_FILE, METRICS_FILE, RECORD_FILE, RunRecord, RunStatus, run_folders

# Settings that never tell two experiments apart (the seed is what seeds aggregate over; the rest is
# where or how fast a run happened, or a name repeated in the metrics' own columns).
NOT_SETTINGS = ("seed", "dataset.name", "arch.name", *NON_RESULT_KEYS)
NO_SWEEP = "single runs"  # runs started by `python -m phases.run` / `make demo`, not by `make sweep-<name>`
# Statuses only the analysis gives, beside RunStatus's: no run.json it can read, or a done run whose
# metrics.parquet or config.yaml it cannot use.
UNREADABLE, INVALID = "unreadable", "invalid"
RUN_COLUMNS = ("run_id", "sweep", "status", "reason", "started_at", "ended_at", "training_time_s", "probing_time_s")


@dataclass
class Runs:
    metrics: pd.DataFrame  # rows of finished runs, with `sweep` and one column per setting that varies
    runs: pd.DataFrame  # one row per run folder: run_id, sweep, status, reason, wall times
    settings: dict[str, list[str]]  # per sweep: the setting columns that vary between its runs


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
    return not key.endswith("_target_") and not any(key == skip or key.startswith(f"{skip}.") for skip in NOT_SETTINGS)


def inspect_run(folder: Path) -> tuple[dict, pd.DataFrame | None, dict]:
    """(the run's row for runs.csv, its metrics if it is finished and readable, its flat settings)."""
    try:
        record = RunRecord.read(folder)
    except (OSError, ValueError) as error:
        row = dict.fromkeys(RUN_COLUMNS) | {"run_id": folder.name, "sweep": NO_SWEEP, "status": UNREADABLE,
                                            "reason": f"{RECORD_FILE}: {error}"}
        return row, None, {}
    # The status as its plain text: runs.csv and the report show "done", not the enum's name.
    row = {"run_id": folder.name, "sweep": record.sweep or NO_SWEEP, "status": record.status.value,
           "reason": record.error, "started_at": record.started_at, "ended_at": record.ended_at,
           "training_time_s": record.training_time_s, "probing_time_s": record.probing_time_s}
    if record.status is not RunStatus.done:
        row["reason"] = row["reason"] or ("running or interrupted: rerun its command to resume"
                                          if record.status is RunStatus.running else None)
        return row, None, {}
    try:
        metrics = read_metrics(folder / METRICS_FILE)
        settings = flatten(yaml.safe_load((folder / CONFIG_FILE).read_text()) or {})
    except (OSError, ValueError, yaml.YAMLError) as error:
        row.update(status=INVALID, reason=str(error))
        return row, None, {}
    return row, metrics, {key: value for key, value in settings.items() if is_setting(key)}


def load_runs(outputs: Path) -> Runs:
    rows, tables, settings_of = [], [], {}
    for folder in run_folders(outputs):
        row, metrics, settings = inspect_run(folder)
        rows.append(row)
        if metrics is not None:
            metrics["sweep"] = row["sweep"]
            tables.append(metrics)
            settings_of[folder.name] = settings
    runs = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    if not tables:
        return Runs(pd.DataFrame(), runs, {})
    metrics = pd.concat(tables, ignore_index=True)
    # A setting becomes a column when it differs between runs of one sweep on the same dataset and arch
    # (e.g. dataset.atypical_fraction): settings that differ only because the dataset or arch does
    # (dataset.mean, ...) would repeat what those columns say.
    settings_frame = pd.DataFrame.from_dict(settings_of, orient="index")
    cells = metrics.groupby("run_id")[["sweep", "dataset", "arch"]].first()
    varying: dict[str, list[str]] = {}
    for sweep, sweep_cells in cells.groupby("sweep"):
        keys: set[str] = set()
        for _, cell in sweep_cells.groupby(["dataset", "arch"]):
            frame = settings_frame.loc[cell.index].astype(str)
            keys |= {key for key in frame.columns if frame[key].nunique() > 1}
        varying[sweep] = sorted(keys)
    for key in sorted({key for keys in varying.values() for key in keys}):
        metrics[key] = metrics["run_id"].map(settings_frame[key])
    return Runs(metrics, runs, varying)


def write_tables(runs: Runs, outputs: Path) -> list[Path]:
    folder = outputs / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "runs.csv"]
    write_atomically(written[0], lambda temporary: runs.runs.to_csv(temporary, index=False))
    if not runs.metrics.empty:
        written.append(folder / "metrics.parquet")
        frame = runs.metrics.astype({key: str for keys in runs.settings.values() for key in keys})
        write_atomically(written[1], lambda temporary: frame.to_parquet(temporary, index=False))
    return written


def summary(runs: Runs) -> str:
    """Runs per sweep and status, then every run left out and why."""
    if runs.runs.empty:
        return "no runs"
    lines = [runs.runs.groupby(["sweep", "status"]).size().rename("runs").to_string()]
    left_out = runs.runs[runs.runs["status"] != RunStatus.done.value]
    if not left_out.empty:
        lines.append(f"{len(left_out)} run(s) left out of figures and tables:")
        lines += [f"  {row.run_id} ({row.sweep}): {row.status}" + (f": {row.reason}" if row.reason else "")
                  for row in left_out.itertuples()]
    return "\n".join(lines)
