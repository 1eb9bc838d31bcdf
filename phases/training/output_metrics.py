"""Measurements of the classifier's own output at each evaluation step: nothing is fitted.

`classifier_measurements` is always taken: accuracy and cross-entropy of the logits, the same
measurement code as the linear probe's. The plug-ins of `OUTPUT_METRICS` run when `probe.enabled`
names them, each configured in its node `probe.<name>`:

`sample_loss`, the paper's "fitting a few": early in training every sample carries a similar loss;
once the majority is fitted, a few atypical samples carry most of it. Reported per split: loss
quantiles (`loss_p50`, ...) and the share of the split's total loss carried by its worst samples
(`loss_share_worst_1pct`, ...). On a generated data model that flags its atypical samples
(dataset=prototypes), also the mean loss of the majority (`loss_mean_majority`) and of the atypical
few (`loss_mean_atypical`, when the split has any).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from phases.training.probes.base import Measurement
from phases.training.probes.classification import classification_measurements


class OutputMetric(Protocol):
    name: str  # the `probe` column of the metrics table; its rows have layer "output"

    def measure(self, logits: torch.Tensor, labels: torch.Tensor, split: str,
                atypical: torch.Tensor | None) -> list[Measurement]: ...


def classifier_measurements(logits: torch.Tensor, labels: torch.Tensor, split: str) -> list[Measurement]:
    """The classifier's accuracy and cross-entropy, measured as the linear probe's are."""
    return classification_measurements(logits, labels, split)


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}".replace(".", "_")


class SampleLoss:
    name = "sample_loss"

    def __init__(self, quantiles: list[float], worst_fractions: list[float]):
        self.quantiles, self.worst_fractions = quantiles, worst_fractions

    def measure(self, logits: torch.Tensor, labels: torch.Tensor, split: str,
                atypical: torch.Tensor | None = None) -> list[Measurement]:
        losses = F.cross_entropy(logits.float(), labels, reduction="none").double()
        measurements = [Measurement(f"loss_p{_percent(quantile)}", split, torch.quantile(losses, quantile).item())
                        for quantile in self.quantiles]
        descending = losses.sort(descending=True).values
        total = descending.sum().clamp_min(torch.finfo(torch.float64).tiny)
        for fraction in self.worst_fractions:
            worst = max(1, round(fraction * len(losses)))  # at least one sample, even on tiny splits
            measurements.append(Measurement(f"loss_share_worst_{_percent(fraction)}pct", split,
                                            (descending[:worst].sum() / total).item()))
        if atypical is not None:
            for group, members in (("majority", ~atypical), ("atypical", atypical)):
                if members.any():  # a split without atypical samples has no mean to report
                    measurements.append(Measurement(f"loss_mean_{group}", split, losses[members].mean().item()))
        return measurements


# probe.<name> -> the output metric it configures.
OUTPUT_METRICS: dict[str, Callable[[DictConfig], OutputMetric]] = {
    "sample_loss": lambda cfg: SampleLoss(quantiles=list(cfg.quantiles), worst_fractions=list(cfg.worst_fractions)),
}


def build_output_metrics(probe_cfg: DictConfig) -> list[OutputMetric]:
    """The enabled output metrics, in registry order."""
    return [build(probe_cfg[name]) for name, build in OUTPUT_METRICS.items() if name in probe_cfg.enabled]
