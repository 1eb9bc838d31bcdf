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

from tests.conftest import REPOSITORY
from tests.resume_helpers import KEY, SETTINGS, assert_same_metrics, steps_written

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


def sweep_on_slurm(data_dir: Path, outputs: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "phases.run", "-m", *SETTINGS, f"paths.outputs={outputs}",
         # The project's SLURM launcher config, fitted to the one-node test cluster.
         "hydra/launcher=slurm", "hydra.launcher.timeout_min=20", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.gpus_per_node=0", "hydra.launcher.mem_gb=null",
         *overrides],
        cwd=REPOSITORY, env={**os.environ, "PHASES_DATA_DIR": str(data_dir)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def test_a_two_job_sweep_runs_on_slurm(slurm, resume_data_dir, tmp_path):
    data_dir = resume_data_dir
    outputs = tmp_path / "outputs"
    process = sweep_on_slurm(data_dir, outputs, "seed=0,1", "schedule.max_steps=8")
    assert process.wait(timeout=900) == 0, process.stderr.read()[-3000:]
    folders = sorted((outputs / "runs").iterdir())
    assert [folder.name.split("-")[3] for folder in folders] == ["s0", "s1"]
    for folder in folders:
        assert json.loads((folder / "run.json").read_text())["status"] == "done"
        assert pq.read_table(folder / "metrics.parquet").num_rows > 0
    assert list((outputs / "sweeps").glob("*/.submitit/*/*_log.out"))  # submitit's SLURM logs


@pytest.mark.parametrize("interrupt", [["scontrol", "requeue"], ["scancel", "--signal=USR2"]],
                         ids=["scontrol_requeue", "submitit_preemption_signal"])
def test_a_requeued_job_resumes_to_the_uninterrupted_metrics(slurm, resume_data_dir, uninterrupted, tmp_path,
                                                             interrupt):
    """Requeued by SLURM directly, or through submitit's preemption path (USR2 -> its checkpoint() ->
    requeue): the job is stopped with SIGTERM, checkpoints, and its next attempt resumes."""
    outputs = tmp_path / "outputs"
    process = sweep_on_slurm(resume_data_dir, outputs)
    while steps_written(outputs) < 4 and process.poll() is None:
        time.sleep(0.05)
    job = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert job, "no job in the queue while the run was still going"
    subprocess.run([*interrupt, job[0]], check=True)
    assert process.wait(timeout=900) == 0, process.stderr.read()[-3000:]
    (folder,) = (outputs / "runs").iterdir()
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "done" and record["resumed_from_step"] is not None
    resumed = pq.read_table(folder / "metrics.parquet").to_pandas().sort_values(KEY).reset_index(drop=True)
    assert_same_metrics(resumed, uninterrupted)
