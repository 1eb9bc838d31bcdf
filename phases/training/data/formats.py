"""The official file formats of the real datasets, read into numpy arrays and checked as they are read.

MNIST and Fashion-MNIST come as IDX files (gzipped or not), CIFAR-10/100 as python batches (pickles,
read with an unpickler that admits only what the official batches contain). A file that is truncated
or not in its format raises DataFormatError naming the file and what is wrong.
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
from pathlib import Path

import numpy as np


class DataFormatError(ValueError):
    """A dataset file exists but is truncated or not in its official format."""


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
    """Roles `{train,test}_{images,labels}` -> their arrays, one IDX file each."""
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
