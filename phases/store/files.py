"""Atomic file writes: every result file is written to a temporary name and renamed into place."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


CURRENT_UMASK = _current_umask()


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temporary_path)` then rename it over `path`: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        write(Path(temporary))
        # On disk before the rename: after a crash of the machine, `path` is the old file or the
        # complete new one, never a new name on missing data.
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); a result file gets the mode any new file would, so a
        # lab's shared outputs folder (report.html, figures, metrics) stays readable by the group.
        os.chmod(temporary, 0o666 & ~CURRENT_UMASK)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_temporary_files(folder: Path) -> list[str]:
    """Remove the temporary files write_atomically leaves in `folder` when its process is killed
    mid-write (`.<name>.<random>.tmp`); their names. Only for the process that alone writes there (a
    run folder's lock holder): another one's write in progress would lose its file."""
    removed = []
    for path in sorted(folder.glob(".*.tmp")):
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(text))


def write_json(path: Path, content: dict[str, Any]) -> None:
    write_text(path, json.dumps(content, indent=2, sort_keys=True) + "\n")


def writable_folder_problem(folder: Path) -> str | None:
    """Why files could not be written in `folder`, or None; creates nothing. Checked before a run
    loads its data, so a read-only or file-shaped outputs path fails at once, not after minutes."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the folders below it would be created by the run
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-check.", suffix=".tmp"):
            pass
    except OSError as error:
        return f"{error.strerror or error}: {existing}"
    return None
