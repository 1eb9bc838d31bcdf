"""`python -m phases.status`: one line per run, read from the run folders alone, without torch or Hydra."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from phases.status import age, main
from phases.store.metrics import write_metrics
from phases.store.record import CHECKPOINT_FILE, CONFIG_FILE, LOCK_FILE, METRICS_FILE, RunRecord, RunStatus, run_lock
from phases.store.sweep_jobs import write_job_list
from tests.conftest import REPOSITORY

IDENTITY = {"dataset": "fashion_mnist", "arch": "vgg8", "optimizer": "sgd", "seed": 0, "epoch": 0.0}
# (layer, depth): the penultimate point of a VGG is block5, below the logits.
LAYERS = [("block4", 4 / 6), ("block5", 5 / 6), ("logits", 1.0)]


def metric_rows(run_id: str, steps: list[int]) -> list[dict]:
    rows = []
    for step in steps:
        row = {**IDENTITY, "run_id": run_id, "step": step}
        rows += [{**row, "layer": layer, "depth": depth, "probe": "reconstruction", "metric": "mse", "split": split,
                  "value": 1.0 / (step + 1) + depth + (0.5 if split == "train" else 0.0)}
                 for layer, depth in LAYERS for split in ("train", "test")]
        rows += [{**row, "layer": "output", "depth": 1.0, "probe": "classifier", "metric": "accuracy", "split": split,
                  "value": step / 100 + (0.01 if split == "train" else 0.0)} for split in ("train", "test")]
    return rows


def make_run(outputs: Path, run_id: str, status: RunStatus | None, steps: list[int] = (), max_steps: int = 8,
             **record) -> Path:
    folder = outputs / "runs" / run_id
    folder.mkdir(parents=True)
    if status is not None:
        RunRecord(run_id=run_id, status=status, steps_evaluated=steps[-1] if steps else None, **record).write(folder)
        (folder / CONFIG_FILE).write_text(yaml.safe_dump({"schedule": {"max_steps": max_steps}}))
    if steps:
        write_metrics(folder / METRICS_FILE, metric_rows(run_id, list(steps)))
    return folder


@pytest.fixture
def outputs(tmp_path):
    outputs = tmp_path / "outputs"
    make_run(outputs, "a-done", RunStatus.done, [0, 1, 2, 4, 8])
    make_run(outputs, "b-failed", RunStatus.failed, [0, 1], error="ValueError: the first line\nand a second one")
    make_run(outputs, "c-running", RunStatus.running, [0, 1, 2])
    crashed = make_run(outputs, "d-crashed", RunStatus.running, [0])
    (crashed / LOCK_FILE).touch()  # locked by a process that died: free now
    interrupted = make_run(outputs, "e-interrupted", RunStatus.interrupted, [0, 1, 2, 4])
    (interrupted / CHECKPOINT_FILE).write_bytes(b"")
    make_run(outputs, "f-pending", None)
    bad = make_run(outputs, "g-bad", None)
    (bad / "run.json").write_text("{not json")
    return outputs


def status_of(outputs: Path, capsys, *arguments: str) -> tuple[int, dict[str, list[str]], list[str]]:
    code = main(["--outputs", str(outputs), *arguments])
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    return code, {line.split()[0]: line.split() for line in lines[1:-1]}, lines


def test_each_run_is_one_line_with_its_status_progress_metrics_and_age(outputs, capsys):
    with run_lock(outputs / "runs" / "c-running") as locked:  # as the process running it holds it
        assert locked
        code, rows, lines = status_of(outputs, capsys)
    assert code == 0
    assert lines[0].split() == ["run", "status", "step", "penultimate", "RL", "test", "accuracy", "age"]
    assert list(rows) == ["a-done", "b-failed", "c-running", "d-crashed", "e-interrupted", "f-pending", "g-bad"]
    # The last penultimate (block5, not the logits) test RL and the last test accuracy, at the last step.
    assert rows["a-done"][:5] == ["a-done", "done", "8/8", f"{1 / 9 + 5 / 6:.4g}", "0.080"]
    assert rows["a-done"][5] in ("0s", "1s", "2s")
    assert rows["b-failed"][:5] == ["b-failed", "failed", "1/8", f"{1 / 2 + 5 / 6:.4g}", "0.010"]
    assert " ".join(rows["b-failed"][6:]) == "ValueError: the first line"
    assert rows["c-running"][1:3] == ["running", "2/8"]
    assert rows["d-crashed"][1:3] == ["crashed", "0/8"]
    assert rows["e-interrupted"][1:3] == ["interrupted", "4/8"]
    assert rows["f-pending"][1:5] == ["pending", "-/?", "-", "-"]
    assert rows["g-bad"][1] == "unreadable" and "run.json" in " ".join(rows["g-bad"])
    assert lines[-1] == "7 runs: 1 crashed, 1 done, 1 failed, 1 interrupted, 1 pending, 1 running, 1 unreadable"
    # Aligned: text columns start where their header does, numbers end where theirs does.
    status_at, age_end = lines[0].index("status"), lines[0].index("age") + len("age")
    for line in lines[1:-1]:
        assert line[status_at - 2 : status_at] == "  " and line[status_at] != " "
        assert line[age_end - 1] != " " and line[age_end : age_end + 2] in ("", "  ")


def test_a_run_whose_lock_is_free_is_crashed_not_running(outputs, capsys):
    _, rows, _ = status_of(outputs, capsys)
    assert rows["c-running"][1] == "crashed"


def test_the_age_is_the_time_since_the_run_last_wrote_a_file(outputs, capsys):
    folder = outputs / "runs" / "a-done"
    hours_ago = time.time() - 3 * 3600 - 60
    for path in [folder, *folder.iterdir()]:
        os.utime(path, (hours_ago, hours_ago))
    _, rows, _ = status_of(outputs, capsys)
    assert rows["a-done"][-1] == "3h"
    seconds = (5, 59, 60, 3599, 7200, 86400 * 2 + 5)
    assert [age(each) for each in seconds] == ["5s", "59s", "1m", "59m", "2h", "2d"]


def test_a_sweep_lists_its_jobs_pending_ones_included(outputs, capsys):
    write_job_list(outputs, "two", Path("sweeps/two.yaml"), [("a-done", ["seed=0"]), ("z-not-started", ["seed=1"])])
    make_run(outputs, "h-ran-by-two", RunStatus.done, [0], sweep="two")  # run.json names the sweep
    code, rows, lines = status_of(outputs, capsys, "--sweep", "two")
    assert code == 0
    assert list(rows) == ["a-done", "h-ran-by-two", "z-not-started"]
    assert rows["z-not-started"][1:] == ["pending", "-/?", "-", "-", "-"]
    assert lines[-1] == "3 runs: 2 done, 1 pending"


def test_an_unknown_or_unreadable_sweep_is_said_in_one_line(outputs, capsys):
    write_job_list(outputs, "two", Path("sweeps/two.yaml"), [("a-done", [])])
    assert main(["--outputs", str(outputs), "--sweep", "three"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: no job list") and "the sweeps of" in error and error.strip().endswith("two")
    (outputs / "sweeps" / "broken.jobs.json").write_text("[1, 2]")
    assert main(["--outputs", str(outputs), "--sweep", "broken"]) == 2
    assert "not a job list" in capsys.readouterr().err


def test_unreadable_metrics_are_reported_on_the_runs_line(outputs, capsys):
    (outputs / "runs" / "a-done" / METRICS_FILE).write_bytes(b"not parquet")
    code, rows, _ = status_of(outputs, capsys)
    assert code == 0 and rows["a-done"][1:5] == ["done", "8/8", "-", "-"]
    assert "metrics.parquet" in " ".join(rows["a-done"][6:])


def test_no_runs_is_said(tmp_path, capsys):
    assert main(["--outputs", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"no runs under {tmp_path / 'runs'}"


def test_the_front_door_loads_neither_torch_nor_hydra(outputs):
    script = ("import sys, runpy; sys.argv = ['phases.status', '--outputs', sys.argv[1]]\n"
              "try:\n    runpy.run_module('phases.status', run_name='__main__')\n"
              "except SystemExit as stop:\n    code = stop.code\n"
              "print(sorted(name for name in ('torch', 'hydra') if name in sys.modules), code)")
    result = subprocess.run([sys.executable, "-c", script, str(outputs)], capture_output=True, text=True,
                            timeout=120, cwd=REPOSITORY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[] 0" and "a-done" in result.stdout
