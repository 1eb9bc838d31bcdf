"""What moves with the reconstruction loss (sweeps/representation.yaml): the measures of the
activations the probes `effective_rank`, `cka` and `class_collapse` record, beside each probe point's
RL curve and its phases.

The figure puts each measure under the RL curve of its probe point, the end of phase (i) and the RL
minimum marked in every panel. The table gives, per experiment, probe point and measure, Spearman's
rank correlation of the measure with RL over the steps of phase (ii) (from the end of phase (i) to the
RL minimum) and of phase (iii) (from the minimum to the last step), per seed, then mean and std over
seeds: +1 where the measure rises and falls with RL, -1 where it moves against it.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from phases.analysis import plots
from phases.analysis.phase_detection import Phases, detect_phases
from phases.analysis.selectors import reconstruction_curves, seed_spread
from phases.analysis.tables import mean_and_std


class Measure(NamedTuple):
    probe: str
    metric: str  # the measure's name in the table: metric names are unique across these probes
    split: str  # the split read: the train probe images, or test where the measure scores a prediction
    label: str  # the figure's axis label, in words


MEASURES = (
    Measure("effective_rank", "participation_ratio", "train", "participation ratio\n(train)"),
    Measure("effective_rank", "entropy_rank", "train", "entropy rank\n(train)"),
    Measure("cka", "cka_input", "train", "linear CKA to the\ninput pixels (train)"),
    Measure("cka", "cka_previous", "train", "linear CKA to the previous\nevaluation (train)"),
    Measure("class_collapse", "within_between_trace_ratio", "train", "tr(within-class) /\ntr(between-class) (train)"),
    Measure("class_collapse", "nearest_class_mean_accuracy", "test", "nearest-class-mean\naccuracy (test)"),
)
RECONSTRUCTION = "reconstruction"  # the `measure` of the RL rows when drawn with the measures
MIN_STEPS = 3  # a rank correlation over two steps is +1 or -1 whatever the curves: NaN below three


def measure_curves(metrics: pd.DataFrame) -> pd.DataFrame:
    """The rows of every measure of MEASURES the runs recorded, with its metric name as column `measure`."""
    parts = [metrics[(metrics["probe"] == measure.probe) & (metrics["metric"] == measure.metric)
                     & (metrics["split"] == measure.split)] for measure in MEASURES]
    rows = pd.concat(parts)
    return rows.assign(measure=rows["metric"])


def phase_windows(phases: Phases, last_step: int) -> dict[str, tuple[int, int] | None]:
    """The first and last step of phase (ii) (None when RL never clearly falls) and of phase (iii)."""
    phase_two = None if phases.end_of_phase_one is None else (phases.end_of_phase_one, phases.minimum_step)
    return {"phase_two": phase_two, "phase_three": (phases.minimum_step, last_step)}


def rank_correlation(first: pd.Series, second: pd.Series, window: tuple[int, int] | None) -> float:
    """Spearman's correlation of two curves (indexed by step) over the steps of `window` both measured:
    Pearson's of the ranks (ties share their mean rank), without scipy; NaN below MIN_STEPS steps."""
    if window is None:
        return float("nan")
    both = pd.concat([first, second], axis=1, join="inner").dropna()
    both = both[(both.index >= window[0]) & (both.index <= window[1])]
    if len(both) < MIN_STEPS:
        return float("nan")
    return float(both.iloc[:, 0].rank().corr(both.iloc[:, 1].rank()))


