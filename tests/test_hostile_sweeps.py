"""Sweeps and the analysis under hostile or careless input (issue 12): a run shared by two sweeps is in
both; no file under an outputs folder stops `phases.figures`; a run whose process died shows as
crashed; a sweep file is checked against its schema and may name no code; the Makefile quotes paths.
Run folders are written by hand (a tiny metrics.parquet, run.json, config.yaml): nothing trains here."""

import errno
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from argparse import Namespace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from phases import figures as figures_front_door
from phases import sweep as sweep_module
from phases.analysis.runs import load_runs
from phases.store.metrics import write_metrics
from phases.store.record import LOCK_FILE, RunRecord, RunStatus
from tests.conftest import REPOSITORY

pytestmark = pytest.mark.slow  # figures and sweeps through their front doors: not in `make test-fast`

FIXTURE = REPOSITORY / "tests" / "fixtures" / "real_runs"
STEPS = [0, 1, 2, 4, 8, 16]
# Small settings, so composing is all a job costs; nothing here starts a run.
SHARED = ["dataset=fashion_mnist", "arch=mlp", "schedule.max_steps=16"]


def write_run(folder: Path, seed: int, sweep: str | None, status: str = "done") -> Path:
    """A run folder as a run leaves it: a U-shaped reconstruction curve and the classifier's accuracy."""
    folder.mkdir(parents=True)
    common = {"run_id": folder.name, "dataset": "fashion_mnist", "arch": "mlp", "optimizer": "sgd", "seed": seed,
              "epoch": 0.0, "split": "test"}
    curve = [0.5, 0.5, 0.45, 0.3, 0.35, 0.4]
    rows = [common | {"step": step, "layer": "block1", "depth": 0.5, "probe": "reconstruction", "metric": "mse",
                      "value": value + seed / 100} for step, value in zip(STEPS, curve, strict=True)]
    rows += [common | {"step": step, "layer": "output", "depth": 1.0, "probe": "classifier", "metric": "accuracy",
                       "value": 0.1 + step / 20} for step in STEPS]
    write_metrics(folder / "metrics.parquet", rows)
    RunRecord(run_id=folder.name, status=RunStatus(status), sweep=sweep).write(folder)
    (folder / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "dataset": {"name": "fashion_mnist"},
                                                        "arch": {"name": "mlp", "width": 1.0}}))
    return folder


