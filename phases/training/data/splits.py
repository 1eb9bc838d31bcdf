"""A dataset as train and test tensors on the training device: seeded subsets, normalised and resized.

Every subset is drawn by an RNG of its own, seeded by (run seed, purpose), so the training subset and
each probe's subset are independent draws and a seed always picks the same images.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torchvision.transforms.v2 import functional as image_functional

from phases.config.schema import ResizeMethod
from phases.config.validation import ConfigError, check_class_subset, download_allowed
from phases.training.data.fetching import fetch_dataset
from phases.training.data.formats import DataFormatError
from phases.training.data.sources import DATASETS, DataNotFoundError, DatasetSource, locate_files, missing_data_message


@dataclass(frozen=True)
class DatasetInfo:
    channels: int
    classes: int
    image_size: int  # pixels per side after resizing


@dataclass
class ImageSplits:
    train_images: torch.Tensor  # (N, channels, size, size) float32, normalised
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    info: DatasetInfo
    source: str  # the folder the files were read from, for run.json
    # Generated data models only: which samples are atypical, (N,) bool per split; None for real datasets.
    train_atypical: torch.Tensor | None = None
    test_atypical: torch.Tensor | None = None


def subset_generator(seed: int, purpose: str) -> torch.Generator:
    """An RNG per (seed, purpose), so the training subset and each probe subset are independent draws."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def seeded_subset(total: int, size: int | None, seed: int, purpose: str) -> torch.Tensor:
    """Indices of a seeded random subset of `size` out of `total` (all of them, in order, for None)."""
    if size is None or size >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=subset_generator(seed, purpose))[:size]


@functools.cache
def spline_zoom_matrix(source: int, target: int) -> torch.Tensor:
    """The (target, source) matrix of `scipy.ndimage.zoom(..., order=3)` along one axis. The zoom is linear
    in the pixels and separable (a spline prefilter and a tensor-product B-spline, per axis), so an image
    I resizes to rows @ I @ columns.T: the script's `ndimage.zoom(image, 32/28)` to float rounding, for
    the whole split in two matrix products instead of one scipy call per image."""
    from scipy import ndimage

    columns = [ndimage.zoom(unit, target / source, order=3) for unit in np.eye(source)]
    if any(len(column) != target for column in columns):  # zoom rounds source * factor to its output size
        raise ValueError(f"scipy.ndimage.zoom does not take {source} pixels to {target}")
    return torch.from_numpy(np.stack(columns, axis=1)).float()


def normalise(images: np.ndarray, dataset_cfg: DictConfig) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, size, size): scaled to [0, 1], resized, normalised."""
    return standardise(resize_images(images, dataset_cfg), dataset_cfg.mean, dataset_cfg.std)


def resize_images(images: np.ndarray, dataset_cfg: DictConfig) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, size, size) in [0, 1], resized by dataset.resize."""
    tensor = torch.from_numpy(images.astype(np.float32) / 255.0)
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2).contiguous()
    size = dataset_cfg.image_size
    if tensor.shape[-1] != size or tensor.shape[-2] != size:
        if ResizeMethod(dataset_cfg.resize) == ResizeMethod.spline:
            height, width = (spline_zoom_matrix(side, size) for side in tensor.shape[-2:])
            tensor = height @ tensor @ width.T
        else:
            tensor = image_functional.resize(tensor, [size, size], antialias=True)
    return tensor


def standardise(tensor: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """(pixel - mean) / std per channel, in place on `tensor` (N, C, size, size), which it returns."""
    tensor -= torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    return tensor.div_(torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))


def check_split(images: np.ndarray, labels: np.ndarray, files: list[Path], source: DatasetSource) -> None:
    """Shapes and label range as the source declares them; the error names the split's files."""
    named = ", ".join(str(path) for path in files)
    expected_dimensions = 3 if source.channels == 1 else 4
    if images.ndim != expected_dimensions:
        raise DataFormatError(f"{named}: images of shape {images.shape}, expected {expected_dimensions} dimensions")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataFormatError(f"{named}: {labels.shape} labels do not match the {len(images)} images")
    if labels.size and (labels.min() < 0 or labels.max() >= source.classes):
        raise DataFormatError(
            f"{named}: labels span {labels.min()}..{labels.max()}, expected 0..{source.classes - 1}"
        )


