"""Figures from the runs' metrics (no torch: the analysis side only reads files).

    python -m phases.figures --outputs outputs     # what `make figures` runs

Per run: reconstruction MSE (test) against training step, one panel per probe point, with the
classifier's test accuracy on a second axis and the MSE minimum marked. PNG and PDF in
<outputs>/figures/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on clusters or in CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from phases.aggregate import load_metrics  # noqa: E402

RECONSTRUCTION_COLOUR = "tab:blue"
ACCURACY_COLOUR = "tab:orange"


def _log2_step_axis(axis: plt.Axes, last_step: int) -> None:
    # Step 0 (the untrained network) has to stay on a log axis: linear between 0 and 1, log2 beyond.
    axis.set_xscale("symlog", base=2, linthresh=1)
    exponents = range(0, int(last_step).bit_length())
    every = max(1, -(-len(exponents) // 6))  # at most about 7 labelled ticks
    ticks = [0] + [2**exponent for exponent in exponents[::every]]
    axis.set_xticks(ticks, [f"{tick // 1024}k" if tick >= 1024 else str(tick) for tick in ticks])
    axis.set_xlabel("training step (log2 scale)")


def reconstruction_figure(run_metrics: pd.DataFrame) -> plt.Figure:
    """One run: reconstruction MSE per probe point against step, test accuracy on a twin axis."""
    reconstruction = run_metrics.query("probe == 'reconstruction' and metric == 'mse' and split == 'test'")
    accuracy = run_metrics.query("probe == 'classifier' and metric == 'accuracy' and split == 'test'")
    layers = list(dict.fromkeys(reconstruction["layer"]))
    columns = min(3, len(layers))
    rows = -(-len(layers) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.2 * rows + 0.4), squeeze=False)
    for axis, layer in zip(axes.flat, layers, strict=False):
        curve = reconstruction[reconstruction["layer"] == layer].sort_values("step")
        sns.lineplot(data=curve, x="step", y="value", marker="o", color=RECONSTRUCTION_COLOUR, ax=axis)
        minimum = curve.loc[curve["value"].idxmin()]
        axis.scatter([minimum["step"]], [minimum["value"]], s=90, facecolors="none", edgecolors="black", zorder=5)
        axis.set_title(f"{layer}  (circle: minimum, step {int(minimum['step'])})", fontsize=10)
        axis.set_ylabel("reconstruction MSE per pixel (test)", color=RECONSTRUCTION_COLOUR)
        _log2_step_axis(axis, curve["step"].max())
        accuracy_axis = axis.twinx()
        accuracy_axis.plot(accuracy["step"], accuracy["value"], color=ACCURACY_COLOUR, linestyle="--")
        accuracy_axis.set_ylabel("classifier test accuracy", color=ACCURACY_COLOUR)
        accuracy_axis.set_ylim(0, 1)
    for axis in list(axes.flat)[len(layers):]:
        axis.set_visible(False)
    first = run_metrics.iloc[0]
    figure.suptitle(f"Reconstruction loss over training: {first['dataset']}, {first['arch']}, "
                    f"{first['optimizer']}, seed {first['seed']}\n{first['run_id']}", fontsize=11)
    figure.tight_layout()
    return figure


def draw_all(outputs: Path) -> list[Path]:
    """Every run's figure as PNG and PDF; returns the PNG paths."""
    metrics = load_metrics(outputs)
    if metrics.empty:
        return []
    sns.set_theme(style="whitegrid", context="notebook")
    folder = outputs / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for run, run_metrics in metrics.groupby("run_id"):
        if not (run_metrics["probe"] == "reconstruction").any():
            continue
        figure = reconstruction_figure(run_metrics)
        for suffix in ("png", "pdf"):
            figure.savefig(folder / f"reconstruction_mse-{run}.{suffix}", dpi=150)
        plt.close(figure)
        written.append(folder / f"reconstruction_mse-{run}.png")
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outputs", type=Path, default=Path("outputs"), help="paths.outputs of the runs")
    arguments = parser.parse_args()
    written = draw_all(arguments.outputs)
    if not written:
        print(f"no runs with reconstruction metrics under {arguments.outputs / 'runs'}: "
              "make some with `make demo` or `python -m phases.run`")
        return 0
    for path in written:
        print(f"wrote {path} (and .pdf)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
