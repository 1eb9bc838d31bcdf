"""What moves with the reconstruction loss: the probes effective_rank, cka and class_collapse on planted
signals (phases/training/probes/representation.py), and phases.analysis.representation's figure and
table of how their measures move with RL within phases (ii) and (iii)."""

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from phases.analysis.representation import representation_measures, representation_table
from phases.config.compose import compose
from phases.config.validation import ConfigError, validate
from phases.store.identity import run_id
from phases.training.data import dataset_info
from phases.training.evaluation import check_enabled
from phases.training.probes import CKA, ClassCollapse, EffectiveRank, ProbeData, build_probes, representation
from phases.training.probes.representation import (
    centred_gram,
    cka_in_feature_space,
    cka_of_grams,
    effective_ranks,
    linear_cka,
    nearest_class_mean_accuracy,
    within_between_trace_ratio,
)
from tests.conftest import REPOSITORY
from tests.test_identity import DEFAULT_RUN_ID

THE_THREE = "probe.enabled=[reconstruction,linear,sample_loss,effective_rank,cka,class_collapse]"


def test_the_registry_builds_the_three_probes_and_the_default_run_is_untouched():
    cfg = compose([THE_THREE, "probe.cka.max_images=300"])
    probes = build_probes(cfg.probe, 5, dataset_info(cfg.dataset))
    assert [probe.name for probe in probes] == ["reconstruction", "linear", "effective_rank", "cka", "class_collapse"]
    cka = probes[3]
    assert isinstance(cka, CKA) and (cka.max_images, cka.seed) == (300, 5)
    check_enabled(["effective_rank", "cka", "class_collapse"])
    # Not enabled by default: the default run's id and its probes stay what they were.
    assert run_id(compose()) == DEFAULT_RUN_ID
    assert run_id(compose(["probe.cka.max_images=300"])) == DEFAULT_RUN_ID  # a node of a probe not enabled
    assert "cka" not in compose().probe.enabled
    assert run_id(cfg) != run_id(compose([THE_THREE]))  # enabled, its setting counts


def test_too_few_cka_images_fail_naming_the_key():
    with pytest.raises(ConfigError) as raised:
        validate(compose(["probe.cka.max_images=5"]))
    assert raised.value.key == "probe.cka.max_images" and "an integer >= 10" in str(raised.value)


def orthonormal_columns(rows: int, columns: int, seed: int, centred: bool = False) -> torch.Tensor:
    matrix = torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if centred:  # columns summing to zero: centring the activations leaves them as they are
        matrix -= matrix.mean(0)
    return torch.linalg.qr(matrix).Q


def planted_rank(images: int, features: int, rank: int, seed: int = 0) -> torch.Tensor:
    """Activations of covariance rank `rank` with equal eigenvalues, shifted by a mean and with tiny noise."""
    left = orthonormal_columns(images, rank, seed, centred=True)
    right = orthonormal_columns(features, rank, seed + 1)
    noise = 1e-6 * torch.randn(images, features, generator=torch.Generator().manual_seed(seed + 2))
    return (3.0 * left @ right.T + noise.double() + 5.0).float()


def train_and_test(features: torch.Tensor, labels: torch.Tensor | None = None, point: str = "block1") -> ProbeData:
    labels = torch.zeros(len(features), dtype=torch.long) if labels is None else labels
    return ProbeData(features=features, images=torch.randn(len(features), 1, 4, 4), labels=labels,
                     feature_shape=(features.shape[1],), point=point)


@pytest.mark.parametrize("rank", [1, 3, 12])
@pytest.mark.parametrize(("images", "features"), [(400, 60), (80, 500)])  # the features' Gram, the images'
def test_k_equal_directions_have_participation_ratio_and_entropy_rank_k(rank, images, features):
    data = train_and_test(planted_rank(images, features, rank))
    measured = {(item.metric, item.split): item.value for item in EffectiveRank().fit_and_score(data, data)}
    assert set(measured) == {(metric, split) for metric in ("participation_ratio", "entropy_rank")
                             for split in ("train", "test")}
    assert measured[("participation_ratio", "train")] == pytest.approx(rank, rel=1e-3)
    assert measured[("entropy_rank", "test")] == pytest.approx(rank, rel=1e-3)


