"""The long ("tidy") metrics table every run writes and the analysis reads: one row per measurement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from phases.store.files import write_atomically

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
        ("split", pa.string()),  # "train", "val" or "test"
        ("value", pa.float64()),
    ]
)


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)
    write_atomically(path, lambda temporary: pq.write_table(table, temporary))


def read_metrics(path: Path) -> pd.DataFrame:
    """One run's metrics, after checking the file has exactly the schema runs write."""
    # Through one open file: a run may replace metrics.parquet at any moment, and pyarrow given a path
    # can open it twice (footer, then data) and mix two versions.
    with open(path, "rb") as handle:
        table = pq.read_table(handle)
    if not table.schema.equals(METRICS_SCHEMA):
        expected = ", ".join(f"{field.name}: {field.type}" for field in METRICS_SCHEMA)
        found = ", ".join(f"{field.name}: {field.type}" for field in table.schema)
        raise ValueError(f"{path} has columns ({found}); runs write ({expected})")
    return table.to_pandas()