def representation_table(metrics: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per experiment (`keys`), probe point and measure; numeric, mean and std over seeds. Empty
    when no run recorded both RL and a measure at a probe point."""
    measures, reconstruction = measure_curves(metrics), reconstruction_curves(metrics)
    rows = []
    for group, curves in reconstruction.groupby([*keys, "layer"], dropna=False, sort=False):
        named = dict(zip([*keys, "layer"], group, strict=True))
        spread = seed_spread(curves)  # as the phase table detects phases: seed-to-seed noise is no drop
        for (run_id, seed), curve in curves.groupby(["run_id", "seed"]):
            loss = curve.set_index("step")["value"].sort_index()
            windows = phase_windows(detect_phases(loss.index.tolist(), loss.tolist(), spread), int(loss.index[-1]))
            own = measures[(measures["run_id"] == run_id) & (measures["layer"] == named["layer"])]
            for measure, values in own.groupby("measure", sort=False):
                by_step = values.set_index("step")["value"]
                rows.append({**named, "measure": measure, "seed": seed,
                             **{f"rank_correlation_{phase}": rank_correlation(loss, by_step, window)
                                for phase, window in windows.items()}})
    if not rows:
        return pd.DataFrame()
    return mean_and_std(pd.DataFrame(rows), [*keys, "layer", "measure"])


def mark_phases(axis: plots.plt.Axes, loss: pd.DataFrame, labelled: bool) -> None:
    """The end of phase (i) (dashed green) and the RL minimum (dotted black) of the mean RL curve."""
    if loss.empty:
        return
    mean = plots.mean_curve(loss)
    phases = detect_phases(mean.index.tolist(), mean.tolist(), seed_spread(loss))
    if phases.end_of_phase_one is not None:
        axis.axvline(phases.end_of_phase_one, color=plots.PHASE_ONE_COLOUR, linestyle="--", linewidth=1,
                     label=f"end of phase (i): {phases.end_of_phase_one}" if labelled else None)
    axis.axvline(phases.minimum_step, color=plots.MINIMUM_COLOUR, linestyle=":", linewidth=1.2,
                 label=f"RL minimum: {phases.minimum_step}" if labelled else None)


def representation_measures(metrics: pd.DataFrame, keys: list[str]) -> plots.plt.Figure | None:
    """Per experiment and probe point (columns): the RL curve on top, each representation measure the runs
    recorded under it (participation ratio and entropy rank of the activations' covariance, linear CKA to
    the input and to the previous evaluation, within- over between-class variance, nearest-class-mean
    accuracy), with the end of phase (i) (dashed) and the RL minimum (dotted) marked in every panel."""
    measures = measure_curves(metrics)
    if measures.empty:
        return None
    rows = pd.concat([reconstruction_curves(metrics).assign(measure=RECONSTRUCTION), measures])
    cells = []
    for title, experiment in plots.experiments(rows, keys):
        recorded = set(experiment["measure"])
        cells.append((title, experiment, [measure for measure in MEASURES if measure.metric in recorded]))
    columns = max(len(plots.layers_by_depth(experiment)) for _, experiment, _ in cells)
    figure, axes = plots.grid(sum(1 + len(present) for _, _, present in cells), columns)
    top = 0
    for title, experiment, present in cells:
        layers = plots.layers_by_depth(experiment)
        for column in range(columns):
            at_layer = experiment[experiment["layer"] == layers[column]] if column < len(layers) else experiment[:0]
            loss = at_layer[at_layer["measure"] == RECONSTRUCTION]
            panels = [(plots.RL_LABEL, loss), *((measure.label, at_layer[at_layer["measure"] == measure.metric])
                                                 for measure in present)]
            for offset, (label, panel) in enumerate(panels):
                axis = axes[top + offset, column]
                if panel.empty:
                    axis.set_visible(False)
                    continue
                plots.seed_lines(axis, panel, marker="o", markersize=3)
                mark_phases(axis, loss, labelled=offset == 0)
                axis.set_ylabel(label)
                axis.set_title(f"{title}: {layers[column]}", fontsize=9)
                plots.step_axis(axis, int(experiment["step"].max()))
                if offset == 0:
                    axis.legend(fontsize=7, loc="best")
        top += 1 + len(present)
    return plots.finish(figure, axes, axes.size, "What moves with the reconstruction loss: representation "
                        "measures under each probe point's RL (dashed: end of phase (i), dotted: RL minimum)")
