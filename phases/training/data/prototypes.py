"""The data model of the paper's theory, drawn in memory: class prototypes, noise, and a few atypical samples.

    python -m phases.run dataset=prototypes arch=linear dataset.atypical_fraction=0.05

A majority sample of class c is prototype_c + Gaussian noise (`noise_std` per pixel, normalised units).
An atypical sample of class c, still labelled c, is centred elsewhere, then gets the same noise:
  other_prototype     - on the prototype of another class (uniform among the other classes);
  random_direction    - on a random direction scaled to the norm of prototype_c, fresh for every sample;
  secondary_prototype - on one of `secondary_prototypes` secondary prototypes of class c (random directions
                        of prototype_c's norm), drawn once per seed and shared by train and test.
With the first two, a test atypical sample's input says nothing of its label that training could teach:
other_prototype samples are label noise (one looks like the other class, and the best guess, that class,
is always wrong), so test accuracy is capped at 1 - atypical_fraction; random_direction ones are right
only by chance, about 1 - atypical_fraction x (1 - 1/classes). With the third, the few are a structure of
their class that both splits share, so fitting them in training can raise test accuracy too.
Exactly round(atypical_fraction x the class's sample count) samples of every class are atypical, so the
fraction holds per class and per split, not only on average. The model itself (random_prototypes,
draw_samples) is pure tensor code; generate_prototypes wires it to the dataset config and, for
prototypes taken from a real dataset (`prototype_source`), to that dataset's loader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from phases.config.options import dataset_option
from phases.config.schema import AtypicalKind
from phases.config.validation import ConfigError
from phases.training.data.sources import DATASETS, DataNotFoundError
from phases.training.data.splits import DatasetInfo, ImageSplits, load_real_splits, subset_generator


@dataclass
class PrototypeSamples:
    images: torch.Tensor  # (samples, channels, size, size) float32, in normalised units
    labels: torch.Tensor  # (samples,) int64
    atypical: torch.Tensor  # (samples,) bool: drawn away from its own class's prototype


def random_prototypes(classes: int, image_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Independent standard Gaussian pixels: per-pixel variance 1, the scale of a normalised real image,
    so the optimizer's settings mean about the same on generated and on real data."""
    return torch.randn(classes, *image_shape, generator=generator)


