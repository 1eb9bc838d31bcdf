"""Do the fast probes and the published recipes tell the same story over whole curves? (sweeps/probe_agreement)

A run that enables both members of a pair fits them on the same activations at every step: the
closed-form decoder and the Adam recipe (`reconstruction`, `reconstruction_recipe`) on test RL, L-BFGS
and the SGD recipe (`linear`, `linear_recipe`) on test accuracy. Per experiment, probe point, pair and
seed, the table gives each curve's best step (lowest RL, highest accuracy), how much worse it ends than
at that step (in % of its best value) and the Spearman rank correlation of the two curves over the steps
both measured; then mean and std over seeds. The figure overlays the two curves.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from phases.analysis import plots
from phases.analysis.phase_detection import detect_phases
from phases.analysis.tables import mean_and_std


class Pair(NamedTuple):
    fast: str  # the fast probe's name: the pair's name in the table and the figure
    recipe: str  # the probe that trains the published recipe on the same activations
    metric: str  # compared on the test split
    label: str  # the metric in words, for the figure's axis
    # +1 where a larger value is worse (RL), -1 where it is better (accuracy): curves are multiplied by it
    # so that each one's best step is its minimum and its end rises above it, as for phase detection.
    worse_direction: int


PAIRS = (Pair("reconstruction", "reconstruction_recipe", "mse", plots.RL_LABEL, 1),
         Pair("linear", "linear_recipe", "accuracy", "linear probe test accuracy", -1))
PAIR_OF = {probe: pair for pair in PAIRS for probe in (pair.fast, pair.recipe)}
FAST, RECIPE = "fast probe", "published recipe"  # the `solver` column: line style in the figure


def paired_curves(metrics: pd.DataFrame) -> pd.DataFrame:
    """The test curves of both members of each pair, where a run measured both at a probe point, with
    columns `pair` (the fast probe's name) and `solver` (FAST or RECIPE)."""
    rows = metrics[metrics["probe"].isin(PAIR_OF) & (metrics["split"] == "test")]
    rows = rows[rows["metric"] == rows["probe"].map(lambda probe: PAIR_OF[probe].metric)]
    rows = rows.assign(pair=rows["probe"].map(lambda probe: PAIR_OF[probe].fast),
                       solver=rows["probe"].map(lambda probe: FAST if probe == PAIR_OF[probe].fast else RECIPE))
    return rows[rows.groupby(["run_id", "layer", "pair"])["solver"].transform("nunique") == 2]


def best_and_end(curve: pd.Series, worse_direction: int) -> tuple[int, float]:
    """The step of the curve's best value and how much worse its last value is, in % of the best."""
    phases = detect_phases(curve.index.tolist(), (worse_direction * curve).tolist())
    return phases.minimum_step, phases.rise_percent


def agreement_table(metrics: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per experiment (`keys`), probe point and pair; numeric, mean and std over seeds. Empty
    when no run measured both members of a pair."""
    worse_direction = {pair.fast: pair.worse_direction for pair in PAIRS}
    group_keys = [*keys, "layer", "pair", "metric"]
    rows = []
    for group, curves in paired_curves(metrics).groupby(group_keys, dropna=False, sort=False):
        named = dict(zip(group_keys, group, strict=True))
        for (_, seed), run in curves.groupby(["run_id", "seed"]):
            by_solver = run.pivot(index="step", columns="solver", values="value").sort_index()
            row = {**named, "seed": seed}
            for solver, suffix in ((FAST, "fast"), (RECIPE, "recipe")):
                row[f"best_step_{suffix}"], row[f"worse_at_end_{suffix}"] = best_and_end(
                    by_solver[solver].dropna(), worse_direction[named["pair"]])
            both = by_solver.dropna()
            # Spearman's correlation: Pearson's of the ranks (ties share their mean rank), without scipy.
            row["rank_correlation"] = both[FAST].rank().corr(both[RECIPE].rank())
            rows.append(row)
    if not rows:
        return pd.DataFrame()
    return mean_and_std(pd.DataFrame(rows), group_keys)


def probe_agreement(metrics: pd.DataFrame, keys: list[str]) -> plots.plt.Figure | None:
    """Each pair's two curves per probe point, fitted on the same activations: the fast probe solid (the
    closed-form decoder, L-BFGS), the published recipe dashed (Adam, SGD); one colour per experiment."""
    curves = paired_curves(metrics)
    if curves.empty:
        return None
    curves = pd.concat([rows.assign(experiment=title) for title, rows in plots.experiments(curves, keys)])
    pairs = [pair for pair in PAIRS if pair.fast in set(curves["pair"])]
    layers = plots.layers_by_depth(curves)
    experiments = list(dict.fromkeys(curves["experiment"]))
    figure, axes = plots.grid(len(pairs), len(layers))
    for row, pair in enumerate(pairs):
        for column, layer in enumerate(layers):
            axis, panel = axes[row, column], curves[(curves["pair"] == pair.fast) & (curves["layer"] == layer)]
            if panel.empty:
                axis.set_visible(False)
                continue
            plots.seed_lines(axis, panel, hue="experiment", hue_order=experiments, style="solver",
                             style_order=[FAST, RECIPE], marker="o", markersize=3)
            axis.set_title(f"{layer}: {pair.fast} vs {pair.recipe}", fontsize=9)
            axis.set_ylabel(pair.label)
            axis.legend(fontsize=7)
            plots.step_axis(axis, int(panel["step"].max()))
    return plots.finish(figure, axes, axes.size, "Fast probes (solid) and published recipes (dashed) "
                        "on the same activations")
