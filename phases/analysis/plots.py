"""The paper's figures from the finished runs' metrics (no torch: the analysis side only reads files).

Each function of FIGURES draws one figure from one sweep's metrics, seeds aggregated (mean line, band
of one standard deviation), or returns None when those runs did not measure what it needs. An
experiment is a dataset, an arch and the settings that vary within the sweep (`Runs.settings`).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")  # files only: no display on clusters or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from phases.analysis.phase_detection import detect_phases  # noqa: E402
from phases.analysis.selectors import (  # noqa: E402
    classifier_accuracy,
    reconstruction_curves,
    sample_losses,
    seed_spread,
    transfer_curves,
)

RL_LABEL = "reconstruction loss\n(test MSE per pixel)"
ACCURACY_COLOUR, PHASE_ONE_COLOUR, MINIMUM_COLOUR = "tab:orange", "tab:green", "black"
PANEL_WIDTH, PANEL_HEIGHT = 4.2, 2.9  # inches


def style() -> None:
    sns.set_theme(style="whitegrid", context="paper", palette="colorblind", font_scale=1.05)


def step_axis(axis: plt.Axes, last_step: int) -> None:
    # Step 0 (the untrained network) has to stay on a log axis: linear between 0 and 1, log2 beyond.
    axis.set_xscale("symlog", base=2, linthresh=1)
    exponents = range(0, int(last_step).bit_length())
    every = max(1, -(-len(exponents) // 6))  # at most about 7 labelled ticks
    ticks = [0] + [2**exponent for exponent in exponents[::every]]
    axis.set_xticks(ticks, [f"{tick // 1024}k" if tick >= 1024 else str(tick) for tick in ticks])
    axis.set_xlim(-0.2, last_step * 1.25)  # symlog autoscaling leaves a wide empty margin left of step 0
    axis.set_xlabel("training step (log2 scale)")


def experiments(metrics: pd.DataFrame, keys: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per experiment, in a stable order; wrapped at 60 characters, clear of the next panel's."""
    groups = metrics.groupby(keys, dropna=False, sort=True)
    return [(textwrap.fill(", ".join(f"{value}" if key in ("dataset", "arch") else f"{key.split('.')[-1]} {value}"
                                     for key, value in zip(keys, values, strict=True) if not pd.isna(value)), 60),
             rows) for values, rows in groups]


def layers_by_depth(rows: pd.DataFrame) -> list[str]:
    return rows.groupby("layer")["depth"].first().sort_values(kind="stable").index.tolist()


def grid(rows: int, columns: int) -> tuple[plt.Figure, np.ndarray]:
    width = max(PANEL_WIDTH * columns, 6.4)  # one panel alone still has room for its title
    return plt.subplots(rows, columns, figsize=(width, PANEL_HEIGHT * rows + 0.6), squeeze=False)


def finish(figure: plt.Figure, axes: np.ndarray, used: int, title: str) -> plt.Figure:
    for axis in list(axes.flat)[used:]:
        axis.set_visible(False)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure


def mean_curve(rows: pd.DataFrame) -> pd.Series:
    return rows.groupby("step")["value"].mean()


def seed_lines(axis: plt.Axes, rows: pd.DataFrame, **style_options) -> None:
    """Mean over seeds with a band of one standard deviation (no band with one seed)."""
    sns.lineplot(data=rows, x="step", y="value", errorbar="sd", ax=axis, **style_options)


def classifier_lines(axis: plt.Axes, metrics: pd.DataFrame, run_ids: pd.Series, colour: str) -> bool:
    """The classifier's own accuracy of these runs: test dashed, train dotted (train keeps rising while
    the network fits a few atypical samples, also where test accuracy cannot); False when not measured."""
    drawn = False
    for split, line in (("test", "--"), ("train", ":")):
        rows = classifier_accuracy(metrics, split).query("run_id in @run_ids")
        if not rows.empty:
            seed_lines(axis, rows, color=colour, linestyle=line, label=f"the classifier itself ({split})")
            drawn = True
    return drawn


