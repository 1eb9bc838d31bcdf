"""Where a run stands, read from its folder alone: what `phases.sweep` lists and `phases.status` shows.

Torch- and Hydra-free, so that a status command answers at once. Nothing here waits: the lock of a run
is only tried (is_crashed), and a run.json that is not a plain file (a pipe) is never opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from phases.store.record import CHECKPOINT_FILE, LOCK_FILE, RECORD_FILE, RunRecord, RunStatus, is_crashed

ERROR_LINES = 10  # of an error's reason: the first lines say what is wrong (and list the options)
# Lines of Hydra's and OmegaConf's errors that say where in the config or in Hydra it happened, not what.
NOT_REASONS = ("full_key:", "reference_type=", "object_type=", "Config search path", "provider=", "See https://")


def paragraph(error: BaseException | None) -> str:
    """An error's reason as one line: its lines and its causes' (Hydra chains the reason it got from
    OmegaConf), without the lines that only say where in the config or in Hydra it happened."""
    lines: list[str] = []
    while error is not None:
        for line in (line.strip() for line in str(error).splitlines()):
            if line and not line.startswith(NOT_REASONS) and not any(line in seen for seen in lines):
                lines.append(line)
        error = error.__cause__
    return " ".join(lines[:ERROR_LINES])


def duration(seconds: float) -> str:
    """2 h 05 min, 3 min 12 s, 41 s."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def read_record(folder: Path) -> tuple[RunRecord | None, str]:
    """(the folder's run record, "") ; (None, "") when it has no run.json yet; (None, why) when its
    run.json cannot be read as one."""
    if not (folder / RECORD_FILE).exists():
        return None, ""
    if not (folder / RECORD_FILE).is_file():  # reading a pipe planted there would wait forever
        return None, f"{RECORD_FILE} is not a plain file"
    try:
        return RunRecord.read(folder), ""
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: JSON nested too deep
        return None, f"{RECORD_FILE}: {paragraph(error)}"


def crashed(folder: Path, record: RunRecord) -> bool:
    try:
        return is_crashed(folder, record)
    except OSError:  # a lock that cannot be opened tells nothing: the recorded status stands
        return False


def job_status(folder: Path) -> tuple[str, str]:
    """(status, detail) of one job's run folder, as a sweep lists it: pending, unreadable, done, failed,
    crashed, running, or partly done (a rerun resumes it from its checkpoint)."""
    record, problem = read_record(folder)
    if record is None:
        return ("unreadable", problem) if problem else ("pending", "")
    if record.status == RunStatus.done:
        return "done", ""
    if record.status == RunStatus.failed:
        return "failed", str(record.error or "")
    resumes = ""
    if (folder / CHECKPOINT_FILE).is_file():
        resumes = f" after step {'?' if record.steps_evaluated is None else record.steps_evaluated}"
    if crashed(folder, record):
        return "crashed", f"crashed: rerun the same command to resume{resumes}"
    if record.status == RunStatus.running and (folder / LOCK_FILE).is_file():  # and its lock is held
        return "running", "its process is running it now"
    if resumes:
        return "partly done", f"resumes{resumes}"
    return "pending", f"an earlier attempt stopped ({record.status.value})"


@dataclass
class RunState:
    """A run as `phases.status` shows it: its status, one line saying more, and its record when readable."""

    status: str  # pending, unreadable, done, failed, running, crashed or interrupted
    detail: str
    record: RunRecord | None


def run_state(folder: Path) -> RunState:
    """The recorded status, with `running` told apart: running while its process holds the folder's
    lock, crashed once that process is gone without saying so (a rerun resumes it)."""
    record, problem = read_record(folder)
    if record is None:
        return RunState("unreadable" if problem else "pending", problem, None)
    if record.status == RunStatus.failed:
        first_line = (record.error or "").strip().splitlines()
        return RunState("failed", first_line[0] if first_line else "", record)
    if record.status == RunStatus.running:
        if (folder / LOCK_FILE).is_file() and not crashed(folder, record):
            return RunState("running", "", record)
        return RunState("crashed", "rerun the same command to resume", record)
    if record.status == RunStatus.interrupted:
        return RunState("interrupted", "rerun the same command to resume", record)
    return RunState(record.status.value, "", record)
