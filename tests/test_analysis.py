"""The analysis side: phase detection on hand-made curves; aggregation, tables, figures and the report
page on a committed fixture of real run outputs (tests/fixtures/README.md says how it was made); and
that none of it, nor its front door `python -m phases.figures`, loads torch or Hydra."""

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phases.analysis import plots, tables
from phases.analysis.phase_detection import detect_phases
from phases.analysis.runs import load_runs

FIXTURE = Path(__file__).parent / "fixtures" / "real_runs"
STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256]


def test_a_flat_curve_has_no_phase_boundary_and_no_rise():
    phases = detect_phases(STEPS, [0.5] * len(STEPS))
    assert phases.end_of_phase_one is None and phases.rise_percent == 0 and not phases.rises
    assert phases.minimum_step == 0 and not phases.minimum_inside


def test_a_monotone_decrease_ends_phase_one_at_the_first_clear_drop_and_never_rises():
    values = [1.0, 0.995, 0.99, 0.97, 0.9, 0.8, 0.7, 0.6, 0.55, 0.5]  # 2% of 1.0: the first drop beyond 0.98
    phases = detect_phases(STEPS, values)
    assert phases.end_of_phase_one == 4 and phases.minimum_step == 256 and phases.rise_percent == 0
    assert not phases.minimum_inside and not phases.rises


def test_a_u_shaped_curve_has_both_boundaries_and_its_rise():
    values = [1.0, 1.0, 0.99, 0.9, 0.7, 0.6, 0.5, 0.55, 0.6, 0.65]
    phases = detect_phases(STEPS, values)
    assert (phases.end_of_phase_one, phases.minimum_step, phases.minimum) == (4, 32, 0.5)
    assert phases.rise_percent == pytest.approx(30.0) and phases.minimum_inside and phases.rises


def test_noise_within_the_seed_spread_is_not_a_boundary():
    values = [1.0, 0.96, 1.03, 0.95, 1.02, 0.97, 0.96, 1.04, 0.97, 1.0]  # wiggles of up to 5%
    assert detect_phases(STEPS, values).end_of_phase_one == 1  # without seeds, 0.96 (-4%) is a clear drop
    noisy = detect_phases(STEPS, values, seed_spread=0.03)  # seeds differ by 0.03: a drop must exceed 0.06
    assert noisy.end_of_phase_one is None and noisy.threshold == pytest.approx(0.06) and not noisy.rises


@pytest.mark.parametrize("steps, values, message", [
    ([0, 1], [1.0], "as many steps"), ([0, 2, 1], [1.0, 1.0, 1.0], "increase"), ([0, 1], [1.0, math.nan], "NaN")])
def test_bad_curves_are_refused(steps, values, message):
    with pytest.raises(ValueError, match=message):
        detect_phases(steps, values)


@pytest.fixture(scope="module")
def runs():
    return load_runs(FIXTURE)


def test_failed_runs_are_reported_with_their_reason_and_left_out(runs):
    assert len(runs.runs) == 7 and sorted(runs.runs["sweep"].unique()) == ["fixture", "theory_fixture"]
    failed = runs.runs[runs.runs["status"] != "done"]
    assert failed["run_id"].tolist() == ["fashion_mnist-mlp-sgd-s0-830c65f7"]
    assert "diverged" in failed["reason"].iloc[0]
    assert "fashion_mnist-mlp-sgd-s0-830c65f7" not in set(runs.metrics["run_id"])
    # The settings that tell experiments apart: none in `fixture` (only seeds differ), the data model's
    # atypical fraction in `theory_fixture`.
    assert runs.settings == {"fixture": [], "theory_fixture": ["dataset.atypical_fraction"]}


def test_a_file_with_another_schema_is_reported_not_mixed_in(tmp_path):
    outputs = tmp_path / "outputs"
    shutil.copytree(FIXTURE, outputs)
    path = next((outputs / "runs").glob("prototypes-*")) / "metrics.parquet"
    table = pq.read_table(path)
    pq.write_table(table.drop(["depth"]).cast(pa.schema([field for field in table.schema if field.name != "depth"])),
                   path)
    runs = load_runs(outputs)
    invalid = runs.runs[runs.runs["status"] == "invalid"]
    assert invalid["run_id"].tolist() == [path.parent.name]
    assert str(path) in invalid["reason"].iloc[0] and "depth: double" in invalid["reason"].iloc[0]
    assert path.parent.name not in set(runs.metrics["run_id"])


