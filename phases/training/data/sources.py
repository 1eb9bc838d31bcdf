"""Datasets as normalised image tensors on the training device, read from the official files.

MNIST and Fashion-MNIST come as IDX files (gzipped or not), CIFAR-10/100 as python batches, found in
torchvision's folder layout under `paths.data_dir` (`<data_dir>/FashionMNIST/raw/...`,
`<data_dir>/cifar-10-batches-py/...`) so an existing torchvision data folder works as is, or, for
Fashion-MNIST, in the system copy of Debian's dataset package. Nothing is downloaded unless
`dataset.download=true`, and then through torchvision, which verifies the official checksums.
Generated datasets (`GENERATED_DATASETS`: the theory's `prototypes`) are drawn in memory instead.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torchvision.transforms.v2 import functional as image_functional

from phases.config import ConfigError, dataset_option
from phases.prototypes import draw_samples, random_prototypes


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
    # Generated data models only: which samples are atypical, (N,) bool per split; None for real datasets.
    train_atypical: torch.Tensor | None = None
    test_atypical: torch.Tensor | None = None


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


def read_idx_splits(files: dict[str, Path]) -> dict[str, np.ndarray]:
    return {role: read_idx(path) for role, path in files.items()}


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR's python batches are pickles; allow only what they contain (dicts, lists, numpy arrays),
    so a foreign file in the data folder cannot run code while being read."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch: (images (N, 32, 32, 3) uint8, labels (N,))."""
    try:
        with open(path, "rb") as file:
            content = _CifarUnpickler(file, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise DataFormatError(f"{path}: not a CIFAR python batch, or truncated ({type(error).__name__}: {error})") \
            from error
    if not isinstance(content, dict) or b"data" not in content or label_key not in content:
        keys = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise DataFormatError(f"{path}: expected a dict with b'data' and {label_key!r}, found {keys}")
    data, labels = np.asarray(content[b"data"]), np.asarray(content[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataFormatError(f"{path}: b'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (len(data),):
        raise DataFormatError(f"{path}: {labels.shape} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar_splits(files: dict[str, Path], label_key: bytes) -> dict[str, np.ndarray]:
    """Roles `train*` are concatenated in order into the training split, `test*` into the test split."""
    splits: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        batches = [read_cifar_batch(path, label_key) for role, path in files.items() if role.startswith(split)]
        splits[f"{split}_images"] = np.concatenate([images for images, _ in batches])
        splits[f"{split}_labels"] = np.concatenate([labels for _, labels in batches])
    return splits


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset's official files are found, how they are read, and how to fetch them."""

    torchvision_name: str  # class in torchvision.datasets, used by dataset.download=true
    folder: str  # the files' folder below paths.data_dir, in torchvision's layout
    files: dict[str, str]  # role -> official file name
    read: Callable[[dict[str, Path]], dict[str, np.ndarray]]  # files -> {train,test}_{images,labels}
    classes: int
    channels: int
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
                           gzip_variants=True),
    "fashion_mnist": DatasetSource("FashionMNIST", "FashionMNIST/raw", IDX_FILES, read_idx_splits, classes=10,
                                   channels=1, gzip_variants=True, system_folder="fashion-mnist",
                                   debian_package="dataset-fashion-mnist"),
    "cifar10": DatasetSource(
        "CIFAR10", "cifar-10-batches-py",
        {**{f"train_{index}": f"data_batch_{index}" for index in range(1, 6)}, "test": "test_batch"},
        partial(read_cifar_splits, label_key=b"labels"), classes=10, channels=3),
    "cifar100": DatasetSource("CIFAR100", "cifar-100-python", {"train": "train", "test": "test"},
                              partial(read_cifar_splits, label_key=b"fine_labels"), classes=100, channels=3),
}


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


def missing_data_message(name: str, paths: DictConfig) -> str:
    source = DATASETS[name]
    folders = "\n".join(f"  {folder}" for folder in search_folders(name, paths))
    suffix = "[.gz]" if source.gzip_variants else ""
    files = ", ".join(f"{file_name}{suffix}" for file_name in source.files.values())
    ways = [
        f"  python -m phases.run dataset={name} dataset.download=true   (torchvision download, "
        f"checksums verified, into {Path(paths.data_dir) / source.folder})",
        f"  or put the official files in that folder (or point PHASES_DATA_DIR / paths.data_dir "
        f"at a folder holding {source.folder}/)",
    ]
    if source.debian_package:
        system_folder = Path(paths.system_data_dir or "/usr/share/datasets") / (source.system_folder or "")
        ways.insert(0, f"  sudo apt-get install {source.debian_package}   (Debian's copy, read from {system_folder})")
    return (
        f"dataset {name!r} not found: expected the files {files}\n"
        f"in one of these folders:\n{folders}\n"
        f"Get it with one of:\n" + "\n".join(ways)
    )


def download(name: str, paths: DictConfig) -> None:
    """Fetch the official files through torchvision (checksums verified) into paths.data_dir."""
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, DATASETS[name].torchvision_name)
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
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, size, size): scaled to [0, 1], resized, normalised."""
    tensor = torch.from_numpy(images.astype(np.float32) / 255.0)
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2).contiguous()
    size = dataset_cfg.image_size
    if tensor.shape[-1] != size or tensor.shape[-2] != size:
        # Bilinear, as torchvision's Resize in the paper's pipeline.
        tensor = image_functional.resize(tensor, [size, size], antialias=True)
    mean = torch.tensor(list(dataset_cfg.mean), dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(list(dataset_cfg.std), dtype=torch.float32).view(1, -1, 1, 1)
    return (tensor - mean) / std


def _check_split(images: np.ndarray, labels: np.ndarray, files: list[Path], source: DatasetSource) -> None:
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


def dataset_info(dataset_cfg: DictConfig) -> DatasetInfo:
    """What a model needs to know of a dataset, without reading it (so configs are checked first)."""
    name = dataset_cfg.name
    if name in GENERATED_DATASETS:
        return GENERATED_DATASETS[name].info(dataset_cfg)
    if name not in DATASETS:
        known = sorted([*DATASETS, *GENERATED_DATASETS])
        raise ConfigError("dataset.name", name, f"known datasets: {', '.join(known)}")
    source = DATASETS[name]
    if len(dataset_cfg.mean) != source.channels:
        raise ConfigError("dataset.mean", list(dataset_cfg.mean), f"{source.channels} value(s), one per channel")
    return DatasetInfo(channels=source.channels, classes=source.classes, image_size=dataset_cfg.image_size)


def load_image_splits(dataset_cfg: DictConfig, paths: DictConfig, seed: int, device: torch.device) -> ImageSplits:
    """Find (or, when asked, download) the dataset, and return normalised tensors on `device`."""
    info = dataset_info(dataset_cfg)
    name = dataset_cfg.name
    if name in GENERATED_DATASETS:
        return GENERATED_DATASETS[name].generate(dataset_cfg, paths, seed, device)
    source = DATASETS[name]
    files = locate_files(name, paths)
    if files is None and dataset_cfg.download:
        download(name, paths)
        files = locate_files(name, paths)
    if files is None:
        raise DataNotFoundError(missing_data_message(name, paths))

    arrays = source.read(files)
    splits = {}
    for split, size in (("train", dataset_cfg.train_size), ("test", dataset_cfg.test_size)):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        _check_split(images, labels, [path for role, path in files.items() if role.startswith(split)], source)
        keep = seeded_subset(len(images), size, seed, f"dataset.{split}").numpy()
        splits[f"{split}_images"] = _normalise(images[keep], dataset_cfg).to(device)
        splits[f"{split}_labels"] = torch.from_numpy(labels[keep].astype(np.int64)).to(device)
    return ImageSplits(**splits, info=info, source=str(next(iter(files.values())).parent))


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
        if list(dataset_cfg[key]) != [identity] * channels:
            raise ConfigError(f"dataset.{key}", list(dataset_cfg[key]),
                              f"{[identity] * channels}: prototypes are drawn in normalised units (one per channel)")
    return DatasetInfo(channels=channels, classes=classes, image_size=dataset_cfg.image_size)


def class_means(source_name: str, classes: int, dataset_cfg: DictConfig, paths: DictConfig) -> torch.Tensor:
    """The first `classes` class means of a real dataset's whole training split, normalised and resized
    as a run on that dataset sees its images."""
    source_cfg = dataset_option(source_name)
    source_cfg.image_size, source_cfg.download = dataset_cfg.image_size, dataset_cfg.download
    source_cfg.train_size = source_cfg.test_size = None
    try:
        splits = load_image_splits(source_cfg, paths, seed=0, device=torch.device("cpu"))
    except DataNotFoundError as error:
        raise DataNotFoundError(f"dataset.prototype_source={source_name} needs that dataset: {error}") from error
    return torch.stack([splits.train_images[splits.train_labels == label].mean(0) for label in range(classes)])


def generate_prototypes(dataset_cfg: DictConfig, paths: DictConfig, seed: int, device: torch.device) -> ImageSplits:
    """The theory's data model (phases/prototypes.py): train and test drawn around the same prototypes,
    every draw seeded by (seed, purpose), so a seed is one data set and train and test never share noise."""
    info = prototypes_info(dataset_cfg)
    source_name = dataset_cfg.prototype_source
    if source_name == "random":
        prototypes = random_prototypes(info.classes, (info.channels, info.image_size, info.image_size),
                                       subset_generator(seed, "prototypes.prototypes"))
    else:
        prototypes = class_means(source_name, info.classes, dataset_cfg, paths)
    splits = {}
    for split, size in (("train", dataset_cfg.train_size), ("test", dataset_cfg.test_size)):
        samples = draw_samples(prototypes, size, dataset_cfg.noise_std, dataset_cfg.atypical_fraction,
                               dataset_cfg.atypical_kind, subset_generator(seed, f"prototypes.{split}"))
        splits.update({f"{split}_images": samples.images.to(device), f"{split}_labels": samples.labels.to(device),
                       f"{split}_atypical": samples.atypical.to(device)})
    return ImageSplits(**splits, info=info, source=f"generated in memory (prototype_source={source_name})")


@dataclass(frozen=True)
class GeneratedSource:
    """A dataset drawn in memory from its config: no files, so never the data-not-found path."""

    info: Callable[[DictConfig], DatasetInfo]  # checks the config's shape settings, reads nothing
    generate: Callable[[DictConfig, DictConfig, int, torch.device], ImageSplits]  # (dataset, paths, seed, device)


GENERATED_DATASETS: dict[str, GeneratedSource] = {"prototypes": GeneratedSource(prototypes_info, generate_prototypes)}