def test_the_images_gram_has_the_features_gram_eigenvalues_whatever_the_slices(monkeypatch):
    activations = torch.randn(80, 30, generator=torch.Generator().manual_seed(3)) * torch.linspace(0.1, 3, 30) + 2
    wide = torch.cat([activations, torch.zeros(80, 170)], dim=1)  # 200 features > 80 images: the images' Gram
    features_gram, images_gram = centred_gram(activations), centred_gram(wide)
    assert features_gram.shape == (30, 30) and images_gram.shape == (80, 80)
    expected = torch.linalg.eigvalsh(torch.cov(activations.double().T) * 79)
    assert torch.allclose(torch.linalg.eigvalsh(features_gram), expected, rtol=1e-9, atol=1e-9)
    assert torch.allclose(torch.linalg.eigvalsh(images_gram)[-30:], expected, rtol=1e-9, atol=1e-9)
    assert effective_ranks(torch.linalg.eigvalsh(images_gram)) == pytest.approx(
        effective_ranks(torch.linalg.eigvalsh(features_gram)), rel=1e-9)
    monkeypatch.setattr(representation, "SLICE_VALUES", 100)  # a handful of rows (columns) per slice
    assert torch.allclose(centred_gram(activations), features_gram, rtol=1e-12)
    assert torch.allclose(centred_gram(wide), images_gram, rtol=1e-12)


def test_activations_that_do_not_vary_have_rank_zero():
    assert effective_ranks(torch.linalg.eigvalsh(centred_gram(torch.full((20, 5), 7.0)))) == (0.0, 0.0)


def test_linear_cka_is_one_for_the_same_activations_rotated_and_near_zero_for_unrelated_ones():
    generator = torch.Generator().manual_seed(0)
    activations = torch.randn(3000, 12, generator=generator) * torch.linspace(0.5, 2, 12)
    rotation = orthonormal_columns(12, 12, seed=4).float()
    assert linear_cka(activations, activations) == pytest.approx(1, abs=1e-9)
    assert linear_cka(activations, activations @ rotation) == pytest.approx(1, abs=1e-6)
    assert linear_cka(activations, 3 * activations + 5) == pytest.approx(1, abs=1e-6)  # scale and shift
    assert linear_cka(activations, torch.randn(3000, 12, generator=generator)) < 0.02  # about features / images
    assert math.isnan(linear_cka(activations, torch.ones(3000, 4)))


@pytest.mark.parametrize(("images", "first", "second"), [(300, 8, 20), (40, 200, 64)])
def test_the_feature_space_and_gram_forms_give_the_same_cka(images, first, second):
    generator = torch.Generator().manual_seed(images)
    shared = torch.randn(images, 5, generator=generator, dtype=torch.float64)
    x = shared @ torch.randn(5, first, generator=generator, dtype=torch.float64)
    x += 4 * torch.randn(images, first, generator=generator, dtype=torch.float64)  # related, not the same
    y = shared @ torch.randn(5, second, generator=generator, dtype=torch.float64)
    x, y = x - x.mean(0), y - y.mean(0)
    value = cka_in_feature_space(x, y)
    assert 0.05 < value < 0.95 and cka_of_grams(x, y) == pytest.approx(value, rel=1e-10)
    assert linear_cka(x, y) == pytest.approx(value, rel=1e-10)


def cka_scores(probe: CKA, data: ProbeData) -> dict[str, float]:
    return {item.metric: item.value for item in probe.fit_and_score(data, data)}


