"""The users' command, `python -m phases.run -m arch=resnet18,vgg11 dataset=cifar10,mnist`, as a user on an
offline machine runs it: data missing stops it before dispatch; data served by a mirror (a local HTTP
server standing in for torchvision's) is fetched once and the jobs run; a failing job makes it exit
non-zero with a summary naming the job and why, its traceback in run.json and run.log."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import REPOSITORY
from tests.mirror import serve, write_mirror

pytestmark = pytest.mark.slow
USERS_COMMAND = ["arch=resnet18,vgg11", "dataset=cifar10,mnist"]
SMALL = ["arch.width=0.25", "schedule.max_steps=2", "schedule.batch_size=16", "probe.train_size=40",
         "probe.test_size=20", "progress=false", "paths.system_data_dir=null"]


def multirun(*overrides: str, data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phases.run", "-m", *overrides], cwd=REPOSITORY,
                          env={**os.environ, "PHASES_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=900)


def test_missing_data_offline_stops_the_sweep_before_any_job_with_one_message(tmp_path):
    outputs = tmp_path / "outputs"
    result = multirun(*USERS_COMMAND, f"paths.outputs={outputs}", "dataset.download=false", data_dir=tmp_path / "data")
    assert result.returncode == 2
    assert result.stderr.count("error:") == 1 and "2 datasets the jobs need are missing" in result.stderr
    assert f"python -m phases.fetch dataset=cifar10,mnist paths.data_dir={tmp_path / 'data'}" in result.stderr
    assert "no job was started" in result.stderr and not (outputs / "runs").exists()


def test_the_users_command_fetches_once_runs_every_job_and_reports_the_failed_ones(tmp_path):
    """Through the local launcher (parallel processes): the summary and the exit status do not depend on
    the launcher. MNIST's copy on the mirror is smaller than dataset.train_size: its two jobs fail."""
    write_mirror(tmp_path / "mirror", ["cifar10"], train=120, test=40)
    checksums = write_mirror(tmp_path / "mirror", ["mnist"], train=60, test=40)  # md5s of both
    requests: list[str] = []
    outputs = tmp_path / "outputs"
    with serve(tmp_path / "mirror", requests) as url:
        result = multirun(*USERS_COMMAND, *SMALL, "dataset.train_size=100", f"paths.outputs={outputs}",
                          f"paths.data_mirror={url}", f"paths.data_checksums={checksums}",
                          "hydra/launcher=local", "hydra.launcher.max_parallel_jobs=2", data_dir=tmp_path / "data")
    assert result.returncode == 1, result.stdout + result.stderr
    # Each file fetched by the submitting process once (torchvision asks for a URL twice: a HEAD-like
    # redirect check, then the download), never by the four jobs.
    assert set(Counter(requests).values()) == {2} and len(set(requests)) == 5, requests
    summary = result.stdout.split("summary of the sweep:")[1]
    assert "2 done, 2 failed" in summary
    runs = {folder.name: json.loads((folder / "run.json").read_text()) for folder in (outputs / "runs").iterdir()}
    failed = [name for name, record in runs.items() if record["status"] == "failed"]
    assert sorted(name.split("-")[:2] for name in failed) == [["mnist", "resnet18"], ["mnist", "vgg11"]]
    for name in failed:
        assert name in summary and "dataset.train_size=100" in summary
        assert "Traceback" in runs[name]["traceback"]
        assert "Traceback" in (outputs / "runs" / name / "run.log").read_text()
    assert all(record["status"] == "done" for name, record in runs.items() if name.startswith("cifar10-"))
