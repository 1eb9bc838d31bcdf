"""The fast probes and the published recipes side by side: `reconstruction_recipe` and `linear_recipe`
built from their own config nodes and fitted on the same activations as `reconstruction` and
`linear`, and phases.analysis.agreement's table and figure of how their curves agree."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from phases.analysis.agreement import agreement_table, probe_agreement
from phases.config.compose import compose
from phases.config.validation import ConfigError
from phases.training.data import dataset_info
from phases.training.evaluation import check_enabled
from phases.training.probes import (
    ClosedFormReconstruction,
    GradientReconstruction,
    LBFGSClassifier,
    ProbeData,
    SGDClassifier,
    build_probes,
)
from tests.conftest import REPOSITORY

BOTH_PAIRS = "probe.enabled=[reconstruction,reconstruction_recipe,linear,linear_recipe,sample_loss]"


def test_the_registry_builds_each_recipe_from_its_own_node_under_its_own_name():
    cfg = compose([BOTH_PAIRS, "probe.reconstruction_recipe.epochs=3", "probe.reconstruction_recipe.lr=0.02",
                   "probe.linear_recipe.lr_drop_epoch=4", "probe.linear_recipe.momentum=0.5"])
    probes = build_probes(cfg.probe, 7, dataset_info(cfg.dataset))
    assert [probe.name for probe in probes] == ["reconstruction", "reconstruction_recipe", "linear", "linear_recipe"]
    fast_decoder, decoder, fast_classifier, classifier = probes
    assert isinstance(fast_decoder, ClosedFormReconstruction) and isinstance(fast_classifier, LBFGSClassifier)
    assert isinstance(decoder, GradientReconstruction) and isinstance(classifier, SGDClassifier)
    assert (decoder.epochs, decoder.lr, decoder.weight_decay, decoder.seed) == (3, 0.02, 1e-5, 7)
    assert (classifier.lr_drop_epoch, classifier.momentum, classifier.epochs, classifier.seed) == (4, 0.5, 20, 7)
    # The fast probes' own nodes still choose their solvers: solver=sgd there keeps the probe name.
    solo = compose(["probe.reconstruction.solver=sgd", "probe.linear.solver=sgd"])
    assert [(type(probe), probe.name) for probe in build_probes(solo.probe, 0, dataset_info(solo.dataset))] == \
        [(GradientReconstruction, "reconstruction"), (SGDClassifier, "linear")]


def test_recipe_names_are_accepted_and_an_unknown_name_still_fails_listing_them():
    check_enabled(["reconstruction", "reconstruction_recipe", "linear", "linear_recipe", "sample_loss"])
    with pytest.raises(ConfigError) as raised:
        check_enabled(["linear", "linear_recipes"])
    assert raised.value.key == "probe.enabled" and str(raised.value).startswith("probe.enabled='linear_recipes'")
    assert "reconstruction_recipe" in str(raised.value) and "linear_recipe," in str(raised.value)


def activations(images: int, seed: int) -> ProbeData:
    """Three classes of 4x4 images (a bright quadrant each, plus noise) seen through a fixed random
    linear layer of 24 features plus noise: the classes separate linearly, while the best linear decoder
    leaves about a sixth of the images' variance, so a decoder short of that optimum shows."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(images) % 3
    pictures = 0.5 * torch.randn(images, 1, 4, 4, generator=generator)
    for label, (row, column) in enumerate([(0, 0), (0, 2), (2, 0)]):
        pictures[labels == label, :, row:row + 2, column:column + 2] += 2.0
    layer = torch.randn(16, 24, generator=torch.Generator().manual_seed(99))
    features = pictures.flatten(1) @ layer + 2.0 * torch.randn(images, 24, generator=generator)
    return ProbeData(features=features, images=pictures, labels=labels, feature_shape=(24,))


def scores(probe, train: ProbeData, test: ProbeData) -> dict[tuple[str, str], float]:
    return {(measurement.metric, measurement.split): measurement.value
            for measurement in probe.fit_and_score(train, test)}