def class_counts(total: int, classes: int) -> list[int]:
    """Balanced classes: the first `total % classes` classes get one sample more."""
    return [total // classes + (label < total % classes) for label in range(classes)]


def atypical_count(fraction: float, class_count: int) -> int:
    """round(fraction x class_count), halves rounded up (Python's round would send 2.5 to 2)."""
    return math.floor(fraction * class_count + 0.5)


def secondary_prototypes(prototypes: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """(classes, count, channels, size, size): `count` random directions per class, each scaled to the norm
    of its class's prototype, so an atypical sample is as far from the origin as a typical one and only
    its direction tells it apart (random prototypes: the same distribution as the primary ones)."""
    directions = torch.randn(len(prototypes), count, *prototypes.shape[1:], generator=generator)
    scale = prototypes.flatten(1).norm(dim=1).view(-1, 1) / directions.flatten(2).norm(dim=2)
    return directions * scale.view(*scale.shape, *[1] * (prototypes.ndim - 1))


def draw_samples(prototypes: torch.Tensor, total: int, noise_std: float, atypical_fraction: float,
                 atypical_kind: AtypicalKind | str, generator: torch.Generator,
                 secondary: torch.Tensor | None = None) -> PrototypeSamples:
    """`total` samples around `prototypes` (classes, channels, size, size), in a seeded random order;
    `secondary` (classes, count, channels, size, size) are the secondary prototypes the
    secondary_prototype kind centres atypical samples on: the caller draws them once for both splits."""
    # Hydra checks the config's choice; this guards direct calls, before anything is drawn.
    try:
        kind = AtypicalKind(atypical_kind)
    except ValueError:
        raise ValueError(f"atypical_kind={atypical_kind!r}; expected one of "
                         f"{', '.join(known.value for known in AtypicalKind)}") from None
    if kind is AtypicalKind.secondary_prototype and (secondary is None or secondary.shape[0] != len(prototypes)):
        raise ValueError(f"atypical_kind=secondary_prototype needs secondary prototypes of shape (classes="
                         f"{len(prototypes)}, count, ...); got {None if secondary is None else tuple(secondary.shape)}")
    classes = len(prototypes)
    counts = class_counts(total, classes)
    labels = torch.cat([torch.full((count,), label, dtype=torch.int64) for label, count in enumerate(counts)])
    # The first atypical_count samples of each class's block are its atypical ones (the order is shuffled below).
    first_of_class = torch.tensor([0, *counts[:-1]]).cumsum(0)
    position_in_class = torch.arange(total) - first_of_class[labels]
    atypical = position_in_class < torch.tensor([atypical_count(atypical_fraction, count) for count in counts])[labels]

    centres = prototypes[labels].clone()
    chosen = atypical.nonzero().squeeze(1)
    if kind is AtypicalKind.other_prototype:
        # An offset in 1..classes-1 never lands on the sample's own class.
        offsets = torch.randint(1, classes, (len(chosen),), generator=generator)
        centres[chosen] = prototypes[(labels[chosen] + offsets) % classes]
    elif kind is AtypicalKind.secondary_prototype:
        # In turn (the k-th atypical sample of a class on its secondary prototype k mod count), so each is
        # used about equally often in both splits, and a test one was seen in training whenever the
        # training split has at least `count` atypical samples per class.
        centres[chosen] = secondary[labels[chosen], position_in_class[chosen] % secondary.shape[1]]
    else:  # AtypicalKind.random_direction
        directions = torch.randn(len(chosen), *prototypes.shape[1:], generator=generator)
        norms = prototypes[labels[chosen]].flatten(1).norm(dim=1) / directions.flatten(1).norm(dim=1)
        centres[chosen] = directions * norms.view(-1, *[1] * (directions.ndim - 1))
    images = centres + noise_std * torch.randn(centres.shape, generator=generator)
    order = torch.randperm(total, generator=generator)
    return PrototypeSamples(images[order].float(), labels[order], atypical[order])


def prototypes_info(dataset_cfg: DictConfig) -> DatasetInfo:
    """The prototypes' shape: from the config for random ones, from the real source for its class means."""
    source_name = dataset_cfg.prototype_source
    channels, classes = dataset_cfg.channels, dataset_cfg.classes
    if source_name != "random":
        if source_name not in DATASETS:
            raise ConfigError("dataset.prototype_source", source_name,
                              f"random, or a real dataset whose class means are the prototypes: "
                              f"{', '.join(sorted(DATASETS))}")
        source = DATASETS[source_name]
        if channels != source.channels:
            raise ConfigError("dataset.channels", channels, f"{source.channels}, the channels of {source_name}")
        if classes > source.classes:
            raise ConfigError("dataset.classes", classes, f"at most the {source.classes} classes of {source_name}")
    for key, identity in (("mean", 0.0), ("std", 1.0)):
        if dataset_cfg[key] is None or list(dataset_cfg[key]) != [identity] * channels:
            raise ConfigError(f"dataset.{key}", dataset_cfg[key] and list(dataset_cfg[key]),
                              f"{[identity] * channels}: prototypes are drawn in normalised units (one per channel)")
    return DatasetInfo(channels=channels, classes=classes, image_size=dataset_cfg.image_size)


def class_means(source_name: str, classes: int, dataset_cfg: DictConfig, paths: DictConfig) -> torch.Tensor:
    """The first `classes` class means of a real dataset's whole training split, normalised and resized
    as a run on that dataset sees its images."""
    source_cfg = dataset_option(source_name)
    source_cfg.image_size, source_cfg.download = dataset_cfg.image_size, dataset_cfg.download
    source_cfg.resize = dataset_cfg.resize
    source_cfg.train_size = source_cfg.test_size = None
    try:
        splits = load_real_splits(source_cfg, paths, seed=0, device=torch.device("cpu"))
    except DataNotFoundError as error:
        raise DataNotFoundError(f"dataset.prototype_source={source_name} needs that dataset: {error}") from error
    return torch.stack([splits.train_images[splits.train_labels == label].mean(0) for label in range(classes)])


def generate_prototypes(dataset_cfg: DictConfig, paths: DictConfig, seed: int, device: torch.device) -> ImageSplits:
    """Train and test drawn around the same prototypes, every draw seeded by (seed, purpose), so a seed
    is one data set and train and test never share noise."""
    info = prototypes_info(dataset_cfg)
    source_name = dataset_cfg.prototype_source
    if source_name == "random":
        prototypes = random_prototypes(info.classes, (info.channels, info.image_size, info.image_size),
                                       subset_generator(seed, "prototypes.prototypes"))
    else:
        prototypes = class_means(source_name, info.classes, dataset_cfg, paths)
    # Drawn once, from their own seeded generator (the other kinds' draws stay as they were), for both splits.
    secondary = None
    if AtypicalKind(dataset_cfg.atypical_kind) is AtypicalKind.secondary_prototype:
        secondary = secondary_prototypes(prototypes, dataset_cfg.secondary_prototypes,
                                         subset_generator(seed, "prototypes.secondary"))
    splits = {}
    for split, size in (("train", dataset_cfg.train_size), ("test", dataset_cfg.test_size)):
        samples = draw_samples(prototypes, size, dataset_cfg.noise_std, dataset_cfg.atypical_fraction,
                               dataset_cfg.atypical_kind, subset_generator(seed, f"prototypes.{split}"), secondary)
        splits.update({f"{split}_images": samples.images.to(device), f"{split}_labels": samples.labels.to(device),
                       f"{split}_atypical": samples.atypical.to(device)})
    return ImageSplits(**splits, info=info, source=f"generated in memory (prototype_source={source_name})")
