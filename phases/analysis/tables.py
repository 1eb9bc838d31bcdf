"""The paper's tables from the finished runs' metrics: numbers per seed, then mean and std over seeds.

- phase table: per experiment (dataset, arch and the settings that vary in its sweep) and probe point,
  the end of phase (i), the RL minimum (start of phase iii), RL at start, minimum and end, the rise
  after the minimum, and the classifier's test and train accuracy at the minimum and at the end (train
  accuracy shows the few being fitted where test accuracy cannot: the prototypes model's label noise),
  and the decoder's feature count, training images and ridge penalty (how far its estimate can be trusted);
- transfer table (paper.md 4.3): per experiment, probe point and transfer task, test accuracy at step
  0, at t* (the step of best accuracy on the held-out `val` split), at the last step, best minus last,
  and the test-set oracle beside it.

Written as CSV (numbers: `<column>_mean`, `<column>_std`), Markdown and LaTeX ("mean ± std").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from phases.analysis.phase_detection import detect_phases
from phases.analysis.selectors import (
    classifier_accuracy,
    reconstruction_curves,
    reconstruction_fit_sizes,
    seed_spread,
    transfer_curves,
)
from phases.store.files import write_atomically


def mean_and_std(per_seed: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group of `keys`: the number of seeds, then each numeric column's mean and std over seeds."""
    grouped = per_seed.groupby(keys, dropna=False, sort=True)
    values = [column for column in per_seed.columns if column not in (*keys, "seed")]
    table = grouped.agg(**{"seeds": ("seed", "nunique")},
                        **{f"{column}_{statistic}": (column, statistic) for column in values
                           for statistic in ("mean", "std")})
    return table.reset_index()


