"""Datasets as normalised image tensors on the training device, read from the official files.

MNIST and Fashion-MNIST come as IDX files (gzipped or not), found in torchvision's folder layout
under `paths.data_dir` (`<data_dir>/FashionMNIST/raw/...`) so an existing torchvision data folder
works as is, or in the system copy of Debian's dataset packages. Nothing is downloaded unless
`dataset.download=true`, and then through torchvision, which verifies the official checksums.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torchvision.transforms.v2 import functional as image_functional

from phases.config import ConfigError


class DataNotFoundError(FileNotFoundError):
    """The dataset's files are in none of the searched folders; the message says how to get them."""


class DataFormatError(ValueError):
    """A dataset file exists but is truncated or not in its official format."""


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


@dataclass(frozen=True)
class IdxDataset:
    """Where the four IDX files of an MNIST-like dataset are found, and how to fetch them."""

    torchvision_name: str  # class in torchvision.datasets, also its folder: <data_dir>/<name>/raw/
    system_folder: str | None  # folder below paths.system_data_dir holding Debian's copy, if packaged
    debian_package: str | None
    classes: int
    channels: int = 1


IDX_DATASETS: dict[str, IdxDataset] = {
    "fashion_mnist": IdxDataset("FashionMNIST", "fashion-mnist", "dataset-fashion-mnist", classes=10),
    "mnist": IdxDataset("MNIST", None, None, classes=10),
}

# The official file names; each may also be present gzipped (`.gz`), as distributed.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# The IDX type byte -> numpy dtype (multi-byte types are big-endian in the format).
IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (plain or gzipped), checking its header against its length."""
    is_gzip = path.name.endswith(".gz")
    try:
        with (gzip.open(path, "rb") if is_gzip else open(path, "rb")) as file:
            raw = file.read()
    except (OSError, EOFError) as error:  # a truncated .gz raises EOFError, a non-gzip one OSError
        raise DataFormatError(f"{path}: cannot be read as {'gzip' if is_gzip else 'a file'}: {error}") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataFormatError(
            f"{path}: not an IDX file: starts with bytes {raw[:4].hex() or '(empty)'}, "
            "expected 00 00 <type 08..0e> <dimensions>"
        )
    dimensions = raw[3]
    header_bytes = 4 + 4 * dimensions
    if len(raw) < header_bytes:
        raise DataFormatError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header_bytes})")
    shape = struct.unpack(f">{dimensions}I", raw[4:header_bytes])
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected_bytes = header_bytes + math.prod(shape) * dtype.itemsize
    if len(raw) != expected_bytes:
        raise DataFormatError(
            f"{path}: {len(raw)} bytes, but its header declares shape {tuple(shape)} "
            f"({expected_bytes} bytes): the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header_bytes).reshape(shape)


def search_folders(name: str, paths: DictConfig) -> list[Path]:
    """Folders searched for a dataset's files, in order of preference."""
    dataset = IDX_DATASETS[name]
    folders = [Path(paths.data_dir) / dataset.torchvision_name / "raw"]
    if dataset.system_folder and paths.system_data_dir:
        folders.append(Path(paths.system_data_dir) / dataset.system_folder)
    return folders


def locate_files(name: str, paths: DictConfig) -> dict[str, Path] | None:
    """The first searched folder that holds all four files (plain or gzipped), else None."""
    for folder in search_folders(name, paths):
        found = {}
        for key, stem in IDX_FILES.items():
            candidates = [folder / stem, folder / f"{stem}.gz"]
            existing = [path for path in candidates if path.is_file()]
            if existing:
                found[key] = existing[0]
        if len(found) == len(IDX_FILES):
            return found
    return None


def missing_data_message(name: str, paths: DictConfig) -> str:
    dataset = IDX_DATASETS[name]
    folders = "\n".join(f"  {folder}" for folder in search_folders(name, paths))
    files = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())
    ways = [
        f"  python -m phases.run dataset={name} dataset.download=true   (torchvision download, "
        f"checksums verified, into {Path(paths.data_dir) / dataset.torchvision_name / 'raw'})",
        f"  or copy the official files into that folder (or point PHASES_DATA_DIR / paths.data_dir "
        f"at a folder holding {dataset.torchvision_name}/raw/)",
    ]
    if dataset.debian_package:
        ways.insert(0, f"  sudo apt-get install {dataset.debian_package}   (Debian's copy, read from "
                       f"{Path(paths.system_data_dir or '/usr/share/datasets') / (dataset.system_folder or '')})")
    return (
        f"dataset {name!r} not found: expected the files {files}\n"
        f"in one of these folders:\n{folders}\n"
        f"Get it with one of:\n" + "\n".join(ways)
    )


