"""The class-split transfer: train on dataset.class_subset, probe the frozen network on the other classes."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf

import phases.training.execute as execute_module
from phases.analysis import plots, tables
from phases.config.compose import compose
from phases.config.validation import ConfigError
from phases.store.identity import result_settings, run_id
from phases.store.record import RunStatus, run_folder
from phases.training.data import DatasetInfo, ImageSplits, complement_classes, dataset_info, load_image_splits
from phases.training.evaluation import check_activation_memory
from phases.training.models import build_model
from phases.training.probes import (
    COMPLEMENT_CLASSES,
    OWN_DATASET,
    LBFGSClassifier,
    ProbeData,
    TransferProbe,
    build_probes,
)

# A run of seconds on the generated data (256 train, 128 test images, classes in turn: 0, 1, ..., 9, 0, ...).
QUICK = ["schedule.max_steps=4", "schedule.batch_size=32", "probe.train_size=64", "probe.test_size=48",
         "probe.classifier_train_size=100", "probe.batch_size=50", "probe.calibration_size=50", "arch.width=0.25",
         "progress=false", "paths.system_data_dir=null", "dataset.download=false"]
SWITCH = ["probe.enabled=[linear,transfer]", "probe.transfer.tasks=[dominance,class_switch]"]


def quick_config(data_dir: Path, outputs: Path, *extra: str):
    return compose([*QUICK, f"paths.data_dir={data_dir}", f"paths.outputs={outputs}", *extra])


def load(data_dir: Path, seed: int = 0, **changes) -> ImageSplits:
    cfg = quick_config(data_dir, data_dir.parent / "outputs")
    return load_image_splits(OmegaConf.merge(cfg.dataset, changes), cfg.paths, seed, torch.device("cpu"))


def expected_split(everything: ImageSplits, split: str, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of `classes` in file order, labelled by their position in `classes`."""
    images, labels = getattr(everything, f"{split}_images"), getattr(everything, f"{split}_labels")
    kept = torch.isin(labels, torch.tensor(classes))
    renumber = torch.full((10,), -1, dtype=torch.long)
    renumber[classes] = torch.arange(len(classes))
    return images[kept], renumber[labels[kept]]


def test_a_class_subset_keeps_only_its_classes_in_both_splits_relabelled_in_the_given_order(data_dir):
    everything = load(data_dir)
    subset = load(data_dir, class_subset=[7, 2, 5])
    assert subset.info == DatasetInfo(channels=1, classes=3, image_size=32)
    for split in ("train", "test"):
        images, labels = expected_split(everything, split, [7, 2, 5])
        assert torch.equal(getattr(subset, f"{split}_images"), images)
        assert torch.equal(getattr(subset, f"{split}_labels"), labels)
        assert sorted(set(labels.tolist())) == [0, 1, 2] and len(labels) < len(getattr(everything, f"{split}_labels"))


def test_dataset_sizes_count_images_of_the_kept_classes_in_a_seeded_subset(data_dir):
    # 256 train images of the 10 classes in turn: 26 each of classes 0, 1 and 2.
    first = load(data_dir, class_subset=[0, 1, 2], train_size=40, test_size=20)
    again = load(data_dir, class_subset=[0, 1, 2], train_size=40, test_size=20)
    assert len(first.train_labels) == 40 and len(first.test_labels) == 20
    assert torch.equal(first.train_images, again.train_images) and torch.equal(first.train_labels, again.train_labels)
    assert set(first.train_labels.tolist()) == {0, 1, 2}
    other_seed = load(data_dir, seed=1, class_subset=[0, 1, 2], train_size=40, test_size=20)
    assert not torch.equal(first.train_images, other_seed.train_images)
    assert len(load(data_dir, class_subset=[0, 1, 2], train_size=78).train_labels) == 78
    with pytest.raises(ConfigError, match=r"at most the 78 images of fashion_mnist's train split in the classes "
                                          r"\[0, 1, 2\]") as raised:
        load(data_dir, class_subset=[0, 1, 2], train_size=79)
    assert raised.value.key == "dataset.train_size"


def test_the_complement_holds_exactly_the_other_classes_relabelled_in_ascending_order(data_dir, tmp_path):
    cfg = quick_config(data_dir, tmp_path / "outputs", "dataset.class_subset=[8,0,3]")
    complement = complement_classes(cfg.dataset)
    assert complement == [1, 2, 4, 5, 6, 7, 9]
    datasets = execute_module.load_datasets(cfg, torch.device("cpu"), None, complement)
    assert set(datasets) == {OWN_DATASET, COMPLEMENT_CLASSES}
    everything = load(data_dir)
    for split in ("train", "test"):
        images, labels = expected_split(everything, split, complement)
        assert torch.equal(getattr(datasets[COMPLEMENT_CLASSES], f"{split}_images"), images)
        assert torch.equal(getattr(datasets[COMPLEMENT_CLASSES], f"{split}_labels"), labels)
        own_images, own_labels = expected_split(everything, split, [8, 0, 3])
        assert torch.equal(getattr(datasets[OWN_DATASET], f"{split}_labels"), own_labels)
    assert datasets[COMPLEMENT_CLASSES].info.classes == 7


