"""Make datasets available before any run needs them: the data folder, Debian's system copy, else a download.

    python -m phases.fetch                                  # the default dataset (fashion_mnist)
    python -m phases.fetch dataset=cifar10,mnist paths.data_dir=/data
    python -m phases.fetch dataset=mnist paths.data_mirror=http://lab-server/torchvision-data

`dataset=a,b` is a comma list, as Hydra would sweep it: each dataset's config is composed with the
other overrides, and everything a run of it reads is fetched: the dataset (for a prototypes dataset,
its real `prototype_source`) and, when the dataset_switch transfer probe is enabled, its partner. A
folder of the user's own images (dataset=image_folder) is never fetched: it is checked, or reported missing.
Order: files already in paths.data_dir, Debian's system copy (below paths.system_data_dir), then the
download of the official files into paths.data_dir (phases.training.data.fetching: checksums verified,
whole or not at all, one process at a time). This command is the explicit way to fetch: it fetches even
where a config says dataset.download=false (which stops only runs from fetching).

`make_available` does the same for the composed config of every job of a sweep; phases/multirun.py
calls it before any job starts, so N jobs never race to download, and compute nodes without internet
find the files. Installing system packages is not done here: `make data` installs Debian's package
first when it can, and the errors name it for a dataset Debian ships.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from phases.config.compose import compose
from phases.config.probe_schema import TransferTask
from phases.config.validation import ConfigError, download_allowed
from phases.training.data import (
    DATASETS,
    USER_DATASETS,
    DataFormatError,
    DataNotFoundError,
    dataset_info,
    fetch_command,
    fetch_dataset,
    locate_files,
)
from phases.training.data.fetching import FetchError
from phases.training.data.sources import debian_way


def needed_datasets(cfg: DictConfig) -> list[str]:
    """The real datasets a run of `cfg` reads: its dataset (a prototypes dataset's real prototype_source),
    and its dataset_switch partner when that transfer task is enabled. A config the run itself will reject
    (an unknown dataset, a partner-less dataset_switch) adds nothing: the run's own error says why."""
    name = cfg.dataset.name
    needed = [name] if name in DATASETS else []
    if cfg.dataset.get("prototype_source") in DATASETS:
        needed.append(cfg.dataset.prototype_source)
    switching = "transfer" in cfg.probe.enabled and TransferTask.dataset_switch in list(cfg.probe.transfer.tasks)
    if switching and name in DATASETS and DATASETS[name].transfer_partner:
        needed.append(DATASETS[name].transfer_partner)
    return needed


@dataclass
class Need:
    """One dataset in one data folder, and what the jobs needing it allow."""

    name: str
    paths: DictConfig  # the first job's: the folders searched and written, the mirror and checksums
    offline_jobs: int = 0  # jobs saying dataset.download=false: the dataset is not fetched for them
    reason: str = ""  # why it is still missing, once it is
    folder: Path = field(init=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.paths.data_dir) / DATASETS[self.name].folder


def collect_needs(configs: list[DictConfig]) -> list[Need]:
    """Every (dataset, data folder) the jobs read, once each, in the order the jobs first name them."""
    needs: dict[tuple, Need] = {}
    for cfg in configs:
        offline = not download_allowed(cfg.dataset.download)
        paths = cfg.paths
        for name in needed_datasets(cfg):
            key = (name, str(paths.data_dir), str(paths.get("system_data_dir")))
            need = needs.setdefault(key, Need(name, paths))
            need.offline_jobs += offline
    return list(needs.values())


def check_user_datasets(configs: list[DictConfig]) -> list[str]:
    """The user's own datasets the jobs read (dataset=image_folder) are never fetched: each is listed and
    checked here, once per distinct dataset config, so a missing or malformed folder stops a sweep before
    dispatch (DataNotFoundError, DataFormatError or ConfigError naming the key and the folder)."""
    lines: dict[str, str] = {}
    for cfg in configs:
        key = OmegaConf.to_yaml(cfg.dataset)
        if cfg.dataset.name in USER_DATASETS and key not in lines:
            info = dataset_info(cfg.dataset)
            lines[key] = (f"{cfg.dataset.name}: {info.classes} classes, read from "
                          f"{Path(cfg.dataset.root).expanduser().resolve()} (never fetched)")
    return list(dict.fromkeys(lines.values()))


def make_available(configs: list[DictConfig]) -> list[str]:
    """Make every real dataset the jobs of `configs` read available, each fetched at most once (and only
    when no job needing it says dataset.download=false). Returns what was done, a line per dataset, for
    the caller to print (this prints nothing; a download shows torchvision's progress bar on stderr).
    Raises DataNotFoundError with one message for all the datasets still missing; before fetching anything,
    the user's image folders are checked (check_user_datasets), each error naming its key and folder."""
    lines, missing = check_user_datasets(configs), []
    for need in collect_needs(configs):
        files = locate_files(need.name, need.paths)
        if files is not None:
            lines.append(f"{need.name}: using {next(iter(files.values())).parent}")
            continue
        if need.offline_jobs:
            need.reason = f"not fetched: dataset.download=false in {need.offline_jobs} of the jobs that need it"
            missing.append(need)
            continue
        try:
            fetch_dataset(need.name, need.paths)
        except FetchError as error:
            need.reason = f"fetching it failed:\n{textwrap.indent(error.reason, '  ')}"
            missing.append(need)
            continue
        except DataNotFoundError as error:
            need.reason = f"fetching it failed: {error}"
            missing.append(need)
            continue
        lines.append(f"{need.name}: fetched into {need.folder}")
    if missing:
        raise DataNotFoundError(missing_message(missing))
    return lines


def missing_message(missing: list[Need]) -> str:
    """One message for every missing dataset: the folder expected for each, why, and the command to fetch them."""
    described = "\n".join(f"  {need.name}: expected in {need.folder}; {need.reason}" for need in missing)
    groups: dict[tuple, list[Need]] = {}  # one command per data folder (and mirror), in the usual case one
    for need in missing:
        paths = need.paths
        groups.setdefault((str(paths.data_dir), paths.get("data_mirror"), paths.get("data_checksums")), []).append(need)
    commands = [f"  {fetch_command([need.name for need in group], group[0].paths)}" for group in groups.values()]
    debian = [line for need in missing if (line := debian_way(need.name, need.paths))]
    count = f"{len(missing)} dataset{'s' if len(missing) > 1 else ''}"
    return (f"{count} the jobs need {'are' if len(missing) > 1 else 'is'} missing:\n{described}\n"
            f"Fetch {'them' if len(missing) > 1 else 'it'} without training (downloads the official files, checksums "
            f"verified; paths.data_mirror=<url> for a mirror of your own):\n" + "\n".join(commands)
            + ("\nor install Debian's copy:\n" + "\n".join(debian) if debian else "")
            + "\nor put the official files in the folders above.")


def split_datasets(overrides: list[str]) -> tuple[list[str | None], list[str]]:
    """(`dataset=a,b` as [a, b], or [None] for the default dataset; the other overrides)."""
    names: list[str | None] = [None]
    others = []
    for override in overrides:
        if override.startswith("dataset="):
            # Empty names are kept, so `dataset=` or `dataset=a,` fails in compose, naming the override.
            names = [name.strip() for name in override.removeprefix("dataset=").split(",")]
        else:
            others.append(override)
    return names, others


def main(overrides: list[str]) -> int:
    names, others = split_datasets(overrides)
    try:
        configs = [compose([*others, *([f"dataset={name}"] if name is not None else [])]) for name in names]
        for cfg in configs:
            download_allowed(cfg.dataset.download)  # ignored here, but a misspelt value is still a mistake
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # Hydra's and our config errors have many types; each is about an override
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    for cfg in configs:
        cfg.dataset.download = True  # asked for explicitly: fetch even where a config says false
        if not needed_datasets(cfg) and cfg.dataset.name not in USER_DATASETS:
            print(f"{cfg.dataset.name}: generated in memory, nothing to fetch")
    try:
        lines = make_available(configs)
    except (ConfigError, DataNotFoundError, DataFormatError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0


def console() -> None:
    """The `phases-fetch` console script: overrides as arguments, `--help` for this text."""
    arguments = sys.argv[1:]
    if any(argument in ("-h", "--help") for argument in arguments):
        print(f"usage: phases-fetch [dataset=a,b] [paths.data_dir=DIR] [other overrides]\n{__doc__}")
        sys.exit(0)
    sys.exit(main(arguments))


if __name__ == "__main__":
    console()