def test_phase_table_values_match_a_computation_by_hand(runs):
    metrics = runs.metrics[runs.metrics["sweep"] == "fixture"]
    table = tables.phase_table(metrics, ["dataset", "arch"]).set_index("layer")
    assert list(table.index) == ["block5", "logits"] and (table["seeds"] == 2).all()
    block5 = table.loc["block5"]
    # From the two runs' parquet files (block5, test MSE): seed 0 starts at 0.262656, is lowest at step
    # 64 (0.196470) and ends at 0.203319; seed 1: 0.307763, 0.206473 at step 64, 0.212583.
    assert block5["rl_start_mean"] == pytest.approx((0.262656 + 0.307763) / 2, abs=1e-6)
    assert (block5["minimum_step_mean"], block5["minimum_step_std"]) == (64, 0)
    assert block5["rl_minimum_mean"] == pytest.approx((0.196470 + 0.206473) / 2, abs=1e-6)
    rises = [(0.203319 - 0.196470) / 0.196470 * 100, (0.212583 - 0.206473) / 0.206473 * 100]  # 3.49%, 2.96%
    assert block5["rise_percent_mean"] == pytest.approx(sum(rises) / 2, abs=1e-3)
    # The classifier's accuracy at step 64 and at the last step (128): test 0.7501 / 0.7375 -> 0.7830 /
    # 0.7795; train (on 500 of its training images) 0.826 / 0.784 -> 0.866 / 0.868.
    expected = {"accuracy_at_minimum": (0.7501, 0.7375), "accuracy_at_end": (0.7830, 0.7795),
                "train_accuracy_at_minimum": (0.826, 0.784), "train_accuracy_at_end": (0.866, 0.868)}
    for column, seeds in expected.items():
        assert block5[f"{column}_mean"] == pytest.approx(sum(seeds) / 2, abs=1e-4), column
    text = tables.readable(table.reset_index())
    assert text.loc[0, "RL minimum (step)"] == "64 ± 0" and text.loc[0, "seeds"] == 2
    assert (text.loc[0, "train accuracy at minimum"], text.loc[0, "train accuracy at end"]) == \
        ("0.805 ± 0.030", "0.867 ± 0.001")
    # The fixture's runs predate the decoder's recorded sizes: shown as not recorded, not as a number.
    assert text.loc[0, "decoder features"] == "-" and text.loc[0, "decoder training images"] == "-"


def test_the_phase_table_gives_each_probe_points_decoder_size(runs):
    """With the sizes recorded (runs since issue 14 write `features`, `images` and `ridge` rows beside `mse`)."""
    metrics = runs.metrics[runs.metrics["sweep"] == "fixture"]
    rl_rows = metrics.query("probe == 'reconstruction' and metric == 'mse' and split == 'test'")
    sizes = [rl_rows.assign(metric=metric, split="train", value=value)
             for metric, value in (("features", 512.0), ("images", 5000.0), ("ridge", 3.16e-4))]
    table = tables.phase_table(pd.concat([metrics, *sizes]), ["dataset", "arch"]).set_index("layer")
    assert (table["features_mean"] == 512).all() and (table["images_mean"] == 5000).all()
    text = tables.readable(table.reset_index())
    assert text.loc[0, "decoder features"] == "512 ± 0" and text.loc[0, "decoder training images"] == "5000 ± 0"
    assert text.loc[0, "decoder ridge (relative)"] == "0.00032 ± 0"  # two significant digits, not 0.0003


def test_the_theory_table_shows_training_accuracy_rising_where_test_accuracy_is_capped(runs):
    """The prototypes model's other_prototype samples are label noise: test accuracy stays at
    1 - fraction, while the network fits the few on the training split (the fixture's seeds: train
    0.800 at the RL minimum, step 16, then 0.998 / 0.997 at step 256)."""
    metrics = runs.metrics[runs.metrics["sweep"] == "theory_fixture"]
    table = tables.phase_table(metrics, ["dataset", "arch", "dataset.atypical_fraction"])
    row = table.query("layer == 'logits' and `dataset.atypical_fraction` == 0.2").iloc[0]
    assert row["accuracy_at_minimum_mean"] == row["accuracy_at_end_mean"] == pytest.approx(0.8)
    assert (row["minimum_step_mean"], row["train_accuracy_at_minimum_mean"]) == (16, pytest.approx(0.8))
    assert row["train_accuracy_at_end_mean"] == pytest.approx((0.998 + 0.997) / 2)


def test_transfer_table_chooses_t_star_on_held_out_data_and_reports_the_oracle(runs):
    metrics = runs.metrics[runs.metrics["sweep"] == "fixture"]
    table = tables.transfer_table(metrics, ["dataset", "arch"])
    assert sorted(zip(table["layer"], table["task"], strict=True)) == [
        ("block5", "quadrant_dominance"), ("logits", "quadrant_dominance")]
    row = table[table["layer"] == "block5"].iloc[0]
    chosen, oracle = [], []
    for _, run in metrics.query("probe == 'transfer_quadrant_dominance' and metric == 'accuracy' and "
                                "layer == 'block5'").groupby("run_id"):
        by_split = run.pivot_table(index="step", columns="split", values="value")
        chosen.append(by_split["test"][by_split["val"].idxmax()])
        oracle.append(by_split["test"].max())
    assert row["accuracy_at_chosen_step_mean"] == pytest.approx(sum(chosen) / 2)
    assert row["oracle_accuracy_mean"] == pytest.approx(sum(oracle) / 2)
    assert row["oracle_accuracy_mean"] >= row["accuracy_at_chosen_step_mean"]