def real_dataset_info(dataset_cfg: DictConfig) -> DatasetInfo:
    """A real dataset's shape from its source, its normalisation checked against the source's channels;
    `classes` is what the classifier outputs: the length of dataset.class_subset when it is set."""
    source = DATASETS[dataset_cfg.name]
    for key in ("mean", "std"):  # null is image_folder's alone (computed from its images)
        values = dataset_cfg[key]
        if values is None or len(values) != source.channels:
            raise ConfigError(f"dataset.{key}", values if values is None else list(values),
                              f"{source.channels} value(s), one per channel")
    subset = dataset_cfg.get("class_subset")
    check_class_subset(subset, source.classes)
    classes = source.classes if subset is None else len(subset)
    return DatasetInfo(channels=source.channels, classes=classes, image_size=dataset_cfg.image_size)


def complement_classes(dataset_cfg: DictConfig, total: int | None = None) -> list[int]:
    """The classes the class_switch transfer probe measures on: those of the dataset (`total` classes; None:
    a real dataset's count) outside dataset.class_subset, ascending. A ConfigError when there is no subset
    or it leaves fewer than 2."""
    subset = dataset_cfg.get("class_subset")
    if subset is None:
        raise ConfigError("probe.transfer.tasks", "class_switch",
                          "class_switch probes the classes the run does not train on, so it needs "
                          "dataset.class_subset (e.g. dataset.class_subset=[0,1,2,3,4]); or drop class_switch")
    total = DATASETS[dataset_cfg.name].classes if total is None else total
    trained = set(subset)
    complement = [label for label in range(total) if label not in trained]
    if len(complement) < 2:
        raise ConfigError("dataset.class_subset", list(subset),
                          f"probe.transfer.tasks includes class_switch, which needs at least 2 of {dataset_cfg.name}'s "
                          f"{total} classes (0..{total - 1}) left outside the subset; this leaves {complement}")
    return complement


def keep_classes(labels: np.ndarray, subset: list[int] | None, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the images whose class is in `subset`, in file order, and their labels renumbered
    0..k-1 in the subset's order (all of them, as they are, for None)."""
    if subset is None:
        return np.arange(len(labels)), labels
    renumber = np.full(classes, -1, dtype=np.int64)
    renumber[list(subset)] = np.arange(len(subset))
    kept = np.flatnonzero(renumber[labels] >= 0)
    return kept, renumber[labels[kept]]


def load_real_splits(dataset_cfg: DictConfig, paths: DictConfig, seed: int, device: torch.device) -> ImageSplits:
    """Find (or, unless dataset.download=false, download) a real dataset's files, and return normalised
    tensors on `device`."""
    info = real_dataset_info(dataset_cfg)
    name = dataset_cfg.name
    source = DATASETS[name]
    files = locate_files(name, paths)
    if files is None and download_allowed(dataset_cfg.download):
        files = fetch_dataset(name, paths)  # its error says what failed and how else to get the files
    if files is None:
        raise DataNotFoundError(missing_data_message(name, paths))

    arrays = source.read(files)
    subset = dataset_cfg.get("class_subset")
    of_classes = "" if subset is None else f" in the classes {list(subset)}"
    splits = {}
    for split, size in (("train", dataset_cfg.train_size), ("test", dataset_cfg.test_size)):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        check_split(images, labels, [path for role, path in files.items() if role.startswith(split)], source)
        # The class filter first, so train_size/test_size count images of the kept classes.
        in_classes, labels = keep_classes(labels, subset, source.classes)
        if size is not None and size > len(in_classes):  # silently using fewer would run under a misleading id
            raise ConfigError(f"dataset.{split}_size", size, f"at most the {len(in_classes)} images of {name}'s "
                              f"{split} split{of_classes}, or null for all")
        keep = seeded_subset(len(in_classes), size, seed, f"dataset.{split}").numpy()
        splits[f"{split}_images"] = normalise(images[in_classes[keep]], dataset_cfg).to(device)
        splits[f"{split}_labels"] = torch.from_numpy(labels[keep].astype(np.int64)).to(device)
    return ImageSplits(**splits, info=info, source=str(next(iter(files.values())).parent))
