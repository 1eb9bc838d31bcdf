"""What happens at an evaluation step: the classifier's own metrics, then every probe on every point.

Per split, one forward pass (eval mode, no_grad) collects the activations of all probe points for
the probe images; the classifier's metrics come from the logits of that same pass, extended to
more images with a logits-only pass. Every probe reuses the cached activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from phases.data import ImageSplits, seeded_subset, subset_generator
from phases.device import autocast
from phases.features import collect_activations, frozen
from phases.models import ProbedNetwork
from phases.probes import ProbeData, build_probes


@dataclass
class EvaluationSet:
    """The images of one split measured at every evaluation step; the first `probe_count` feed the probes."""

    images: torch.Tensor
    labels: torch.Tensor
    probe_count: int


def evaluation_sets(splits: ImageSplits, probe_cfg: DictConfig, seed: int) -> dict[str, EvaluationSet]:
    """Seeded, fixed for the whole run, so every step measures the same images."""
    train_total, test_total = len(splits.train_labels), len(splits.test_labels)
    train_count = min(train_total, max(probe_cfg.classifier_train_size, probe_cfg.train_size))
    train_indices = seeded_subset(train_total, train_count, seed, "evaluation.train")
    # The whole test split, shuffled, so its first rows are a seeded probe subset.
    test_indices = torch.randperm(test_total, generator=subset_generator(seed, "evaluation.test"))
    device = splits.train_images.device
    train_indices, test_indices = train_indices.to(device), test_indices.to(device)
    return {
        "train": EvaluationSet(splits.train_images[train_indices], splits.train_labels[train_indices],
                               min(probe_cfg.train_size, train_count)),
        "test": EvaluationSet(splits.test_images[test_indices], splits.test_labels[test_indices],
                              min(probe_cfg.test_size, test_total)),
    }


class Evaluator:
    def __init__(self, model: ProbedNetwork, splits: ImageSplits, probe_cfg: DictConfig, seed: int,
                 training_batch_size: int):
        self.model = model
        self.sets = evaluation_sets(splits, probe_cfg, seed)
        self.layers = list(probe_cfg.layers) if probe_cfg.layers is not None else list(model.probe_points)
        self.depths = {**model.probe_depths(), "output": 1.0}
        self.probes = build_probes(probe_cfg)
        self.bn_mode = probe_cfg.bn_mode
        # Batch statistics depend on the batch: extract with the training batch size, as the script does.
        self.batch_size = training_batch_size if self.bn_mode == "train" else probe_cfg.batch_size

    def _classifier_logits_and_probe_data(self, split: EvaluationSet) -> tuple[torch.Tensor, dict[str, ProbeData]]:
        probed_images = split.images[: split.probe_count]
        points = list(dict.fromkeys([*self.layers, "logits"]))
        activations = collect_activations(self.model, probed_images, points, self.batch_size)
        logits = activations["logits"]
        if split.probe_count < len(split.images):
            rest = collect_activations(self.model, split.images[split.probe_count :], ["logits"], self.batch_size)
            logits = torch.cat([logits, rest["logits"]])
        targets = probed_images.flatten(1)
        labels = split.labels[: split.probe_count]
        probe_data = {layer: ProbeData(activations[layer], targets, labels) for layer in self.layers}
        return logits, probe_data

    def __call__(self) -> list[dict[str, Any]]:
        """Rows of (layer, probe, metric, split, value) for the model as it is now.

        The classifier's own metrics come from the same frozen network as the probes' activations.
        """
        rows: list[dict[str, Any]] = []
        probe_data: dict[str, dict[str, ProbeData]] = {}
        calibration = self.sets["train"].images[: self.sets["train"].probe_count]
        with autocast(calibration.device), frozen(self.model, self.bn_mode, calibration, self.batch_size):
            for split_name, split in self.sets.items():
                logits, probe_data[split_name] = self._classifier_logits_and_probe_data(split)
                accuracy = (logits.argmax(1) == split.labels).float().mean().item()
                cross_entropy = F.cross_entropy(logits, split.labels).item()
                rows.append(self._row("output", "classifier", "accuracy", split_name, accuracy))
                rows.append(self._row("output", "classifier", "cross_entropy", split_name, cross_entropy))
        for layer in self.layers:
            for probe_name, probe in self.probes.items():
                for measurement in probe.fit_and_score(probe_data["train"][layer], probe_data["test"][layer]):
                    rows.append(self._row(layer, probe_name, measurement.metric, measurement.split, measurement.value))
        return rows

    def _row(self, layer: str, probe: str, metric: str, split: str, value: float) -> dict[str, Any]:
        return {"layer": layer, "depth": self.depths[layer], "probe": probe, "metric": metric, "split": split,
                "value": float(value)}