def test_each_recipe_reports_under_its_name_and_agrees_with_its_fast_probe():
    # Adam's published lr 3e-4 is far from converged in 20 epochs of 1500 images (test MSE 2.2, 15 x the
    # optimum's); the node's own lr is what this run uses.
    cfg = compose([BOTH_PAIRS, "probe.reconstruction_recipe.lr=0.01"])
    probes = {probe.name: probe for probe in build_probes(cfg.probe, 0, dataset_info(cfg.dataset))}
    train, test = activations(1500, seed=0), activations(600, seed=1)
    measured = {name: scores(probe, train, test) for name, probe in probes.items()}
    assert {"mse"} == {metric for metric, _ in measured["reconstruction_recipe"]} - {"features", "images"}
    assert {"accuracy", "cross_entropy"} == {metric for metric, _ in measured["linear_recipe"]}
    mean_image = F.mse_loss(train.images.mean(0).expand_as(test.images), test.images).item()
    exact, recipe = measured["reconstruction"][("mse", "test")], measured["reconstruction_recipe"][("mse", "test")]
    assert exact < 0.25 * mean_image and exact <= recipe < 1.15 * exact  # 0.145, 0.153 of 0.917
    fast, slow = measured["linear"][("accuracy", "test")], measured["linear_recipe"][("accuracy", "test")]
    assert fast > 0.95 and abs(fast - slow) < 0.03


STEPS = [0, 1, 2, 4, 8]
# Per seed: the fast decoder's RL, the recipe's (seed 0: the same shape, 10% higher; seed 1: its minimum
# moved to step 4), the fast classifier's accuracy (with one more step, 16, the recipe did not measure)
# and the recipe's, ranked in exactly the reverse order.
CURVES = {
    0: {"reconstruction": [1.0, 0.8, 0.5, 0.6, 0.7], "reconstruction_recipe": [1.1, 0.88, 0.55, 0.66, 0.77],
        "linear": [0.1, 0.5, 0.9, 0.8, 0.85, 0.95], "linear_recipe": [0.9, 0.5, 0.1, 0.2, 0.15]},
    1: {"reconstruction": [1.0, 0.8, 0.5, 0.6, 0.7], "reconstruction_recipe": [1.0, 0.8, 0.6, 0.5, 0.7],
        "linear": [0.1, 0.5, 0.9, 0.8, 0.85, 0.95], "linear_recipe": [0.9, 0.5, 0.1, 0.2, 0.15]},
}
MEASURED = {"reconstruction": "mse", "reconstruction_recipe": "mse", "linear": "accuracy", "linear_recipe": "accuracy"}


def hand_built_metrics(probes=tuple(MEASURED)) -> pd.DataFrame:
    rows = []
    for seed, curves in CURVES.items():
        run = {"run_id": f"fashion_mnist-vgg8-sgd-s{seed}-00000000", "seed": seed, "dataset": "fashion_mnist",
               "arch": "vgg8", "layer": "block5", "depth": 0.8}
        for probe in probes:
            for step, value in zip([*STEPS, 16], curves[probe], strict=False):
                rows.append({**run, "step": step, "probe": probe, "metric": MEASURED[probe], "split": "test",
                             "value": value})
                # Rows the comparison must not read: the train split, the decoder's size, the classifier.
                rows.append({**run, "step": step, "probe": probe, "metric": MEASURED[probe], "split": "train",
                             "value": 0.0})
                rows.append({**run, "step": step, "probe": "classifier", "metric": "accuracy", "split": "test",
                             "value": 0.5})
    return pd.DataFrame(rows).drop_duplicates()


