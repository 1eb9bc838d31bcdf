"""Sweeps as a user runs them: `python -m phases.sweep sweeps/<name>.yaml [--dry-run]`."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPOSITORY, write_mnist_like

pytestmark = pytest.mark.slow


def sweep(path, *extra, data_dir):
    return subprocess.run([sys.executable, "-m", "phases.sweep", str(path), *extra], cwd=REPOSITORY,
                          env={**os.environ, "PHASES_DATA_DIR": str(data_dir)}, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("name", sorted(path.stem for path in (REPOSITORY / "sweeps").glob("*.yaml")))
def test_every_sweep_file_lists_its_jobs_without_running_them(name, tmp_path):
    result = sweep(REPOSITORY / "sweeps" / f"{name}.yaml", "--dry-run", "--", f"paths.outputs={tmp_path}",
                   data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = {"smoke": 2, "cpu_repro": 9, "paper_phases": 36, "paper_transfer": 12}[name]
    assert f"{expected} jobs: python -m phases.run -m" in result.stdout
    assert result.stdout.count("  pending ") == expected
    assert not (tmp_path / "runs").exists()


def test_a_failing_job_does_not_stop_the_sweep_and_is_reported(tmp_path):
    data_dir = tmp_path / "data"
    write_mnist_like(data_dir / "FashionMNIST" / "raw", train=200, test=100)  # and no MNIST
    sweep_file = tmp_path / "two.yaml"
    sweep_file.write_text(yaml.safe_dump({"description": "one job lacks its data", "overrides": [
        "dataset=mnist,fashion_mnist", "schedule.max_steps=4", "schedule.batch_size=16", "arch.width=0.25",
        "probe.train_size=50", "probe.test_size=50", "progress=false", "paths.system_data_dir=null",
        f"paths.outputs={tmp_path / 'outputs'}"]}))
    first = sweep(sweep_file, data_dir=data_dir)
    assert first.returncode == 1
    summary = first.stdout.split("summary of two:")[1]
    assert "1 done, 1 failed" in summary and "DataNotFoundError: dataset 'mnist' not found" in summary
    runs = {folder.name.split("-")[0]: json.loads((folder / "run.json").read_text())
            for folder in (tmp_path / "outputs" / "runs").iterdir()}
    assert runs["fashion_mnist"]["status"] == "done" and runs["mnist"]["status"] == "failed"
    assert sorted(path.name for path in (tmp_path / "outputs" / "runs").glob("mnist-*/*")) == ["run.json"]

    write_mnist_like(data_dir / "MNIST" / "raw", train=200, test=100)
    second = sweep(sweep_file, data_dir=data_dir)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 done, 1 skipped (done before)" in second.stdout.split("summary of two:")[1]
    listing = sweep(sweep_file, "--dry-run", data_dir=data_dir)
    assert "2 done" in listing.stdout
