"""What happens at an evaluation step: the classifier's own metrics, then every probe on every point.

The Evaluator measures named datasets: OWN_DATASET (the run's dataset) and, when a dataset-switch or
class-switch transfer probe needs it, TRANSFER_PARTNER or COMPLEMENT_CLASSES (probe images only). Per
dataset and split, one forward pass (frozen network, no_grad) collects the activations of all probed
points for the probe images; on the run's own dataset the logits of that pass are extended to the
classifier's evaluation images with a logits-only pass. Every probe reuses the cached activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from phases.config.probe_schema import BatchNormMode
from phases.config.validation import ConfigError
from phases.training.data import ImageSplits, subset_generator
from phases.training.device import autocast
from phases.training.features import batch_norms, collect_activations, frozen, pooled_shape
from phases.training.models import ProbedNetwork
from phases.training.output_metrics import OUTPUT_METRICS, build_output_metrics, classifier_measurements
from phases.training.probes import OWN_DATASET, PROBES, Probe, ProbeData
from phases.training.train import DivergenceError


def check_enabled(enabled: list[str]) -> None:
    """`probe.enabled` names layer probes and output metrics; their registries are the lists of names."""
    known = [*PROBES, *OUTPUT_METRICS]
    for name in enabled:
        if name not in known:
            raise ConfigError("probe.enabled", name, f"probes and output metrics from {', '.join(known)}")


@dataclass
class EvaluationSet:
    """The images of one split measured at every evaluation step; the first `point_counts[point]` feed the
    probes of that point, so the first `probe_count` (the largest) are passed through the network."""

    images: torch.Tensor
    labels: torch.Tensor
    point_counts: dict[str, int]
    atypical: torch.Tensor | None = None  # generated data models only: which samples are the atypical few

    @property
    def probe_count(self) -> int:
        return max(self.point_counts.values(), default=0)


def point_counts(splits: ImageSplits, probe_cfg: DictConfig,
                 point_features: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """Train and test images each probed point's probes read: probe.test_size test images, and
    max(probe.train_size, probe.min_images_per_feature x features) training images (null sizes = the
    whole split; never more than the split)."""
    train_total, test_total = len(splits.train_labels), len(splits.test_labels)
    base_train = min(probe_cfg.train_size or train_total, train_total)
    test = min(probe_cfg.test_size or test_total, test_total)
    train = {point: min(train_total, max(base_train, math.ceil(probe_cfg.min_images_per_feature * features)))
             for point, features in point_features.items()}
    return train, dict.fromkeys(point_features, test)


def evaluation_sets(splits: ImageSplits, probe_cfg: DictConfig, seed: int, point_features: dict[str, int],
                    probe_images_only: bool = False) -> dict[str, EvaluationSet]:
    """Seeded, fixed for the whole run, so every step measures the same images. `point_features`: the
    probed points' feature counts. With `probe_images_only` (a dataset only probes read), each set holds
    just its probe images."""
    train_total, test_total = len(splits.train_labels), len(splits.test_labels)
    train_counts, test_counts = point_counts(splits, probe_cfg, point_features)
    probe_train, probe_test = max(train_counts.values(), default=0), max(test_counts.values(), default=0)
    train_count = min(train_total, max(probe_cfg.classifier_train_size, probe_train))
    # Shuffled even when every image is taken, so that each point's first rows are a seeded subset of
    # the split whatever another, wider point asks for (the same draw as seeded_subset's when it is smaller).
    train_indices = torch.randperm(train_total, generator=subset_generator(seed, "evaluation.train"))[:train_count]
    # The whole test split, shuffled, so its first rows are a seeded probe subset.
    test_indices = torch.randperm(test_total, generator=subset_generator(seed, "evaluation.test"))
    if probe_images_only:
        train_indices, test_indices = train_indices[:probe_train], test_indices[:probe_test]
    device = splits.train_images.device
    train_indices, test_indices = train_indices.to(device), test_indices.to(device)
    return {
        "train": EvaluationSet(splits.train_images[train_indices], splits.train_labels[train_indices], train_counts,
                               _select(splits.train_atypical, train_indices)),
        "test": EvaluationSet(splits.test_images[test_indices], splits.test_labels[test_indices], test_counts,
                              _select(splits.test_atypical, test_indices)),
    }


def all_finite(values: torch.Tensor) -> bool:
    """No NaN or infinity in `values`: the extremes propagate both, in one pass that allocates nothing
    (torch.isfinite(values).all() writes a mask as large as the activations: 30x slower on a CPU)."""
    return bool(torch.isfinite(torch.stack(torch.aminmax(values))).all()) if values.numel() else True


def _select(flags: torch.Tensor | None, indices: torch.Tensor) -> torch.Tensor | None:
    return None if flags is None else flags[indices]


def point_features(model: ProbedNetwork, image_shape: tuple[int, ...], probe_cfg: DictConfig) -> dict[str, int]:
    """Each probed point's feature count, after probe.spatial_pool."""
    shapes = model.probe_shapes(image_shape)
    return {point: math.prod(pooled_shape(shapes[point], probe_cfg.spatial_pool))
            for point in model.resolve_points(probe_cfg.layers)}


