"""`logger=tensorboard`: every metric row and the training loss, read back with TensorBoard's own reader."""

import signal
import sys
import time

import pytest

import phases.training.execute as execute_module
from phases.config.validation import ConfigError
from phases.store.identity import run_id
from phases.store.metrics import read_metrics
from phases.store.record import RunStatus, run_folder
from phases.training.loggers import LOSS_TAG, metric_tag
from phases.training.train import LOSS_READ_INTERVAL
from tests.resume_helpers import start, steps_written
from tests.test_hostile_runs import QUICK, quick_config, run_front_door

pytest.importorskip("tensorboard")  # an optional dependency: `pip install tensorboard`


def test_every_metric_row_and_the_loss_are_mirrored_at_their_training_step(data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = quick_config(data_dir, tmp_path / "outputs", "logger=tensorboard", "schedule.max_steps=30")
    folder = run_folder(cfg.paths.outputs, run_id(cfg))
    assert execute_module.execute(cfg).status == RunStatus.done
    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    metrics = read_metrics(folder / "metrics.parquet")
    expected = {}
    for row in metrics.to_dict("records"):
        expected.setdefault(metric_tag(row), []).append((row["step"], pytest.approx(row["value"], rel=1e-5)))
    assert set(events.Tags()["scalars"]) == {*expected, LOSS_TAG}
    assert "reconstruction/mse/test/block5" in expected and "classifier/accuracy/test/output" in expected
    for tag, points in expected.items():
        assert [(event.step, event.value) for event in events.Scalars(tag)] == points, tag
    loss = events.Scalars(LOSS_TAG)
    assert [event.step for event in loss] == [0, LOSS_READ_INTERVAL, 29]  # where the loop reads the loss
    assert all(event.value > 0 for event in loss)


def test_logger_tensorboard_without_tensorboard_fails_before_training(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as when it is not installed: its import fails
    outputs = tmp_path / "outputs"
    with pytest.raises(ConfigError, match=r"logger='tensorboard' is invalid: .*pip install tensorboard"):
        execute_module.execute(quick_config(data_dir, outputs, "logger=tensorboard"))
    monkeypatch.setattr(sys, "argv", ["phases.run", *QUICK, f"paths.data_dir={data_dir}", f"paths.outputs={outputs}",
                                      "logger=tensorboard"])
    with pytest.raises(SystemExit) as exit_status:
        run_front_door()
    assert exit_status.value.code == 2  # the user's input, like any invalid setting
    assert "pip install tensorboard" in capsys.readouterr().err
    assert not (outputs / "runs").exists()


@pytest.mark.slow
def test_a_resumed_run_shows_each_step_once_and_continues_its_run_log(resume_data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    outputs = tmp_path / "outputs"
    process = start(resume_data_dir, outputs, "logger=tensorboard")
    while steps_written(outputs) < 5 and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)  # checkpointed, then a rerun resumes from it
    assert process.wait(timeout=120) == 3
    rerun = start(resume_data_dir, outputs, "logger=tensorboard")
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read()
    (folder,) = (outputs / "runs").iterdir()
    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    metrics = read_metrics(folder / "metrics.parquet")
    for tag, rows in metrics.assign(tag=[metric_tag(row) for row in metrics.to_dict("records")]).groupby("tag"):
        assert [event.step for event in events.Scalars(tag)] == sorted(rows["step"]), tag
    loss_steps = [event.step for event in events.Scalars(LOSS_TAG)]
    assert loss_steps == sorted(set(loss_steps)) and loss_steps[-1] == 127
    log = (folder / "run.log").read_text()
    assert log.count(" started on ") == 2 and "resuming from its checkpoint at step" in log
    assert "WARNING interrupted: stopped before step" in log and "run the same command again to resume" in log
