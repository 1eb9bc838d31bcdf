"""End to end, as a user runs it: `python -m phases.run ...` in a subprocess, on generated IDX files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from phases.store.metrics import METRICS_SCHEMA
from phases.training.schedule import evaluation_steps
from tests.conftest import REPOSITORY

pytestmark = pytest.mark.slow

QUICK = ["schedule.max_steps=4", "schedule.batch_size=32", "probe.train_size=64", "probe.test_size=48",
         "probe.classifier_train_size=100", "probe.batch_size=50", "probe.calibration_size=50", "probe.layers=null",
         "arch.width=0.25", "progress=false",
         "paths.system_data_dir=null"]
VGG8_POINTS = ["block1", "block2", "block3", "block4", "block5", "logits"]


def run_phases(*overrides: str, data_dir: Path, outputs: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PHASES_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "phases.run", *QUICK, f"paths.outputs={outputs}", *overrides],
        cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One quick run, shared by the tests that only read its outputs."""
    from tests.conftest import write_mnist_like

    root = tmp_path_factory.mktemp("run")
    data_dir = root / "data"
    write_mnist_like(data_dir / "FashionMNIST" / "raw")
    outputs = root / "outputs"
    result = run_phases(data_dir=data_dir, outputs=outputs)
    assert result.returncode == 0, result.stderr
    (folder,) = (outputs / "runs").iterdir()
    return {"data_dir": data_dir, "outputs": outputs, "folder": folder, "result": result}


def test_run_folder_has_config_provenance_and_metrics(finished_run):
    folder = finished_run["folder"]
    assert folder.name.startswith("fashion_mnist-vgg8-sgd-s0-") and len(folder.name.rsplit("-", 1)[1]) == 8
    # The checkpoint is gone once the run is done; .lock is the (empty) file runs lock the folder with.
    assert sorted(path.name for path in folder.iterdir()) == [".lock", "config.yaml", "metrics.parquet", "run.json",
                                                              "run.log"]
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "done" and record["run_id"] == folder.name
    for key in ("git_commit", "git_dirty", "versions", "host", "device", "started_at", "ended_at",
                "wall_time_s", "training_time_s", "probing_time_s", "slurm_job_id", "submitit_logs"):
        assert key in record
    assert set(record["versions"]) >= {"python", "torch", "torchvision", "hydra"}
    assert record["training_time_s"] + record["probing_time_s"] <= record["wall_time_s"]
    # Where the probing time went: each task of the evaluations, summing to it (the clock starts and stops
    # within the evaluation the loop times).
    by_task = record["probing_time_by_task_s"]
    assert set(by_task) == {"activations", "reconstruction", "linear", "sample_loss", "metrics file"}
    assert 0.9 * record["probing_time_s"] - 0.01 <= sum(by_task.values()) <= record["probing_time_s"] + 0.01


