"""Writes that leave a trial's critical path: one background thread and one writer process.

A trial's plots, sample pages and tables take a second or more to render and store (PNG
rendering, one artifact upload per file), while the next trial's training could already run;
on a GPU that second is launch time the card spends idle. The study hands such writes to a
``BackgroundWriter`` and goes on:

* ``submit_remote``: Python-heavy work (matplotlib, MLflow's SQLAlchemy) goes to one writer
  process (``python -m gpt2ft.writer``: a fresh interpreter that re-runs no caller's script,
  as multiprocessing's spawn would, and ends when this process's pipe closes, killed or
  not). In a thread it would hold the GIL that every PyTorch call of the training loop must
  take back (measured on this CPU: a GIL-bound thread made a small model's steps 14x slower,
  a process beside it 5%; see the README).
* ``submit``: work that needs this process's objects (a checkpoint of the model in memory,
  mostly tensor I/O) goes to one daemon thread.

Nothing is lost when the process dies with jobs still queued: a job only stores what the
trial already recorded durably (Optuna's trial attributes), and the study redoes any job
whose trial's MLflow run was left unfinished (``gpt2ft.study.replay_unlogged``).

No framework is imported here; a job is any callable (a remote one must be picklable).
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any, BinaryIO, Callable, Optional

log = logging.getLogger(__name__)

#: Jobs that may wait at once in each lane. A slow writer then holds the trial loop back
#: (backpressure) instead of piling up results in memory, and a killed process has at most
#: this many to redo.
MAX_PENDING = 2
_HEADER = struct.Struct("!Q")  # the length of each pickled message on the writer process's pipes


def _read_message(stream: BinaryIO) -> Optional[Any]:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    return pickle.loads(stream.read(_HEADER.unpack(head)[0]))


def _write_message(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


class _WriterProcess:
    """One ``python -m gpt2ft.writer`` child: jobs go down its stdin as pickles, results come
    back on its stdout in the same order, and a reader thread settles their futures."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "gpt2ft.writer"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.pending: collections.deque = collections.deque()
        self.lock = threading.Lock()
        threading.Thread(target=self._read, name="gpt2ft-writer-results", daemon=True).start()

    def submit(self, fn: Callable[..., Any], args: tuple) -> Future:
        future: Future = Future()
        with self.lock:
            try:
                _write_message(self.proc.stdin, (fn, args))
            except (BrokenPipeError, OSError) as exc:
                future.set_exception(RuntimeError(f"the writer process has ended ({exc.__class__.__name__})"))
                return future
            self.pending.append(future)
        return future

    def _read(self) -> None:
        while True:
            reply = _read_message(self.proc.stdout)
            with self.lock:
                if reply is None:  # the child ended: what it had not answered has failed
                    while self.pending:
                        self.pending.popleft().set_exception(RuntimeError("the writer process ended"))
                    return
                future = self.pending.popleft()
            ok, value = reply
            future.set_result(value) if ok else future.set_exception(value)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait()


def _serve() -> None:
    """The writer process: run each job received, answer (ok, result or exception), until EOF."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a job's prints must not corrupt the replies
    while True:
        job = _read_message(inp)
        if job is None:
            return
        fn, args = job
        try:
            reply = (True, fn(*args))
        except Exception as exc:  # the caller's future re-raises it
            reply = (False, exc)
        try:
            _write_message(out, reply)
        except (pickle.PicklingError, TypeError, AttributeError):
            _write_message(out, (False, RuntimeError(repr(reply[1]))))


class BackgroundWriter:
    """A FIFO of jobs run by one daemon thread, and a FIFO of picklable jobs run by one
    writer process. ``submit``/``submit_remote`` return at once (they block only while
    ``max_pending`` jobs of their lane wait) with the job's ``Future``; ``drain`` waits until
    every submitted job has ended. A job that raises is logged and counted, and re-raised
    only to whoever asks its future for the result."""

    def __init__(self, max_pending: int = MAX_PENDING):
        self.max_pending = max_pending
        self._jobs: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread: Optional[threading.Thread] = None
        self._process: Optional[_WriterProcess] = None
        self._remote: list[Future] = []
        self.failed: list[str] = []
        self.done = 0
        self.busy_seconds = 0.0
        """Seconds the jobs took (a remote job's own count where it returns one)."""
        self.blocked_seconds = 0.0
        """Time ``submit``/``submit_remote`` waited for room: the writer's share of the critical path."""

    # --- the thread lane -------------------------------------------------------------------

    def submit(self, job: Callable[[], Any], name: str = "job") -> Future:
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

    def _loop(self) -> None:
        while True:
            name, job, future = self._jobs.get()
            t = time.perf_counter()
            try:
                future.set_result(job())
                self.done += 1
            except Exception as exc:  # a failed write must not end the study
                self._failed(name, exc)
                future.set_exception(exc)
            finally:
                self.busy_seconds += time.perf_counter() - t
                self._jobs.task_done()

    # --- the process lane ------------------------------------------------------------------

    def submit_remote(self, fn: Callable[..., Any], *args: Any, name: str = "job") -> Future:
        """Run ``fn(*args)`` in the writer process (started on first use; ``fn`` and ``args``
        must pickle, ``fn`` by its module path)."""
        if self._process is None:
            self._process = _WriterProcess()
        t = time.perf_counter()
        self._remote = [f for f in self._remote if not f.done()]
        while len(self._remote) >= self.max_pending:
            cf.wait(self._remote, return_when=cf.FIRST_COMPLETED)
            self._remote = [f for f in self._remote if not f.done()]
        self.blocked_seconds += time.perf_counter() - t
        future = self._process.submit(fn, args)
        future.add_done_callback(lambda f: self._remote_done(name, f))
        self._remote.append(future)
        return future

    def _remote_done(self, name: str, future: Future) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._failed(name, exc)
            return
        self.done += 1
        if isinstance(future.result(), float):
            self.busy_seconds += future.result()

    # --- both ------------------------------------------------------------------------------

    def _failed(self, name: str, exc: BaseException) -> None:
        self.failed.append(name)
        log.warning("background write %s failed (%s: %s)", name, exc.__class__.__name__, exc)

    def drain(self) -> None:
        """Wait for every job submitted so far, in both lanes."""
        if self._thread is not None:
            self._jobs.join()
        if self._remote:
            cf.wait(self._remote)
            self._remote = []

    def close(self) -> None:
        """Drain, then stop the writer process."""
        self.drain()
        if self._process is not None:
            self._process.close()
            self._process = None


if __name__ == "__main__":
    _serve()
