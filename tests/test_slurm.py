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


def status_of(outputs: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "phases.status", "--outputs", str(outputs)], cwd=REPOSITORY,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_sweep_submitted_without_waiting_runs_on_slurm_and_is_watched(slurm, resume_data_dir, tmp_path):
    """hydra.launcher.wait=false: the command returns once the jobs are queued, saying their ids and logs;
    `phases.status` follows them to done; `phases.figures` draws what finished."""
    outputs = tmp_path / "outputs"
    # The resume tests' run (128 steps, 9 evaluations of every layer): long enough to be seen running.
    process = sweep_on_slurm(resume_data_dir, outputs, "seed=0,1", "hydra.launcher.wait=false")
    submitted = time.monotonic()
    assert process.wait(timeout=120) == 0, process.stderr.read()[-3000:]
    printed = process.stdout.read() + process.stderr.read()
    assert "2 jobs submitted; this command does not wait for them" in printed
    assert printed.count("submitted job ") == 2 and "_log.out" in printed  # each job's id and log
    assert "2 done" not in status_of(outputs)  # it returned before the jobs finished
    seen = set()
    while time.monotonic() - submitted < 900:
        listing = status_of(outputs)
        lines = [line for line in listing.splitlines() if "-s0-" in line or "-s1-" in line]
        seen |= {line.split()[1] for line in lines}
        if len(lines) == 2 and all(line.split()[1] == "done" for line in lines):
            break
        time.sleep(0.5)
    assert seen - {"done"}, f"the status never showed the jobs before they finished: {seen}"
    assert "2 done" in listing, listing
    for folder in sorted((outputs / "runs").iterdir()):
        record = json.loads((folder / "run.json").read_text())
        assert record["status"] == "done" and pq.read_table(folder / "metrics.parquet").num_rows > 0
        assert record["slurm_job_id"] and record["submitit_logs"]["stdout"].endswith("_log.out")
    figures = subprocess.run([sys.executable, "-m", "phases.figures", "--outputs", str(outputs)], cwd=REPOSITORY,
                             capture_output=True, text=True, timeout=300)
    assert figures.returncode == 0, figures.stderr
    assert list((outputs / "figures").glob("*.png")) and (outputs / "report.html").is_file()


def start_requeued_job_now(job: str, sweep: subprocess.Popen) -> None:
    """SLURM holds a requeued job for 120 s (its begin time: pending, reason BeginTime) before it may run
    again; that is the cluster's policy, not something under test, so the held job is let go at once."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sweep.poll() is None:
        state = subprocess.run(["squeue", "-h", "-j", job.split("_")[0], "-o", "%T %r"], capture_output=True,
                               text=True).stdout.split()
        if state[:2] == ["PENDING", "BeginTime"]:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
            return
        time.sleep(0.2)


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
    start_requeued_job_now(job[0], process)
    assert process.wait(timeout=900) == 0, process.stderr.read()[-3000:]
    (folder,) = (outputs / "runs").iterdir()
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "done" and record["resumed_from_step"] is not None
    resumed = pq.read_table(folder / "metrics.parquet").to_pandas().sort_values(KEY).reset_index(drop=True)
    assert_same_metrics(resumed, uninterrupted)


def test_runs_per_device_packs_two_runs_into_one_job_and_a_preempted_group_resumes(slurm, resume_data_dir,
                                                                                uninterrupted, tmp_path):
    """hydra.launcher.runs_per_device=2: two seeds in one SLURM job, each in its own process. Preempted
    through submitit's path (USR2 -> the group's checkpoint() -> requeue, then SIGTERM to every process),
    both runs checkpoint, the requeued job resumes both, and seed 0 ends with its solo run's metrics."""
    outputs = tmp_path / "outputs"
    process = sweep_on_slurm(resume_data_dir, outputs, "seed=0,1", "hydra.launcher.runs_per_device=2")
    while steps_written(outputs) < 4 and process.poll() is None:
        time.sleep(0.05)
    jobs = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert len(jobs) == 1, f"two runs, one job expected in the queue: {jobs}"
    subprocess.run(["scancel", "--signal=USR2", jobs[0]], check=True)
    start_requeued_job_now(jobs[0], process)
    assert process.wait(timeout=900) == 0, process.stderr.read()[-3000:]
    folders = sorted((outputs / "runs").iterdir())
    records = [json.loads((folder / "run.json").read_text()) for folder in folders]
    assert [record["status"] for record in records] == ["done", "done"]
    assert len({record["slurm_job_id"] for record in records}) == 1  # the same SLURM job ran both
    assert any(record["resumed_from_step"] is not None for record in records)
    (seed_0,) = [folder for folder in folders if "-s0-" in folder.name]
    resumed = pq.read_table(seed_0 / "metrics.parquet").to_pandas().sort_values(KEY).reset_index(drop=True)
    assert_same_metrics(resumed, uninterrupted)