def write_sweep_file(folder: Path, name: str, content: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def run_sweep(monkeypatch, capsys, *arguments: str) -> tuple[int, str, str, list]:
    """`python -m phases.sweep <arguments>` in this process, with the runs it would start recorded, not run."""
    started = []
    with monkeypatch.context() as patched:  # undone on return: the tests' own subprocesses must run
        patched.setattr(sys, "argv", ["phases.sweep", *arguments])
        patched.setattr(sweep_module.subprocess, "run",
                        lambda command, **options: started.append(command) or Namespace(returncode=0))
        code = sweep_module.main()
    printed = capsys.readouterr()
    return code, printed.out, printed.err, started


def figures(outputs: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phases.figures", "--outputs", str(outputs)], cwd=REPOSITORY,
                          capture_output=True, text=True, timeout=300)


def test_a_run_shared_by_two_sweeps_is_in_both_sweeps_figures_and_tables(tmp_path, monkeypatch, capsys):
    """conA (seeds 0, 1) and conB (seed 0) run at once into one folder: conB's process ran seed 0."""
    outputs = tmp_path / "outputs"
    common = [*SHARED, f"paths.outputs={outputs}"]
    con_a = write_sweep_file(tmp_path, "conA", {"overrides": [*common, "seed=0,1"]})
    con_b = write_sweep_file(tmp_path, "conB", {"overrides": [*common, "seed=0"]})
    for path in (con_a, con_b):  # each writes its job list before dispatching, then (here) runs nothing
        code, _, error, started = run_sweep(monkeypatch, capsys, str(path))
        assert len(started) == 1, error
    jobs = json.loads((outputs / "sweeps" / "conA.jobs.json").read_text())["jobs"]
    seed_zero, seed_one = (outputs / "runs" / job["run_id"] for job in jobs)
    write_run(seed_zero, 0, sweep="conB")
    write_run(seed_one, 1, sweep="conA")
    write_run(outputs / "runs" / "direct-run", 2, sweep=None)  # started directly, listed by no sweep

    runs = load_runs(outputs)
    membership = runs.runs.groupby("sweep")["run_id"].apply(sorted).to_dict()
    assert membership == {"conA": sorted([seed_zero.name, seed_one.name]), "conB": [seed_zero.name],
                          "single runs": ["direct-run"]}
    result = figures(outputs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert pd.read_csv(outputs / "tables" / "conA--phase_table.csv")["seeds"].tolist() == [2]
    assert pd.read_csv(outputs / "tables" / "conB--phase_table.csv")["seeds"].tolist() == [1]
    listed = pd.read_csv(outputs / "tables" / "runs.csv")
    assert sorted(listed.loc[listed["run_id"] == seed_zero.name, "sweep"]) == ["conA", "conB"]
    page = (outputs / "report.html").read_text()
    assert '<h2 id="conA">conA</h2>\n<p>2 runs: 2 done.</p>' in page
    assert '<h2 id="conB">conB</h2>\n<p>1 runs: 1 done.</p>' in page


def clone_run(source: Path, folder: Path) -> Path:
    """A copy of a fixture run under another run_id (its metrics' run_id column follows the folder)."""
    shutil.copytree(source, folder)
    table = pq.read_table(folder / "metrics.parquet").to_pylist()
    write_metrics(folder / "metrics.parquet", [row | {"run_id": folder.name} for row in table])
    return folder


HOSTILE = {  # run folder or file -> what is planted, and a word the reason gives
    "run-json-null": ("run.json", "null", "not a run record"),
    "run-json-list": ("run.json", "[1, 2]", "not a run record"),
    "run-json-garbage": ("run.json", "\x00\xff{{{", "run.json"),
    "run-json-unknown-status": ("run.json", json.dumps({"run_id": "x", "status": "exploded"}), "exploded"),
    "run-json-sweep-not-a-name": ("run.json", json.dumps({"run_id": "x", "status": "done", "sweep": [1]}),
                                  "not a name"),
    "config-a-list": ("config.yaml", "- a\n- b\n", "not a mapping"),
    "config-not-yaml": ("config.yaml", "key: [unclosed\n", "config.yaml"),
    "metrics-garbage": ("metrics.parquet", "PAR1 not parquet", "metrics.parquet"),
}


def test_no_file_under_outputs_stops_the_figures_and_each_is_listed_with_its_reason(tmp_path):
    outputs = tmp_path / "outputs"
    shutil.copytree(FIXTURE, outputs)
    source = next((outputs / "runs").glob("fashion_mnist-vgg8-*"))
    for name, (file_name, content, _) in HOSTILE.items():
        (clone_run(source, outputs / "runs" / name) / file_name).write_bytes(content.encode("utf-8", "surrogateescape"))
    other_columns = clone_run(source, outputs / "runs" / "metrics-other-columns") / "metrics.parquet"
    pq.write_table(pa.table({"run_id": ["metrics-other-columns"], "loss": [1.0]}), other_columns)
    (outputs / "runs" / "notes.txt").write_text("a stray file")
    (outputs / "runs" / "empty-folder").mkdir()
    (outputs / "sweeps").mkdir()
    (outputs / "sweeps" / "garbage.jobs.json").write_text("{not json")
    (outputs / "figures").mkdir()
    (outputs / "figures" / "manifest.json").write_text("[]")  # the figures' fingerprints, garbled

    result = figures(outputs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    listed = pd.read_csv(outputs / "tables" / "runs.csv").set_index("run_id")
    expected = {name: word for name, (_, _, word) in HOSTILE.items()}
    expected |= {"metrics-other-columns": "loss: double", "runs/notes.txt": "not a run folder",
                 "empty-folder": "run.json", "sweeps/garbage.jobs.json": "not"}
    page = (outputs / "report.html").read_text()
    for name, word in expected.items():
        assert listed.loc[name, "status"] != "done" and word in listed.loc[name, "reason"], (name, listed.loc[name])
        assert name in result.stdout and name in page
    # The fixture's own sweeps are drawn as before.
    assert len(list((outputs / "figures").glob("fixture--*.png"))) == 5
    assert pd.read_parquet(outputs / "tables" / "metrics.parquet")["run_id"].nunique() == 6


def test_an_outputs_folder_with_a_file_where_a_folder_goes_is_said_in_one_line(tmp_path):
    outputs = tmp_path / "outputs"
    shutil.copytree(FIXTURE, outputs)
    (outputs / "tables").write_text("a file where the tables folder goes")
    result = figures(outputs)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: cannot read or write") and "tables" in result.stderr


def test_a_read_only_outputs_folder_is_said_in_one_line(tmp_path, monkeypatch, capsys):
    """Root writes into a chmod-555 folder, so the refusal a read-only mount gives is made here: every
    temporary file below the outputs folder fails with EROFS, as on a read-only file system."""
    outputs = tmp_path / "outputs"
    shutil.copytree(FIXTURE, outputs)
    real_mkstemp = tempfile.mkstemp

    def read_only_mkstemp(*arguments, dir=None, **keywords):  # noqa: A002 - tempfile's own keyword
        if dir is not None and Path(dir).is_relative_to(outputs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real_mkstemp(*arguments, dir=dir, **keywords)

    monkeypatch.setattr(tempfile, "mkstemp", read_only_mkstemp)
    monkeypatch.setattr(sys, "argv", ["phases.figures", "--outputs", str(outputs)])
    assert figures_front_door.main() == 1
    errors = capsys.readouterr().err
    assert "Traceback" not in errors and len(errors.strip().splitlines()) == 1
    assert errors.startswith("error: cannot read or write") and "Read-only file system" in errors


def test_a_run_whose_process_died_shows_as_crashed_in_the_figures_and_the_sweep(tmp_path, monkeypatch, capsys):
    outputs = tmp_path / "outputs"
    path = write_sweep_file(tmp_path, "crashy", {"overrides": [*SHARED, f"paths.outputs={outputs}", "seed=0,1"]})
    _, groups, group_jobs = sweep_module.prepare(Namespace(sweep=path), [])
    dead, alive = (job.folder for job in group_jobs[0])
    for folder, seed in ((dead, 0), (alive, 1)):
        write_run(folder, seed, sweep="crashy", status="running")
        (folder / LOCK_FILE).touch()
    with open(alive / LOCK_FILE) as held:  # as the process running it holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        statuses = load_runs(outputs).runs.set_index("run_id")["status"]
        code, printed, _, _ = run_sweep(monkeypatch, capsys, str(path), "--dry-run")
    assert statuses.to_dict() == {dead.name: "crashed", alive.name: "running"}
    assert code == 0 and "1 crashed, 1 running" in printed
    assert f"crashed               {dead.name}" in printed and "crashed: rerun the same command to resume" in printed
    result = figures(outputs)  # no finished run: runs.csv and the page still say which crashed
    assert result.returncode == 0 and "crashed" in (outputs / "report.html").read_text()
    assert pd.read_csv(outputs / "tables" / "runs.csv").set_index("run_id").loc[dead.name, "status"] == "crashed"


def test_a_sweep_file_with_an_unknown_top_level_key_is_refused_in_one_paragraph(tmp_path):
    path = write_sweep_file(tmp_path, "typo", {"overrides": ["seed=0"], "overides": ["seed=1"]})
    result = subprocess.run([sys.executable, "-m", "phases.sweep", str(path), "--dry-run"], cwd=REPOSITORY,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert str(path) in result.stderr and "`overides`" in result.stderr
    assert "description, cost, overrides, environment" in result.stderr


@pytest.mark.parametrize("environment, message", [
    (["OMP_NUM_THREADS=1"], "is a mapping"),
    ({"OMP_NUM_THREADS": {"nested": 1}}, "one number or text"),
    ({"LD_PRELOAD": "/tmp/evil.so"}, "may not set the environment variable LD_PRELOAD"),
    ({"PYTHONPATH": "/tmp/evil"}, "may not set the environment variable PYTHONPATH"),
])
def test_a_sweep_files_environment_is_names_to_values(tmp_path, monkeypatch, capsys, environment, message):
    path = write_sweep_file(tmp_path, "environment", {"overrides": ["seed=0"], "environment": environment})
    code, _, error, started = run_sweep(monkeypatch, capsys, str(path))
    assert code == 2 and message in error and str(path) in error and not started


@pytest.mark.parametrize("override, reason", [
    ("schedule.max_step=4", "Key 'max_step' not in"),  # Hydra's reason, from OmegaConf
    ("seed=abc", "could not be converted to Integer"),
    ("dataset=nope", "Available options in 'dataset': cifar10"),
    ("probe.bn_mode=sometimes", "expected one of"),
])
def test_an_override_that_does_not_compose_is_named_with_hydras_reason(tmp_path, monkeypatch, capsys, override,
                                                                        reason):
    path = write_sweep_file(tmp_path, "bad", {"overrides": [*SHARED, "seed=0,1", override]})
    code, _, error, started = run_sweep(monkeypatch, capsys, str(path), "--", f"paths.outputs={tmp_path}")
    assert code == 2 and not started
    assert len(error.strip().splitlines()) == 1 and str(path) in error
    assert f"the override `{override}` does not compose" in error and reason in error
    assert not (tmp_path / "sweeps").exists()  # refused before any job list is written


@pytest.mark.parametrize("where", ["file", "command line"])
@pytest.mark.parametrize("override", [
    "+optimizer.x={{_target_:torch.load,f:{folder}/evil.pt,weights_only:false}}",
    "+optimizer.x={{_target_:builtins.open,_args_:[{folder}/victim.txt,w]}}",
    "optimizer._target_=os.system",
    "+optimizer.x='${{oc.decode:\"{{a: 1}}\"}}'",
    "hydra.searchpath=[file://{folder}]",
    "+hydra.callbacks.x={{y: 1}}",
    "--config-dir={folder}",
])
def test_no_override_in_a_sweep_file_or_after_the_separator_names_code(tmp_path, monkeypatch, capsys, where,
                                                                       override):
    override = override.format(folder=tmp_path)
    path = write_sweep_file(tmp_path, "hostile", {"overrides": [*SHARED, *([override] if where == "file" else [])]})
    extra = [override] if where == "command line" else []
    code, _, error, started = run_sweep(monkeypatch, capsys, str(path), "--", *extra, f"paths.outputs={tmp_path}")
    assert code == 2 and not started, error
    assert f"`{override}` is refused" in error and len(error.strip().splitlines()) == 1


def test_shell_commands_for_the_launcher_come_only_from_the_users_own_command_line(tmp_path, monkeypatch, capsys):
    setup = "hydra.launcher.setup=[touch marker]"
    path = write_sweep_file(tmp_path, "setup", {"overrides": [*SHARED, setup]})
    code, _, error, started = run_sweep(monkeypatch, capsys, str(path), "--dry-run")
    assert code == 2 and f"`{setup}` is refused: it runs shell commands" in error


def make_lines(*arguments: str) -> list[list[str]]:
    """What `make -n` would run, each command split as the shell splits it."""
    result = subprocess.run(["make", "-n", "--no-print-directory", "-o", "install", "-o", "data", *arguments],
                            cwd=REPOSITORY, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_makefile_quotes_paths_with_spaces_and_quotes(tmp_path):
    outputs = tmp_path / "Alice's runs" / "with space, and a comma"
    lines = make_lines("demo", f"OUTPUTS={outputs}")
    assert [".venv/bin/python", "-m", "phases.run", f'paths.outputs="{outputs}"'] in lines  # a Hydra string
    assert [".venv/bin/python", "-m", "phases.figures", "--outputs", str(outputs)] in lines
    outputs.mkdir(parents=True)
    result = subprocess.run(["make", "--no-print-directory", "-o", "install", "figures", f"OUTPUTS={outputs}"],
                            cwd=REPOSITORY, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"no runs under {outputs / 'runs'}" in result.stdout
