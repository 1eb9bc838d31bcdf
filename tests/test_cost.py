"""A sweep's cost before it runs: calibrated rates, their cache, and `phases.sweep --dry-run --estimate`."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from phases.config.compose import compose
from phases.training import cost
from phases.training.calibration import Rates, measure_rates
from phases.training.schedule import evaluation_steps
from tests.conftest import REPOSITORY, write_mnist_like

RATES = Rates(setup_s=2.0, step_s=0.01, first_evaluation_s=5.0, evaluation_s=1.0)
TINY = ["dataset=fashion_mnist", "dataset.train_size=200", "arch=mlp", "arch.width=0.25", "schedule.batch_size=32",
        "probe.train_size=64", "probe.test_size=48", "probe.classifier_train_size=100", "probe.calibration_size=50",
        "progress=false", "paths.system_data_dir=null"]


def test_a_fresh_run_costs_its_setup_updates_first_evaluation_and_the_later_ones():
    evaluations = len(evaluation_steps(1024))  # 0, 1, 2, ..., 512, 1024: 12
    assert cost.run_seconds(RATES, 1024) == pytest.approx(2.0 + 1024 * 0.01 + 5.0 + (evaluations - 1) * 1.0)


def test_a_resumed_run_costs_only_what_is_left_after_its_checkpoint():
    # Evaluated up to step 256 of 1024: 768 updates and the evaluations at 512 and 1024 are left; the
    # once-per-run choices of the first evaluation were made by the first attempt.
    assert cost.run_seconds(RATES, 1024, evaluated_step=256) == pytest.approx(2.0 + 768 * 0.01 + 2 * 1.0)
    assert cost.run_seconds(RATES, 1024, evaluated_step=1024) == pytest.approx(2.0)


def test_seeds_and_lengths_share_a_calibration_other_settings_do_not(tmp_path):
    base = [f"paths.outputs={tmp_path}"]
    shared = {cost.signature(compose([*base, f"seed={seed}", f"schedule.max_steps={steps}"]))[0]
              for seed in (0, 1) for steps in (64, 4096)}
    assert len(shared) == 1
    assert cost.signature(compose([*base, "arch=vgg11"]))[0] not in shared
    assert cost.signature(compose([*base, "probe.layers=null"]))[0] not in shared
    assert cost.signature(compose([*base, "schedule.batch_size=64"]))[0] not in shared


def test_the_signature_covers_the_machine_threads_included(tmp_path):
    import torch

    cfg = compose([f"paths.outputs={tmp_path}"])
    before = torch.get_num_threads()
    first, covered = cost.signature(cfg)
    try:
        torch.set_num_threads(before + 1)
        assert cost.signature(cfg)[0] != first
    finally:
        torch.set_num_threads(before)
    assert set(covered["machine"]) == {"host", "device", "threads", "torch"}


def test_an_unreadable_calibration_is_measured_again_not_trusted(tmp_path):
    cfg = compose([f"paths.outputs={tmp_path}"])
    path = cost.calibration_path(cfg)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert cost.cached_rates(cfg) is None
    path.write_text(json.dumps({"rates": {"setup_s": 1.0}}))  # a rate missing
    assert cost.cached_rates(cfg) is None


def test_calibration_times_the_real_loop_and_two_evaluations(tmp_path):
    data_dir = tmp_path / "data"
    write_mnist_like(data_dir / "FashionMNIST" / "raw", train=200, test=100)
    cfg = compose([*TINY, "schedule.max_steps=4", f"paths.data_dir={data_dir}", f"paths.outputs={tmp_path / 'out'}"])
    rates = measure_rates(cfg)
    assert rates.setup_s > 0 and rates.step_s > 0 and rates.first_evaluation_s > 0 and rates.evaluation_s > 0
    assert not (tmp_path / "out").exists()  # a calibration writes no run


def sweep(path, *extra, data_dir):
    return subprocess.run([sys.executable, "-m", "phases.sweep", str(path), *extra], cwd=REPOSITORY,
                          env={**os.environ, "PHASES_DATA_DIR": str(data_dir)}, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_a_dry_run_estimates_each_job_once_calibrated_and_the_sweep_reports_how_far_off_it_was(tmp_path):
    data_dir, outputs = tmp_path / "data", tmp_path / "outputs"
    write_mnist_like(data_dir / "FashionMNIST" / "raw", train=200, test=100)
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(yaml.safe_dump({"overrides": [*TINY, "schedule.max_steps=8", "seed=0,1,2",
                                                        f"paths.outputs={outputs}"]}))

    first = sweep(sweep_file, "--dry-run", "--estimate", data_dir=data_dir)
    assert first.returncode == 0, first.stderr
    # Three seeds of one configuration: one calibration, cached with the process start.
    assert first.stdout.count("calibrating ") == 1
    assert len(list((outputs / "calibration").glob("*.json"))) == 2
    assert first.stdout.count("  pending ") == 3 and " s  fashion_mnist-mlp-sgd-s" in first.stdout
    assert "estimate on " in first.stdout and "3 jobs to run" in first.stdout and "run-hours" in first.stdout
    assert not (outputs / "runs").exists()

    again = sweep(sweep_file, "--dry-run", "--estimate", data_dir=data_dir)
    assert "calibrating" not in again.stdout and "3 jobs to run" in again.stdout

    ran = sweep(sweep_file, data_dir=data_dir)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "took " in ran.stdout and "; estimated " in ran.stdout

    done = sweep(sweep_file, "--dry-run", "--estimate", data_dir=data_dir)
    assert "3 done" in done.stdout and "0 jobs to run" in done.stdout


def test_the_estimate_gives_slurm_device_hours_for_runs_packed_per_device(tmp_path, capsys):
    slurm = cost.Launch(1, None, "slurm", per_device=4)
    cost.print_estimate({tmp_path / "a": (3600.0, slurm), tmp_path / "b": (3600.0, slurm)})
    printed = capsys.readouterr().out
    assert "2 jobs to run" in printed and "2.00 run-hours" in printed
    assert "hold 2.00 device-hours run alone, or down to 0.50 with 4 runs per device" in printed
    packed = ["hydra/launcher=slurm", "hydra.launcher.runs_per_device=4"]
    launch = cost.launch_of([cost.Job(packed, tmp_path, None)], {})
    assert launch == cost.Launch(1, None, "slurm", 4)