def test_the_classifier_has_one_output_per_kept_class():
    cfg = compose(["dataset.class_subset=[0,1,2,3,4]", "arch.width=0.25"])
    model = build_model(cfg.arch, dataset_info(cfg.dataset))
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize(("override", "key", "shown", "allowed"), [
    ("dataset.class_subset=[1,2,1]", "dataset.class_subset", "[1, 2, 1]", "[1] listed more than once"),
    ("dataset.class_subset=[0,10]", "dataset.class_subset", "[0, 10]", "in [0, 10)"),
    ("dataset.class_subset=[-1,3]", "dataset.class_subset", "[-1, 3]", "[-1] outside the range"),
    ("dataset.class_subset=[4]", "dataset.class_subset", "[4]", "at least 2 distinct class numbers"),
    ("dataset.class_subset=[]", "dataset.class_subset", "[]", "at least 2 distinct class numbers"),
])
def test_a_bad_class_subset_names_the_key_the_value_and_the_range_before_any_folder(data_dir, tmp_path, override,
                                                                                     key, shown, allowed):
    with pytest.raises(ConfigError) as raised:
        execute_module.execute(quick_config(data_dir, tmp_path / "outputs", override))
    assert raised.value.key == key
    assert f"{key}={shown} is invalid" in str(raised.value) and allowed in str(raised.value)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(("overrides", "key", "allowed"), [
    ([], "probe.transfer.tasks", "needs dataset.class_subset"),
    (["dataset.class_subset=[0,1,2,3,4,5,6,7,8,9]"], "dataset.class_subset", "this leaves []"),
    (["dataset.class_subset=[9,8,7,6,5,4,3,2,1]"], "dataset.class_subset", "this leaves [0]"),
])
def test_class_switch_without_two_classes_left_out_fails_before_any_folder(data_dir, tmp_path, overrides, key,
                                                                           allowed):
    with pytest.raises(ConfigError) as raised:
        execute_module.execute(quick_config(data_dir, tmp_path / "outputs", *SWITCH, *overrides))
    assert raised.value.key == key and allowed in str(raised.value) and "class_switch" in str(raised.value)
    assert not (tmp_path / "outputs").exists()


def test_prototypes_reject_a_class_subset_naming_the_key(tmp_path):
    with pytest.raises(ConfigError) as raised:
        execute_module.execute(compose(["dataset=prototypes", "dataset.class_subset=[0,1]",
                                        f"paths.outputs={tmp_path / 'outputs'}"]))
    assert raised.value.key == "dataset.class_subset" and "dataset.classes" in str(raised.value)
    assert not (tmp_path / "outputs").exists()


def test_no_class_subset_keeps_every_run_id_and_a_subset_changes_it():
    """A run id hashes result_settings alone: with the key absent from them, every id is what it was
    before the key existed (tests/test_identity.py pins the default run's)."""
    for overrides in [[], ["seed=3"], ["probe=paper"], ["dataset=mnist"], ["dataset=prototypes"], *[SWITCH]]:
        settings = result_settings(compose(overrides))
        assert not [key for key in settings if "class_subset" in key], overrides
    assert run_id(compose(["dataset.class_subset=null"])) == run_id(compose())

    subset = compose(["dataset.class_subset=[0,1,2,3,4]"])
    assert result_settings(subset)["dataset.class_subset"] == [0, 1, 2, 3, 4]
    assert run_id(subset) != run_id(compose())
    assert run_id(subset) != run_id(compose(["dataset.class_subset=[4,3,2,1,0]"]))  # the order sets the labels


