"""Shared fixtures: small datasets written in the official IDX format, and the real-data switch.

Set PHASES_REQUIRE_DATA=1 (as .ci/run does) to make tests that need the real Fashion-MNIST fail
instead of skip when it is missing.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
REPOSITORY = Path(__file__).resolve().parent.parent


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


@pytest.fixture
def real_fashion_mnist() -> Path:
    """Debian's copy of the real Fashion-MNIST; required in CI, skipped elsewhere when missing."""
    if not (REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        if os.environ.get("PHASES_REQUIRE_DATA") == "1":
            pytest.fail(f"PHASES_REQUIRE_DATA=1 but {REAL_FASHION_MNIST} is missing: "
                        "apt-get install dataset-fashion-mnist")
        pytest.skip(f"real Fashion-MNIST not installed in {REAL_FASHION_MNIST}")
    return REAL_FASHION_MNIST
