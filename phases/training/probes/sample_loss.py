"""How the classifier's training loss is spread over samples: the paper's "fitting a few", measured.

Early in training every sample carries a similar loss; once the majority is fitted, a few atypical
samples carry most of it. Reported per split: loss quantiles (`loss_p50`, ...) and the share of the
split's total loss carried by its worst samples (`loss_share_worst_1pct`, ...). On a generated data model
that flags its atypical samples (dataset=prototypes), also the mean loss of the majority
(`loss_mean_majority`) and of the atypical few (`loss_mean_atypical`, when the split has any).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from phases.probes.base import Measurement, ProbeData


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}".replace(".", "_")


class SampleLoss:
    name, scope, data_source = "sample_loss", "output", "own"

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

    def fit_and_score(self, train: ProbeData, test: ProbeData) -> list[Measurement]:
        """`features` are the classifier's logits here (scope "output"): nothing is fitted."""
        return (self.measure(train.features, train.labels, "train", train.atypical)
                + self.measure(test.features, test.labels, "test", test.atypical))