def check_activation_memory(model: ProbedNetwork, datasets: dict[str, ImageSplits], probe_cfg: DictConfig) -> float:
    """GB of activations one evaluation step holds; fails (before any training) above the limit."""
    features = point_features(model, tuple(datasets[OWN_DATASET].train_images.shape[1:]), probe_cfg)
    values = 0
    for splits in datasets.values():
        for counts in point_counts(splits, probe_cfg, features):
            values += sum(counts[point] * features[point] for point in features)
    needed = values * 4 / 1e9
    if needed > probe_cfg.max_activation_gb:
        raise ConfigError("probe.max_activation_gb", probe_cfg.max_activation_gb,
                          f"the probed layers need {needed:.1f} GB of activations per evaluation "
                          f"({sum(features.values())} features, up to {probe_cfg.min_images_per_feature:g} "
                          f"training images per feature); probe fewer layers (probe.layers), fewer images "
                          f"(probe.train_size, probe.test_size, probe.min_images_per_feature), pool feature maps "
                          f"(probe.spatial_pool=4), or raise the limit")
    return needed


def calibration_count(train_probe_count: int, bn_mode: BatchNormMode, calibration_size: int) -> int:
    """Images PreciseBN's one batch takes: the first probe training images, at most probe.calibration_size."""
    return min(train_probe_count, calibration_size) if bn_mode == BatchNormMode.precise_eval else 0


def check_calibration_memory(model: ProbedNetwork, splits: ImageSplits, probe_cfg: DictConfig,
                             probe_gb: float = 0.0) -> float:
    """GB PreciseBN's calibration batch holds at its peak, beside the `probe_gb` of kept activations; fails
    (before any training) when both exceed probe.max_activation_gb. Its images pass as one batch, so every
    layer's output exists for all of them at once: the peak is about the largest input plus output of one
    layer, measured here on one image (float32)."""
    train_counts, _ = point_counts(splits, probe_cfg, point_features(model, tuple(splits.train_images.shape[1:]),
                                                                     probe_cfg))
    calibration = calibration_count(max(train_counts.values(), default=0), probe_cfg.bn_mode,
                                    probe_cfg.calibration_size)
    if not calibration or not batch_norms(model):
        return 0.0
    largest = 0

    def measure(module, inputs, output) -> None:
        nonlocal largest
        tensors = [value for value in (*inputs, output) if isinstance(value, torch.Tensor)]
        largest = max(largest, sum(value[0].numel() for value in tensors))

    leaves = [module for module in model.modules() if not any(module.children())]
    hooks = [module.register_forward_hook(measure) for module in leaves]
    # On the model's device: before a run places it there, the data may already be on the GPU.
    image = splits.train_images[:1].to(next(model.parameters(), splits.train_images).device)
    try:
        with torch.no_grad(), frozen(model, BatchNormMode.eval):
            model(image)
    finally:
        for hook in hooks:
            hook.remove()
    needed = calibration * largest * 4 / 1e9
    if probe_gb + needed > probe_cfg.max_activation_gb:
        fitting = int(max(probe_cfg.max_activation_gb - probe_gb, 0) * 1e9 / (4 * largest))
        raise ConfigError("probe.calibration_size", probe_cfg.calibration_size,
                          f"PreciseBN passes its {calibration} calibration images as one batch, about {needed:.1f} GB "
                          f"at the network's largest layer, beside {probe_gb:.1f} GB of probed activations: more "
                          f"than probe.max_activation_gb={probe_cfg.max_activation_gb:g}; at most {fitting} images "
                          f"fit (lower probe.calibration_size, or raise the limit if the machine has the memory)")
    return needed


@dataclass
class Activations:
    """One split's pass: the logits of every image of its set, and each probed point's activations
    (flattened) on the probe images."""

    logits: torch.Tensor
    probe_data: dict[str, ProbeData]


@dataclass(frozen=True)
class EvaluationStage:
    """What an evaluation is doing now, told to the progress bar: the forward passes, a probe fitted on
    one of the probed points (`number` of `count`, from 1), or a measurement of the output."""

    task: str  # "activations", a probe's name or an output metric's name
    layer: str | None = None
    number: int = 0
    count: int = 0

    def __str__(self) -> str:
        return self.task if self.layer is None else f"layer {self.number}/{self.count} {self.task} ({self.layer})"


def ignore(stage: EvaluationStage) -> None:
    pass