def reconstruction_loss(metrics: pd.DataFrame, keys: list[str]) -> plt.Figure | None:
    """RL against step per probe point (columns) and experiment (rows), the classifier's test and train
    accuracy on a second axis, end of phase (i) and the RL minimum marked."""
    reconstruction = reconstruction_curves(metrics)
    if reconstruction.empty:
        return None
    cells = experiments(reconstruction, keys)
    columns = max(len(layers_by_depth(rows)) for _, rows in cells)
    figure, axes = grid(len(cells), columns)
    for row, (title, rows) in enumerate(cells):
        layers = layers_by_depth(rows)
        for column, layer in enumerate(layers):
            axis, curve = axes[row, column], rows[rows["layer"] == layer]
            seed_lines(axis, curve, marker="o", markersize=3)
            mean = mean_curve(curve)
            phases = detect_phases(mean.index.tolist(), mean.tolist(), seed_spread(curve))
            if phases.end_of_phase_one is not None:
                axis.axvline(phases.end_of_phase_one, color=PHASE_ONE_COLOUR, linestyle="--", linewidth=1,
                             label=f"end of phase (i): {phases.end_of_phase_one}")
            axis.axvline(phases.minimum_step, color=MINIMUM_COLOUR, linestyle=":", linewidth=1.2,
                         label=f"RL minimum: {phases.minimum_step} (+{phases.rise_percent:.0f}% by the end)")
            axis.set_title(f"{title}: {layer}", fontsize=9)
            axis.set_ylabel(RL_LABEL)
            step_axis(axis, mean.index.max())
            axis.legend(fontsize=7, loc="best")
            twin = axis.twinx()
            if classifier_lines(twin, metrics, rows["run_id"], ACCURACY_COLOUR):
                twin.get_legend().remove()
                twin.set_ylim(0, 1)
                twin.set_ylabel("classifier accuracy\n(-- test, ·· train)", color=ACCURACY_COLOUR)
                twin.grid(False)
            else:
                twin.set_visible(False)
        for column in range(len(layers), columns):
            axes[row, column].set_visible(False)
    return finish(figure, axes, axes.size, "Reconstruction loss over training "
                  "(orange: the classifier's accuracy, dashed on test, dotted on train)")