def test_the_class_switch_probe_reads_the_complement_with_its_own_labels():
    cfg = compose([*SWITCH])
    probes = build_probes(cfg.probe, 0, DatasetInfo(channels=1, classes=5, image_size=32))
    transfer = {probe.name: probe.dataset for probe in probes if probe.name.startswith("transfer_")}
    assert transfer == {"transfer_quadrant_dominance": OWN_DATASET, "transfer_class_switch": COMPLEMENT_CLASSES}

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(1000) % 5
    features = torch.nn.functional.one_hot(labels, 5).float() * 4 + torch.randn(1000, 5, generator=generator)
    images = torch.randn(1000, 1, 8, 8, generator=generator)  # their quadrants say nothing of the labels
    probe = TransferProbe("class_switch", LBFGSClassifier(l2=1e-4, max_iterations=100), 0.25, seed=0)
    result = {(m.metric, m.split): m.value for m in probe.fit_and_score(
        ProbeData(features[:800], images[:800], labels[:800], (5,)),
        ProbeData(features[800:], images[800:], labels[800:], (5,)))}
    assert {split for _, split in result} == {"train", "val", "test"}
    assert result[("accuracy", "val")] > 0.95 and result[("accuracy", "test")] > 0.95


def test_the_activation_memory_guard_counts_the_complement():
    cfg = compose(["arch.width=0.25", "probe.train_size=64", "probe.test_size=32", "dataset.class_subset=[0,1]"])
    model = build_model(cfg.arch, dataset_info(cfg.dataset))
    info = DatasetInfo(channels=1, classes=2, image_size=32)
    splits = ImageSplits(torch.zeros(100, 1, 32, 32), torch.zeros(100, dtype=torch.long),
                         torch.zeros(50, 1, 32, 32), torch.zeros(50, dtype=torch.long), info, "memory")
    own = check_activation_memory(model, {OWN_DATASET: splits}, cfg.probe)
    both = check_activation_memory(model, {OWN_DATASET: splits, COMPLEMENT_CLASSES: splits}, cfg.probe)
    assert own > 0 and both == pytest.approx(2 * own)


def transfer_rows(task: str) -> pd.DataFrame:
    """Two seeds of a transfer curve whose held-out split peaks at step 2, its test split at step 4."""
    rows = []
    for seed in (0, 1):
        for step, (val, test) in {0: (0.3, 0.3), 2: (0.8, 0.6), 4: (0.7, 0.7)}.items():
            for split, value in (("train", 0.9), ("val", val), ("test", test)):
                rows.append({"dataset": "fashion_mnist", "arch": "vgg8", "seed": seed, "step": step,
                             "layer": "block5", "depth": 0.8, "probe": f"transfer_{task}", "metric": "accuracy",
                             "split": split, "value": value})
    return pd.DataFrame(rows)


def test_the_transfer_table_and_figure_show_class_switch():
    metrics = pd.concat([transfer_rows("class_switch"), transfer_rows("quadrant_dominance")], ignore_index=True)
    table = tables.transfer_table(metrics, ["dataset", "arch"])
    assert sorted(table["task"]) == ["class_switch", "quadrant_dominance"]
    row = table[table["task"] == "class_switch"].iloc[0]
    assert row["chosen_step_mean"] == 2 and row["accuracy_at_chosen_step_mean"] == pytest.approx(0.6)
    figure = plots.transfer_accuracy(metrics, ["dataset", "arch"])
    assert any("class_switch" in axis.get_title() for axis in figure.axes)


@pytest.mark.slow
def test_a_class_switch_run_trains_on_k_classes_and_probes_the_others(data_dir, tmp_path, monkeypatch):
    built = []

    def keep_model(arch_cfg, info, **options):
        built.append(build_model(arch_cfg, info, **options))
        return built[-1]

    monkeypatch.setattr(execute_module, "build_model", keep_model)
    cfg = quick_config(data_dir, tmp_path / "outputs", *SWITCH, "dataset.class_subset=[0,1,2,3,4]",
                       "probe.layers=[penultimate]")
    assert execute_module.execute(cfg).status == RunStatus.done
    frame = pq.read_table(run_folder(cfg.paths.outputs, run_id(cfg)) / "metrics.parquet").to_pandas()

    (model,) = built
    with torch.no_grad():
        assert model.cpu().eval()(torch.zeros(3, 1, 32, 32)).shape == (3, 5)
    switch = frame[frame["probe"] == "transfer_class_switch"]
    assert set(switch["split"]) == {"train", "val", "test"} and set(switch["metric"]) == {"accuracy", "cross_entropy"}
    assert sorted(switch["step"].unique()) == [0, 1, 2, 4] and set(switch["layer"]) == {"block5"}
    classifier = frame[frame["probe"] == "classifier"]
    # The classifier is measured on its own classes only: one row per metric and split at every step.
    assert set(classifier["split"]) == {"train", "test"}
    assert classifier.groupby("step").size().tolist() == [2 * classifier["metric"].nunique()] * 4
    table = tables.transfer_table(frame, ["dataset", "arch"])
    assert set(table["task"]) == {"class_switch", "quadrant_dominance"}
    assert np.isfinite(table.loc[table["task"] == "class_switch", "accuracy_at_chosen_step_mean"]).all()
