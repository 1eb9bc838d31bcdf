"""Download a real dataset's official files into paths.data_dir, verified, whole or not at all.

The file names, md5s and mirrors are torchvision's own (the dataset classes' `mirrors`/`resources`,
`url`/`filename`/`tgz_md5`), so there is no second copy of them here; the transfer and the extraction
are torchvision's `download_url` and `extract_archive`. What this module adds:

- sources: `paths.data_mirror` replaces the official mirrors, and `paths.data_checksums` (md5sum lines)
  replaces the official md5 of the files it lists;
- every file is verified before it is used, and a failure names the URL, the expected and the received md5;
- nothing half-written stays in the data folder: files are downloaded and extracted in a temporary
  folder inside paths.data_dir (same file system, so `os.replace` is atomic), verified, then moved into
  torchvision's layout; any failure or Ctrl-C removes the temporary folder;
- one download per dataset at a time: a lock file per dataset in paths.data_dir (`fcntl.flock`), so a
  second process waits, then finds the files the first one fetched.

Files keep torchvision's download layout: MNIST's .gz files and their extracted copies in
`<data_dir>/MNIST/raw/`, the CIFAR archive in `<data_dir>/` next to its extracted folder. A data folder
filled by torchvision or by this module, served over HTTP, is therefore a mirror for `paths.data_mirror`.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from phases.config.validation import ConfigError
from phases.training.data.sources import DATASETS, DataNotFoundError, locate_files, ways_to_get


@dataclass(frozen=True)
class OfficialFile:
    path: str  # where torchvision keeps it below its root, and so below paths.data_dir and paths.data_mirror
    md5: str
    urls: tuple[str, ...]  # the official mirrors' URLs, in torchvision's order


def official_files(name: str) -> list[OfficialFile]:
    """The files torchvision downloads for dataset `name`, read from its dataset class."""
    import torchvision.datasets  # heavy: only when something is fetched

    source = DATASETS[name]
    dataset_class = getattr(torchvision.datasets, source.torchvision_name)
    if hasattr(dataset_class, "resources"):  # MNIST, FashionMNIST: four .gz files, kept in <Name>/raw
        return [OfficialFile(f"{source.folder}/{file_name}", md5,
                             tuple(f"{mirror.rstrip('/')}/{file_name}" for mirror in dataset_class.mirrors))
                for file_name, md5 in dataset_class.resources]
    # CIFAR10, CIFAR100: one archive, kept in the root, holding the folder of python batches.
    return [OfficialFile(dataset_class.filename, dataset_class.tgz_md5, (dataset_class.url,))]


MD5SUM_LINE = re.compile(r"^([0-9a-fA-F]{32}) [ *](.+)$")  # md5sum's text (two spaces) and binary (" *") forms


def read_checksums(file_name: str | None) -> dict[str, str]:
    """paths.data_checksums as {file path: md5}; an unreadable file or a malformed line is a ConfigError."""
    if not file_name:
        return {}
    try:
        lines = Path(file_name).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError("paths.data_checksums", file_name,
                          f"a readable file of md5sum lines `<md5>  <file>` ({error})") from error
    checksums = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = MD5SUM_LINE.match(line.strip())
        if match is None:
            raise ConfigError("paths.data_checksums", file_name,
                              f"line {number} is {line!r}; expected md5sum lines `<32 hex digits>  <file>`")
        checksums[match.group(2).removeprefix("./")] = match.group(1).lower()
    return checksums


def sources_of(file: OfficialFile, paths: DictConfig, checksums: dict[str, str]) -> tuple[list[str], str, str]:
    """The URLs to try, in order, the md5 the file must have, and where that md5 comes from."""
    mirror = paths.get("data_mirror")
    urls = [f"{str(mirror).rstrip('/')}/{file.path}"] if mirror else list(file.urls)
    if file.path in checksums:
        return urls, checksums[file.path], f"listed in paths.data_checksums={paths.data_checksums}"
    return urls, file.md5, f"torchvision's official md5; list a re-packaged {file.path} in paths.data_checksums"


DOWNLOAD_TIMEOUT_SECONDS = 60  # of silence on a connection, not of a whole download


class FetchFailed(Exception):
    """One step of a fetch went wrong; the message says which and why (turned into FetchError)."""


class FetchError(DataNotFoundError):
    """A download that failed: the message says what failed and how else to get the files; `reason`, only
    what failed (each URL tried with its error, expected vs received md5), for a summary of several."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def download_verified(urls: list[str], md5: str, md5_origin: str, target: Path) -> None:
    """The first URL whose file has the expected md5, saved as `target`; every failure is reported."""
    from torchvision.datasets.utils import calculate_md5, download_url

    failures = []
    for url in urls:
        # torchvision's download_url opens the URL without a timeout: a mirror that accepts the connection
        # and never answers would hang the sweep before dispatch. The default applies to this thread's reads.
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)
        try:
            download_url(url, str(target.parent), target.name)
        except Exception as error:  # HTTPError, URLError, OSError, RuntimeError: all say the URL failed
            failures.append(f"  {url}: {type(error).__name__}: {error}")
            target.unlink(missing_ok=True)
            continue
        finally:
            socket.setdefaulttimeout(previous_timeout)
        received = calculate_md5(target)
        if received == md5:
            return
        failures.append(f"  {url}: wrong checksum: expected md5 {md5}, got {received} ({md5_origin})")
        target.unlink()
    raise FetchFailed("\n".join(failures))