EXPECTED_FIGURES = {
    "fixture": {"reconstruction_loss", "linear_probe_accuracy", "transfer_accuracy", "fitting_a_few",
                "reconstruction_heatmap"},
    "theory_fixture": {"reconstruction_loss", "linear_probe_accuracy", "fitting_a_few", "reconstruction_heatmap",
                       "theory"},
}


@pytest.mark.parametrize("sweep", sorted(EXPECTED_FIGURES))
def test_every_figure_function_draws_what_the_runs_measured(runs, sweep):
    metrics = runs.metrics[runs.metrics["sweep"] == sweep].dropna(axis=1, how="all")
    keys = ["dataset", "arch", *runs.settings[sweep]]
    drawn = set()
    for name, draw in plots.FIGURES.items():
        figure = draw(metrics, keys)
        if figure is not None:
            drawn.add(name)
            visible = [axis for axis in figure.axes if axis.get_visible()]
            assert visible and all(axis.get_xlabel() or axis.get_ylabel() for axis in visible)  # labelled in words
            plots.plt.close(figure)
    assert drawn == EXPECTED_FIGURES[sweep]


def test_figures_draw_the_classifiers_train_accuracy_beside_its_test_accuracy(runs):
    metrics = runs.metrics[runs.metrics["sweep"] == "theory_fixture"].dropna(axis=1, how="all")
    keys = ["dataset", "arch", "dataset.atypical_fraction"]
    figure = plots.reconstruction_loss(metrics, keys)
    twins = [axis for axis in figure.axes if axis.get_visible() and "classifier accuracy" in axis.get_ylabel()]
    assert len(twins) == 4  # one per panel: 2 fractions x logits, softmax
    assert all({line.get_linestyle() for line in axis.get_lines()} == {"--", ":"} for axis in twins)
    plots.plt.close(figure)
    figure = plots.theory(metrics, keys)
    assert {"train", "test", "majority", "atypical", "0.0", "0.2"} <= {text.get_text() for text in
                                                                       figure.legends[0].get_texts()}
    (accuracy,) = [axis for axis in figure.axes if axis.get_ylabel().startswith("accuracy")]
    # Fraction 0.2 ends at test 0.8 (the cap) and train 0.9975 (mean of 0.998 and 0.997); fraction 0 at 1.
    last_values = sorted(round(float(line.get_ydata()[-1]), 4) for line in accuracy.get_lines()
                         if len(line.get_ydata()))  # legend handles are lines without data
    assert last_values == [0.8, 0.9975, 1.0, 1.0]
    plots.plt.close(figure)