def phase_table(metrics: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per experiment (`keys`) and probe point; numeric, mean and std over seeds."""
    reconstruction = reconstruction_curves(metrics)
    accuracy = {split: classifier_accuracy(metrics, split).set_index(["run_id", "step"])["value"]
                for split in ("test", "train")}
    sizes = reconstruction_fit_sizes(metrics)
    rows = []
    for group, curves in reconstruction.groupby([*keys, "layer"], dropna=False, sort=False):
        spread = seed_spread(curves)
        for (run_id, seed), curve in curves.groupby(["run_id", "seed"]):
            curve = curve.sort_values("step")
            phases = detect_phases(curve["step"].tolist(), curve["value"].tolist(), spread)
            last = int(curve["step"].iloc[-1])
            rows.append({**dict(zip([*keys, "layer"], group, strict=True)), "seed": seed,
                         "end_of_phase_one_step": phases.end_of_phase_one, "minimum_step": phases.minimum_step,
                         "rl_start": phases.start, "rl_minimum": phases.minimum, "rl_end": phases.end,
                         "rise_percent": phases.rise_percent,
                         "accuracy_at_minimum": accuracy["test"].get((run_id, phases.minimum_step), np.nan),
                         "accuracy_at_end": accuracy["test"].get((run_id, last), np.nan),
                         "train_accuracy_at_minimum": accuracy["train"].get((run_id, phases.minimum_step), np.nan),
                         "train_accuracy_at_end": accuracy["train"].get((run_id, last), np.nan),
                         **fit_size(sizes, run_id, group[-1])})
    if not rows:
        return pd.DataFrame()
    per_seed = pd.DataFrame(rows).astype({"end_of_phase_one_step": float})
    return mean_and_std(per_seed, [*keys, "layer"])


def fit_size(sizes: pd.DataFrame, run_id: str, layer: str) -> dict[str, float]:
    """The decoder's `features`, training `images` and `ridge` at this probe point (NaN where not recorded)."""
    found = sizes.loc[(run_id, layer)] if (run_id, layer) in sizes.index else {}
    return {column: float(found.get(column, np.nan)) for column in ("features", "images", "ridge")}


def transfer_table(metrics: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per experiment, probe point and transfer task; numeric, mean and std over seeds."""
    rows = []
    for group, runs in transfer_curves(metrics).groupby([*keys, "layer", "probe"], dropna=False, sort=True):
        for seed, run in runs.groupby("seed"):
            by_split = run.pivot_table(index="step", columns="split", values="value").sort_index()
            chosen = by_split["val"].idxmax() if "val" in by_split else np.nan  # earliest of equal bests
            oracle = by_split["test"].idxmax()
            best = by_split["test"].get(chosen, np.nan)
            last = by_split["test"].iloc[-1]
            rows.append({**dict(zip([*keys, "layer", "probe"], group, strict=True)), "seed": seed,
                         "accuracy_at_start": by_split["test"].iloc[0], "chosen_step": chosen,
                         "accuracy_at_chosen_step": best, "accuracy_at_end": last, "chosen_minus_end": best - last,
                         "oracle_step": oracle, "oracle_accuracy": by_split["test"].max()})
    if not rows:
        return pd.DataFrame()
    table = mean_and_std(pd.DataFrame(rows), [*keys, "layer", "probe"])
    table["probe"] = table["probe"].str.removeprefix("transfer_")
    return table.rename(columns={"probe": "task"})


def _cell(mean: float, std: float, seeds: int, digits: int, missing: str) -> str:
    if pd.isna(mean):
        return missing
    number = "{:.2g}" if digits is None else f"{{:.{digits}f}}"  # None: two significant digits (penalties)
    text = number.format(mean)
    return text if seeds < 2 or pd.isna(std) else f"{text} ± {number.format(std)}"


# Column -> (heading in words, with units, and decimals). Steps are whole numbers; RL in normalised pixels.
HEADINGS = {
    "end_of_phase_one_step": ("end of phase (i) (step)", 0), "minimum_step": ("RL minimum (step)", 0),
    "rl_start": ("RL at start", 4), "rl_minimum": ("RL at minimum", 4), "rl_end": ("RL at end", 4),
    "rise_percent": ("rise after minimum (%)", 1), "accuracy_at_minimum": ("test accuracy at minimum", 3),
    "accuracy_at_end": ("test accuracy at end", 3), "train_accuracy_at_minimum": ("train accuracy at minimum", 3),
    "train_accuracy_at_end": ("train accuracy at end", 3), "accuracy_at_start": ("test accuracy at step 0", 3),
    "chosen_step": ("t* (step, chosen on val)", 0), "accuracy_at_chosen_step": ("test accuracy at t*", 3),
    "chosen_minus_end": ("t* minus end", 3), "oracle_step": ("oracle step (test)", 0),
    "oracle_accuracy": ("oracle test accuracy", 3),
    "features": ("decoder features", 0), "images": ("decoder training images", 0),
    "ridge": ("decoder ridge (relative)", None),
    "best_step_fast": ("best step, fast probe", 0), "best_step_recipe": ("best step, recipe", 0),
    "worse_at_end_fast": ("end worse than best, fast probe (%)", 1),
    "worse_at_end_recipe": ("end worse than best, recipe (%)", 1),
    "rank_correlation": ("rank correlation of the two curves", 2),
    "rank_correlation_phase_two": ("rank correlation with RL in phase (ii)", 2),
    "rank_correlation_phase_three": ("rank correlation with RL in phase (iii)", 2),
}


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """The numeric table with "mean ± std" text cells and headings in words."""
    keys = [column for column in table.columns if not column.endswith(("_mean", "_std")) and column != "seeds"]
    text = table[keys].copy().rename(columns={"layer": "probe point"})
    for column, (heading, digits) in HEADINGS.items():
        if f"{column}_mean" in table:
            missing = "never" if column.endswith("_step") else "-"  # a step never reached; a value not recorded
            text[heading] = [_cell(mean, std, seeds, digits, missing) for mean, std, seeds
                             in zip(table[f"{column}_mean"], table[f"{column}_std"], table["seeds"], strict=True)]
    if "seeds" in table:  # a table of one value per row (probe convergence) has no spread to count
        text["seeds"] = table["seeds"]
    return text.fillna("-")


def write_table(table: pd.DataFrame, path_stem: Path) -> list[Path]:
    """CSV (numbers), Markdown and LaTeX (readable) beside each other; returns the paths."""
    text = readable(table)
    writers = {
        ".csv": lambda temporary: table.to_csv(temporary, index=False),
        ".md": lambda temporary: temporary.write_text(text.to_markdown(index=False) + "\n"),
        ".tex": lambda temporary: temporary.write_text(text.to_latex(index=False, escape=True).replace("±", r"$\pm$")),
    }
    paths = []
    for suffix, write in writers.items():
        path = path_stem.with_suffix(suffix)
        write_atomically(path, write)
        paths.append(path)
    return paths
