"""Datasets as normalised image tensors on the training device; the rest of the package imports this.

    formats.py     the official file formats (IDX, CIFAR python batches), DataFormatError
    sources.py     where each real dataset lives, its missing-data message, its dataset_switch
                   partner; DataNotFoundError
    fetching.py    the download of the official files (torchvision's names, md5s and mirrors):
                   verified, atomic, one process at a time
    splits.py      seeded subsets, class subsets, normalisation and resizing; a real dataset as device
                   tensors
    prototypes.py  the theory's data model, generated in memory from the config
    image_folder.py  the user's own images (dataset.root, torchvision's ImageFolder layout): listed and
                   checked; image_pixels.py decodes, resizes and computes their normalisation

Real datasets (`DATASETS`) are read from their official files; generated ones (`GENERATED_DATASETS`:
the theory's `prototypes`) are drawn in memory; the user's own (`USER_DATASETS`: `image_folder`) are read
from the folder the config names, never fetched. `dataset_info` and `load_image_splits` dispatch
between them here, so no data module needs another's registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from phases.config.validation import ConfigError
from phases.training.data import splits
from phases.training.data.fetching import fetch_dataset
from phases.training.data.formats import DataFormatError
from phases.training.data.image_folder import IMAGE_FOLDER, image_folder_classes, image_folder_info, load_image_folder
from phases.training.data.prototypes import generate_prototypes, prototypes_info
from phases.training.data.sources import (
    DATASETS,
    DataNotFoundError,
    fetch_command,
    locate_files,
    missing_data_message,
    transfer_partner,
)
from phases.training.data.splits import (
    DatasetInfo,
    ImageSplits,
    load_real_splits,
    real_dataset_info,
    seeded_subset,
    subset_generator,
)

__all__ = [
    "DATASETS",
    "GENERATED_DATASETS",
    "USER_DATASETS",
    "DataFormatError",
    "DataNotFoundError",
    "DatasetInfo",
    "ImageSplits",
    "complement_classes",
    "dataset_info",
    "fetch_command",
    "fetch_dataset",
    "load_image_splits",
    "locate_files",
    "missing_data_message",
    "seeded_subset",
    "subset_generator",
    "transfer_partner",
]


@dataclass(frozen=True)
class GeneratedSource:
    """A dataset drawn in memory from its config: no files, so never the data-not-found path."""

    info: Callable[[DictConfig], DatasetInfo]  # checks the config's shape settings, reads nothing
    generate: Callable[[DictConfig, DictConfig, int, torch.device], ImageSplits]  # (dataset, paths, seed, device)


GENERATED_DATASETS: dict[str, GeneratedSource] = {"prototypes": GeneratedSource(prototypes_info, generate_prototypes)}


@dataclass(frozen=True)
class UserSource:
    """A dataset the user points at (dataset.root): read, never fetched; its shape comes from its files."""

    info: Callable[[DictConfig], DatasetInfo]  # lists the files and reads headers, decodes no pixel
    load: Callable[[DictConfig, DictConfig, int, torch.device], ImageSplits]  # (dataset, paths, seed, device)
    classes: Callable[[DictConfig], int]  # every class it holds, whatever dataset.class_subset keeps


USER_DATASETS: dict[str, UserSource] = {
    IMAGE_FOLDER: UserSource(image_folder_info, load_image_folder, image_folder_classes),
}


def dataset_info(dataset_cfg: DictConfig) -> DatasetInfo:
    """What a model needs to know of a dataset, without reading it (so configs are checked first)."""
    name = dataset_cfg.name
    if name in GENERATED_DATASETS:
        return GENERATED_DATASETS[name].info(dataset_cfg)
    if name in USER_DATASETS:
        return USER_DATASETS[name].info(dataset_cfg)
    if name not in DATASETS:
        known = sorted([*DATASETS, *GENERATED_DATASETS, *USER_DATASETS])
        raise ConfigError("dataset.name", name, f"known datasets: {', '.join(known)}")
    return real_dataset_info(dataset_cfg)


def load_image_splits(dataset_cfg: DictConfig, paths: DictConfig, seed: int, device: torch.device) -> ImageSplits:
    """Find (or, unless dataset.download=false, download) or generate the dataset: normalised tensors on `device`."""
    dataset_info(dataset_cfg)  # every setting checked before anything is read or drawn
    if dataset_cfg.name in GENERATED_DATASETS:
        return GENERATED_DATASETS[dataset_cfg.name].generate(dataset_cfg, paths, seed, device)
    if dataset_cfg.name in USER_DATASETS:
        return USER_DATASETS[dataset_cfg.name].load(dataset_cfg, paths, seed, device)
    return load_real_splits(dataset_cfg, paths, seed, device)


def complement_classes(dataset_cfg: DictConfig) -> list[int]:
    """The classes outside dataset.class_subset, which the class_switch transfer probe measures on."""
    user = USER_DATASETS.get(dataset_cfg.name)
    total = user.classes(dataset_cfg) if user is not None and dataset_cfg.get("class_subset") is not None else None
    return splits.complement_classes(dataset_cfg, total)
