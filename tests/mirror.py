"""A local stand-in for the datasets' download mirrors: generated files, official names, an HTTP server.

    checksums = write_mirror(tmp_path / "mirror", ["mnist", "cifar10"])
    with serve(tmp_path / "mirror") as url:
        run with paths.data_mirror=<url> paths.data_checksums=<checksums>

The files lie where torchvision's download keeps them below its root, which is the path below
`paths.data_mirror` that phases.training.data.fetching requests: `MNIST/raw/*.gz`,
`FashionMNIST/raw/*.gz` (the four official IDX .gz files), `cifar-10-python.tar.gz` and
`cifar-100-python.tar.gz` (tar archives of the python batches' folder). Their content is small and
generated (tests/conftest.py), so their md5s are not the official ones: the checksums file, md5sum
lines for every file of the mirror, replaces them.
"""

from __future__ import annotations

import hashlib
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import DATASET_FOLDERS, write_cifar, write_mnist_like

CHECKSUMS = "checksums.md5"
# The archive torchvision downloads for each CIFAR dataset, and the folder it unpacks to.
CIFAR_ARCHIVES = {"cifar10": ("cifar-10-python.tar.gz", 10), "cifar100": ("cifar-100-python.tar.gz", 100)}


def write_mirror(folder: Path, datasets: list[str], train: int = 60, test: int = 30) -> Path:
    """Small generated copies of `datasets` (mnist, fashion_mnist, cifar10, cifar100) in `folder`, under
    their official names and places; returns the checksums file (md5sum lines of every file in `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(datasets):
        if name in CIFAR_ARCHIVES:
            archive, classes = CIFAR_ARCHIVES[name]
            with tempfile.TemporaryDirectory() as build:
                batches = write_cifar(Path(build) / DATASET_FOLDERS[name], classes, train=train, test=test, seed=index)
                with tarfile.open(folder / archive, "w:gz") as tar:
                    tar.add(batches, arcname=batches.name)
        else:  # MNIST-like: the four IDX files, gzipped as distributed; a seed per dataset, so they differ
            write_mnist_like(folder / DATASET_FOLDERS[name], train=train, test=test, seed=index, gzipped=True)
    return write_checksums(folder)


def write_checksums(folder: Path) -> Path:
    """(Re)write `folder`/checksums.md5 for every other file in it, as `md5sum` prints them from `folder`."""
    lines = [f"{hashlib.md5(path.read_bytes()).hexdigest()}  {path.relative_to(folder).as_posix()}"
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != CHECKSUMS]
    checksums = folder / CHECKSUMS
    checksums.write_text("\n".join(lines) + "\n")
    return checksums


@contextmanager
def serve(folder: Path, requests: list[str] | None = None, delay: float = 0.0) -> Iterator[str]:
    """Serve `folder` over HTTP on 127.0.0.1 (a free port) from a thread, without logging; yields the base
    URL. Every request's path is appended to `requests` when given (to count downloads); `delay` seconds
    before each answer make concurrent fetches overlap."""

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def do_GET(self):
            if requests is not None:
                requests.append(self.path)
            time.sleep(delay)
            try:
                super().do_GET()
            except (BrokenPipeError, ConnectionResetError):  # torchvision's redirect check opens each URL
                pass  # and closes it unread before downloading it

        def log_message(self, *args):  # quiet: no line per request on stderr
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
