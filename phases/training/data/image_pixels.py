"""The pixels of an image folder: channel counts from the file headers, decoding, resizing, normalisation statistics.

Images are decoded with PIL one at a time and resized in chunks of at most CHUNK_BYTES of decoded pixels,
so a folder of large photos never holds more than one chunk of them besides the resized tensor. Within a
chunk, images of one size are resized together by splits.resize_images, with the configured
`dataset.resize`: every image, whatever its size, is stretched to image_size x image_size (its aspect
ratio is not kept: crop the images first where it matters). `spline` is the published script's upsampling
(no antialiasing); to shrink large photos, `bilinear` (antialiased) is the better choice.

The normalisation statistics (dataset.mean/std null) are the per-channel mean and standard deviation of
the whole training split after resizing, cached in `<root>/.phases_normalisation.json` under a key of the
folder's fingerprint and the settings that change the pixels; a folder this user cannot write gets them
recomputed at every load, said once per process in the log.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from phases.store.files import writable_folder_problem, write_json
from phases.store.folder_fingerprint import folder_fingerprint
from phases.training.data.formats import DataFormatError
from phases.training.data.splits import resize_images

LOGGER = logging.getLogger(__name__)
GRAYSCALE_MODES = ("1", "L", "LA")  # PIL's one-channel modes (LA: with alpha, dropped)
# 16-bit and float pixels: PIL's conversion to 8 bits clips them instead of scaling, so they are refused.
WIDE_MODES = ("I", "F")
CHUNK_BYTES = 256 * 2**20  # decoded pixels held at once before resizing, in bytes
STATISTICS_FILE = ".phases_normalisation.json"  # hidden: never taken for data, nor fingerprinted
_uncached_roots: set[str] = set()  # roots whose statistics could not be cached, said once per process


def unreadable(path: Path, error: Exception) -> DataFormatError:
    return DataFormatError(f"{path}: cannot be read as an image ({type(error).__name__}: {error}); "
                           "replace the file or remove it from the folder")


def image_mode(path: Path) -> str:
    """The PIL mode (L, RGB, RGBA, P, ...) from the file's header, without decoding its pixels."""
    try:
        with Image.open(path) as image:
            return image.mode
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise unreadable(path, error) from error


def channels_of(files: list[Path]) -> int:
    """1 when every image is grayscale (PIL modes 1, L, LA), else 3: a colour image anywhere makes the
    folder RGB, and its grayscale images are repeated over the three channels."""
    return 1 if all(image_mode(path) in GRAYSCALE_MODES for path in files) else 3


def decode(path: Path, channels: int) -> np.ndarray:
    """uint8 (H, W) for 1 channel, (H, W, 3) for 3: PIL's conversion to L (luma) or RGB, which also drops
    alpha and expands palettes."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            pixels = None if mode.startswith(WIDE_MODES) else np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise unreadable(path, error) from error
    if pixels is None:
        raise DataFormatError(f"{path}: {mode} pixels (16-bit or float) are not read: PIL would clip them to 8 "
                              "bits; save the image with 8 bits per channel (grayscale L, RGB or RGBA)")
    return pixels


def resized_chunks(files: list[Path], channels: int, dataset_cfg: DictConfig) -> Iterator[torch.Tensor]:
    """float32 (n, channels, size, size) in [0, 1], chunk after chunk, in the order of `files`."""
    chunk: list[np.ndarray] = []
    held = 0
    for index, path in enumerate(files):
        chunk.append(decode(path, channels))
        held += chunk[-1].nbytes
        if held >= CHUNK_BYTES or index == len(files) - 1:
            yield resize_chunk(chunk, channels, dataset_cfg)
            chunk, held = [], 0


def resize_chunk(images: list[np.ndarray], channels: int, dataset_cfg: DictConfig) -> torch.Tensor:
    """Images of any sizes -> one tensor: those of one size resized together (the spline's matrices are per size)."""
    size = dataset_cfg.image_size
    resized = torch.empty(len(images), channels, size, size)
    positions_by_shape: dict[tuple[int, ...], list[int]] = {}
    for position, image in enumerate(images):
        positions_by_shape.setdefault(image.shape, []).append(position)
    for positions in positions_by_shape.values():
        resized[positions] = resize_images(np.stack([images[position] for position in positions]), dataset_cfg)
    return resized


def resized_pixels(files: list[Path], channels: int, dataset_cfg: DictConfig) -> torch.Tensor:
    """Every image of `files` decoded and resized: float32 (N, channels, size, size) in [0, 1]."""
    size = dataset_cfg.image_size
    pixels = torch.empty(len(files), channels, size, size)
    filled = 0
    for chunk in resized_chunks(files, channels, dataset_cfg):
        pixels[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
    return pixels


def statistics(chunks: Iterator[torch.Tensor]) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation over every pixel of every chunk, summed in float64."""
    total = squares = count = 0
    for chunk in chunks:
        values = chunk.double().transpose(0, 1).flatten(1)  # (channels, pixels)
        total, squares, count = total + values.sum(1), squares + values.square().sum(1), count + values.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp(min=0).sqrt()
    return mean.tolist(), std.tolist()


def statistics_key(dataset_cfg: DictConfig, channels: int) -> str:
    """What the training split's resized pixels depend on: the folder's files and the settings that
    change them or the split (class_subset and the sizes do not: the statistics cover the whole split)."""
    settings = {"files": folder_fingerprint(str(dataset_cfg.root)), "image_size": dataset_cfg.image_size,
                "resize": str(getattr(dataset_cfg.resize, "value", dataset_cfg.resize)), "channels": channels,
                "test_fraction": dataset_cfg.test_fraction}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def read_cache(path: Path) -> dict:
    """The cache file's entries; an unreadable or foreign file counts as empty (it is rewritten)."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def training_statistics(dataset_cfg: DictConfig, channels: int, training_files: list[Path],
                        loaded: torch.Tensor | None) -> tuple[list[float], list[float]]:
    """The normalisation of the whole training split: from the cache, else from `loaded` (its resized
    pixels, when the run loaded all of them) or by decoding `training_files` chunk by chunk; then cached."""
    root = Path(dataset_cfg.root).expanduser()
    cache_path, key = root / STATISTICS_FILE, statistics_key(dataset_cfg, channels)
    entries = read_cache(cache_path)
    cached = entries.get(key)
    if isinstance(cached, dict) and {"mean", "std"} <= set(cached):
        return cached["mean"], cached["std"]
    # In slices: statistics() sums in float64, which would double a whole split's memory at once.
    chunks = iter(loaded.split(1024)) if loaded is not None else resized_chunks(training_files, channels, dataset_cfg)
    mean, std = statistics(chunks)
    if 0.0 in std:
        raise DataFormatError(f"{root}: channel {std.index(0.0)} of the training images is constant (standard "
                              "deviation 0), so it cannot be normalised; give dataset.mean and dataset.std")
    problem = writable_folder_problem(root)
    if problem is None:
        entries[key] = {"mean": mean, "std": std, "images": len(training_files), "image_size": dataset_cfg.image_size,
                        "channels": channels}
        try:
            write_json(cache_path, entries)
        except OSError as error:
            problem = str(error)
    if problem is not None and str(root) not in _uncached_roots:
        _uncached_roots.add(str(root))
        LOGGER.warning(f"dataset.root={dataset_cfg.root}: the normalisation statistics are not cached ({problem}); "
                       "they are computed at every load (give dataset.mean and dataset.std to skip that)")
    return mean, std
