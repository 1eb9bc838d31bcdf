"""The benchmarks a user runs with `make bench` start and print their tables (speed itself is never asserted)."""

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPOSITORY, write_mnist_like


@pytest.mark.slow
def test_sweep_throughput_runs_the_sweep_once_per_k_and_prints_runs_per_hour(tmp_path):
    write_mnist_like(tmp_path / "data" / "FashionMNIST" / "raw", train=200, test=100)
    result = subprocess.run(
        [sys.executable, "-m", "phases.bench.sweep_throughput", "--runs", "2", "--steps", "4", "--per-device", "1", "2",
         "--cpu", "arch.width=0.25", "probe.train_size=64", "probe.test_size=48", "probe.classifier_train_size=100",
         "paths.system_data_dir=null"],
        cwd=REPOSITORY, env={**os.environ, "PHASES_DATA_DIR": str(tmp_path / "data")}, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert [row[0] for row in rows] == ["1", "2"] and rows[0][3] == "1.00x"
    assert all(float(row[2]) > 0 for row in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without a GPU")
def test_make_bench_says_the_gpu_throughput_is_not_measured_without_a_gpu():
    result = subprocess.run([sys.executable, "-m", "phases.bench.sweep_throughput", "--skip-without-gpu"],
                            cwd=REPOSITORY, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "not measured, no GPU here" in result.stdout
    refused = subprocess.run([sys.executable, "-m", "phases.bench.sweep_throughput"], cwd=REPOSITORY,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "no GPU here" in refused.stderr
