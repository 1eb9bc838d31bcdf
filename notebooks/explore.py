# %% [markdown]
# # Exploring a sweep's measurements
# A percent-script: open it in Jupyter (jupytext) or VS Code and run cell by cell, or run it whole:
#
#     python notebooks/explore.py outputs        # reads outputs/tables/metrics.parquet
#
# `make figures` writes the tidy table it reads: one row per measurement (run, step, layer, probe,
# metric, split, value), with the run's settings that vary within its sweep as typed columns.

# %%
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed when run as a script; a notebook shows the figure inline anyway
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

outputs = Path(sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "outputs")
metrics = pd.read_parquet(outputs / "tables" / "metrics.parquet")
print(f"{len(metrics)} measurements of {metrics['run_id'].nunique()} runs in {sorted(metrics['sweep'].unique())}")
metrics.head()

# %% [markdown]
# The reconstruction loss of every probed layer over training (test split), one panel per dataset and
# architecture: the paper's curve first falls, then rises while the test accuracy keeps improving.

# %%
reconstruction = metrics.query("probe == 'reconstruction' and split == 'test' and step > 0").assign(
    experiment=lambda frame: frame["dataset"] + " / " + frame["arch"])
# One panel per dataset and architecture that was run; the band is the spread over seeds.
grid = sns.relplot(data=reconstruction, x="step", y="value", hue="layer", kind="line", col="experiment",
                   col_wrap=min(3, reconstruction["experiment"].nunique()), facet_kws={"sharey": False}, height=3)
grid.set(xscale="log", ylabel="reconstruction loss (test MSE)")
figure_path = outputs / "figures" / "explore--reconstruction.png"
figure_path.parent.mkdir(parents=True, exist_ok=True)
grid.savefig(figure_path, dpi=100)
plt.close("all")
print(f"drew {figure_path}")
