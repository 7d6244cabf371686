"""Writes that leave a trial's critical path: one background thread, jobs in order.

A trial's plots, sample pages and tables take a second or more to render and store (PNG
rendering, one artifact upload per file), while the next trial's training could already run;
on a GPU that second is launch time the card spends idle. The study hands such writes to a
``BackgroundWriter`` and goes on. Nothing is lost when the process dies with jobs still
queued: a job only renders what the trial already recorded durably (Optuna's trial
attributes), and the study redoes any job whose trial's MLflow run was left unfinished
(``gpt2ft.study.replay_unlogged``).

No framework is imported here; a job is any callable.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, Optional

log = logging.getLogger(__name__)

#: Jobs that may wait at once. A slow writer then holds the trial loop back (backpressure)
#: instead of piling up results in memory, and a killed process has at most this many to redo.
MAX_PENDING = 2


class BackgroundWriter:
    """A FIFO of jobs run by one daemon thread. ``submit`` returns at once (it blocks only
    while ``MAX_PENDING`` jobs wait) with the job's ``Future``; ``drain`` waits until every
    submitted job has ended. A job that raises is logged and counted, and re-raised only to
    whoever asks its future for the result."""

    def __init__(self, max_pending: int = MAX_PENDING):
        self._jobs: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread: Optional[threading.Thread] = None
        self.failed: list[str] = []
        self.done = 0
        self.busy_seconds = 0.0
        self.blocked_seconds = 0.0
        """Time ``submit`` waited for room: the writer's share of the critical path."""

    def submit(self, job: Callable[[], None], name: str = "job") -> Future:
        if self._thread is None or not self._thread.is_alive():
            # Daemon: a process that is told to stop does not wait for its pending writes
            # (they are redone on the next run), and an idle writer never keeps it alive.
            self._thread = threading.Thread(target=self._loop, name="gpt2ft-writer", daemon=True)
            self._thread.start()
        t = time.perf_counter()
        future: Future = Future()
        self._jobs.put((name, job, future))
        self.blocked_seconds += time.perf_counter() - t
        return future

    def drain(self) -> None:
        """Wait for every job submitted so far."""
        if self._thread is not None:
            self._jobs.join()

    def _loop(self) -> None:
        while True:
            name, job, future = self._jobs.get()
            t = time.perf_counter()
            try:
                future.set_result(job())
                self.done += 1
            except Exception as exc:  # a failed write must not end the study
                self.failed.append(name)
                future.set_exception(exc)
                log.warning("background write %s failed (%s: %s)", name, exc.__class__.__name__, exc)
            finally:
                self.busy_seconds += time.perf_counter() - t
                self._jobs.task_done()
