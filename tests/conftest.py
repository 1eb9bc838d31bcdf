"""Shared fixtures: small datasets written in the official IDX format, and the real-data switch.

Set PHASES_REQUIRE_DATA=1 (as .ci/run does) to make tests that need the real Fashion-MNIST fail
instead of skip when it is missing.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
REPOSITORY = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPOSITORY / "conf"


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write `array` (uint8) as an IDX file: magic 00 00 08 <ndim>, big-endian dims, raw bytes."""
    compress = path.name.endswith(".gz") if compress is None else compress
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 uint8 images whose class is visible: a bright horizontal band at a class-given height."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for index, label in enumerate(labels):
        row = 2 + int(label) * 2
        images[index, row : row + 3, 4:24] = 230
    return images


def write_mnist_like(folder: Path, train: int = 256, test: int = 128, seed: int = 0, gzipped: bool = True) -> Path:
    """The four official IDX files of an MNIST-like dataset with `train`/`test` images in `folder`."""
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gzipped else ""
    for prefix, count in (("train", train), ("t10k", test)):
        labels = np.arange(count, dtype=np.uint8) % 10
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", class_images(labels, rng))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return folder


def write_cifar(folder: Path, classes: int, train: int = 100, test: int = 50, seed: int = 0) -> Path:
    """CIFAR python batches as distributed (pickled dicts, bytes keys, protocol 2), in `folder`.

    CIFAR-10: data_batch_1..5 + test_batch with b'labels'; CIFAR-100: train + test with b'fine_labels'.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    label_key = b"labels" if classes == 10 else b"fine_labels"
    names = [f"data_batch_{index}" for index in range(1, 6)] if classes == 10 else ["train"]
    per_batch = -(-train // len(names))
    batches = [(name, index * per_batch, min(per_batch, train - index * per_batch)) for index, name in enumerate(names)]
    batches.append(("test_batch" if classes == 10 else "test", 0, test))
    for name, first, count in batches:
        labels = (np.arange(first, first + count) % classes).tolist()
        images = class_images(np.asarray(labels) % 10, rng)  # (N, 28, 28): pad to 32x32, 3 channels
        rgb = np.zeros((count, 3, 32, 32), dtype=np.uint8)
        rgb[:, :, 2:30, 2:30] = images[:, None]
        rgb[:, 0] //= 2  # channels differ, so per-channel normalisation is exercised
        content = {b"batch_label": name.encode(), label_key: labels, b"data": rgb.reshape(count, 3072),
                   b"filenames": [f"{index}.png".encode() for index in range(count)]}
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))
    return folder


DATASET_FOLDERS = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py",
                   "cifar100": "cifar-100-python"}


def write_dataset(data_dir: Path, name: str, train: int = 100, test: int = 50) -> Path:
    """A small copy of dataset `name` in its official format and torchvision's folder layout."""
    folder = data_dir / DATASET_FOLDERS[name]
    if name in ("mnist", "fashion_mnist"):
        return write_mnist_like(folder, train=train, test=test)
    return write_cifar(folder, classes=10 if name == "cifar10" else 100, train=train, test=test)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A paths.data_dir in torchvision's layout holding a small generated Fashion-MNIST."""
    root = tmp_path / "data"
    write_mnist_like(root / "FashionMNIST" / "raw")
    return root


@pytest.fixture
def paths_without_system_copy(data_dir: Path, tmp_path: Path):
    return OmegaConf.create({"data_dir": str(data_dir), "outputs": str(tmp_path / "outputs"),
                             "system_data_dir": None})


@pytest.fixture(scope="session")
def real_fashion_mnist() -> Path:
    """Debian's copy of the real Fashion-MNIST; required in CI, skipped elsewhere when missing."""
    if not (REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        if os.environ.get("PHASES_REQUIRE_DATA") == "1":
            pytest.fail(f"PHASES_REQUIRE_DATA=1 but {REAL_FASHION_MNIST} is missing: "
                        "apt-get install dataset-fashion-mnist")
        pytest.skip(f"real Fashion-MNIST not installed in {REAL_FASHION_MNIST}")
    return REAL_FASHION_MNIST


@pytest.fixture(scope="session")
def resume_data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_mnist_like(root / "FashionMNIST" / "raw", train=400, test=200)
    return root


@pytest.fixture(scope="session")
def uninterrupted(resume_data_dir, tmp_path_factory):
    """The metrics of the interruptible run (tests/resume_helpers.py) done in one go."""
    from tests.resume_helpers import metrics, start

    outputs = tmp_path_factory.mktemp("uninterrupted")
    process = start(resume_data_dir, outputs)
    assert process.wait(timeout=600) == 0, process.stderr.read()
    return metrics(outputs)
