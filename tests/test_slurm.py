"""Dispatch through Hydra's submitit launcher to a real one-node SLURM cluster on localhost.

The cluster is started by tests/slurm/cluster.sh (root, Debian's slurmctld/slurmd/munge) and stopped
afterwards. Without it these tests skip, unless PHASES_REQUIRE_SLURM=1 (as in CI), where they fail.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPOSITORY, write_mnist_like
from tests.test_resume import KEY, SETTINGS, assert_same_metrics, steps_written

pytestmark = pytest.mark.slow
CLUSTER = REPOSITORY / "tests" / "slurm" / "cluster.sh"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [tool for tool in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(tool) is None]
    reason = (f"SLURM tools missing: {', '.join(missing)} (apt-get install slurmctld slurmd munge slurm-client)"
              if missing else "starting a SLURM cluster needs root" if os.geteuid() != 0 else None)
    if reason:
        if os.environ.get("PHASES_REQUIRE_SLURM") == "1":
            pytest.fail(f"PHASES_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(CLUSTER), "start", str(state)], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    yield state
    subprocess.run(["bash", str(CLUSTER), "stop", str(state)], timeout=60)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_mnist_like(root / "FashionMNIST" / "raw", train=400, test=200)
    return root


def sweep_on_slurm(data_dir: Path, outputs: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "phases.run", "-m", *SETTINGS, f"paths.outputs={outputs}",
         # The project's SLURM launcher config, fitted to the one-node test cluster.
         "hydra/launcher=slurm", "hydra.launcher.timeout_min=20", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.gpus_per_node=0", "hydra.launcher.mem_gb=null",
         *overrides],
        cwd=REPOSITORY, env={**os.environ, "PHASES_DATA_DIR": str(data_dir)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def test_a_two_job_sweep_runs_on_slurm(slurm, data_dir, tmp_path):
    outputs = tmp_path / "outputs"
    process = sweep_on_slurm(data_dir, outputs, "seed=0,1", "schedule.max_steps=8")
    assert process.wait(timeout=900) == 0, process.stderr.read()[-3000:]
    folders = sorted((outputs / "runs").iterdir())
    assert [folder.name.split("-")[3] for folder in folders] == ["s0", "s1"]
    for folder in folders:
        assert json.loads((folder / "run.json").read_text())["status"] == "done"
        assert pq.read_table(folder / "metrics.parquet").num_rows > 0
    assert list((outputs / "sweeps").glob("*/.submitit/*/*_log.out"))  # submitit's SLURM logs


def test_a_requeued_job_resumes_to_the_uninterrupted_metrics(slurm, data_dir, tmp_path):
    reference_outputs = tmp_path / "reference"
    reference = subprocess.run([sys.executable, "-m", "phases.run", *SETTINGS, f"paths.outputs={reference_outputs}"],
                               cwd=REPOSITORY, env={**os.environ, "PHASES_DATA_DIR": str(data_dir)},
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr

    outputs = tmp_path / "outputs"
    process = sweep_on_slurm(data_dir, outputs)
    while steps_written(outputs) < 4 and process.poll() is None:
        time.sleep(0.05)
    job = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert job, "no job in the queue while the run was still going"
    subprocess.run(["scontrol", "requeue", job[0]], check=True)
    assert process.wait(timeout=900) == 0, process.stderr.read()[-3000:]
    (folder,) = (outputs / "runs").iterdir()
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "done" and record["resumed_from_step"] is not None
    resumed = pq.read_table(folder / "metrics.parquet").to_pandas().sort_values(KEY).reset_index(drop=True)
    (reference_folder,) = (reference_outputs / "runs").iterdir()
    expected = pq.read_table(reference_folder / "metrics.parquet").to_pandas().sort_values(KEY).reset_index(drop=True)
    assert_same_metrics(resumed, expected)
