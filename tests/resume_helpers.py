"""Shared by the resume and SLURM tests: a run long enough to interrupt, and how to compare metrics."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from tests.conftest import REPOSITORY

# Long enough to be interrupted at chosen moments: 9 evaluations of every layer, 128 updates.
SETTINGS = ["schedule.max_steps=128", "schedule.batch_size=16", "probe.train_size=200", "probe.test_size=100",
            "probe.classifier_train_size=200", "probe.calibration_size=100", "probe.layers=null", "arch.width=0.25",
            "progress=false", "paths.system_data_dir=null"]
KEY = ["step", "layer", "probe", "metric", "split"]


def start(data_dir: Path, outputs: Path, *extra: str) -> subprocess.Popen:
    # SIGINT at its default in the run, as in a terminal: pytest started as a shell's background job (`make
    # test &`, nohup) inherits it ignored, and a run keeps an ignored SIGINT ignored, as it should.
    return subprocess.Popen([sys.executable, "-m", "phases.run", *SETTINGS, f"paths.outputs={outputs}", *extra],
                            cwd=REPOSITORY, env={**os.environ, "PHASES_DATA_DIR": str(data_dir)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def steps_written(outputs: Path) -> int:
    """Distinct steps in the run's metrics, read as any reader would: a partial file would fail here."""
    files = list((outputs / "runs").glob("*/metrics.parquet"))
    if not files:
        return 0
    try:
        # One open file: pyarrow given a path may open it twice (footer, then data) and mix two versions.
        with open(files[0], "rb") as handle:
            return pq.read_table(handle, columns=["step"]).to_pandas()["step"].nunique()
    except FileNotFoundError:  # replaced between glob and open: the rename itself is atomic
        return 0


def metrics(outputs: Path) -> pd.DataFrame:
    (folder,) = (outputs / "runs").iterdir()
    return pq.read_table(folder / "metrics.parquet").to_pandas().sort_values(KEY).reset_index(drop=True)


def assert_same_metrics(resumed: pd.DataFrame, reference: pd.DataFrame) -> None:
    assert resumed[KEY].equals(reference[KEY])  # the same rows
    # The same values; BLAS reductions on several threads are not bitwise reproducible, even between
    # two uninterrupted runs, hence the tolerance of float32 rounding.
    pd.testing.assert_series_equal(resumed["value"], reference["value"], rtol=1e-4, atol=1e-6)
