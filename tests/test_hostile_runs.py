"""No run is ever stuck, and no file in a run folder runs code: planted and broken checkpoints, leftovers
of killed writes, failures while the run is set up, a full disk or a lost write permission."""

import errno
import fcntl
import io
import json
import os
import pickle
import runpy
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch

import phases.training.execute as execute_module
from phases.config.compose import compose
from phases.store.identity import run_id
from phases.store.record import LOCK_FILE, RunRecord, RunStatus, is_crashed, run_folder, run_lock
from phases.training.checkpoint import Checkpoint
from phases.training.train import TrainingState
from tests.resume_helpers import SETTINGS, assert_same_metrics, metrics, start

# A run of seconds in this process, as tests/test_run.py's QUICK runs one in a subprocess.
QUICK = ["schedule.max_steps=4", "schedule.batch_size=32", "probe.train_size=64", "probe.test_size=48",
         "probe.classifier_train_size=100", "probe.batch_size=50", "probe.calibration_size=50", "probe.layers=null",
         "arch.width=0.25", "progress=false", "paths.system_data_dir=null"]


class TouchMarker:
    """Unpickled, it creates `marker`: what an attacker's payload (os.system, ...) would run instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def plant_torch_pickle(path: Path, marker: Path) -> None:
    torch.save({"state": TouchMarker(marker), "model": {}, "optimizer": {}, "rows": []}, path)


def plant_plain_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(TouchMarker(marker), protocol=2))


def plant_truncated(path: Path, marker: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"model": {"weight": torch.zeros(4096)}, "rows": []}, buffer)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # as a full disk or a killed copy leaves it


def plant_wrong_structure(path: Path, marker: Path) -> None:
    torch.save({"format": 1, "state": {"step": 64}, "rows": [], "model": {}, "optimizer": {}}, path)


def resume_folder(outputs: Path) -> Path:
    return run_folder(outputs, run_id(compose([*SETTINGS, f"paths.outputs={outputs}"])))


def run_front_door() -> None:
    """`python -m phases.run` with sys.argv, in this process so that a test can patch it."""
    runpy.run_module("phases.run", run_name="__main__")  # as __main__: Hydra finds conf/ beside the file


def quick_config(data_dir: Path, outputs: Path, *extra: str):
    return compose([*QUICK, f"paths.data_dir={data_dir}", f"paths.outputs={outputs}", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("plant", [plant_torch_pickle, plant_plain_pickle, plant_truncated, plant_wrong_structure],
                         ids=["torch_pickle_payload", "plain_pickle_payload", "truncated", "wrong_structure"])
def test_a_bad_checkpoint_is_never_unpickled_but_moved_aside_and_the_run_restarts(resume_data_dir, tmp_path,
                                                                                 uninterrupted, plant):
    outputs, marker = tmp_path / "outputs", tmp_path / "marker"
    folder = resume_folder(outputs)
    folder.mkdir(parents=True)
    plant(folder / "checkpoint.pt", marker)
    process = start(resume_data_dir, outputs)
    assert process.wait(timeout=600) == 0, process.stderr.read()
    assert not marker.exists(), "the checkpoint's payload ran"
    assert "could not be used and was moved aside" in process.stderr.read()
    (moved,) = folder.glob("checkpoint.pt.corrupt-*")
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "done" and record["resumed_from_step"] is None
    assert record["rejected_checkpoint"].startswith(f"{moved.name}: ")
    assert not (folder / "checkpoint.pt").exists()
    assert_same_metrics(metrics(outputs), uninterrupted)


def test_a_checkpoint_is_plain_data_and_a_rejected_one_leaves_the_fresh_model(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    for optimizer in (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), torch.optim.Adam(model.parameters())):
        model(torch.randn(8, 4)).sum().backward()
        optimizer.step()
        generator_state = torch.Generator().get_state()
        state = TrainingState(step=3, position=8, order=torch.randperm(16), order_generator_state=generator_state)
        row = {"run_id": "r", "dataset": "d", "arch": "a", "optimizer": "o", "seed": 0, "step": 2, "epoch": 0.5,
               "layer": "output", "depth": 1.0, "probe": "classifier", "metric": "accuracy", "split": "test",
               "value": 0.25}
        Checkpoint(tmp_path, model, optimizer, [row]).save(state)
        torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # nothing but tensors and plain data
        rows: list = []
        restored = Checkpoint(tmp_path, model, optimizer, rows).resume(torch.device("cpu"), 4, 16)
        assert restored.step == 3 and torch.equal(restored.order, state.order) and rows == [row]
    # A file that loads and fits until the optimizer's state: the model, already loaded, is put back.
    fresh = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    payload["model"] = {name: tensor + 1 for name, tensor in payload["model"].items()}
    payload["optimizer"]["param_groups"] = []
    torch.save(payload, tmp_path / "checkpoint.pt")
    checkpoint = Checkpoint(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), [])
    assert checkpoint.resume(torch.device("cpu"), 4, 16) is None
    assert checkpoint.rejected.startswith("checkpoint.pt.corrupt-") and not checkpoint.exists()
    assert all(torch.equal(tensor, fresh[name]) for name, tensor in model.state_dict().items())


def test_temporary_files_of_killed_writes_are_removed_at_the_next_start(data_dir, tmp_path, capsys):
    cfg = quick_config(data_dir, tmp_path / "outputs")
    folder = run_folder(cfg.paths.outputs, run_id(cfg))
    folder.mkdir(parents=True)
    leftovers = [folder / ".checkpoint.pt.k2j4x9.tmp", folder / ".metrics.parquet.a8b7c6.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"\0" * 1000)
    assert execute_module.execute(cfg).status == RunStatus.done
    assert not any(leftover.exists() for leftover in leftovers)
    assert "removed the temporary files of interrupted writes: .checkpoint.pt.k2j4x9.tmp" in capsys.readouterr().out


def test_a_failure_while_the_optimizer_is_built_is_recorded_with_its_traceback(data_dir, tmp_path, monkeypatch,
                                                                               capsys):
    def refuse(*_arguments, **_keywords):  # as torch.optim refuses a value our checks let through
        raise ValueError("Invalid momentum value: 7")

    monkeypatch.setattr(execute_module, "build_optimizer", refuse)
    outputs = tmp_path / "outputs"
    monkeypatch.setattr(sys, "argv", ["phases.run", "-m", *QUICK, f"paths.data_dir={data_dir}",
                                      f"paths.outputs={outputs}", "seed=0,1"])
    with pytest.raises(SystemExit) as ended:  # a sweep: each job's failure is recorded, the sweep goes on,
        run_front_door()  # and its summary ends it with exit status 1
    assert ended.value.code == 1
    printed = capsys.readouterr()
    stderr = printed.err
    assert "0 done" not in printed.out and "2 failed" in printed.out.split("summary of the sweep:")[1]
    folders = sorted((outputs / "runs").iterdir())
    assert len(folders) == 2
    for folder in folders:
        record = RunRecord.read(folder)
        assert record.status == RunStatus.failed and record.error == "ValueError: Invalid momentum value: 7"
        assert "build_optimizer" in record.traceback and "Invalid momentum value: 7" in record.traceback
        assert f"error: run failed (ValueError: Invalid momentum value: 7); recorded in {folder / 'run.json'}" \
            in stderr


def refuse_writes_in(folder: Path, error_number: int, monkeypatch, after: threading.Event | None = None):
    """Every atomic write into `folder` fails as on a full disk or a folder made read-only (which even
    root notices when it is a read-only mount), from the start or once `after` is set."""
    create = tempfile.mkstemp

    def mkstemp(*arguments, dir=None, **keywords):
        if Path(dir) == folder and (after is None or after.is_set()):
            raise OSError(error_number, os.strerror(error_number), str(folder))
        return create(*arguments, dir=dir, **keywords)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("error_number", [errno.ENOSPC, errno.EACCES], ids=["disk_full", "permission_lost"])
def test_a_run_json_that_cannot_be_written_mid_run_is_said_in_one_line(data_dir, tmp_path, monkeypatch, capsys,
                                                                       error_number):
    cfg = quick_config(data_dir, tmp_path / "outputs")
    folder = run_folder(cfg.paths.outputs, run_id(cfg))
    evaluated = threading.Event()
    write_metrics = execute_module.write_metrics

    def write_then_lose_the_folder(*arguments):
        write_metrics(*arguments)
        evaluated.set()  # from here on, the checkpoint and run.json cannot be written

    monkeypatch.setattr(execute_module, "write_metrics", write_then_lose_the_folder)
    refuse_writes_in(folder, error_number, monkeypatch, after=evaluated)
    with pytest.raises(OSError):
        execute_module.execute(cfg)
    lines = [line for line in capsys.readouterr().err.splitlines() if "run.json" in line]
    assert lines == [f"error: could not write {folder / 'run.json'} (failed): {os.strerror(error_number)}"]
    # What run.json still says is shown for what it is: no process holds the run any more.
    record = RunRecord.read(folder)
    assert record.status == RunStatus.running and is_crashed(folder, record)


def test_a_read_only_run_folder_gives_one_line_and_keeps_the_recorded_status(data_dir, tmp_path, monkeypatch, capsys):
    outputs = tmp_path / "outputs"
    folder = run_folder(outputs, run_id(quick_config(data_dir, outputs)))
    RunRecord(run_id=folder.name, status=RunStatus.interrupted).write(folder)
    refuse_writes_in(folder, errno.EROFS, monkeypatch)
    monkeypatch.setattr(sys, "argv", ["phases.run", *QUICK, f"paths.data_dir={data_dir}", f"paths.outputs={outputs}"])
    with pytest.raises(SystemExit) as exit_status:
        run_front_door()
    assert exit_status.value.code == 1
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert f"error: could not write {folder / 'run.json'} (failed): Read-only file system" in stderr.splitlines()
    assert "; not recorded: run.json could not be written" in stderr
    assert RunRecord.read(folder).status == RunStatus.interrupted  # not left at running


def test_the_lock_of_a_reader_checking_for_a_crash_does_not_make_a_run_skip(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_FILE).touch()
    with open(folder / LOCK_FILE) as reader:
        fcntl.flock(reader, fcntl.LOCK_SH)  # as is_crashed holds it, here for longer than a moment
        releaser = threading.Timer(0.3, fcntl.flock, (reader, fcntl.LOCK_UN))
        releaser.start()
        with run_lock(folder) as locked:
            assert locked
        releaser.join()
