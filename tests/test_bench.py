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


def floor_cfg(*overrides: str):
    from phases.config.compose import compose

    return compose(["probe.min_images_per_feature=0", *overrides])


def test_the_probing_floor_counts_each_solve_once_and_the_cross_validation_at_the_first_evaluation():
    from phases.bench.probing_floor import point_flops

    both = floor_cfg()
    first, later = (point_flops(100, 400, 50, 1024, 10, both, first) for first in (True, False))
    # The eigendecomposition and its projections, counted as the decoder's.
    assert first["reconstruction"] - later["reconstruction"] == pytest.approx(4 * 100**3 + 2 * 100**2 * 1024)
    assert first["linear"] == later["linear"]
    # The classifier alone computes the Gram the decoder shares with it in the default run.
    decoder = point_flops(100, 400, 50, 1024, 10, floor_cfg("probe.enabled=[reconstruction]"), False)
    classifier = point_flops(100, 400, 50, 1024, 10, floor_cfg("probe.enabled=[linear]"), False)
    assert decoder["reconstruction"] == later["reconstruction"]
    assert classifier["linear"] == pytest.approx(later["linear"] + 100**2 * 400)
    # More features than images: the images x images system, whose Gram costs n^2 d instead of n d^2.
    wide = point_flops(400, 100, 50, 1024, 10, floor_cfg("probe.enabled=[reconstruction]"), False)
    assert wide == {"reconstruction": pytest.approx(100**2 * 400 + 2 * 100 * 400 * 1024 + 100**3 / 3
                                                    + 2 * 100**2 * 1024 + 2 * 50 * 400 * 1024)}

def test_the_probing_floor_refuses_probes_it_does_not_count():
    from phases.bench.probing_floor import probing_floor

    with pytest.raises(ValueError, match="no floor for probes \\['cka'\\]"):
        probing_floor(floor_cfg("probe.enabled=[reconstruction,cka]"), None)


@pytest.mark.slow
def test_probing_floor_runs_both_configurations_and_prints_floor_measured_and_share(tmp_path):
    write_mnist_like(tmp_path / "data" / "FashionMNIST" / "raw", train=200, test=100)
    result = subprocess.run(
        [sys.executable, "-m", "phases.bench.probing_floor", "--steps", "4", "--outputs", str(tmp_path / "out"),
         "--configuration", "every_point", "--configuration", "default", "arch.width=0.25", "probe.train_size=64",
         "probe.test_size=48", "probe.classifier_train_size=100", "paths.system_data_dir=null"],
        cwd=REPOSITORY, env={**os.environ, "PHASES_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table, breakdown = result.stdout.split("\n\n")
    rows = {line[:13].strip(): line[13:].split() for line in table.splitlines()[3:]}
    assert list(rows) == ["every point", "default"]  # in the order of the --configuration flags
    # 4 evaluations (steps 0, 1, 2 and 4) of the whole splits: 200 train images (block5's 128 features ask
    # for 4 x 128, capped at the split) and the 100 test images.
    assert rows["default"][:2] == ["2", "4"] and rows["default"][3] == "1200"
    assert int(rows["every point"][0]) > 2
    for row in rows.values():
        assert float(row[5]) > 0 and float(row[6].rstrip("x")) > 0 and 0 < float(row[7].rstrip("%")) < 100
        assert 0 < float(row[8].rstrip("%")) < 100  # the share probing would have at its floor
    # Each configuration's time by task beside the task's floor, from the runs' probing_time_by_task_s.
    parts = {line[:13].strip(): line[13:].strip().split("; ") for line in breakdown.splitlines()[1:]}
    assert list(parts) == ["every point", "default"]
    for part in parts.values():
        assert [entry.split()[0] for entry in part] == ["activations", "reconstruction", "linear", "other"]
        for entry in part[:3]:
            _, measured, _, floor, ratio = entry.split()
            assert float(measured) > 0 and float(floor) >= 0 and float(ratio.strip("()x")) > 0
