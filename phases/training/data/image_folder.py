"""The user's own images in torchvision's ImageFolder layout, as train and test tensors on the training device.

    python -m phases.run dataset=image_folder dataset.root=/data/flowers dataset.test_fraction=0.2

Two layouts of dataset.root:
    train/<class>/*  test/<class>/*   the folders are the split; both must hold the same class folders
    <class>/*                         every class split by dataset.test_fraction: round(fraction x n) of its
                                      n images (at least one per split) go to test, those whose file names
                                      hash lowest, so every seed and every run shares one split
A root holding a train/ or a test/ folder is taken for the first layout. The class folders' sorted names
are the labels 0..k-1 (torchvision's ImageFolder order); a class's images are the image files
(IMAGE_EXTENSIONS, any case) anywhere below its folder; hidden files and folders and other files are
ignored. Nothing is ever downloaded.

Everything the listing and the files' headers can tell is checked before a pixel is decoded
(image_folder_plan): the layout, empty class folders, the two splits' class names, class_subset and the
sizes, and whether the tensors fit in dataset.max_memory_gb; a corrupt image is named when it is decoded.
class_subset, train_size and test_size act as for the real datasets (splits.load_real_splits).
Decoding, resizing and the normalisation statistics: image_pixels.py.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from phases.config.validation import ConfigError, check_class_subset
from phases.store.folder_fingerprint import IMAGE_EXTENSIONS, image_files, is_hidden
from phases.training.data.formats import DataFormatError
from phases.training.data.image_pixels import channels_of, resized_pixels, training_statistics
from phases.training.data.sources import DataNotFoundError
from phases.training.data.splits import DatasetInfo, ImageSplits, keep_classes, seeded_subset, standardise

IMAGE_FOLDER = "image_folder"
SPLITS = ("train", "test")
LAYOUTS = ("dataset.root must hold train/<class>/* and test/<class>/*, or <class>/* with dataset.test_fraction=0.2 "
           "(an image folder is read, never downloaded)")


@dataclass(frozen=True)
class FolderListing:
    """The folder's images per split, in class then file order, and the class names (labels 0..k-1)."""

    root: Path
    classes: list[str]
    files: dict[str, list[Path]]  # split -> image files
    labels: dict[str, np.ndarray]  # split -> (N,) int64 labels


@dataclass(frozen=True)
class FolderPlan:
    """What a load reads, all checked: the listing, the channel count, and the model's view of the data."""

    listing: FolderListing
    channels: int
    info: DatasetInfo


def class_folders(folder: Path, setting: str) -> dict[str, list[Path]]:
    """{class name: its image files} for the class folders of `folder`, in sorted name order."""
    names = sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and not is_hidden(entry.name))
    if not names:
        loose = sum(path.is_file() and path.name.lower().endswith(IMAGE_EXTENSIONS) for path in folder.iterdir())
        found = (f"its {loose} images lie directly in it: move each class's images into a folder of its own"
                 if loose else "it holds no folder")
        raise DataNotFoundError(f"dataset.root={setting}: no class folder in {folder} ({found}); {LAYOUTS}")
    by_class = {name: image_files(folder / name) for name in names}
    empty = [str(folder / name) for name, files in by_class.items() if not files]
    if empty:
        raise DataNotFoundError(f"dataset.root={setting}: class folders without an image ({', '.join(IMAGE_EXTENSIONS)}"
                                f"): {', '.join(empty)}; add images to them or remove them")
    return by_class


def split_by_names(files: list[Path], class_folder: Path, fraction: float) -> tuple[list[Path], list[Path]]:
    """(train, test) of one class's files, each in file order: round(fraction x n) of them to test, at least
    one per split, those whose path below the class folder hashes lowest (so not the seed: one split for all)."""
    if len(files) < 2:
        raise DataFormatError(f"{class_folder}: 1 image, but dataset.test_fraction splits every class, which needs "
                              "at least 2 (one per split); add images or remove the folder")
    count = min(max(math.floor(fraction * len(files) + 0.5), 1), len(files) - 1)
    ranked = sorted(files, key=lambda path: hashlib.sha256(path.relative_to(class_folder).as_posix().encode()).digest())
    held_out = set(ranked[:count])
    return [path for path in files if path not in held_out], [path for path in files if path in held_out]


def list_folder(dataset_cfg: DictConfig) -> FolderListing:
    """The images of dataset.root by split and class, from file names alone; every layout problem raised."""
    setting, fraction = dataset_cfg.root, dataset_cfg.test_fraction
    root = Path(setting).expanduser()
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataNotFoundError(f"dataset.root={setting}: {root.resolve()} {problem}; {LAYOUTS}")
    present = [split for split in SPLITS if (root / split).is_dir()]
    if present:
        if len(present) == 1:
            (absent,) = set(SPLITS) - set(present)
            raise DataFormatError(f"dataset.root={setting}: {root} holds {present[0]}/ but no {absent}/; {LAYOUTS}")
        if fraction is not None:
            raise ConfigError("dataset.test_fraction", fraction, f"null: {root} holds train/ and test/, which are "
                              "the split")
        by_split = {split: class_folders(root / split, setting) for split in SPLITS}
        if list(by_split["train"]) != list(by_split["test"]):
            only = {split: sorted(set(by_split[split]) - set(by_split[other]))
                    for split, other in (("train", "test"), ("test", "train"))}
            raise DataFormatError(f"dataset.root={setting}: train/ and test/ must hold the same class folders; only in "
                                  f"train/: {only['train'] or 'none'}; only in test/: {only['test'] or 'none'}")
    else:
        by_class = class_folders(root, setting)  # an empty folder is told so before the missing fraction
        if fraction is None:
            raise ConfigError("dataset.test_fraction", None, f"a fraction in (0, 1) of every class's images to test "
                              f"on, e.g. dataset.test_fraction=0.2: {root} has no train/ and test/ folders")
        halves = {name: split_by_names(files, root / name, fraction) for name, files in by_class.items()}
        by_split = {split: {name: pair[index] for name, pair in halves.items()} for index, split in enumerate(SPLITS)}
    classes = list(by_split["train"])
    if len(classes) < 2:
        raise DataFormatError(f"dataset.root={setting}: one class folder ({classes[0]}); a classifier needs at least 2")
    files = {split: [path for name in classes for path in by_split[split][name]] for split in SPLITS}
    labels = {split: np.concatenate([np.full(len(by_split[split][name]), label, dtype=np.int64)
                                     for label, name in enumerate(classes)]) for split in SPLITS}
    return FolderListing(root.resolve(), classes, files, labels)