def download(name: str, paths: DictConfig) -> None:
    """Fetch the official files through torchvision (checksums verified) into paths.data_dir."""
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, IDX_DATASETS[name].torchvision_name)
    try:
        for train in (True, False):
            dataset_class(root=paths.data_dir, train=train, download=True)
    except Exception as error:  # torchvision raises RuntimeError/URLError/OSError when offline
        raise DataNotFoundError(
            f"downloading {name} failed ({type(error).__name__}: {error})\n" + missing_data_message(name, paths)
        ) from error


def subset_generator(seed: int, purpose: str) -> torch.Generator:
    """An RNG per (seed, purpose), so the training subset and each probe subset are independent draws."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def seeded_subset(total: int, size: int | None, seed: int, purpose: str) -> torch.Tensor:
    """Indices of a seeded random subset of `size` out of `total` (all of them, in order, for None)."""
    if size is None or size >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=subset_generator(seed, purpose))[:size]


def _normalise(images: np.ndarray, dataset_cfg: DictConfig) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, size, size), scaled to [0, 1], resized, normalised."""
    tensor = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    size = dataset_cfg.image_size
    if tensor.shape[-1] != size or tensor.shape[-2] != size:
        # Bilinear, as torchvision's Resize in the paper's pipeline.
        tensor = image_functional.resize(tensor, [size, size], antialias=True)
    mean = torch.tensor(list(dataset_cfg.mean), dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(list(dataset_cfg.std), dtype=torch.float32).view(1, -1, 1, 1)
    return (tensor - mean) / std


def _check_pair(images: np.ndarray, labels: np.ndarray, files: dict[str, Path], split: str, classes: int) -> None:
    image_file, label_file = files[f"{split}_images"], files[f"{split}_labels"]
    if images.ndim != 3:
        raise DataFormatError(f"{image_file}: expected images of shape (N, height, width), got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataFormatError(
            f"{label_file}: {labels.shape} labels do not match the {len(images)} images of {image_file}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DataFormatError(f"{label_file}: labels span {labels.min()}..{labels.max()}, expected 0..{classes - 1}")


def dataset_info(dataset_cfg: DictConfig) -> DatasetInfo:
    """What a model needs to know of a dataset, without reading it (so configs are checked first)."""
    name = dataset_cfg.name
    if name not in IDX_DATASETS:
        raise ConfigError("dataset.name", name, f"known datasets: {', '.join(sorted(IDX_DATASETS))}")
    dataset = IDX_DATASETS[name]
    if len(dataset_cfg.mean) != dataset.channels:
        raise ConfigError("dataset.mean", list(dataset_cfg.mean), f"{dataset.channels} value(s), one per channel")
    return DatasetInfo(channels=dataset.channels, classes=dataset.classes, image_size=dataset_cfg.image_size)


def load_image_splits(dataset_cfg: DictConfig, paths: DictConfig, seed: int, device: torch.device) -> ImageSplits:
    """Find (or, when asked, download) the dataset, and return normalised tensors on `device`."""
    info = dataset_info(dataset_cfg)
    name = dataset_cfg.name
    files = locate_files(name, paths)
    if files is None and dataset_cfg.download:
        download(name, paths)
        files = locate_files(name, paths)
    if files is None:
        raise DataNotFoundError(missing_data_message(name, paths))

    arrays = {key: read_idx(path) for key, path in files.items()}
    splits = {}
    for split, size in (("train", dataset_cfg.train_size), ("test", dataset_cfg.test_size)):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        _check_pair(images, labels, files, split, info.classes)
        keep = seeded_subset(len(images), size, seed, f"dataset.{split}").numpy()
        splits[f"{split}_images"] = _normalise(images[keep], dataset_cfg).to(device)
        splits[f"{split}_labels"] = torch.from_numpy(labels[keep].astype(np.int64)).to(device)
    return ImageSplits(**splits, info=info, source=str(files["train_images"].parent))
