"""What every probe receives and returns."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch

# Whose images a probe reads: the run's own dataset, the paired dataset of a dataset-switch transfer, or
# the run's dataset restricted to the classes outside dataset.class_subset (a class-switch transfer).
OWN_DATASET, TRANSFER_PARTNER, COMPLEMENT_CLASSES = "own", "transfer_partner", "complement_classes"


@dataclass
class ProbeData:
    features: torch.Tensor  # (images, features) activations of one probe point, flattened
    images: torch.Tensor  # (images, channels, height, width) the normalised input images: decoders' target
    labels: torch.Tensor  # (images,) class labels of the task the network is trained on
    feature_shape: tuple[int, ...]  # one image's activation before flattening, e.g. (64, 8, 8) or (512,)
    # (images,) bool, True for the atypical samples of a generated data model (dataset=prototypes), so a
    # probe can measure the majority and the few apart; None for real datasets.
    atypical: torch.Tensor | None = None
    point: str = ""  # the probe point's name (e.g. block3): a probe choosing settings per point keys them by it
    _centred_gram: torch.Tensor | None = field(default=None, repr=False)

    def centred_gram(self) -> torch.Tensor:
        """Xc^T Xc (float64, features x features) of the centred features, computed once for every probe
        of this point and split that needs it (the ridge decoder's system, the classifier's preconditioner):
        on a wide layer it is the largest product of an evaluation."""
        if self._centred_gram is None:
            self._centred_gram = symmetric_gram(self.features - self.features.mean(0)).double()
        return self._centred_gram

    def release_gram(self) -> None:
        """Free the Gram once every probe of the point has used it."""
        self._centred_gram = None


def symmetric_gram(matrix: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """matrix^T matrix from the blocks on and above the diagonal, mirrored: (blocks + 1) / (2 blocks) of
    the products of one matmul, as BLAS's syrk would do (torch has none). The Gram is the ridge
    decoder's largest cost on wide layers (make bench: 0.39 s -> 0.26 s for 10000 x 2048 on a CPU)."""
    columns = matrix.shape[1]
    bounds = [round(index * columns / blocks) for index in range(blocks + 1)]
    gram = matrix.new_empty(columns, columns)
    for start, end in zip(bounds, bounds[1:], strict=False):
        row = matrix[:, start:end].T @ matrix[:, start:]
        gram[start:end, start:] = row
        gram[start:, start:end] = row.T
    return gram


@dataclass(frozen=True)
class Measurement:
    metric: str
    split: str  # "train", "val" or "test"
    value: float


class Probe(Protocol):
    name: str  # the `probe` column of the metrics table
    dataset: str  # whose images it reads: OWN_DATASET, TRANSFER_PARTNER or COMPLEMENT_CLASSES

    def fit_and_score(self, train: ProbeData, test: ProbeData) -> list[Measurement]: ...


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed the global RNG for a probe's initialisation and restore it afterwards, so a probe is the
    same at every step and never shifts the random numbers the training run draws."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def minibatch_indices(count: int, batch_size: int, generator: torch.Generator, device: torch.device):
    """One epoch of shuffled minibatch indices (the last one may be smaller), as a DataLoader would."""
    order = torch.randperm(count, generator=generator).to(device)
    return order.split(batch_size)