class Evaluator:
    def __init__(self, model: ProbedNetwork, datasets: dict[str, ImageSplits], probes: list[Probe],
                 probe_cfg: DictConfig, seed: int, training_batch_size: int):
        """`datasets` by name: OWN_DATASET (required) and the others the `probes` read (TRANSFER_PARTNER,
        COMPLEMENT_CLASSES): probe images only, no classifier metrics on them."""
        own = datasets[OWN_DATASET]
        self.model = model
        features = point_features(model, tuple(own.train_images.shape[1:]), probe_cfg)
        self.sets = {name: evaluation_sets(splits, probe_cfg, seed, features, probe_images_only=name != OWN_DATASET)
                     for name, splits in datasets.items()}
        self.layers = model.resolve_points(probe_cfg.layers)
        self.depths = {**model.probe_depths(), "output": 1.0}
        self.spatial_pool = probe_cfg.spatial_pool
        self.shapes = {point: pooled_shape(shape, self.spatial_pool)
                       for point, shape in model.probe_shapes(tuple(own.train_images.shape[1:])).items()}
        self.probes = probes
        self.output_metrics = build_output_metrics(probe_cfg)
        missing = {probe.dataset for probe in self.probes} - set(datasets)
        if missing:
            raise ValueError(f"probes read the datasets {sorted(missing)}, which were not given")
        self.bn_mode = probe_cfg.bn_mode
        self.calibration_size = probe_cfg.calibration_size
        # Batch statistics depend on the batch: extract with the training batch size, as the script does.
        self.batch_size = training_batch_size if self.bn_mode == BatchNormMode.train else probe_cfg.batch_size

    def _pass(self, split: EvaluationSet, calibration: int = 0) -> Activations:
        """The probe images' activations at every probed point, and logits for all of the set's images;
        with `calibration`, its first images set BatchNorm's statistics as they pass (precise_eval)."""
        probed_images = split.images[: split.probe_count]
        # Each point keeps only the rows its probes read; the logits, all of them (the classifier's own metrics).
        counts = {**split.point_counts, "logits": split.probe_count}
        activations = collect_activations(self.model, probed_images, list(counts), self.batch_size, self.spatial_pool,
                                          counts, calibration)
        logits = activations["logits"]
        if split.probe_count < len(split.images):
            rest = collect_activations(self.model, split.images[split.probe_count :], ["logits"], self.batch_size)
            logits = torch.cat([logits, rest["logits"]])
        probe_data = {}
        for layer in self.layers:
            count = split.point_counts[layer]
            atypical = None if split.atypical is None else split.atypical[:count]
            probe_data[layer] = ProbeData(activations[layer][:count], probed_images[:count], split.labels[:count],
                                          self.shapes[layer], atypical, point=layer)
        return Activations(logits, probe_data)

    def restore(self, rows: list[dict[str, Any]]) -> None:
        """A resumed run's probes take back what they chose at its first evaluation (the `ridge` gcv
        chose per point) from the rows it recorded, so the penalties do not change with the resume."""
        for probe in self.probes:
            if hasattr(probe, "restore"):
                probe.restore(rows)

    def __call__(self, show: Callable[[EvaluationStage], None] = ignore) -> list[dict[str, Any]]:
        """Rows of (layer, depth, probe, metric, split, value) for the model as it is now; `show` is told
        each stage before it starts.

        The classifier's own metrics come from the same frozen network as the probes' activations.
        """
        show(EvaluationStage("activations"))
        own_sets = self.sets[OWN_DATASET]
        # PreciseBN's statistics come from the first probe training images, in the pass that extracts them,
        # which therefore goes first: no image goes through the network twice.
        calibration = calibration_count(own_sets["train"].probe_count, self.bn_mode, self.calibration_size)
        with autocast(own_sets["train"].images.device), frozen(self.model, self.bn_mode):
            first = self._pass(own_sets["train"], calibration)
            passes = {name: {split: first if (name, split) == (OWN_DATASET, "train") else self._pass(evaluation_set)
                             for split, evaluation_set in sets.items()} for name, sets in self.sets.items()}
        for split, activations in passes[OWN_DATASET].items():
            for layer, data in activations.probe_data.items():
                # Diverged weights can give inf activations before the training loss is read as NaN:
                # say so, instead of a probe's solver failing on them.
                if not all_finite(data.features):
                    raise DivergenceError(f"activations of {layer} on {split} images are not finite: the network "
                                          "diverged (e.g. optimizer.lr too large)")
        rows: list[dict[str, Any]] = []
        for split, activations in passes[OWN_DATASET].items():
            rows += [self._row("output", "classifier", measurement)
                     for measurement in classifier_measurements(activations.logits, own_sets[split].labels, split)]
        # Point by point, so that what the probes of a point share (its Gram: as large as 8 GB for a point of
        # 32768 features) is held for one point at a time.
        for number, layer in enumerate(self.layers, start=1):
            for probe in self.probes:
                source = passes[probe.dataset]
                show(EvaluationStage(probe.name, layer, number, len(self.layers)))
                rows += [self._row(layer, probe.name, measurement) for measurement
                         in probe.fit_and_score(source["train"].probe_data[layer], source["test"].probe_data[layer])]
            for activations in (activations for sets in passes.values() for activations in sets.values()):
                activations.probe_data[layer].release_gram()
        for metric in self.output_metrics:
            show(EvaluationStage(metric.name))
            for split, activations in passes[OWN_DATASET].items():
                rows += [self._row("output", metric.name, measurement) for measurement in
                         metric.measure(activations.logits, own_sets[split].labels, split, own_sets[split].atypical)]
        return rows

    def _row(self, layer: str, probe: str, measurement) -> dict[str, Any]:
        return {"layer": layer, "depth": self.depths[layer], "probe": probe, "metric": measurement.metric,
                "split": measurement.split, "value": float(measurement.value)}