def test_result_files_get_the_mode_of_any_new_file_not_a_private_one(finished_run):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("metrics.parquet", "config.yaml", "run.json"):  # written through a private temporary file
        assert (finished_run["folder"] / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_metrics_have_the_exact_schema_and_one_row_per_measurement(finished_run):
    table = pq.read_table(finished_run["folder"] / "metrics.parquet")
    assert table.schema.remove_metadata() == METRICS_SCHEMA
    frame = table.to_pandas()
    steps = evaluation_steps(4)
    assert sorted(frame["step"].unique()) == steps
    # Per step: classifier 2 metrics x 2 splits, sample_loss 5 metrics x 2 splits; per probe point:
    # reconstruction mse x 2 splits plus its features, images and ridge, and linear accuracy/cross_entropy x 2 splits.
    assert len(frame) == len(steps) * (4 + 10 + len(VGG8_POINTS) * (2 + 3 + 4))
    assert not frame.duplicated(["step", "layer", "probe", "metric", "split"]).any()
    assert set(frame["layer"]) == {"output", *VGG8_POINTS}
    assert set(frame["probe"]) == {"classifier", "reconstruction", "linear", "sample_loss"}
    assert set(frame.query("probe == 'sample_loss'")["metric"]) == {
        "loss_p50", "loss_p90", "loss_p99", "loss_share_worst_1pct", "loss_share_worst_10pct"}
    reconstruction = frame.query("probe == 'reconstruction'")
    assert set(reconstruction["metric"]) == {"mse", "features", "images", "ridge"}
    assert (reconstruction["value"] > 0).all()
    # Beside each RL, what bends it: the decoder's feature count (block5: VGG-8's 512 channels at the
    # run's width), its training images (probe.train_size) and its ridge (chosen at step 0), the same at every step.
    sizes = reconstruction.query("metric != 'mse'").groupby(["layer", "metric"])["value"].agg(["min", "max"])
    # block5: max(probe.train_size 64, 4 images x its 128 features), at most the 256 generated training images.
    assert (sizes["min"] == sizes["max"]).all() and sizes.loc[("block5", "images"), "min"] == 256
    assert sizes.loc[("logits", "images"), "min"] == 64  # 10 features: probe.train_size
    assert sizes.loc[("block5", "features"), "min"] == 512 // 4  # arch.width=0.25
    accuracy = frame.query("metric == 'accuracy'")["value"]
    assert accuracy.between(0, 1).all()
    assert frame["epoch"].tolist() == pytest.approx((frame["step"] * 32 / 256).tolist())
    assert set(frame["run_id"]) == {finished_run["folder"].name} and set(frame["seed"]) == {0}
    depth = frame.drop_duplicates("layer").set_index("layer")["depth"]
    assert depth["block1"] == pytest.approx(1 / 6) and depth["block5"] == pytest.approx(5 / 6)
    assert depth["logits"] == depth["output"] == 1.0


def test_same_config_again_is_skipped_and_force_reruns(finished_run):
    folder = finished_run["folder"]
    metrics = folder / "metrics.parquet"
    modified = metrics.stat().st_mtime_ns
    again = run_phases(data_dir=finished_run["data_dir"], outputs=finished_run["outputs"])
    assert again.returncode == 0
    assert f"run {folder.name} is already done" in again.stdout and "force=true" in again.stdout
    assert metrics.stat().st_mtime_ns == modified
    forced = run_phases("force=true", data_dir=finished_run["data_dir"], outputs=finished_run["outputs"])
    assert forced.returncode == 0 and metrics.stat().st_mtime_ns != modified
    assert [path.name for path in (finished_run["outputs"] / "runs").iterdir()] == [folder.name]


def test_settings_that_do_not_change_results_keep_the_run_id(finished_run, tmp_path):
    skipped = run_phases("device=cpu", "probe.batch_size=7", data_dir=finished_run["data_dir"],
                         outputs=finished_run["outputs"])
    assert "already done" in skipped.stdout
    other_seed = run_phases("seed=1", "schedule.max_steps=1", data_dir=finished_run["data_dir"],
                            outputs=tmp_path / "outputs")
    assert other_seed.returncode == 0, other_seed.stderr
    (folder,) = (tmp_path / "outputs" / "runs").iterdir()
    assert folder.name.startswith("fashion_mnist-vgg8-sgd-s1-") and folder.name != finished_run["folder"].name


@pytest.mark.parametrize(
    "override, message",
    [
        ("arch=nope", "Available options in 'arch'"),
        ("optimizer.lr=-1", "optimizer.lr=-1.0 is invalid: a positive learning rate"),
        ("schedule.batch_size=0", "schedule.batch_size=0 is invalid"),
        ("probe.layers=[block9]", "probe.layers='block9' is invalid: arch vgg8 declares the probe points block1"),
        ("schedule.batch_size=1000", "schedule.batch_size=1000 is invalid: at most the 256 training images"),
        ("optimizer.lr=fast", "optimizer.lr"),
        ("device=tpu", "device='tpu' is invalid: auto, cpu, cuda or cuda:N"),
        ("probe.bn_mode=batch", "Invalid value 'batch', expected one of [precise_eval, eval, train]"),
        ("probe.max_activation_gb=0.001", "per evaluation (3978 features, up to 4 training images per feature); "
                                          "probe fewer layers"),
    ],
)
def test_bad_input_exits_non_zero_with_a_message_and_writes_no_run(data_dir, tmp_path, override, message):
    result = run_phases(override, data_dir=data_dir, outputs=tmp_path / "outputs")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs" / "runs").exists()


def test_a_calibration_batch_past_the_memory_limit_is_refused_before_training(data_dir, tmp_path):
    """The probed activations (the logits: 10 features) fit the limit; PreciseBN's one batch of 256 images
    (VGG-8's block1 for each, about 4 MB) does not."""
    result = run_phases("probe.layers=[logits]", "probe.train_size=256", "probe.calibration_size=256",
                        "probe.max_activation_gb=0.002", data_dir=data_dir, outputs=tmp_path / "outputs")
    assert result.returncode != 0
    assert ("probe.calibration_size=256 is invalid: PreciseBN passes its 256 calibration images as one batch"
            in result.stderr)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs" / "runs").exists()


def test_missing_data_exits_non_zero_naming_files_folders_and_remedies(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_phases("dataset.download=false", data_dir=empty, outputs=tmp_path / "outputs")
    assert result.returncode != 0
    for expected in ("train-images-idx3-ubyte", str(empty / "FashionMNIST" / "raw"),
                     "python -m phases.fetch dataset=fashion_mnist"):
        assert expected in result.stderr
    assert not (tmp_path / "outputs" / "runs").exists()


def test_figures_are_drawn_from_the_runs_without_importing_torch(finished_run):
    outputs = finished_run["outputs"]
    script = ("import sys; from phases.figures import main; code = main(); "
              "assert 'torch' not in sys.modules, 'the analysis side imported torch'; sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", script, "--outputs", str(outputs)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for suffix in ("png", "pdf"):  # a run started by `python -m phases.run` is one of the "single runs"
        assert (outputs / "figures" / f"single_runs--reconstruction_loss.{suffix}").stat().st_size > 10_000
    assert (outputs / "tables" / "single_runs--phase_table.md").is_file() and (outputs / "report.html").is_file()


def test_figures_without_runs_say_how_to_make_some(tmp_path):
    result = subprocess.run([sys.executable, "-m", "phases.figures", "--outputs", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "make demo" in result.stdout
    assert not (tmp_path / "figures").exists()


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=local", "hydra.launcher.max_parallel_jobs=2"]],
                         ids=["basic", "local_processes"])
def test_the_users_sweep_command_runs_every_combination(tmp_path, launcher):
    """`python -m phases.run -m arch=resnet18,vgg11 dataset=cifar10,mnist`, shrunk to seconds."""
    from tests.conftest import write_dataset

    data_dir = tmp_path / "data"
    write_dataset(data_dir, "cifar10", train=80, test=40)
    write_dataset(data_dir, "mnist", train=80, test=40)
    outputs = tmp_path / "outputs"
    result = subprocess.run(
        [sys.executable, "-m", "phases.run", "-m", "arch=resnet18,vgg11", "dataset=cifar10,mnist",
         "schedule.max_steps=16", "schedule.batch_size=16", "arch.width=0.25", "probe.train_size=40",
         "probe.test_size=40", "probe.layers=null", "progress=false", "paths.system_data_dir=null",
         f"paths.outputs={outputs}", *launcher],
        cwd=tmp_path, env={**os.environ, "PHASES_DATA_DIR": str(data_dir)}, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folders = sorted((outputs / "runs").iterdir())
    assert sorted(folder.name.rsplit("-", 3)[0] for folder in folders) == [
        "cifar10-resnet18", "cifar10-vgg11", "mnist-resnet18", "mnist-vgg11"]
    for folder in folders:
        assert json.loads((folder / "run.json").read_text())["status"] == "done"
        frame = pq.read_table(folder / "metrics.parquet").to_pandas()
        assert sorted(frame["step"].unique()) == evaluation_steps(16)
    if launcher:  # never more than max_parallel_jobs runs at once (times in whole seconds)
        records = [json.loads((folder / "run.json").read_text()) for folder in folders]
        for record in records:
            running = [other for other in records if other["started_at"] <= record["started_at"] < other["ended_at"]]
            assert len(running) <= 2, [(other["started_at"], other["ended_at"]) for other in records]
    # Hydra's sweep folder (submitit's logs) lives under paths.outputs, nothing in the working directory.
    assert (outputs / "sweeps").is_dir() and sorted(path.name for path in tmp_path.iterdir()) == ["data", "outputs"]


def test_runs_sharing_a_device_measure_what_each_measures_alone(tmp_path):
    """hydra.launcher.runs_per_device=2: two seeds at once on one device (here the CPU's cores), each with
    the metrics of its own solo run. One thread per run in both, as BLAS sums in another order otherwise."""
    from tests.conftest import write_mnist_like

    data_dir = tmp_path / "data"
    write_mnist_like(data_dir / "FashionMNIST" / "raw")
    environment = {**os.environ, "PHASES_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "phases.run"]
    settings = [*QUICK, "schedule.max_steps=8"]
    for seed in (0, 1):
        solo = subprocess.run([*command, *settings, f"seed={seed}", f"paths.outputs={tmp_path / 'solo'}"],
                              cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=300)
        assert solo.returncode == 0, solo.stderr[-3000:]
    shared = subprocess.run([*command, "-m", *settings, "seed=0,1", "hydra/launcher=local",
                             "hydra.launcher.runs_per_device=2", f"paths.outputs={tmp_path / 'shared'}"],
                            cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=300)
    assert shared.returncode == 0, shared.stderr[-3000:]
    records = [json.loads(path.read_text()) for path in (tmp_path / "shared" / "runs").glob("*/run.json")]
    first, second = sorted(records, key=lambda record: record["started_at"])
    assert second["started_at"] < first["ended_at"]  # at once, not one after the other
    for folder in (tmp_path / "solo" / "runs").iterdir():
        alone = pq.read_table(folder / "metrics.parquet").to_pandas()
        together = pq.read_table(tmp_path / "shared" / "runs" / folder.name / "metrics.parquet").to_pandas()
        assert len(alone) == len(together) > 0
        np.testing.assert_allclose(together["value"], alone["value"], rtol=1e-6, atol=1e-9)


def test_the_published_recipe_runs_every_probe_on_the_penultimate_layer(tmp_path):
    """`probe=paper`, shrunk: SGD/Adam solvers, the conv decoder, both transfer tasks, sample loss."""
    from tests.conftest import write_dataset

    data_dir = tmp_path / "data"
    write_dataset(data_dir, "fashion_mnist", train=120, test=60)
    write_dataset(data_dir, "mnist", train=120, test=60)
    # The quick settings probe every layer: ask for the paper's [penultimate] again.
    result = run_phases("probe=paper", "probe.layers=[penultimate]", "probe.train_size=100", "probe.test_size=50",
                        "probe.reconstruction.epochs=2",
                        "probe.reconstruction_conv.epochs=1", "probe.linear.epochs=2", "probe.linear.lr_drop_epoch=1",
                        "probe.transfer.classifier.epochs=2", "schedule.max_steps=2", data_dir=data_dir,
                        outputs=tmp_path / "outputs")
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = (tmp_path / "outputs" / "runs").iterdir()
    frame = pq.read_table(folder / "metrics.parquet").to_pandas()
    assert set(frame["layer"]) == {"block5", "output"}
    assert set(frame["probe"]) == {"classifier", "sample_loss", "reconstruction", "reconstruction_conv", "linear",
                                   "transfer_quadrant_dominance", "transfer_dataset_switch"}
    transfer = frame.query("probe == 'transfer_dataset_switch'")
    assert set(transfer["split"]) == {"train", "val", "test"}
    assert set(transfer["metric"]) == {"accuracy", "cross_entropy"}


def test_dataset_switch_without_the_paired_dataset_fails_before_writing(data_dir, tmp_path):
    result = run_phases("probe.enabled=[transfer]", "probe.transfer.tasks=[dataset_switch]", data_dir=data_dir,
                        outputs=tmp_path / "outputs")
    assert result.returncode != 0
    assert "dataset_switch, which needs mnist" in result.stderr and "MNIST/raw" in result.stderr
    assert not (tmp_path / "outputs" / "runs").exists()
