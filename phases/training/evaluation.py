"""What happens at an evaluation step: the classifier's own metrics, then every probe on every point.

Per split, one forward pass (frozen network, no_grad) collects the activations of all probed points
for the probe images; the classifier's metrics come from the logits of that same pass, extended to
more images with a logits-only pass. Every probe reuses the cached activations. When a transfer
probe switches datasets, the paired dataset's probe images get one such pass too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from phases.config import ConfigError
from phases.data import ImageSplits, seeded_subset, subset_generator
from phases.device import autocast
from phases.features import collect_activations, frozen, pooled_shape
from phases.models import ProbedNetwork
from phases.probes import ProbeData, build_probes
from phases.train import DivergenceError


@dataclass
class EvaluationSet:
    """The images of one split measured at every evaluation step; the first `probe_count` feed the probes."""

    images: torch.Tensor
    labels: torch.Tensor
    probe_count: int
    atypical: torch.Tensor | None = None  # generated data models only: which samples are the atypical few


@dataclass
class Activations:
    """One split's pass: the logits of every image of its set, and each probed point's activations
    (flattened) on the probe images."""

    logits: torch.Tensor
    labels: torch.Tensor
    probe_data: dict[str, ProbeData]


def probe_counts(splits: ImageSplits, probe_cfg: DictConfig) -> tuple[int, int]:
    """How many train and test images the probes read (probe.train_size/test_size, null = the whole split)."""
    train_total, test_total = len(splits.train_labels), len(splits.test_labels)
    return min(probe_cfg.train_size or train_total, train_total), min(probe_cfg.test_size or test_total, test_total)


def evaluation_sets(splits: ImageSplits, probe_cfg: DictConfig, seed: int) -> dict[str, EvaluationSet]:
    """Seeded, fixed for the whole run, so every step measures the same images."""
    train_total, test_total = len(splits.train_labels), len(splits.test_labels)
    probe_train, probe_test = probe_counts(splits, probe_cfg)
    train_count = min(train_total, max(probe_cfg.classifier_train_size, probe_train))
    train_indices = seeded_subset(train_total, train_count, seed, "evaluation.train")
    # The whole test split, shuffled, so its first rows are a seeded probe subset.
    test_indices = torch.randperm(test_total, generator=subset_generator(seed, "evaluation.test"))
    device = splits.train_images.device
    train_indices, test_indices = train_indices.to(device), test_indices.to(device)
    return {
        "train": EvaluationSet(splits.train_images[train_indices], splits.train_labels[train_indices], probe_train,
                               _select(splits.train_atypical, train_indices)),
        "test": EvaluationSet(splits.test_images[test_indices], splits.test_labels[test_indices], probe_test,
                              _select(splits.test_atypical, test_indices)),
    }


def _select(flags: torch.Tensor | None, indices: torch.Tensor) -> torch.Tensor | None:
    return None if flags is None else flags[indices]


def check_activation_memory(model: ProbedNetwork, splits: ImageSplits, probe_cfg: DictConfig,
                            datasets: int = 1) -> float:
    """GB of activations one evaluation step holds; fails (before any training) above the limit."""
    images = sum(probe_counts(splits, probe_cfg)) * datasets
    shapes = model.probe_shapes(tuple(splits.train_images.shape[1:]))
    features = sum(math.prod(pooled_shape(shapes[layer], probe_cfg.spatial_pool))
                   for layer in model.resolve_points(probe_cfg.layers))
    needed = images * features * 4 / 1e9
    if needed > probe_cfg.max_activation_gb:
        raise ConfigError("probe.max_activation_gb", probe_cfg.max_activation_gb,
                          f"the probed layers need {needed:.1f} GB of activations per evaluation "
                          f"({features} features x {images} images); probe fewer layers (probe.layers), fewer "
                          f"images (probe.train_size, probe.test_size), pool feature maps (probe.spatial_pool=4), "
                          f"or raise the limit")
    return needed


class Evaluator:
    def __init__(self, model: ProbedNetwork, splits: ImageSplits, probe_cfg: DictConfig, seed: int,
                 training_batch_size: int, other_splits: ImageSplits | None = None):
        self.model = model
        self.sets = evaluation_sets(splits, probe_cfg, seed)
        self.other_sets = evaluation_sets(other_splits, probe_cfg, seed) if other_splits is not None else None
        self.layers = model.resolve_points(probe_cfg.layers)
        self.depths = {**model.probe_depths(), "output": 1.0}
        self.spatial_pool = probe_cfg.spatial_pool
        self.shapes = {point: pooled_shape(shape, self.spatial_pool)
                       for point, shape in model.probe_shapes(tuple(splits.train_images.shape[1:])).items()}
        self.probes = build_probes(probe_cfg, seed, splits.info)
        if any(probe.data_source == "other_dataset" for probe in self.probes) and other_splits is None:
            raise ValueError("a dataset_switch transfer probe needs the paired dataset's splits")
        self.bn_mode = probe_cfg.bn_mode
        self.calibration_size = probe_cfg.calibration_size
        # Batch statistics depend on the batch: extract with the training batch size, as the script does.
        self.batch_size = training_batch_size if self.bn_mode == "train" else probe_cfg.batch_size

    def _pass(self, split: EvaluationSet, classifier_images: bool = True) -> Activations:
        """With `classifier_images`, the logits also cover the set's images beyond the probe images
        (the classifier's own metrics); the paired dataset of a transfer probe needs only probe images."""
        probed_images = split.images[: split.probe_count]
        points = list(dict.fromkeys([*self.layers, "logits"]))
        activations = collect_activations(self.model, probed_images, points, self.batch_size, self.spatial_pool)
        logits = activations["logits"]
        if classifier_images and split.probe_count < len(split.images):
            rest = collect_activations(self.model, split.images[split.probe_count :], ["logits"], self.batch_size)
            logits = torch.cat([logits, rest["logits"]])
        labels = split.labels[: split.probe_count]
        atypical = None if split.atypical is None else split.atypical[: split.probe_count]
        probe_data = {layer: ProbeData(activations[layer], probed_images, labels, self.shapes[layer], atypical)
                      for layer in self.layers}
        return Activations(logits, split.labels, probe_data)

    def __call__(self) -> list[dict[str, Any]]:
        """Rows of (layer, depth, probe, metric, split, value) for the model as it is now.

        The classifier's own metrics come from the same frozen network as the probes' activations.
        """
        calibration = self.sets["train"].images[: min(self.sets["train"].probe_count, self.calibration_size)]
        with autocast(calibration.device), frozen(self.model, self.bn_mode, calibration, self.batch_size):
            own = {split: self._pass(evaluation_set) for split, evaluation_set in self.sets.items()}
            other = ({split: self._pass(evaluation_set, classifier_images=False)
                      for split, evaluation_set in self.other_sets.items()}
                     if self.other_sets is not None else None)
        for split, activations in own.items():
            for layer, data in activations.probe_data.items():
                # Diverged weights can give inf activations before the training loss is read as NaN:
                # say so, instead of a probe's solver failing on them.
                if not torch.isfinite(data.features).all():
                    raise DivergenceError(f"activations of {layer} on {split} images are not finite: the network "
                                          "diverged (e.g. optimizer.lr too large)")
        rows: list[dict[str, Any]] = []
        for split, activations in own.items():
            rows.append(self._row("output", "classifier", "accuracy", split,
                                  (activations.logits.argmax(1) == activations.labels).float().mean().item()))
            rows.append(self._row("output", "classifier", "cross_entropy", split,
                                  F.cross_entropy(activations.logits, activations.labels).item()))
        for probe in self.probes:
            if probe.scope == "output":
                inputs = {split: ProbeData(activations.logits, self.sets[split].images, activations.labels,
                                           (activations.logits.shape[1],), self.sets[split].atypical)
                          for split, activations in own.items()}
                rows += [self._row("output", probe.name, measurement.metric, measurement.split, measurement.value)
                         for measurement in probe.fit_and_score(inputs["train"], inputs["test"])]
                continue
            source = other if probe.data_source == "other_dataset" else own
            for layer in self.layers:
                for measurement in probe.fit_and_score(source["train"].probe_data[layer],
                                                       source["test"].probe_data[layer]):
                    rows.append(self._row(layer, probe.name, measurement.metric, measurement.split, measurement.value))
        return rows

    def _row(self, layer: str, probe: str, metric: str, split: str, value: float) -> dict[str, Any]:
        return {"layer": layer, "depth": self.depths[layer], "probe": probe, "metric": metric, "split": split,
                "value": float(value)}
