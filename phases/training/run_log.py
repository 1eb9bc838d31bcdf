"""What a run says, on the terminal and in its folder's run.log, through Python's logging.

Every module of the run logs to a child of the `phases` logger. That logger has its own terminal
handler (progress and news on stdout, warnings and errors on stderr, as plain lines) and does not pass
records up to the root logger: Hydra's console handler there (conf/config.yaml, job_logging: stdout)
would print each line a second time, on stdout only. While a run works in its folder, a file handler
appends the same lines, with their time, to `<run folder>/run.log`, so a resumed run continues the same
file and a failed run's error and traceback end up beside its run.json.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from phases.store.record import LOG_FILE

LOGGER = logging.getLogger("phases")
FILE_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class TerminalHandler(logging.Handler):
    """Plain lines on the terminal: warnings and errors on stderr, the rest on stdout. The streams are
    looked up at each line (a test's capture, a launcher's redirection replace them), and written
    through tqdm, which lifts a progress bar out of the way and draws it again below the line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            tqdm.write(self.format(record), file=stream)
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own rule: a line that cannot be shown never stops the run
            self.handleError(record)


class WithoutTraceback(logging.Formatter):
    """The message alone: on the terminal a traceback is shown by whoever re-raises the error (Hydra),
    or not at all (a sweep's failed job, whose traceback is in run.json and run.log)."""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


def terminal_logging() -> None:
    """Give the `phases` logger its terminal handler (once per process)."""
    if not any(isinstance(handler, TerminalHandler) for handler in LOGGER.handlers):
        handler = TerminalHandler()
        handler.setFormatter(WithoutTraceback())
        LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


terminal_logging()  # at import: whatever runs a run (the front door, a test, the bench) shows its lines

_depth = 0  # how many run_logging blocks are open: the outermost one closes run.log


@contextmanager
def run_logging() -> Iterator[None]:
    """The span of one run's log: a run.log opened inside it (open_run_log) is closed when the outermost
    such block ends. The front door's block encloses execute's, so its error messages, logged after the
    run gave up, still reach run.log; a sweep run by one process opens and closes one file per job."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            close_run_log()


def open_run_log(folder: Path) -> None:
    """Append this process's lines to `folder`/run.log from now until run_logging's block ends. A file
    that cannot be opened (a read-only folder) is said in one line and the run goes on without it: its
    run.json says what became of it."""
    close_run_log()
    try:
        handler = logging.FileHandler(folder / LOG_FILE, mode="a", encoding="utf-8")
    except OSError as error:
        LOGGER.warning(f"warning: cannot write {folder / LOG_FILE}: {error.strerror or error}; "
                       "the run goes on without its log file")
        return
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    LOGGER.addHandler(handler)


def close_run_log() -> None:
    for handler in [handler for handler in LOGGER.handlers if isinstance(handler, logging.FileHandler)]:
        LOGGER.removeHandler(handler)
        handler.close()
