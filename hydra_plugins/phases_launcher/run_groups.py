"""k runs in one SLURM job (`hydra/launcher=slurm hydra.launcher.runs_per_device=k`): the jobs of a sweep are
packed k at a time into one submitit job, whose allocation (its GPU, its cores) the k runs share, each in its
own process started by the job.

SLURM gives each job its own GPU, so packing is the one way k runs share a card without a cluster set up for
GPU sharing (MPS, gres shards). A run group behaves like one job towards submitit: preemption or a timeout
(SIGUSR2) requeues the whole group through `checkpoint`; SLURM then stops every process of the job with
SIGTERM, each run checkpoints on its own, and the requeued group starts the k runs again, each resuming
from its checkpoint (a finished run is skipped by the run itself).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle
from hydra.core.utils import JobReturn, JobStatus

log = logging.getLogger(__name__)


def run_in_process(call: bytes, results: Connection) -> None:
    """One run of the group, in its own process. cloudpickle both ways: the task function may be the
    submitting script's `__main__.main`, which plain pickle cannot name in another process."""
    # SLURM signals every process of the job. USR2 is submitit's cue to requeue, handled by the group's own
    # process; its default action would kill a run before it could checkpoint on the SIGTERM that follows.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    function, arguments = cloudpickle.loads(call)
    try:
        outcome: tuple[bool, Any] = (True, function(*arguments))
    except BaseException as error:  # noqa: BLE001 - handed to the group, which reports it for this run
        outcome = (False, error)
    results.send_bytes(cloudpickle.dumps(outcome))


class RunGroup:
    """The callable submitted once per group: runs `function(*arguments)` for each call at once, each in a
    fresh (spawned) process of its own, and returns their results in order."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function

    def __call__(self, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        cores = len(os.sched_getaffinity(0))
        # The runs share the job's cores: oversubscribed OpenMP threads slow every run (see LocalLauncher).
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // len(calls))))
        context = multiprocessing.get_context("spawn")  # no forked CUDA or thread-pool state
        started = []
        for call in calls:
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=run_in_process, args=(cloudpickle.dumps((self.function, tuple(call))),
                                                                    sender))
            process.start()
            sender.close()  # the child's copy alone stays open: its exit ends the parent's wait (EOFError)
            started.append((process, receiver))
        return [self.result(process, receiver) for process, receiver in started]

    @staticmethod
    def result(process: Any, receiver: Connection) -> Any:
        try:
            succeeded, value = cloudpickle.loads(receiver.recv_bytes())
        except EOFError:  # killed, out of memory: it never answered
            succeeded, value = False, None
        process.join()
        if succeeded:
            return value
        reason = value if value is not None else f"its process ended with exit code {process.exitcode}"
        log.error(f"a run of this job ended without a result: {reason}")
        # COMPLETED, as for a whole job that died (HandedBackJob): the sweep goes on; its summary reports it.
        return JobReturn(status=JobStatus.COMPLETED)

    def checkpoint(self, calls: Sequence[tuple[Any, ...]]) -> Any:
        """submitit's requeue hook: the same group again; each run resumes from its own checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, calls)


def in_groups(calls: list[tuple[Any, ...]], size: int) -> list[list[tuple[Any, ...]]]:
    return [calls[start : start + size] for start in range(0, len(calls), size)]
