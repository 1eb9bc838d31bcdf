"""The slices of the tidy metrics table that more than one table or figure reads, named once."""

from __future__ import annotations

import pandas as pd


def reconstruction_curves(metrics: pd.DataFrame) -> pd.DataFrame:
    """The reconstruction loss (RL) of every probe point on the test split."""
    return metrics.query("probe == 'reconstruction' and metric == 'mse' and split == 'test'")


def reconstruction_fit_sizes(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per run and probe point, the decoder's feature count, training images and relative ridge penalty
    (`features`, `images`, `ridge`; the same at every step), indexed by (run_id, layer); empty for runs
    written before they were recorded."""
    sizes = metrics.query("probe == 'reconstruction' and metric in ('features', 'images', 'ridge')")
    return sizes.pivot_table(index=["run_id", "layer"], columns="metric", values="value", aggfunc="first")


def classifier_accuracy(metrics: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """The classifier's own accuracy on `split`: `test`, or `train` (measured on up to
    probe.classifier_train_size training images), which keeps rising while the network fits a few
    atypical samples whose test counterparts it cannot get right."""
    return metrics[(metrics["probe"] == "classifier") & (metrics["metric"] == "accuracy")
                   & (metrics["split"] == split)]


def transfer_curves(metrics: pd.DataFrame) -> pd.DataFrame:
    """Transfer-task accuracy of every probe point on every split (`val` chooses t*, `test` reports it)."""
    return metrics[metrics["probe"].str.startswith("transfer_") & (metrics["metric"] == "accuracy")]


def sample_losses(metrics: pd.DataFrame, metric_prefix: str) -> pd.DataFrame:
    """The per-sample training-loss statistics whose metric name starts with `metric_prefix`
    (`loss_share` of the worst samples, `loss_mean` of the majority and the few, `loss_p` quantiles)."""
    return metrics[(metrics["probe"] == "sample_loss") & (metrics["split"] == "train")
                   & metrics["metric"].str.startswith(metric_prefix)]


def seed_spread(curve: pd.DataFrame) -> float:
    """Mean over steps of the standard deviation across seeds (0 with one seed)."""
    by_seed = curve.pivot_table(index="step", columns="seed", values="value")
    return float(by_seed.std(axis=1, ddof=1).mean()) if by_seed.shape[1] > 1 else 0.0


def penultimate_reconstruction(metrics: pd.DataFrame) -> pd.DataFrame:
    """The reconstruction loss (test) of the deepest probed point before the output: the penultimate
    layer's when it was probed (probe.layers' default), else the last probed layer below it. Of points at
    the same depth (a ResNet's last block and its pooled features) the later one: rows follow the network."""
    inner = reconstruction_curves(metrics).query("depth < 1")
    if inner.empty:
        return inner
    deepest = inner[inner["depth"] == inner["depth"].max()]
    return inner[inner["layer"] == deepest["layer"].iloc[-1]]