def test_cka_previous_is_left_out_at_the_first_step_and_one_when_nothing_changed():
    images = torch.randn(500, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    rotation = orthonormal_columns(16, 16, seed=2).float()
    data = ProbeData(features=images.flatten(1) @ rotation, images=images, labels=torch.zeros(500, dtype=torch.long),
                     feature_shape=(16,), point="block1")
    probe = CKA(max_images=200, seed=0)
    first = cka_scores(probe, data)
    assert set(first) == {"cka_input"} and first["cka_input"] == pytest.approx(1, abs=1e-6)  # pixels rotated
    assert probe.previous["block1"].shape == (200, 16)  # the seeded subset only
    assert cka_scores(probe, data)["cka_previous"] == pytest.approx(1, abs=1e-9)
    unrelated = torch.randn(500, 16, generator=torch.Generator().manual_seed(9))
    changed = cka_scores(probe, ProbeData(unrelated, images, data.labels, (16,), point="block1"))
    assert changed["cka_previous"] < 0.2 and changed["cka_input"] < 0.2
    # Each point keeps its own: another point's first step has nothing to compare with.
    assert set(cka_scores(probe, ProbeData(unrelated, images, data.labels, (16,), point="block2"))) == {"cka_input"}
    # A resumed run's probe starts empty: again no cka_previous row, not a NaN.
    assert set(cka_scores(CKA(max_images=200, seed=0), data)) == {"cka_input"}


def test_collapsed_classes_have_ratio_zero_and_are_all_nearest_to_their_mean():
    generator = torch.Generator().manual_seed(0)
    means = 5 * torch.randn(4, 30, generator=generator)
    train_labels, test_labels = torch.arange(200) % 4, torch.arange(80) % 4
    train, test = train_and_test(means[train_labels], train_labels), train_and_test(means[test_labels], test_labels)
    measured = {(item.metric, item.split): item.value for item in ClassCollapse().fit_and_score(train, test)}
    assert measured == {("within_between_trace_ratio", "train"): pytest.approx(0, abs=1e-12),
                        ("nearest_class_mean_accuracy", "train"): 1.0,
                        ("nearest_class_mean_accuracy", "test"): 1.0}


def test_the_trace_ratio_and_nearest_class_mean_of_a_hand_worked_example():
    # Class 0 at 0 and 2, class 1 at 10 and 12: within-class variance 1, class means 1 and 11 around 6: 25.
    features, labels = torch.tensor([[0.0], [2.0], [10.0], [12.0]]), torch.tensor([0, 0, 1, 1])
    assert within_between_trace_ratio(features, labels) == pytest.approx(1 / 25)
    classes, means = torch.tensor([0, 1]), torch.tensor([[1.0], [11.0]], dtype=torch.float64)
    # 5.9 is nearer 1 than 11; 6.1 nearer 11: one of the two test images is right.
    assert nearest_class_mean_accuracy(torch.tensor([[5.9], [6.1]]), torch.tensor([1, 1]), classes, means) == 0.5


STEPS = [0, 1, 2, 4, 8, 16, 32, 64]
# RL: flat, then falling from step 2 (the end of phase (i)) to its minimum at step 8, then rising.
LOSS = np.array([1.0, 1.0, 0.9, 0.7, 0.5, 0.6, 0.7, 0.8])
PHASE_TWO = np.array([2, 4, 8])


def hand_built_metrics(measures: bool = True) -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        run = {"run_id": f"fashion_mnist-vgg8-sgd-s{seed}-00000000", "seed": seed, "dataset": "fashion_mnist",
               "arch": "vgg8"}
        curves = {("reconstruction", "mse", "test", "block5"): LOSS + 0.001 * seed,
                  ("reconstruction", "mse", "test", "block1"): np.ones(8)}  # never falls: no phase (ii)
        if measures:
            curves |= {("effective_rank", "participation_ratio", "train", "block5"): 2 * LOSS + 3,
                       ("effective_rank", "entropy_rank", "train", "block5"): -LOSS,
                       # with RL in phase (ii), against it in phase (iii); not measured at step 0
                       ("cka", "cka_previous", "train", "block5"):
                           np.where(np.isin(STEPS, PHASE_TWO), LOSS, -LOSS) + np.r_[np.nan, np.zeros(7)],
                       ("class_collapse", "nearest_class_mean_accuracy", "test", "block5"): LOSS,
                       ("class_collapse", "nearest_class_mean_accuracy", "train", "block5"): -LOSS,  # not read
                       ("effective_rank", "participation_ratio", "train", "block1"): np.arange(8.0),
                       ("effective_rank", "participation_ratio", "train", "block3"): np.arange(8.0)}  # no RL
        for (probe, metric, split, layer), values in curves.items():
            rows += [{**run, "layer": layer, "depth": float(layer[-1]) / 5, "step": step, "probe": probe,
                      "metric": metric, "split": split, "value": value}
                     for step, value in zip(STEPS, values, strict=True) if not np.isnan(value)]
    return pd.DataFrame(rows)


def test_the_table_correlates_each_measure_with_rl_within_each_phase():
    table = representation_table(hand_built_metrics(), ["dataset", "arch"]).set_index(["layer", "measure"])
    assert sorted(table.index) == [("block1", "participation_ratio"), ("block5", "cka_previous"),
                                   ("block5", "entropy_rank"), ("block5", "nearest_class_mean_accuracy"),
                                   ("block5", "participation_ratio")]
    assert (table["seeds"] == 2).all()
    expected = {"participation_ratio": (1, 1), "entropy_rank": (-1, -1), "cka_previous": (1, -1),
                "nearest_class_mean_accuracy": (1, 1)}
    for measure, (phase_two, phase_three) in expected.items():
        row = table.loc[("block5", measure)]
        assert (row["rank_correlation_phase_two_mean"], row["rank_correlation_phase_three_mean"]) == \
            (pytest.approx(phase_two), pytest.approx(phase_three)), measure
        assert row["rank_correlation_phase_two_std"] == pytest.approx(0, abs=1e-12)
    # A flat RL has no phase (ii); its "phase (iii)" is every step from its first (the minimum): constant, NaN.
    assert table.loc[("block1", "participation_ratio")][["rank_correlation_phase_two_mean",
                                                        "rank_correlation_phase_three_mean"]].isna().all()


def test_nothing_to_show_without_the_measures():
    metrics = hand_built_metrics(measures=False)
    assert representation_measures(metrics, ["dataset", "arch"]) is None
    assert representation_table(metrics, ["dataset", "arch"]).empty


def test_the_figure_puts_each_measure_under_its_points_rl_with_the_phase_boundaries(tmp_path):
    figure = representation_measures(hand_built_metrics(), ["dataset", "arch"])
    panels = [axis for axis in figure.axes if axis.get_visible()]
    labels = [axis.get_ylabel().replace("\n", " ") for axis in panels]
    assert sum("reconstruction loss" in label for label in labels) == 2  # block1 and block5
    assert sum("participation ratio" in label for label in labels) == 3  # block1, block3, block5
    assert sum("CKA to the previous" in label for label in labels) == 1
    block5 = [axis for axis in panels if axis.get_title().endswith("block5")]
    assert len(block5) == 5  # RL, participation ratio, entropy rank, CKA to the previous, nearest class mean
    for axis in block5:  # the end of phase (i) at step 2 and the RL minimum at step 8, in every panel
        assert {line.get_xdata()[0] for line in axis.get_lines() if line.get_linestyle() in ("--", ":")} == {2, 8}
    path = tmp_path / "representation.png"
    figure.savefig(path)
    assert path.stat().st_size > 10_000


@pytest.mark.slow  # a real run with the three probes, then make figures: not in `make test-fast`
def test_a_run_with_the_three_probes_gets_their_rows_the_figure_and_the_table(tmp_path):
    from tests.conftest import write_dataset

    data_dir = tmp_path / "data"
    write_dataset(data_dir, "fashion_mnist", train=200, test=100)
    outputs = tmp_path / "outputs"
    # block1 has 2048 features for 200 images (the images' Gram), block5 128 (the features').
    run = subprocess.run([sys.executable, "-m", "phases.run", THE_THREE, "probe.layers=[block1,penultimate]",
                          "probe.train_size=150", "probe.test_size=80", "probe.cka.max_images=100", "arch.width=0.25",
                          "schedule.max_steps=4", "schedule.batch_size=32", "progress=false",
                          f"paths.data_dir={data_dir}", "paths.system_data_dir=null", f"paths.outputs={outputs}"],
                         cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (folder,) = (outputs / "runs").iterdir()
    frame = pq.read_table(folder / "metrics.parquet").to_pandas()
    steps = sorted(set(frame["step"]))
    assert steps[0] == 0 and len(steps) >= 3
    expected = {("effective_rank", "participation_ratio", "train"), ("effective_rank", "entropy_rank", "test"),
                ("cka", "cka_input", "train"), ("class_collapse", "within_between_trace_ratio", "train"),
                ("class_collapse", "nearest_class_mean_accuracy", "test")}
    for probe, metric, split in expected:
        rows = frame[(frame["probe"] == probe) & (frame["metric"] == metric) & (frame["split"] == split)]
        assert sorted(set(rows["step"])) == steps and set(rows["layer"]) == {"block1", "block5"}, metric
        assert rows["value"].notna().all(), metric
    previous = frame.query("metric == 'cka_previous'")
    assert sorted(set(previous["step"])) == steps[1:] and len(previous) == 2 * (len(steps) - 1)
    ranks = frame.query("probe == 'effective_rank' and split == 'train'")["value"]
    assert (ranks >= 1).all() and (ranks <= 2048).all()
    figures = subprocess.run([sys.executable, "-m", "phases.figures", "--outputs", str(outputs)], cwd=REPOSITORY,
                             capture_output=True, text=True, timeout=300)
    assert figures.returncode == 0, figures.stdout + figures.stderr
    assert len(list((outputs / "figures").glob("*--representation_measures.png"))) == 1
    table = pd.read_csv(next((outputs / "tables").glob("*--representation_measures.csv")))
    assert set(table["measure"]) == {"participation_ratio", "entropy_rank", "cka_input", "cka_previous",
                                     "within_between_trace_ratio", "nearest_class_mean_accuracy"}
    assert "rank correlation with RL in phase (iii)" in \
        next((outputs / "tables").glob("*--representation_measures.md")).read_text()
