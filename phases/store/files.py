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
        # mkstemp makes the file private (0600); a result file gets the mode any new file would, so a
        # lab's shared outputs folder (report.html, figures, metrics) stays readable by the group.
        os.chmod(temporary, 0o666 & ~CURRENT_UMASK)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(text))


def write_json(path: Path, content: dict[str, Any]) -> None:
    write_text(path, json.dumps(content, indent=2, sort_keys=True) + "\n")
