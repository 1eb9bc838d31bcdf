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
    expected = {"smoke": 2, "cpu_repro": 9, "paper_phases": 48, "paper_transfer": 12, "probe_convergence": 4,
                "probe_agreement": 3, "theory": 54, "class_transfer": 3, "cpu_paper": 9,
                "representation": 9}[name]
    assert f"{expected} jobs" in result.stdout
    assert result.stdout.count("  pending ") == expected
    assert not (tmp_path / "runs").exists()


def test_a_failing_job_does_not_stop_the_sweep_and_is_reported(tmp_path):
    data_dir = tmp_path / "data"
    write_mnist_like(data_dir / "FashionMNIST" / "raw", train=200, test=100)
    write_mnist_like(data_dir / "MNIST" / "raw", train=100, test=100)  # fewer images than the job asks for
    sweep_file = tmp_path / "two.yaml"
    sweep_file.write_text(yaml.safe_dump({"description": "one job asks for more images than it has", "overrides": [
        "dataset=mnist,fashion_mnist", "dataset.train_size=150", "schedule.max_steps=4", "schedule.batch_size=16",
        "arch.width=0.25", "probe.train_size=50", "probe.test_size=50", "progress=false", "paths.system_data_dir=null",
        f"paths.outputs={tmp_path / 'outputs'}"]}))
    first = sweep(sweep_file, data_dir=data_dir)
    assert first.returncode == 1
    summary = first.stdout.split("summary of two:")[1]
    assert "1 done, 1 failed" in summary and "dataset.train_size=150" in summary
    assert "summary of the sweep:" not in first.stdout  # phases.sweep sums up its multiruns, once
    runs = {folder.name.split("-")[0]: json.loads((folder / "run.json").read_text())
            for folder in (tmp_path / "outputs" / "runs").iterdir()}
    assert runs["fashion_mnist"]["status"] == "done" and runs["mnist"]["status"] == "failed"
    assert sorted(path.name for path in (tmp_path / "outputs" / "runs").glob("mnist-*/*")) == ["run.json", "run.log"]

    write_mnist_like(data_dir / "MNIST" / "raw", train=200, test=100)
    second = sweep(sweep_file, data_dir=data_dir)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 done, 1 skipped (done before)" in second.stdout.split("summary of two:")[1]
    listing = sweep(sweep_file, "--dry-run", data_dir=data_dir)
    assert "2 done" in listing.stdout


def test_a_sweep_of_several_multiruns_lists_and_runs_them_all_in_order(tmp_path):
    """`overrides:` as a list of lists: a generated dataset with its own keys, and a real dataset."""
    data_dir = tmp_path / "data"
    write_mnist_like(data_dir / "FashionMNIST" / "raw", train=200, test=100)
    shared = ["arch=linear", "schedule.max_steps=2", "schedule.batch_size=16", "probe.train_size=50",
              "probe.test_size=50", "probe.layers=[logits]", "progress=false", "paths.system_data_dir=null",
              f"paths.outputs={tmp_path / 'outputs'}"]
    sweep_file = tmp_path / "theory_like.yaml"
    sweep_file.write_text(yaml.safe_dump({"description": "two multiruns", "environment": {"OMP_NUM_THREADS": 1},
                                          "overrides": [
        ["dataset=prototypes", "dataset.train_size=100", "dataset.test_size=50", "dataset.atypical_fraction=0,0.1",
         *shared],
        ["dataset=fashion_mnist", "seed=0,1,2", *shared]]}))
    listing = sweep(sweep_file, "--dry-run", data_dir=data_dir)
    assert listing.returncode == 0, listing.stderr
    assert "5 jobs in 2 multiruns:" in listing.stdout
    assert "2 jobs: OMP_NUM_THREADS=1 python -m phases.run -m dataset=prototypes" in listing.stdout
    assert "3 jobs: OMP_NUM_THREADS=1 python -m phases.run -m dataset=fashion_mnist" in listing.stdout
    assert listing.stdout.count("  pending ") == 5
    ran = sweep(sweep_file, data_dir=data_dir)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "5 done" in ran.stdout.split("summary of theory_like:")[1]
    folders = sorted((tmp_path / "outputs" / "runs").iterdir())
    assert [folder.name.split("-")[0] for folder in folders] == ["fashion_mnist"] * 3 + ["prototypes"] * 2
    # The sweep's environment reached the runs.
    assert {json.loads((folder / "run.json").read_text())["cpu_threads"] for folder in folders} == {1}


def test_a_sweep_file_mixing_overrides_and_lists_is_refused(tmp_path):
    sweep_file = tmp_path / "mixed.yaml"
    sweep_file.write_text(yaml.safe_dump({"overrides": ["seed=0", ["arch=linear"]]}))
    result = sweep(sweep_file, "--dry-run", data_dir=tmp_path)
    assert result.returncode != 0 and "mixes overrides and lists of overrides" in result.stderr
