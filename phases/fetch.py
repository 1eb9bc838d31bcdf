"""Make a dataset available: files already in the data folder, Debian's system copy, else a download.

    python -m phases.fetch                          # the default dataset (fashion_mnist)
    python -m phases.fetch dataset=mnist paths.data_dir=/data

Order: files already in paths.data_dir, Debian's system copy (below paths.system_data_dir), then
torchvision's download into paths.data_dir (checksums verified). Installing system packages is not
done here: `make data` installs Debian's package first when it can (root, apt-get), and when the
download fails the error says which package to install for a dataset Debian ships.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from phases.config.compose import compose
from phases.training.data import DATASETS, GENERATED_DATASETS, DataNotFoundError, download, locate_files


def ensure_available(name: str, paths: DictConfig) -> Path:
    """The folder holding the dataset's files, downloading them when no searched folder does."""
    files = locate_files(name, paths)
    if files is None:
        print(f"downloading {name} through torchvision into {paths.data_dir}", flush=True)
        download(name, paths)  # its error lists every way to get the files, Debian's package first
        files = locate_files(name, paths)
    if files is None:  # a download that reported success but left no readable files
        raise DataNotFoundError(f"{name}: files still missing after the download into {paths.data_dir}")
    return files["train_images"].parent


def main(overrides: list[str]) -> int:
    cfg = compose(overrides)
    name = cfg.dataset.name
    if name in GENERATED_DATASETS:
        # Drawn in memory at each run; only a real dataset whose class means are the prototypes is read.
        if cfg.dataset.prototype_source not in DATASETS:
            print(f"{name}: generated in memory, nothing to fetch")
            return 0
        name = cfg.dataset.prototype_source
    if name not in DATASETS:
        print(f"error: dataset.name={name!r} cannot be fetched; known: {', '.join(sorted(DATASETS))}",
              file=sys.stderr)
        return 2
    try:
        folder = ensure_available(name, cfg.paths)
    except DataNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{name}: using {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
