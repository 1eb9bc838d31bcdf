"""What else moves with the reconstruction loss: measures of a probe point's activations that fit nothing.

Exact linear algebra on the activations the step already cached, in float64:

- `effective_rank`: over how many directions the activations spread, from the eigenvalues l of their
  covariance: `participation_ratio` (sum l)^2 / sum l^2 and `entropy_rank` exp(H(l / sum l)), H the
  Shannon entropy (Roy and Vetterli 2007). Both are k for k equal eigenvalues and the rest zero.
- `cka`: linear CKA (Kornblith et al. 2019) of the activations to the input pixels (`cka_input`) and
  to the same point's activations at the previous evaluation, on the same images (`cka_previous`).
- `class_collapse`: `within_between_trace_ratio`, trace(Sigma_W) / trace(Sigma_B), the spread of the
  images around their class mean over the spread of the class means (0 once every image sits on its
  class mean: neural collapse's NC1, Papyan et al. 2020), and `nearest_class_mean_accuracy`, the images
  classified by the nearest training class mean (Euclidean; NC4).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from phases.training.data import seeded_subset
from phases.training.probes.base import OWN_DATASET, Measurement, ProbeData

# Values of one float64 slice: Grams and class statistics are summed a slice of the activations at a
# time, so a wide point's float64 copy (32768 images x 8192 features: 2 GB) is never held whole.
SLICE_VALUES = 2**24  # 128 MB in float64


def row_slices(features: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows, those rows in float64), covering the features a slice at a time."""
    step = max(1, SLICE_VALUES // max(features.shape[1], 1))
    for start in range(0, len(features), step):
        rows = slice(start, start + step)
        yield rows, features[rows].double()


def column_mean(features: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(features.shape[1], dtype=torch.float64, device=features.device)
    for _, values in row_slices(features):
        total += values.sum(0)
    return total / len(features)


def centred_gram(features: torch.Tensor) -> torch.Tensor:
    """The Gram matrix of the column-centred features Xc, in float64: Xc^T Xc (features x features) when
    the images are at least as many as the features, else Xc Xc^T (images x images), which has the same
    nonzero eigenvalues at a fraction of the cost."""
    images, dimension = features.shape
    mean = column_mean(features)
    if dimension <= images:
        gram = features.new_zeros(dimension, dimension, dtype=torch.float64)
        for _, values in row_slices(features):
            centred = values - mean
            gram.addmm_(centred.T, centred)
        return gram
    gram = features.new_zeros(images, images, dtype=torch.float64)
    step = max(1, SLICE_VALUES // images)
    for start in range(0, dimension, step):
        centred = features[:, start : start + step].double() - mean[start : start + step]
        gram.addmm_(centred, centred.T)
    return gram


def effective_ranks(eigenvalues: torch.Tensor) -> tuple[float, float]:
    """(participation ratio, entropy rank) of covariance eigenvalues; (0, 0) for activations that do not
    vary at all. Rounding leaves a rank-deficient Gram tiny negative eigenvalues: they count as 0."""
    eigenvalues = eigenvalues.double().clamp_min(0)
    total = eigenvalues.sum()
    if total <= 0:
        return 0.0, 0.0
    shares = eigenvalues / total
    entropy = -torch.special.xlogy(shares, shares).sum()  # 0 log 0 = 0
    return (1 / shares.square().sum()).item(), math.exp(entropy.item())


class EffectiveRank:
    """`participation_ratio` and `entropy_rank` of the activations' covariance, on the train and the test
    probe images. Costs one Gram and its eigenvalues per split: min(images, features)^2 x max(...)."""

    name, dataset = "effective_rank", OWN_DATASET

    def fit_and_score(self, train: ProbeData, test: ProbeData) -> list[Measurement]:
        measurements = []
        for split, data in (("train", train), ("test", test)):
            participation, entropy = effective_ranks(torch.linalg.eigvalsh(centred_gram(data.features)))
            measurements += [Measurement("participation_ratio", split, participation),
                             Measurement("entropy_rank", split, entropy)]
        return measurements


def cka_in_feature_space(first: torch.Tensor, second: torch.Tensor) -> float:
    """||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) of centred float64 X, Y: products of features x features."""
    cross = (second.T @ first).square().sum()
    norms = (first.T @ first).square().sum().sqrt() * (second.T @ second).square().sum().sqrt()
    return (cross / norms).item() if norms > 0 else math.nan


def cka_of_grams(first: torch.Tensor, second: torch.Tensor) -> float:
    """<K, L>_F / (||K||_F ||L||_F) with K = X X^T, L = Y Y^T: the same number from images x images products."""
    first_gram, second_gram = first @ first.T, second @ second.T
    norms = first_gram.square().sum().sqrt() * second_gram.square().sum().sqrt()
    return ((first_gram * second_gram).sum() / norms).item() if norms > 0 else math.nan


def linear_cka(first: torch.Tensor, second: torch.Tensor) -> float:
    """Linear CKA of two activations (rows: the same images) in [0, 1]: 1 for one an orthogonal transform
    or a multiple of the other, near 0 for unrelated ones; NaN when either does not vary. Computed in
    float64, in whichever of the two exact forms costs fewer multiplications."""
    first, second = first.double(), second.double()
    first, second = first - first.mean(0), second - second.mean(0)
    images, first_features, second_features = first.shape[0], first.shape[1], second.shape[1]
    feature_cost = first_features**2 + second_features**2 + first_features * second_features
    if feature_cost <= images * (first_features + second_features):
        return cka_in_feature_space(first, second)
    return cka_of_grams(first, second)


class CKA:
    """`cka_input` and `cka_previous` on a seeded subset of at most `max_images` of each point's probe
    training images: the same images at every step (the probe images are fixed per run, and so is the
    subset), so the previous evaluation's activations are comparable row by row.

    The subset's activations are kept per point until the next evaluation: memory of max_images x the
    point's features in float32 per point (2000 x 16384, ResNet-18's stem at width 0.25: 131 MB).
    `cka_previous` is left out, not recorded as NaN, where there is nothing to compare with: at the
    run's first evaluation and at the first evaluation after a resume (the activations are not saved
    with the checkpoint), so tables and figures read only real comparisons.
    """

    name, dataset = "cka", OWN_DATASET

    def __init__(self, max_images: int, seed: int):
        self.max_images, self.seed = max_images, seed
        self.previous: dict[str, torch.Tensor] = {}  # probe point -> its subset's activations, last evaluation

    def fit_and_score(self, train: ProbeData, test: ProbeData) -> list[Measurement]:
        chosen = seeded_subset(len(train.features), self.max_images, self.seed, "probe.cka")
        chosen = chosen.to(train.features.device)
        features = train.features[chosen]  # a copy: the step's cache is not held past the evaluation
        measurements = [Measurement("cka_input", "train", linear_cka(features, train.images[chosen].flatten(1)))]
        if train.point in self.previous:
            measurements.append(Measurement("cka_previous", "train", linear_cka(features, self.previous[train.point])))
        self.previous[train.point] = features
        return measurements


def class_means(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the classes present, ascending; their mean activations in float64, one row per class)."""
    classes, index = labels.unique(return_inverse=True)
    sums = features.new_zeros(len(classes), features.shape[1], dtype=torch.float64)
    for rows, values in row_slices(features):
        sums.index_add_(0, index[rows], values)
    counts = torch.bincount(index, minlength=len(classes)).to(sums)
    return classes, sums / counts[:, None]


def within_between_trace_ratio(features: torch.Tensor, labels: torch.Tensor) -> float:
    """trace(Sigma_W) / trace(Sigma_B): Sigma_W the covariance of the images around their class means
    (averaged over images), Sigma_B that of the class means around the global mean (averaged over
    classes, as in Papyan et al. 2020). Traces, not NC1's trace(Sigma_W Sigma_B^+) / classes: no
    pseudo-inverse, whose cut-off for small eigenvalues would itself move the number. NaN with one class."""
    classes, means = class_means(features, labels)
    index = torch.searchsorted(classes, labels)
    within = sum((values - means[index[rows]]).square().sum() for rows, values in row_slices(features))
    between = (means - column_mean(features)).square().sum(1).mean()
    return (within / len(features) / between).item() if between > 0 else math.nan


def nearest_class_mean_accuracy(features: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor,
                                means: torch.Tensor) -> float:
    """The share of images whose nearest class mean (Euclidean, `means` of `classes`) is their own class's."""
    correct = 0
    for rows, values in row_slices(features):
        predicted = classes[torch.cdist(values, means).argmin(1)]
        correct += (predicted == labels[rows]).sum().item()
    return correct / len(features)


class ClassCollapse:
    """`within_between_trace_ratio` on the probe training images; `nearest_class_mean_accuracy` of the
    training class means on the training and the test images. One pass over the activations each."""

    name, dataset = "class_collapse", OWN_DATASET

    def fit_and_score(self, train: ProbeData, test: ProbeData) -> list[Measurement]:
        classes, means = class_means(train.features, train.labels)
        return [Measurement("within_between_trace_ratio", "train",
                            within_between_trace_ratio(train.features, train.labels)),
                *(Measurement("nearest_class_mean_accuracy", split,
                              nearest_class_mean_accuracy(data.features, data.labels, classes, means))
                  for split, data in (("train", train), ("test", test)))]