def extract(archive: Path) -> None:
    """Unpack an archive (or decompress a .gz) next to itself, as torchvision does, but a tar archive
    with tarfile's "data" filter: a member with an absolute path, `..`, a link out of the folder or a
    device file is refused (a re-packaged archive listed in paths.data_checksums is trusted by md5 only)."""
    from torchvision.datasets.utils import extract_archive

    try:
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                tar.extractall(archive.parent, filter="data")
        else:
            extract_archive(str(archive), str(archive.parent))
    except Exception as error:  # tarfile.ReadError, gzip.BadGzipFile, EOFError, zlib.error, OSError
        raise FetchFailed(f"  {archive.name}: not a readable archive ({type(error).__name__}: {error})") from error


def download_into(name: str, paths: DictConfig, folder: Path) -> None:
    """Download, verify and extract every file of `name` into `folder`, laid out as paths.data_dir."""
    checksums = read_checksums(paths.get("data_checksums"))
    for file in official_files(name):
        urls, md5, md5_origin = sources_of(file, paths, checksums)
        target = folder / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        download_verified(urls, md5, md5_origin, target)
        extract(target)
    source = DATASETS[name]
    missing = [file_name for file_name in source.files.values() if not (folder / source.folder / file_name).is_file()]
    if missing:
        raise FetchFailed(f"  the downloaded files hold no {', '.join(missing)} in {source.folder}/")


def move_into_place(folder: Path, data_dir: Path) -> None:
    """Every finished file of `folder` to the same place below `data_dir`, each replaced atomically."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            destination = data_dir / path.relative_to(folder)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, destination)


@contextmanager
def dataset_lock(data_dir: Path, name: str) -> Iterator[None]:
    """Held while `name` is fetched into `data_dir`; a second process blocks here until the first is done.
    The lock file stays: removing it would let a third process lock a new file while the second holds the old."""
    with open(data_dir / f".fetch-{name}.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def temporary_prefix(name: str) -> str:
    return f".fetch-{name}-"


def fetch_dataset(name: str, paths: DictConfig) -> dict[str, Path]:
    """Download dataset `name` into paths.data_dir unless a searched folder holds it (once another process
    has fetched it, too): its files, as locate_files returns them. Raises DataNotFoundError saying what failed."""
    data_dir = Path(paths.data_dir)
    failure_intro = f"fetching dataset {name!r} into {data_dir / DATASETS[name].folder} failed"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with dataset_lock(data_dir, name):
            files = locate_files(name, paths)
            if files is not None:  # fetched by another process while this one waited for the lock
                return files
            # Left by a process killed mid-fetch (SIGKILL skips its cleanup); none is in use, as we hold the lock.
            for leftover in data_dir.glob(f"{temporary_prefix(name)}*"):
                shutil.rmtree(leftover, ignore_errors=True)
            folder = Path(tempfile.mkdtemp(prefix=temporary_prefix(name), dir=data_dir))
            try:
                download_into(name, paths, folder)
                move_into_place(folder, data_dir)
            finally:  # on success an empty tree; on any failure or Ctrl-C every half-written file
                shutil.rmtree(folder, ignore_errors=True)
    except FetchFailed as error:
        reason = str(error)
    except OSError as error:  # the data folder cannot be created, locked or written
        reason = f"  {type(error).__name__}: {error} (paths.data_dir must be a folder this user can write)"
    else:
        files = locate_files(name, paths)
        if files is not None:
            return files
        reason = "  the files were gone right after they were moved into place"  # removed by someone else
    raise FetchError(f"{failure_intro}; nothing was kept:\n{reason}\nOther ways to get it:\n"
                     + "\n".join(ways_to_get(name, paths)), reason)