def linear_probe_accuracy(metrics: pd.DataFrame, keys: list[str]) -> plt.Figure | None:
    """Linear-probe test accuracy against step, one line per probe point; the classifier's own in black
    (test dashed, train dotted)."""
    probe = metrics.query("probe == 'linear' and metric == 'accuracy' and split == 'test'")
    if probe.empty:
        return None
    cells = experiments(probe, keys)
    columns = min(3, len(cells))
    figure, axes = grid(-(-len(cells) // columns), columns)
    for axis, (title, rows) in zip(axes.flat, cells, strict=False):
        seed_lines(axis, rows, hue="layer", hue_order=layers_by_depth(rows), marker="o", markersize=3)
        classifier_lines(axis, metrics, rows["run_id"], "black")
        axis.set_title(title, fontsize=9)
        axis.set_ylabel("linear probe test accuracy")
        axis.legend(title="probe point", fontsize=7, title_fontsize=7)
        step_axis(axis, rows["step"].max())
    return finish(figure, axes, len(cells), "Linear-probe accuracy over training")


def transfer_accuracy(metrics: pd.DataFrame, keys: list[str]) -> plt.Figure | None:
    """Transfer-task test accuracy against step per task, one line per probe point; star: t*, the step
    of best accuracy on the held-out split."""
    transfer = transfer_curves(metrics)
    if transfer.empty:
        return None
    cells = [(f"{title}: {task.removeprefix('transfer_')}", rows[rows["probe"] == task])
             for title, rows in experiments(transfer, keys) for task in sorted(rows["probe"].unique())]
    columns = min(3, len(cells))
    figure, axes = grid(-(-len(cells) // columns), columns)
    for axis, (title, rows) in zip(axes.flat, cells, strict=False):
        layers = layers_by_depth(rows)
        colours = dict(zip(layers, sns.color_palette(n_colors=len(layers)), strict=True))
        test = rows[rows["split"] == "test"]
        seed_lines(axis, test, hue="layer", hue_order=layers, palette=colours, marker="o", markersize=3)
        for layer in layers:
            validation = mean_curve(rows[(rows["layer"] == layer) & (rows["split"] == "val")])
            if not validation.empty:
                chosen = validation.idxmax()
                axis.scatter([chosen], [mean_curve(test[test["layer"] == layer])[chosen]], marker="*", s=160,
                             color=colours[layer], edgecolors="black", zorder=5)
        axis.set_title(f"{title}\n(star: t*, the best step on held-out data)", fontsize=9)
        axis.set_ylabel("transfer test accuracy")
        axis.legend(title="probe point", fontsize=7, title_fontsize=7)
        step_axis(axis, rows["step"].max())
    return finish(figure, axes, len(cells), "Transfer of the frozen features over pre-training")


def fitting_a_few(metrics: pd.DataFrame, keys: list[str]) -> plt.Figure | None:
    """Per experiment: the penultimate RL, beside the share of the training loss carried by the worst
    samples (and, on a data model with atypical samples, the mean loss of the majority and of the few)."""
    shares = sample_losses(metrics, "loss_share")
    if shares.empty:
        return None
    reconstruction = reconstruction_curves(metrics)
    cells = experiments(shares, keys)
    figure, axes = grid(len(cells), 3)
    for row, (title, rows) in enumerate(cells):
        own = metrics[metrics["run_id"].isin(rows["run_id"])]
        curves = reconstruction[reconstruction["run_id"].isin(rows["run_id"])]
        if not curves.empty:
            deepest = [layer for layer in layers_by_depth(curves) if layer != "logits"] or ["logits"]
            seed_lines(axes[row, 0], curves[curves["layer"] == deepest[-1]], marker="o", markersize=3)
            axes[row, 0].set_title(f"{title}: RL of {deepest[-1]}", fontsize=9)
        axes[row, 0].set_ylabel(RL_LABEL)
        worst = rows.assign(share=rows["metric"].str.removeprefix("loss_share_worst_").str.replace("pct", "%")
                            .str.replace("_", "."))
        seed_lines(axes[row, 1], worst, hue="share", marker="o", markersize=3)
        axes[row, 1].set(ylim=(0, 1), ylabel="share of the total training loss")
        axes[row, 1].set_title(f"{title}: loss share of the worst samples", fontsize=9)
        axes[row, 1].legend(title="worst samples", fontsize=7, title_fontsize=7)
        groups = sample_losses(own, "loss_mean")
        if not groups.empty:
            seed_lines(axes[row, 2], groups.assign(samples=groups["metric"].str.removeprefix("loss_mean_")),
                       hue="samples", marker="o", markersize=3)
            axes[row, 2].set(yscale="log", ylabel="mean training loss (cross-entropy)")
            axes[row, 2].set_title(f"{title}: the majority and the few", fontsize=9)
        else:
            quantiles = sample_losses(own, "loss_p")
            seed_lines(axes[row, 2], quantiles.assign(quantile=quantiles["metric"].str.removeprefix("loss_")),
                       hue="quantile", marker="o", markersize=3)
            axes[row, 2].set(yscale="log", ylabel="per-sample training loss (cross-entropy)")
            axes[row, 2].set_title(f"{title}: loss quantiles", fontsize=9)
        for axis in axes[row]:
            step_axis(axis, rows["step"].max())
    return finish(figure, axes, len(cells) * 3, "Fitting the majority, then a few")


def reconstruction_heatmap(metrics: pd.DataFrame, keys: list[str]) -> plt.Figure | None:
    """Probe point x step: RL relative to its start, in percent (mean over seeds)."""
    reconstruction = reconstruction_curves(metrics)
    if reconstruction.empty:
        return None
    cells = experiments(reconstruction, keys)
    columns = min(2, len(cells))
    grid_rows = -(-len(cells) // columns)
    most_layers = max(len(layers_by_depth(rows)) for _, rows in cells)
    figure, axes = plt.subplots(grid_rows, columns, squeeze=False,
                                figsize=(6.4 * columns, (0.5 * most_layers + 1.6) * grid_rows))
    for axis, (title, rows) in zip(axes.flat, cells, strict=False):
        table = rows.pivot_table(index="layer", columns="step", values="value", aggfunc="mean")
        relative = (table.div(table.iloc[:, 0], axis=0) - 1) * 100
        relative = relative.loc[layers_by_depth(rows)]
        limit = max(1.0, float(np.nanmax(np.abs(relative.to_numpy()))))
        sns.heatmap(relative, ax=axis, cmap="RdBu_r", center=0, vmin=-limit, vmax=limit, annot=relative.shape[1] <= 16,
                    fmt=".0f", annot_kws={"fontsize": 6}, cbar_kws={"label": "RL change from step 0 (%)"})
        axis.set_title(title, fontsize=9)
        axis.set(xlabel="training step", ylabel="probe point (input to output)")
    return finish(figure, axes, len(cells), "Reconstruction loss relative to the untrained network")


def theory(metrics: pd.DataFrame, keys: list[str]) -> plt.Figure | None:
    """The single-layer network on the prototypes data model, one column per atypical kind and initial
    weight scale: RL of the logits per atypical fraction (top), the majority's and the few's training
    loss (middle), the classifier's train (solid) and test (dashed) accuracy (bottom)."""
    fraction, scale, kind = "atypical fraction", "init scale", "kind"
    names = {"dataset.atypical_fraction": fraction, "arch.init_scale": scale, "dataset.atypical_kind": kind}
    simulated = metrics[(metrics["dataset"] == "prototypes") & (metrics["arch"] == "linear")].rename(columns=names)
    if simulated.empty:
        return None
    named = [name for name in (kind, scale) if name in simulated]  # the settings the columns' titles name
    for name in names.values():
        simulated[name] = simulated[name] if name in simulated else "as configured"
    # Fractions as text, coloured once for all panels (light to dark), though a kind may lack some of them.
    levels = [str(level) for level in sorted(simulated[fraction].unique())]
    simulated[fraction] = simulated[fraction].astype(str)
    lines = {"hue": fraction, "hue_order": levels, "marker": "o", "markersize": 3,
             "palette": dict(zip(levels, sns.color_palette("flare", len(levels)), strict=True))}
    cells = list(simulated.groupby([kind, scale], sort=True))
    figure, axes = grid(3, len(cells))
    for column, (values, rows) in enumerate(cells):
        title = ", ".join(f"init scale {value}" if name == scale else str(value)
                          for name, value in zip((kind, scale), values, strict=True) if name in named) or "prototypes"
        seed_lines(axes[0, column], reconstruction_curves(rows).query("layer == 'logits'"), **lines)
        axes[0, column].set(title=f"{title}:\nRL of the logits", ylabel=RL_LABEL)
        losses = sample_losses(rows, "loss_mean")
        seed_lines(axes[1, column], losses.assign(samples=losses["metric"].str.removeprefix("loss_mean_")),
                   style="samples", style_order=["majority", "atypical"], **lines)
        axes[1, column].set(title=f"{title}:\nmean training loss", ylabel="cross-entropy (log scale)", yscale="log")
        accuracy = pd.concat([classifier_accuracy(rows, split).assign(split=split) for split in ("train", "test")])
        seed_lines(axes[2, column], accuracy, style="split", style_order=["train", "test"], **lines)
        # From 0.6: the cap of test accuracy at 1 - fraction and train accuracy's last percent stay readable.
        axes[2, column].set(title=f"{title}:\nclassifier accuracy", ylabel="accuracy (axis from 0.6)",
                            ylim=(0.6, 1.01))
        for axis in axes[:, column]:
            step_axis(axis, rows["step"].max())
            axis.title.set_fontsize(9)
    # One legend for all panels, beside them: fractions by colour, majority / atypical and train / test by style.
    handles = {}
    for axis in axes.flat:
        handles.update(zip(*reversed(axis.get_legend_handles_labels()), strict=True))
        axis.get_legend().remove()
    order = [fraction, *levels, "samples", "majority", "atypical", "split", "train", "test"]
    handles = {label: handles[label] for label in order if label in handles}
    figure.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return finish(figure, axes, 3 * len(cells), "Theory simulated: prototypes + noise, a fraction of atypical samples")


FigureFunction = Callable[[pd.DataFrame, list[str]], "plt.Figure | None"]
FIGURES: dict[str, FigureFunction] = {
    "reconstruction_loss": reconstruction_loss,
    "linear_probe_accuracy": linear_probe_accuracy,
    "transfer_accuracy": transfer_accuracy,
    "fitting_a_few": fitting_a_few,
    "reconstruction_heatmap": reconstruction_heatmap,
    "theory": theory,
}
