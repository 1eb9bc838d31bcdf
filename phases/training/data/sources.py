"""Where each real dataset lives, how its files are read, how to get them, and which dataset it pairs with.

Files are found in torchvision's folder layout under `paths.data_dir` (`<data_dir>/FashionMNIST/raw/...`,
`<data_dir>/cifar-10-batches-py/...`), so an existing torchvision data folder works as is, or, for
Fashion-MNIST, in the system copy of Debian's dataset package below `paths.system_data_dir`. Nothing
is downloaded here: fetching.py does that (dataset.download=auto|true, or `python -m phases.fetch`).
Installing Debian's package is left to the Makefile and CI; the missing-data message names it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from phases.config.validation import ConfigError
from phases.training.data.formats import read_cifar_splits, read_idx_splits


class DataNotFoundError(FileNotFoundError):
    """The dataset's files are in none of the searched folders; the message says how to get them."""


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset's official files are found, how they are read, and how to fetch them."""

    torchvision_name: str  # class in torchvision.datasets: its official file names, md5s and mirrors
    folder: str  # the files' folder below paths.data_dir, in torchvision's layout
    files: dict[str, str]  # role -> official file name
    read: Callable[[dict[str, Path]], dict[str, np.ndarray]]  # files -> {train,test}_{images,labels}
    classes: int
    channels: int
    # The dataset the dataset_switch transfer probe measures on: the pairs the paper transfers between.
    transfer_partner: str | None = None
    gzip_variants: bool = False  # the files may also be present gzipped (`name.gz`), as MNIST is distributed
    system_folder: str | None = None  # folder below paths.system_data_dir holding Debian's copy
    debian_package: str | None = None


IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

DATASETS: dict[str, DatasetSource] = {
    "mnist": DatasetSource("MNIST", "MNIST/raw", IDX_FILES, read_idx_splits, classes=10, channels=1,
                           transfer_partner="fashion_mnist", gzip_variants=True),
    "fashion_mnist": DatasetSource("FashionMNIST", "FashionMNIST/raw", IDX_FILES, read_idx_splits, classes=10,
                                   channels=1, transfer_partner="mnist", gzip_variants=True,
                                   system_folder="fashion-mnist", debian_package="dataset-fashion-mnist"),
    "cifar10": DatasetSource(
        "CIFAR10", "cifar-10-batches-py",
        {**{f"train_{index}": f"data_batch_{index}" for index in range(1, 6)}, "test": "test_batch"},
        partial(read_cifar_splits, label_key=b"labels"), classes=10, channels=3, transfer_partner="cifar100"),
    "cifar100": DatasetSource("CIFAR100", "cifar-100-python", {"train": "train", "test": "test"},
                              partial(read_cifar_splits, label_key=b"fine_labels"), classes=100, channels=3,
                              transfer_partner="cifar10"),
}


def transfer_partner(name: str) -> str:
    """The dataset a run on `name` switches to for the dataset_switch transfer probe."""
    source = DATASETS.get(name)
    if source is None or source.transfer_partner is None:
        pairs = ", ".join(f"{dataset} -> {other.transfer_partner}" for dataset, other in DATASETS.items()
                          if other.transfer_partner)
        raise ConfigError("probe.transfer.tasks", "dataset_switch",
                          f"dataset {name} has no partner; datasets with a partner: {pairs}")
    return source.transfer_partner


def search_folders(name: str, paths: DictConfig) -> list[Path]:
    """Folders searched for a dataset's files, in order of preference."""
    source = DATASETS[name]
    folders = [Path(paths.data_dir) / source.folder]
    if source.system_folder and paths.system_data_dir:
        folders.append(Path(paths.system_data_dir) / source.system_folder)
    return folders


def locate_files(name: str, paths: DictConfig) -> dict[str, Path] | None:
    """The first searched folder that holds every file of the dataset, else None."""
    source = DATASETS[name]
    for folder in search_folders(name, paths):
        found = {}
        for role, file_name in source.files.items():
            candidates = [folder / file_name] + ([folder / f"{file_name}.gz"] if source.gzip_variants else [])
            existing = [path for path in candidates if path.is_file()]
            if existing:
                found[role] = existing[0]
        if len(found) == len(source.files):
            return found
    return None


def debian_way(name: str, paths: DictConfig) -> str | None:
    """The apt-get line for a dataset Debian ships, else None."""
    source = DATASETS[name]
    if not source.debian_package:
        return None
    system_folder = Path(paths.system_data_dir or "/usr/share/datasets") / (source.system_folder or "")
    return f"  sudo apt-get install {source.debian_package}   ({name}: Debian's copy, read from {system_folder})"


def fetch_command(names: list[str], paths: DictConfig) -> str:
    """The `python -m phases.fetch` line that fetches `names` into the same folder with the same sources."""
    settings = [f"paths.data_dir={paths.data_dir}"]
    settings += [f"paths.{key}={paths[key]}" for key in ("data_mirror", "data_checksums") if paths.get(key)]
    return f"python -m phases.fetch dataset={','.join(names)} {' '.join(settings)}"


def ways_to_get(name: str, paths: DictConfig) -> list[str]:
    """Every way to get a dataset's files, Debian's package first: one indented line each."""
    source = DATASETS[name]
    mirror_hint = "" if paths.get("data_mirror") else "; add paths.data_mirror=<url> for a mirror of your own"
    ways = [
        f"  {fetch_command([name], paths)}   (downloads the official files, checksums verified, into "
        f"{Path(paths.data_dir) / source.folder}, without training{mirror_hint})",
        f"  or put the official files in that folder (or point PHASES_DATA_DIR / paths.data_dir "
        f"at a folder holding {source.folder}/)",
    ]
    debian = debian_way(name, paths)
    return [debian, *ways] if debian else ways


def missing_data_message(name: str, paths: DictConfig) -> str:
    """The files expected, the folders searched, and every way to get them (Debian's package first)."""
    source = DATASETS[name]
    folders = "\n".join(f"  {folder}" for folder in search_folders(name, paths))
    suffix = "[.gz]" if source.gzip_variants else ""
    files = ", ".join(f"{file_name}{suffix}" for file_name in source.files.values())
    ways = [*ways_to_get(name, paths), "  or let runs fetch missing files: dataset.download=auto (the default)"]
    return (
        f"dataset {name!r} not found: expected the files {files}\n"
        f"in one of these folders:\n{folders}\n"
        f"Get it with one of:\n" + "\n".join(ways)
    )

