"""Interrupted runs resume to the same metrics; concurrent runs of one config do not collide."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPOSITORY, write_mnist_like

pytestmark = pytest.mark.slow

# Long enough to be interrupted at chosen moments: 9 evaluations of every layer, 128 updates.
SETTINGS = ["schedule.max_steps=128", "schedule.batch_size=16", "probe.train_size=200", "probe.test_size=100",
            "probe.classifier_train_size=200", "probe.calibration_size=100", "probe.layers=null", "arch.width=0.25",
            "progress=false", "paths.system_data_dir=null"]
KEY = ["step", "layer", "probe", "metric", "split"]


def start(data_dir: Path, outputs: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "phases.run", *SETTINGS, f"paths.outputs={outputs}", *extra],
                            cwd=REPOSITORY, env={**os.environ, "PHASES_DATA_DIR": str(data_dir)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_mnist_like(root / "FashionMNIST" / "raw", train=400, test=200)
    return root


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    outputs = tmp_path_factory.mktemp("uninterrupted")
    process = start(data_dir, outputs)
    assert process.wait(timeout=600) == 0, process.stderr.read()
    return metrics(outputs)


def assert_same_metrics(resumed: pd.DataFrame, reference: pd.DataFrame) -> None:
    assert resumed[KEY].equals(reference[KEY])  # the same rows
    # The same values; BLAS reductions on several threads are not bitwise reproducible, even between
    # two uninterrupted runs, hence the tolerance of float32 rounding.
    pd.testing.assert_series_equal(resumed["value"], reference["value"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kill_after_steps", [1, 4, 7], ids=["early", "middle", "late"])
def test_kill_9_at_any_moment_then_rerun_gives_the_uninterrupted_metrics(data_dir, tmp_path, uninterrupted,
                                                                         kill_after_steps):
    outputs = tmp_path / "outputs"
    seen_partial = []

    def read_continuously():  # a reader polling the metrics while they are rewritten must never fail
        while not stop_reading.is_set():
            try:
                steps_written(outputs)
            except Exception as error:  # noqa: BLE001 - any failure to read is what this test looks for
                seen_partial.append(error)

    stop_reading = threading.Event()
    reader = threading.Thread(target=read_continuously)
    reader.start()
    try:
        process = start(data_dir, outputs)
        while steps_written(outputs) < kill_after_steps and process.poll() is None:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)  # no chance to clean up: mid-training, mid-probe or mid-write
        process.wait(timeout=60)
        rerun = start(data_dir, outputs)
        assert rerun.wait(timeout=600) == 0, rerun.stderr.read()
    finally:
        stop_reading.set()
        reader.join()
    assert not seen_partial
    (folder,) = (outputs / "runs").iterdir()
    assert json.loads((folder / "run.json").read_text())["status"] == "done"
    assert not (folder / "checkpoint.pt").exists()
    assert_same_metrics(metrics(outputs), uninterrupted)


def test_sigterm_checkpoints_and_the_rerun_resumes(data_dir, tmp_path, uninterrupted):
    outputs = tmp_path / "outputs"
    process = start(data_dir, outputs)
    while steps_written(outputs) < 5 and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 3
    assert "run the same command again to resume" in process.stderr.read()
    (folder,) = (outputs / "runs").iterdir()
    assert json.loads((folder / "run.json").read_text())["status"] == "interrupted"
    assert (folder / "checkpoint.pt").is_file()
    rerun = start(data_dir, outputs)
    assert rerun.wait(timeout=600) == 0
    assert "resuming from its checkpoint at step" in rerun.stdout.read()
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "done" and record["resumed_from_step"] >= 8
    assert_same_metrics(metrics(outputs), uninterrupted)


def test_a_second_process_on_a_running_config_skips_it(data_dir, tmp_path):
    outputs = tmp_path / "outputs"
    first = start(data_dir, outputs)
    while steps_written(outputs) < 2 and first.poll() is None:
        time.sleep(0.01)
    second = start(data_dir, outputs)
    assert second.wait(timeout=120) == 0
    assert "is being run by another process right now: skipped" in second.stdout.read()
    assert first.wait(timeout=600) == 0
    (folder,) = (outputs / "runs").iterdir()
    assert json.loads((folder / "run.json").read_text())["status"] == "done"