def test_agreement_table_gives_the_known_best_steps_ends_and_rank_correlations():
    table = agreement_table(hand_built_metrics(), ["dataset", "arch"]).set_index("pair")
    assert sorted(table.index) == ["linear", "reconstruction"] and (table["seeds"] == 2).all()
    assert set(table["layer"]) == {"block5"} and set(table["metric"]) == {"mse", "accuracy"}
    decoder = table.loc["reconstruction"]
    assert (decoder["best_step_fast_mean"], decoder["best_step_fast_std"]) == (2, 0)
    assert decoder["best_step_recipe_mean"] == 3 and decoder["best_step_recipe_std"] == pytest.approx(np.sqrt(2))
    assert decoder["worse_at_end_fast_mean"] == pytest.approx(40.0)  # 0.7 / 0.5 - 1
    assert decoder["worse_at_end_recipe_mean"] == pytest.approx(40.0)  # 0.77 / 0.55 - 1 and 0.7 / 0.5 - 1
    # Seed 0: the same ranks (1); seed 1: two neighbours swapped, 1 - 6 * 2 / (5 * 24) = 0.9.
    assert decoder["rank_correlation_mean"] == pytest.approx(0.95)
    assert decoder["rank_correlation_std"] == pytest.approx(0.05 * np.sqrt(2))
    classifier = table.loc["linear"]
    assert classifier["best_step_fast_mean"] == 16 and classifier["best_step_recipe_mean"] == 0
    assert classifier["worse_at_end_fast_mean"] == 0  # its best is its last step
    assert classifier["worse_at_end_recipe_mean"] == pytest.approx((0.9 - 0.15) / 0.9 * 100)
    assert classifier["rank_correlation_mean"] == pytest.approx(-1.0)  # over the five steps both measured


def test_nothing_to_compare_without_both_members_of_a_pair():
    keys = ["dataset", "arch"]
    for probes in (("reconstruction", "linear"), ("reconstruction", "linear_recipe")):
        metrics = hand_built_metrics(probes)
        assert agreement_table(metrics, keys).empty and probe_agreement(metrics, keys) is None
    only_decoders = agreement_table(hand_built_metrics(("reconstruction", "reconstruction_recipe", "linear")), keys)
    assert only_decoders["pair"].tolist() == ["reconstruction"]


def test_the_figure_overlays_each_pairs_curves(tmp_path):
    figure = probe_agreement(hand_built_metrics(), ["dataset", "arch"])
    panels = [axis for axis in figure.axes if axis.get_visible()]
    assert [axis.get_title() for axis in panels] == ["block5: reconstruction vs reconstruction_recipe",
                                                     "block5: linear vs linear_recipe"]
    for axis in panels:
        drawn = [line for line in axis.get_lines() if len(line.get_xdata()) > 1]  # not the legend's handles
        assert sorted(line.get_linestyle() for line in drawn) == ["-", "--"]  # the fast probe solid, the recipe dashed
    path = tmp_path / "agreement.png"
    figure.savefig(path)
    assert path.stat().st_size > 10_000


@pytest.mark.slow  # a real run with both pairs, then make figures: not in `make test-fast`
def test_a_run_with_both_pairs_gets_the_agreement_table_and_figure(tmp_path):
    from tests.conftest import write_dataset

    data_dir = tmp_path / "data"
    write_dataset(data_dir, "fashion_mnist", train=200, test=100)
    outputs = tmp_path / "outputs"
    run = subprocess.run([sys.executable, "-m", "phases.run", BOTH_PAIRS, "probe.layers=[penultimate]",
                          "probe.train_size=150", "probe.test_size=80", "probe.reconstruction_recipe.epochs=2",
                          "probe.linear_recipe.epochs=2", "probe.linear_recipe.lr_drop_epoch=1", "arch.width=0.25",
                          "schedule.max_steps=4", "schedule.batch_size=32", "progress=false",
                          f"paths.data_dir={data_dir}", "paths.system_data_dir=null", f"paths.outputs={outputs}"],
                         cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (folder,) = (outputs / "runs").iterdir()
    frame = pq.read_table(folder / "metrics.parquet").to_pandas().query("split == 'test'")
    steps = set(frame["step"])
    for probe, metric in (("reconstruction_recipe", "mse"), ("linear_recipe", "accuracy")):
        assert set(frame[(frame["probe"] == probe) & (frame["metric"] == metric)]["step"]) == steps, probe
    figures = subprocess.run([sys.executable, "-m", "phases.figures", "--outputs", str(outputs)], cwd=REPOSITORY,
                             capture_output=True, text=True, timeout=300)
    assert figures.returncode == 0, figures.stdout + figures.stderr
    assert len(list((outputs / "figures").glob("*--probe_agreement.png"))) == 1
    table = pd.read_csv(next((outputs / "tables").glob("*--probe_agreement.csv")))
    assert sorted(table["pair"]) == ["linear", "reconstruction"]