def make_figures(outputs: Path) -> subprocess.CompletedProcess:
    script = ("import sys; from phases.figures import main; code = main(); "
              "assert not {'torch', 'hydra'} & set(sys.modules), 'the analysis side imported torch or hydra'; "
              "sys.exit(code)")
    return subprocess.run([sys.executable, "-c", script, "--outputs", str(outputs)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    outputs = tmp_path_factory.mktemp("analysis") / "outputs"
    shutil.copytree(FIXTURE, outputs)
    first = make_figures(outputs)
    assert first.returncode == 0, first.stderr
    return outputs, first.stdout


@pytest.mark.slow  # `make figures` end to end: not in `make test-fast`
def test_make_figures_writes_figures_tables_and_the_page_without_torch(report):
    outputs, printed = report
    pictures = sorted(path.name for path in (outputs / "figures").glob("*.png"))
    assert pictures == sorted(f"{sweep}--{name}.png" for sweep, names in EXPECTED_FIGURES.items() for name in names)
    assert all((outputs / "figures" / picture).with_suffix(".pdf").stat().st_size > 5_000 for picture in pictures)
    for stem in ("fixture--phase_table", "fixture--transfer_table", "theory_fixture--phase_table"):
        for suffix in (".csv", ".md", ".tex"):
            assert (outputs / "tables" / stem).with_suffix(suffix).stat().st_size > 100
    theory = pd.read_csv(outputs / "tables" / "theory_fixture--phase_table.csv")
    assert sorted(theory["dataset.atypical_fraction"]) == [0.0, 0.0, 0.2, 0.2]  # logits and softmax, per fraction
    assert {"train_accuracy_at_minimum_mean", "train_accuracy_at_end_std"} <= set(theory.columns)
    for suffix, heading in ((".md", "train accuracy at end"), (".tex", "train accuracy at end")):
        assert heading in (outputs / "tables" / "theory_fixture--phase_table").with_suffix(suffix).read_text()
    assert "fashion_mnist-mlp-sgd-s0-830c65f7" in printed and "diverged" in printed
    page = (outputs / "report.html").read_text()
    assert page.count("<img ") == len(pictures) and "diverged" in page
    tidy = pd.read_parquet(outputs / "tables" / "metrics.parquet")
    assert tidy["run_id"].nunique() == 6
    # Setting columns keep their types: a number filters and plots as a number, not as the text '0.2'.
    assert pd.api.types.is_float_dtype(tidy["dataset.atypical_fraction"])
    assert sorted(tidy["dataset.atypical_fraction"].dropna().unique()) == [0.0, 0.2]


@pytest.mark.slow  # `make figures` end to end: not in `make test-fast`
def test_make_figures_again_redraws_only_the_sweep_that_changed(report, tmp_path):
    outputs = tmp_path / "outputs"
    shutil.copytree(report[0], outputs)
    again = make_figures(outputs)
    assert again.returncode == 0 and "drew" not in again.stdout
    shutil.rmtree(next((outputs / "runs").glob("prototypes-linear-sgd-s1-*")))
    changed = make_figures(outputs)
    redrawn = re.findall(r"drew \S+/([a-z_]+)--", changed.stdout)
    assert sorted(redrawn) == ["theory_fixture"] * len(EXPECTED_FIGURES["theory_fixture"])


def test_make_figures_without_runs_says_how_to_make_some(tmp_path):
    result = make_figures(tmp_path)
    assert result.returncode == 0 and "make demo" in result.stdout
    assert not (tmp_path / "figures").exists() and not (tmp_path / "report.html").exists()


@pytest.mark.slow  # a browser: not in `make test-fast`
def test_the_report_page_loads_every_image_in_headless_chromium(report, tmp_path):
    browser = shutil.which("chromium")
    if browser is None:
        if os.environ.get("PHASES_REQUIRE_BROWSER") == "1":
            pytest.fail("PHASES_REQUIRE_BROWSER=1 but chromium is missing: apt-get install chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    outputs = report[0]
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=20000", "--dump-dom", (outputs / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", result.stdout)
    assert body, result.stderr[-2000:]
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    assert total and loaded, body.group(0)
    assert int(loaded.group(1)) == int(total.group(1)) == len(list((outputs / "figures").glob("*.png")))


@pytest.mark.slow  # `make figures` end to end: not in `make test-fast`
def test_the_exploration_script_reads_the_tidy_table_and_draws(report, tmp_path):
    """notebooks/explore.py, run whole as a user would, on the tables `make figures` wrote."""
    outputs = tmp_path / "outputs"
    shutil.copytree(report[0] / "tables", outputs / "tables")
    script = Path(__file__).parent.parent / "notebooks" / "explore.py"
    result = subprocess.run([sys.executable, str(script), str(outputs)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "of 6 runs" in result.stdout
    assert (outputs / "figures" / "explore--reconstruction.png").stat().st_size > 10_000


def test_probe_convergence_flags_the_points_whose_rl_moves_with_the_probe_size(runs):
    """Two probe sizes of the fixture's runs: block5's RL 1% above the larger size's at the smaller one
    (converged), the logits' 5% above (not); the figure has one panel per probe point."""
    from phases.analysis.convergence import convergence_table, probe_convergence

    metrics = runs.metrics[runs.metrics["sweep"] == "fixture"]
    larger = metrics.assign(**{"probe.train_size": 10000})
    inflation = larger["layer"].map({"block5": 1.01, "logits": 1.05}).fillna(1.0)
    is_rl = (larger["probe"] == "reconstruction") & (larger["metric"] == "mse")
    inflated = larger["value"].where(~is_rl, larger["value"] * inflation)
    smaller = larger.assign(**{"probe.train_size": 5000, "value": inflated})
    both = pd.concat([smaller, larger], ignore_index=True)
    keys = ["dataset", "arch", "probe.train_size"]
    table = convergence_table(both, keys).set_index(["probe point", "probe images"])
    assert table.loc[("block5", 5000), "largest gap to the largest size (%)"] == pytest.approx(1.0)
    assert table.loc[("block5", 5000), "converged"] and not table.loc[("logits", 5000), "converged"]
    assert table.loc[("logits", 10000), "largest gap to the largest size (%)"] == 0
    figure = probe_convergence(both, keys)
    assert sum(axis.get_visible() for axis in figure.axes) == 2
    unvaried = ["dataset", "arch"]
    assert convergence_table(metrics, unvaried).empty and probe_convergence(metrics, unvaried) is None
