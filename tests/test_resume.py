"""Interrupted runs resume to the same metrics; concurrent runs of one config do not collide."""

import json
import signal
import threading
import time

import pytest

from tests.resume_helpers import assert_same_metrics, metrics, start, steps_written

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kill_after_steps", [1, 4, 7], ids=["early", "middle", "late"])
def test_kill_9_at_any_moment_then_rerun_gives_the_uninterrupted_metrics(resume_data_dir, tmp_path, uninterrupted,
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
        process = start(resume_data_dir, outputs)
        while steps_written(outputs) < kill_after_steps and process.poll() is None:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)  # no chance to clean up: mid-training, mid-probe or mid-write
        process.wait(timeout=60)
        rerun = start(resume_data_dir, outputs)
        assert rerun.wait(timeout=600) == 0, rerun.stderr.read()
    finally:
        stop_reading.set()
        reader.join()
    assert not seen_partial
    (folder,) = (outputs / "runs").iterdir()
    assert json.loads((folder / "run.json").read_text())["status"] == "done"
    assert not (folder / "checkpoint.pt").exists()
    assert_same_metrics(metrics(outputs), uninterrupted)


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT (Ctrl-C)"])
def test_a_stop_signal_checkpoints_records_interrupted_and_the_rerun_resumes(resume_data_dir, tmp_path, uninterrupted,
                                                                             signal_number):
    outputs = tmp_path / "outputs"
    process = start(resume_data_dir, outputs)
    while steps_written(outputs) < 5 and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal_number)
    assert process.wait(timeout=120) == 3
    assert "run the same command again to resume" in process.stderr.read()
    (folder,) = (outputs / "runs").iterdir()
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "interrupted" and record["traceback"] is None
    assert (folder / "checkpoint.pt").is_file()
    rerun = start(resume_data_dir, outputs)
    assert rerun.wait(timeout=600) == 0
    assert "resuming from its checkpoint at step" in rerun.stdout.read()
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "done" and record["resumed_from_step"] >= 8
    assert_same_metrics(metrics(outputs), uninterrupted)


def test_a_second_process_on_a_running_config_skips_it(resume_data_dir, tmp_path):
    outputs = tmp_path / "outputs"
    first = start(resume_data_dir, outputs)
    while steps_written(outputs) < 2 and first.poll() is None:
        time.sleep(0.01)
    # Paused (holding its lock) while the second starts: on a loaded machine the first could otherwise
    # finish before the second has even imported torch, and the second would find the run done.
    first.send_signal(signal.SIGSTOP)
    try:
        second = start(resume_data_dir, outputs)
        assert second.wait(timeout=120) == 0
        assert "is being run by another process right now: skipped" in second.stdout.read()
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=600) == 0
    (folder,) = (outputs / "runs").iterdir()
    assert json.loads((folder / "run.json").read_text())["status"] == "done"


def test_a_run_killed_between_evaluations_resumes_from_its_timed_checkpoint(resume_data_dir, tmp_path, uninterrupted):
    outputs = tmp_path / "outputs"
    process = start(resume_data_dir, outputs, "schedule.checkpoint_minutes=0")  # a checkpoint every step
    while steps_written(outputs) < 8 and process.poll() is None:  # evaluated up to step 64
        time.sleep(0.01)
    time.sleep(0.3)  # into the updates between step 64 and step 128
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    rerun = start(resume_data_dir, outputs)
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read()
    (folder,) = (outputs / "runs").iterdir()
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "done" and record["resumed_from_step"] > 64
    assert_same_metrics(metrics(outputs), uninterrupted)
