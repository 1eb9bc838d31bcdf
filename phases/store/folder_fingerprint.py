"""Which image files a folder holds, and a fingerprint of that list: what a run id hashes for `dataset.root`.

A folder of the user's own images (`dataset=image_folder`) is named by a path, and a path says neither
what the folder holds nor that it still holds it. The run id therefore hashes this fingerprint instead:
the sorted relative names, sizes and modification times (in nanoseconds, as the filesystem keeps them)
of the image files below the folder. Two folders written apart get different ids, even with the same
names and sizes; the same folder moved or renamed (`mv`, `cp -a`, `rsync -a`) keeps its id; an image
added, removed or rewritten gives a new id, so a finished run is never taken for one on other data. A
plain `cp -r` copy, or one onto a filesystem with coarser times, gets new times and so a new id: the
cautious side. Only file metadata is read (one `stat` per file), never the pixels. Torch-free, as the
whole store.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# torchvision.datasets.folder.IMG_EXTENSIONS (a test checks they agree), spelt out here so that the run
# id does not import torch. Matched case-insensitively, as torchvision does.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_hidden(name: str) -> bool:
    """Names starting with a dot (`.DS_Store`, `.ipynb_checkpoints`, this project's cache) are not data."""
    return name.startswith(".")


def image_files(folder: Path) -> list[Path]:
    """The image files anywhere below `folder`, sorted by their path relative to it; hidden files and
    folders skipped, folder links followed (as torchvision's ImageFolder does)."""
    found = []
    for parent, folders, files in os.walk(folder, followlinks=True):
        folders[:] = [name for name in folders if not is_hidden(name)]  # os.walk descends only into these
        found += [Path(parent) / name for name in files
                  if not is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def folder_fingerprint(root: str) -> str:
    """16 hex digits over the relative name, size and mtime of every image file below `root`; for a path
    that is no folder, a marker naming it (the run then fails on it before writing anything)."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        return f"not a folder: {folder.resolve()}"
    digest = hashlib.sha256()
    for path in image_files(folder):
        status = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\t{status.st_size}\t{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
