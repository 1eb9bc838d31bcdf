"""Make a dataset available the first way that works; `make demo` calls it before training.

    python -m phases.fetch                          # the default dataset (fashion_mnist)
    python -m phases.fetch dataset=mnist paths.data_dir=/data

Order: files already in paths.data_dir, Debian's system copy, Debian's package (installed with
apt-get when running as root on Debian), then torchvision's download (checksums verified).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from phases.config import CONFIG_DIR
from phases.data import DATASETS, GENERATED_DATASETS, DataNotFoundError, download, locate_files


def install_debian_package(package: str) -> bool:
    """apt-get install as root on Debian; refreshes the package lists first, as a new machine needs."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    print(f"installing Debian's {package} with apt-get", flush=True)
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=environment)
    return subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False, env=environment).returncode == 0


def ensure_available(name: str, paths: DictConfig) -> Path:
    """The folder holding the dataset's files, fetching them when none does."""
    files = locate_files(name, paths)
    package = DATASETS[name].debian_package
    if files is None and package and paths.system_data_dir and install_debian_package(package):
        files = locate_files(name, paths)
    if files is None:
        print(f"downloading {name} through torchvision into {paths.data_dir}", flush=True)
        download(name, paths)
        files = locate_files(name, paths)
    if files is None:  # a download that reported success but left no readable files
        raise DataNotFoundError(f"{name}: files still missing after the download into {paths.data_dir}")
    return files["train_images"].parent


def main(overrides: list[str]) -> int:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
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