def loaded_count(dataset_cfg: DictConfig, listing: FolderListing, split: str) -> int:
    """How many images of `split` a load keeps: those of class_subset's classes, at most train_size/test_size."""
    subset, split_labels = dataset_cfg.class_subset, listing.labels[split]
    in_classes = len(split_labels) if subset is None else int(np.isin(split_labels, list(subset)).sum())
    size = dataset_cfg[f"{split}_size"]
    if size is not None and size > in_classes:  # silently using fewer would run under a misleading id
        of_classes = "" if subset is None else f" in the classes {list(subset)}"
        raise ConfigError(f"dataset.{split}_size", size, f"at most the {in_classes} images of the {split} split of "
                          f"{listing.root}{of_classes}, or null for all")
    return in_classes if size is None else size


def check_memory(dataset_cfg: DictConfig, counts: dict[str, int], channels: int) -> None:
    """The float32 tensors of both splits must fit in dataset.max_memory_gb."""
    size = dataset_cfg.image_size
    needed = sum(counts.values()) * channels * size * size * 4 / 1e9
    if needed > dataset_cfg.max_memory_gb:
        raise ConfigError("dataset.max_memory_gb", dataset_cfg.max_memory_gb,
                          f"at least {needed:.3g} GB: {counts['train']} training and {counts['test']} test images x "
                          f"{channels} channel(s) x {size}x{size} pixels x 4 bytes (float32); raise "
                          "dataset.max_memory_gb, or load fewer images (dataset.train_size, dataset.test_size, "
                          "dataset.class_subset) or smaller ones (dataset.image_size)")


def image_folder_plan(dataset_cfg: DictConfig) -> FolderPlan:
    """The folder listed and every setting checked against it, before a pixel is decoded (the headers
    are read when dataset.channels is null, after the memory check a one-channel load would fail)."""
    listing = list_folder(dataset_cfg)
    check_class_subset(dataset_cfg.class_subset, len(listing.classes))
    counts = {split: loaded_count(dataset_cfg, listing, split) for split in SPLITS}
    check_memory(dataset_cfg, counts, dataset_cfg.channels or 1)  # before reading a header of a huge folder
    channels = dataset_cfg.channels or channels_of([*listing.files["train"], *listing.files["test"]])
    check_memory(dataset_cfg, counts, channels)
    for key in ("mean", "std"):
        values = dataset_cfg[key]
        if values is not None and len(values) != channels:
            raise ConfigError(f"dataset.{key}", list(values), f"{channels} value(s), one per channel of the images "
                              f"(dataset.channels={dataset_cfg.channels}), or null to compute them from the images")
    subset = dataset_cfg.class_subset
    classes = len(listing.classes) if subset is None else len(subset)
    return FolderPlan(listing, channels, DatasetInfo(channels=channels, classes=classes,
                                                     image_size=dataset_cfg.image_size))


def image_folder_info(dataset_cfg: DictConfig) -> DatasetInfo:
    return image_folder_plan(dataset_cfg).info


def image_folder_classes(dataset_cfg: DictConfig) -> int:
    """The number of class folders, whatever dataset.class_subset keeps (for class_switch's complement)."""
    return len(list_folder(dataset_cfg).classes)


def load_image_folder(dataset_cfg: DictConfig, paths: DictConfig, seed: int, device: torch.device) -> ImageSplits:
    """The folder's images decoded, resized, normalised (dataset.mean/std, or the training split's own
    statistics), as tensors on `device`; `paths` is unused: the folder is dataset.root."""
    plan = image_folder_plan(dataset_cfg)
    listing, subset = plan.listing, dataset_cfg.class_subset
    pixels, labels = {}, {}
    for split in SPLITS:
        # The class filter first, so train_size/test_size count images of the kept classes.
        in_classes, split_labels = keep_classes(listing.labels[split], subset, len(listing.classes))
        keep = seeded_subset(len(in_classes), dataset_cfg[f"{split}_size"], seed, f"dataset.{split}").numpy()
        pixels[split] = resized_pixels([listing.files[split][index] for index in in_classes[keep]], plan.channels,
                                       dataset_cfg)
        labels[split] = torch.from_numpy(split_labels[keep].astype(np.int64))
    mean, std = dataset_cfg.mean, dataset_cfg.std
    if mean is None:
        # A load of every training image has their pixels at hand: no second decoding for the statistics.
        whole = len(pixels["train"]) == len(listing.files["train"])
        mean, std = training_statistics(dataset_cfg, plan.channels, listing.files["train"],
                                        pixels["train"] if whole else None)
    return ImageSplits(train_images=standardise(pixels["train"], mean, std).to(device),
                       train_labels=labels["train"].to(device),
                       test_images=standardise(pixels["test"], mean, std).to(device),
                       test_labels=labels["test"].to(device), info=plan.info, source=str(listing.root))
