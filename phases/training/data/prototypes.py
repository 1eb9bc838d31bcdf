"""The data model of the paper's theory, drawn in memory: class prototypes, noise, and a few atypical samples.

    python -m phases.run dataset=prototypes arch=linear dataset.atypical_fraction=0.05

A majority sample of class c is prototype_c + Gaussian noise (`noise_std` per pixel, normalised units).
An atypical sample of class c, still labelled c, is centred elsewhere, then gets the same noise:
  other_prototype  - on the prototype of another class (uniform among the other classes);
  random_direction - on a random direction scaled to the norm of prototype_c.
Exactly round(atypical_fraction x the class's sample count) samples of every class are atypical, so the
fraction holds per class and per split, not only on average. Pure tensor code: phases.data wires it to
the config and, for prototypes taken from a real dataset, to its loaders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from phases.config import ATYPICAL_KINDS


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


def draw_samples(prototypes: torch.Tensor, total: int, noise_std: float, atypical_fraction: float,
                 atypical_kind: str, generator: torch.Generator) -> PrototypeSamples:
    """`total` samples around `prototypes` (classes, channels, size, size), in a seeded random order."""
    if atypical_kind not in ATYPICAL_KINDS:
        raise ValueError(f"atypical_kind={atypical_kind!r}; expected one of {', '.join(ATYPICAL_KINDS)}")
    classes = len(prototypes)
    counts = class_counts(total, classes)
    labels = torch.cat([torch.full((count,), label, dtype=torch.int64) for label, count in enumerate(counts)])
    # The first atypical_count samples of each class's block are its atypical ones (the order is shuffled below).
    first_of_class = torch.tensor([0, *counts[:-1]]).cumsum(0)
    position_in_class = torch.arange(total) - first_of_class[labels]
    atypical = position_in_class < torch.tensor([atypical_count(atypical_fraction, count) for count in counts])[labels]

    centres = prototypes[labels].clone()
    chosen = atypical.nonzero().squeeze(1)
    if atypical_kind == "other_prototype":
        # An offset in 1..classes-1 never lands on the sample's own class.
        offsets = torch.randint(1, classes, (len(chosen),), generator=generator)
        centres[chosen] = prototypes[(labels[chosen] + offsets) % classes]
    else:
        directions = torch.randn(len(chosen), *prototypes.shape[1:], generator=generator)
        norms = prototypes[labels[chosen]].flatten(1).norm(dim=1) / directions.flatten(1).norm(dim=1)
        centres[chosen] = directions * norms.view(-1, *[1] * (directions.ndim - 1))
    images = centres + noise_std * torch.randn(centres.shape, generator=generator)
    order = torch.randperm(total, generator=generator)
    return PrototypeSamples(images[order].float(), labels[order], atypical[order])
