"""Whether a probe point's reconstruction loss is converged in the probe's sample size (sweeps/probe_convergence).

With n training images and d features a least-squares decoder's test error is inflated by about
d / (n - d): a point whose curve still moves when n grows is set by the estimate, not by the
representation. A sweep that varies `probe.train_size` gets a figure (one panel per probe point, one
line per probe size) and a table: per experiment, point and size, the largest relative gap to the
largest size's RL over the steps, and whether it stays within CONVERGED_WITHIN.
"""

from __future__ import annotations

import pandas as pd

from phases.analysis import plots
from phases.analysis.selectors import reconstruction_curves

SIZE_KEY = "probe.train_size"
CONVERGED_WITHIN = 0.02  # a relative gap to the largest probe size's RL, at every step


def convergence_table(metrics: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per experiment (keys without the probe size), probe point and probe size: the decoder's feature count
    (when recorded), the largest gap |RL - RL at the largest size| / RL at the largest size over the
    steps (seed means), and whether it stays within CONVERGED_WITHIN. Empty unless the size varies."""
    if SIZE_KEY not in keys:
        return pd.DataFrame()
    others = [key for key in keys if key != SIZE_KEY]
    curves = reconstruction_curves(metrics).groupby([*others, "layer", SIZE_KEY, "step"], dropna=False)["value"]
    means = curves.mean().unstack(SIZE_KEY)
    largest = max(means.columns)
    gap = means.sub(means[largest], axis=0).abs().div(means[largest], axis=0)
    table = gap.groupby(level=[*others, "layer"], dropna=False).max().stack().rename("largest_gap").reset_index()
    sizes = metrics.query("probe == 'reconstruction' and metric == 'features'").groupby("layer")["value"].first()
    table["features"] = table["layer"].map(sizes)
    table["converged"] = table["largest_gap"] <= CONVERGED_WITHIN
    table["largest_gap"] = (100 * table["largest_gap"]).round(2)
    return table.rename(columns={SIZE_KEY: "probe images", "largest_gap": "largest gap to the largest size (%)",
                                 "layer": "probe point"})


def probe_convergence(metrics: pd.DataFrame, keys: list[str]) -> plots.plt.Figure | None:
    """RL of every probe point against step, one line per probe size (probe.train_size): converged
    points' lines lie on each other."""
    if SIZE_KEY not in keys:
        return None
    others = [key for key in keys if key != SIZE_KEY]
    panels = []
    for title, rows in plots.experiments(reconstruction_curves(metrics), others):
        panels += [(f"{title}: {layer}", layer_rows) for layer, layer_rows in rows.groupby("layer", sort=False)]
    order = {layer: index for index, layer in enumerate(plots.layers_by_depth(metrics))}
    panels.sort(key=lambda panel: order.get(panel[1]["layer"].iloc[0], len(order)))
    columns = min(3, len(panels))
    figure, axes = plots.grid(-(-len(panels) // columns), columns)
    for axis, (title, rows) in zip(axes.flat, panels, strict=False):
        sizes = [str(size) for size in sorted(rows[SIZE_KEY].unique())]  # in numeric order, not as text sorts
        plots.seed_lines(axis, rows.astype({SIZE_KEY: str}), hue=SIZE_KEY, hue_order=sizes, palette="viridis")
        plots.step_axis(axis, int(rows["step"].max()))
        axis.set_title(title, fontsize=9)
        axis.set_ylabel(plots.RL_LABEL)
        axis.legend(title="probe images", fontsize=7, title_fontsize=7)
    return plots.finish(figure, axes, len(panels), "RL against the probe's training images: converged where lines meet")
