"""Every run's metrics in one tidy table (no torch: the analysis side only reads files).

    python -m phases.aggregate --outputs outputs     # prints a summary of the runs found
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from phases.store import read_run_status


def run_folders(outputs: Path) -> list[Path]:
    return sorted(path for path in (outputs / "runs").glob("*") if path.is_dir())


def load_metrics(outputs: Path) -> pd.DataFrame:
    """All runs' metrics rows, with each run's `status` from its run.json; empty when there are none."""
    tables = []
    for folder in run_folders(outputs):
        metrics = folder / "metrics.parquet"
        if metrics.is_file():
            # Through one open file: a run may replace metrics.parquet at any moment, and pyarrow
            # given a path can open it twice (footer, then data) and mix two versions.
            with open(metrics, "rb") as handle:
                table = pq.read_table(handle).to_pandas()
            table["status"] = read_run_status(folder) or "unknown"
            tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outputs", type=Path, default=Path("outputs"), help="paths.outputs of the runs")
    arguments = parser.parse_args()
    metrics = load_metrics(arguments.outputs)
    if metrics.empty:
        print(f"no runs with metrics under {arguments.outputs / 'runs'}")
        return
    summary = metrics.groupby(["run_id", "status"]).agg(rows=("value", "size"), last_step=("step", "max"))
    print(summary.to_string())


if __name__ == "__main__":
    main()
