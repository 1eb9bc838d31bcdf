"""Transfer probes: a linear classifier on the frozen activations, trained for another task.

Tasks: `colour_dominance` (RGB images: which channel has the largest sum over the normalised
image; 3 classes, the paper's), `quadrant_dominance` (our addition for grayscale images: which
image quadrant has the largest sum of the normalised image; 4 classes), `dataset_switch` (the
frozen network's activations on the paired dataset, with that dataset's labels) and `class_switch`
(the same, inside one dataset: its images of the classes outside dataset.class_subset, the classes the
network never saw, relabelled 0..m-1 in ascending order by the data module). A seeded part of
the transfer training split is held out and reported as split "val", so the best pre-training step
can be chosen without looking at the test split.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from phases.config.probe_schema import TransferTask
from phases.training.probes.base import COMPLEMENT_CLASSES, OWN_DATASET, TRANSFER_PARTNER, Measurement, ProbeData
from phases.training.probes.classification import class_count, classification_measurements


def colour_dominance_labels(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> which of R, G, B has the largest sum."""
    if images.shape[1] != 3:
        raise ValueError(f"colour_dominance needs RGB images, got {images.shape[1]} channel(s); "
                         "use quadrant_dominance for grayscale datasets")
    return images.sum(dim=(2, 3)).argmax(1)


def quadrant_dominance_labels(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> which quadrant (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) has the
    largest sum over all channels."""
    half_height, half_width = images.shape[2] // 2, images.shape[3] // 2
    quadrants = [images[:, :, rows, columns].sum(dim=(1, 2, 3))
                 for rows in (slice(0, half_height), slice(half_height, None))
                 for columns in (slice(0, half_width), slice(half_width, None))]
    return torch.stack(quadrants, dim=1).argmax(1)


# The tasks whose labels are computed from the images; the switches keep the labels of the images they read.
TASK_LABELS = {TransferTask.colour_dominance: colour_dominance_labels,
               TransferTask.quadrant_dominance: quadrant_dominance_labels}
# The tasks that read other images than the run's own, by the dataset name the Evaluator knows them under.
SWITCH_DATASETS = {TransferTask.dataset_switch: TRANSFER_PARTNER, TransferTask.class_switch: COMPLEMENT_CLASSES}


class TransferProbe:
    def __init__(self, task: TransferTask | str, classifier, validation_fraction: float, seed: int):
        task = TransferTask(task)
        if task not in (*TASK_LABELS, *SWITCH_DATASETS):  # `dominance` is resolved per dataset first
            raise ValueError(f"transfer task {task!r}; expected colour_dominance, quadrant_dominance, dataset_switch "
                             "or class_switch")
        self.task, self.classifier, self.validation_fraction, self.seed = task, classifier, validation_fraction, seed
        self.name = f"transfer_{task.value}"
        self.dataset = SWITCH_DATASETS.get(task, OWN_DATASET)

    def _labelled(self, data: ProbeData) -> ProbeData:
        if self.task in SWITCH_DATASETS:
            return data  # the paired dataset's own labels, or the other classes' relabelled ones
        return replace(data, labels=TASK_LABELS[self.task](data.images))

    def fit_and_score(self, train: ProbeData, test: ProbeData) -> list[Measurement]:
        train, test = self._labelled(train), self._labelled(test)
        order = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(self.seed))
        held_out = max(1, round(self.validation_fraction * len(order)))
        order = order.to(train.labels.device)
        validation_rows, fitting_rows = order[:held_out], order[held_out:]
        classes = class_count(train, test)
        predict = self.classifier.fit(train.features[fitting_rows], train.labels[fitting_rows], classes)
        with torch.no_grad():
            parts = (("train", train.features[fitting_rows], train.labels[fitting_rows]),
                     ("val", train.features[validation_rows], train.labels[validation_rows]),
                     ("test", test.features, test.labels))
            return [measurement for split, features, labels in parts
                    for measurement in classification_measurements(predict(features), labels, split)]
