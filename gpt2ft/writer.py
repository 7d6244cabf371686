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
  a process beside it 5%; see docs/performance.md).
* ``submit``: work that needs this process's objects (a checkpoint of the model in memory,
  mostly tensor I/O) goes to one daemon thread.

Nothing is lost when the process dies with jobs still queued: a job only stores what the
trial already recorded durably (Optuna's trial attributes), and the study redoes any job
whose trial's MLflow run was left unfinished (``gpt2ft.study.replay_unlogged``).

Every wait here is bounded. A lane that finishes no job for :data:`STALL_SECONDS` while
someone waits on it raises: :class:`WriterTimeout` for the thread, :class:`WriterDied` for the
process, which is then killed. A writer process that dies, is killed, or sends a reply that
cannot be read fails every job it had not answered with :class:`WriterDied`, and its lane takes
no more jobs (``remote_alive`` is False, ``submit_remote`` raises ``WriterDied`` at once), so
the caller can write inline instead.

No framework is imported here; a job is any callable (a remote one must be picklable).
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import os
import pickle
import queue
import selectors
import struct
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from typing import Any, BinaryIO, Callable, Optional

log = logging.getLogger(__name__)

#: Jobs that may wait at once in each lane. A slow writer then holds the trial loop back
#: (backpressure) instead of piling up results in memory, and a killed process has at most
#: this many to redo.
MAX_PENDING = 2
#: The longest a lane may go without finishing a job while someone waits on it. A trial's
#: writes take 1-2 s (bench: log_seconds) and a 124M checkpoint about as long; a SQLite store
#: locked by another worker for the 60 s busy timeout gpt2ft gives Optuna, several times over,
#: still fits, while a hung writer costs a study five minutes, not the rest of its budget.
STALL_SECONDS = 300.0
#: How long the writer process gets to exit once its pipe is closed (it has no job left then:
#: only the interpreter's shutdown) before it is killed.
EXIT_SECONDS = 30.0
#: A message longer than this is a corrupt header, not a trial's writes (those are kilobytes).
MAX_MESSAGE = 1 << 30
_HEADER = struct.Struct("!Q")  # the length of each pickled message on the writer process's pipes


class WriterDied(RuntimeError):
    """The writer process ended, was killed as stuck, or sent a reply that could not be read:
    the jobs it had not answered are lost (the study redoes them from Optuna's record) and its
    lane takes no more."""


class WriterTimeout(TimeoutError):
    """The background thread finished no job within ``stall_seconds`` while someone waited."""


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj)
    return _HEADER.pack(len(data)) + data


def _read_message(stream: BinaryIO) -> Optional[Any]:
    """The next message, or None at a clean end of the stream; a message cut short (its writer
    killed mid-write) raises EOFError, a corrupt header ValueError."""
    head = stream.read(_HEADER.size)
    if not head:
        return None
    if len(head) < _HEADER.size:
        raise EOFError(f"the stream ended inside a message header ({len(head)} of {_HEADER.size} bytes)")
    size = _HEADER.unpack(head)[0]
    if size > MAX_MESSAGE:
        raise ValueError(f"a message header announces {size} bytes: the stream is corrupt")
    body = stream.read(size)
    if len(body) < size:
        raise EOFError(f"the stream ended inside a message ({len(body)} of {size} bytes)")
    return pickle.loads(body)


def _send(fd: int, data: bytes, timeout: float) -> None:
    """Write all of ``data`` to the non-blocking pipe ``fd``, or raise TimeoutError when the
    reader takes none of it for ``timeout`` seconds (a blocking write to a stuck process would
    hang the caller)."""
    view = memoryview(data)
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_WRITE)
        while view:
            if not sel.select(timeout):
                raise TimeoutError(f"the pipe took no data for {timeout:.0f} s")
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:  # another writer's room, or a spurious wake-up
                continue


OnDone = Callable[[str, Optional[BaseException], Any], None]


class _WriterProcess:
    """One ``python -m gpt2ft.writer`` child: jobs go down its stdin as pickles, results come
    back on its stdout in the same order, and a reader thread settles their futures."""

    def __init__(self, stall_seconds: float, on_done: OnDone):
        self.stall_seconds, self.on_done = stall_seconds, on_done
        self.proc = subprocess.Popen([sys.executable, "-m", "gpt2ft.writer"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        os.set_blocking(self.proc.stdin.fileno(), False)  # writes are bounded by _send's timeout
        self.pending: collections.deque[tuple[Future, str]] = collections.deque()
        self.lock = threading.Lock()  # pending and dead
        self.send_lock = threading.Lock()  # one message at a time on the pipe, in pending's order
        self.dead: Optional[str] = None
        """What ended the lane ("died (exit code -9)", ...); None while it takes jobs."""
        self.closing = False
        self.reader = threading.Thread(target=self._read, name="gpt2ft-writer-results", daemon=True)
        self.reader.start()

    def submit(self, fn: Callable[..., Any], args: tuple, name: str) -> Future:
        """Send ``fn(*args)``; raises WriterDied when the lane is dead or dies while sending."""
        data = _frame((fn, args))  # a job that does not pickle is the caller's bug: raised here
        future: Future = Future()
        with self.send_lock:
            with self.lock:
                if self.dead is not None:
                    raise WriterDied(f"the writer process {self.dead}; {name}'s writes were not sent to it")
                self.pending.append((future, name))
            try:
                _send(self.proc.stdin.fileno(), data, self.stall_seconds)
            except TimeoutError:
                self.kill(f"took no job for {self.stall_seconds:.0f} s and was killed")
            except OSError:  # a broken pipe: it has ended
                self.fail_all(f"died (exit code {self._reap()})")
            else:
                return future
        future.exception()  # failed with the rest; retrieved, so not reported as never seen
        raise WriterDied(f"the writer process {self.dead}; {name}'s writes were not sent to it")

    def _read(self) -> None:
        what = None
        try:
            while (reply := _read_message(self.proc.stdout)) is not None:
                with self.lock:
                    future, name = self.pending.popleft()  # IndexError: a reply nobody asked for
                ok, value = reply
                self._settle(future, name, None if ok else value, value)
        except Exception as exc:  # a truncated or unreadable reply: nothing after it can be trusted
            what = f"sent a reply that could not be read ({exc.__class__.__name__}: {exc})"
            self.proc.kill()
        code = self._reap()
        self.fail_all(what or ("was closed" if self.closing else f"died (exit code {code})"))

    def _settle(self, future: Future, name: str, exc: Optional[BaseException], value: Any) -> None:
        self.on_done(name, exc, value)  # first: whoever the future wakes sees the counts updated
        future.set_result(value) if exc is None else future.set_exception(exc)

    def fail_all(self, what: str) -> None:
        """Mark the lane dead (the first reason stays) and fail every job not yet answered."""
        with self.lock:
            if self.dead is None:
                self.dead = what
            failed, what = list(self.pending), self.dead
            self.pending.clear()
        for future, name in failed:
            self._settle(future, name, WriterDied(f"the writer process {what} before {name}'s writes were stored"),
                         None)

    def kill(self, what: str) -> None:
        """End a stuck process: its jobs fail with ``what`` (not the exit code the kill causes)."""
        with self.lock:
            if self.dead is None:
                self.dead = what
        self.proc.kill()
        self.fail_all(what)

    def _reap(self) -> Optional[int]:
        """The exit code, after killing the process if it has not ended within EXIT_SECONDS
        (None if even that does not end it: stuck in the kernel, given up on)."""
        for kill in (False, True):
            if kill:
                self.proc.kill()
            try:
                return self.proc.wait(timeout=EXIT_SECONDS)
            except subprocess.TimeoutExpired:
                continue
        return None

    def close(self) -> None:
        self.closing = True
        try:
            self.proc.stdin.close()  # the process ends at this EOF
        except OSError:
            pass
        self._reap()
        self.reader.join(timeout=EXIT_SECONDS)


def _serve() -> None:
    """The writer process: run each job received, answer (ok, result or exception), until EOF."""
    inp = sys.stdin.buffer
    # Replies go to a private copy of the pipe and fd 1 becomes stderr: a job's prints, a C
    # library's included, must not corrupt the replies.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    while True:
        try:
            job = _read_message(inp)
        except EOFError:  # the parent died mid-write: nothing to answer
            return
        if job is None:
            return
        fn, args = job
        try:
            reply = (True, fn(*args))
        except Exception as exc:  # the caller's future re-raises it
            reply = (False, exc)
        try:
            data = _frame(reply)
        except (pickle.PicklingError, TypeError, AttributeError):
            data = _frame((False, RuntimeError(repr(reply[1]))))
        out.write(data)
        out.flush()


class BackgroundWriter:
    """A FIFO of jobs run by one daemon thread, and a FIFO of picklable jobs run by one
    writer process. ``submit``/``submit_remote`` return at once (they block only while
    ``max_pending`` jobs of their lane wait) with the job's ``Future``; ``drain`` waits until
    every submitted job has ended. A job that raises is logged and counted, and re-raised
    only to whoever asks its future for the result. No wait is longer than ``stall_seconds``
    without a job finishing (see the module's docstring)."""

    def __init__(self, max_pending: int = MAX_PENDING, stall_seconds: float = STALL_SECONDS):
        self.max_pending = max_pending
        self.stall_seconds = stall_seconds
        self._jobs: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread: Optional[threading.Thread] = None
        self._local: list[Future] = []
        self._process: Optional[_WriterProcess] = None
        self._remote: list[Future] = []
        self._count_lock = threading.Lock()
        self.failed: list[str] = []
        self.done = 0
        self.busy_seconds = 0.0
        """Seconds the jobs took (a remote job's own count where it returns one)."""
        self.blocked_seconds = 0.0
        """Time ``submit``/``submit_remote`` waited for room: the writer's share of the critical path."""

    # --- the thread lane -------------------------------------------------------------------

    def submit(self, job: Callable[[], Any], name: str = "job") -> Future:
        """Run ``job()`` in the writer thread; WriterTimeout when the queue stays full."""
        if self._thread is None or not self._thread.is_alive():
            # Daemon: a process that is told to stop does not wait for its pending writes
            # (they are redone on the next run), and an idle writer never keeps it alive.
            self._thread = threading.Thread(target=self._loop, name="gpt2ft-writer", daemon=True)
            self._thread.start()
        t = time.perf_counter()
        future: Future = Future()
        try:
            self._jobs.put((name, job, future), timeout=self.stall_seconds)
        except queue.Full:
            raise WriterTimeout(f"the background writer finished no job in {self.stall_seconds:.0f} s; "
                                f"{name} was not queued") from None
        finally:
            self.blocked_seconds += time.perf_counter() - t
        self._local = [f for f in self._local if not f.done()] + [future]
        return future

    def result(self, future: Future, what: str) -> Any:
        """The result of a job of this writer's (``what`` names it): waits at most
        ``stall_seconds`` for it, then raises WriterTimeout saying what did not finish (a thread
        cannot be killed: a hung job, a save on a hung filesystem, keeps its thread)."""
        try:
            return future.result(timeout=self.stall_seconds)
        except cf.TimeoutError:
            raise WriterTimeout(f"{what} did not finish in {self.stall_seconds:.0f} s (a hung filesystem or "
                                "store?); given up on") from None

    def _loop(self) -> None:
        while True:
            # Unpacked in _run's frame, which ends with the job: nothing here holds a finished
            # job (a closure over a trial's model) until the next one arrives.
            self._run(*self._jobs.get())

    def _run(self, name: str, job: Callable[[], Any], future: Future) -> None:
        t = time.perf_counter()
        try:
            result = job()
        except Exception as exc:  # a failed write must not end the study
            # The traceback's frames hold the job (a closure over a trial's model) for as long as
            # the future holds the exception: keep the traceback as text, in a note, instead.
            where = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(f"raised in the background writer at:\n{where}")
            exc.__traceback__ = None
            self._count(name, exc, time.perf_counter() - t)
            future.set_exception(exc)
            return
        self._count(name, None, time.perf_counter() - t)
        future.set_result(result)

    # --- the process lane ------------------------------------------------------------------

    @property
    def remote_alive(self) -> bool:
        """False once the writer process has died, been killed as stuck or sent an unreadable
        reply (``submit_remote`` then raises WriterDied); True before it starts, on first use."""
        return self._process is None or self._process.dead is None

    def submit_remote(self, fn: Callable[..., Any], *args: Any, name: str = "job") -> Future:
        """Run ``fn(*args)`` in the writer process (started on first use; ``fn`` and ``args``
        must pickle, ``fn`` by its module path). Raises WriterDied at once when the process
        has died, or when it finishes no job for ``stall_seconds`` while this waits for room."""
        if self._process is None:
            self._process = _WriterProcess(self.stall_seconds, self._remote_done)
        process = self._process
        if process.dead is not None:
            raise WriterDied(f"the writer process {process.dead}; {name}'s writes were not sent to it")
        t = time.perf_counter()
        try:
            self._remote = self._wait(self._remote, self.max_pending - 1,
                                      lambda: self._stalled(f"{name}'s writes were not sent to it"))
        finally:
            self.blocked_seconds += time.perf_counter() - t
        future = process.submit(fn, args, name)
        self._remote.append(future)
        return future

    def _stalled(self, lost: str) -> WriterDied:
        """Kill the stuck process (failing its jobs) and say so, ending with what was ``lost``."""
        self._process.kill(f"answered no job for {self.stall_seconds:.0f} s and was killed")
        return WriterDied(f"the writer process {self._process.dead}; {lost}")

    def _remote_done(self, name: str, exc: Optional[BaseException], value: Any) -> None:
        self._count(name, exc, value if exc is None and isinstance(value, float) else 0.0)

    # --- both ------------------------------------------------------------------------------

    def _count(self, name: str, exc: Optional[BaseException], seconds: float) -> None:
        with self._count_lock:  # the writer thread and the reader thread both count
            self.busy_seconds += seconds
            if exc is None:
                self.done += 1
                return
            self.failed.append(name)
        log.warning("background write %s failed (%s: %s)", name, exc.__class__.__name__, exc)

    def _wait(self, futures: list[Future], most: int, stalled: Callable[[], BaseException]) -> list[Future]:
        """Wait until at most ``most`` of ``futures`` are pending, raising ``stalled()`` when none
        finishes for ``stall_seconds``; returns those still pending."""
        pending = [f for f in futures if not f.done()]
        while len(pending) > most:
            done, _ = cf.wait(pending, timeout=self.stall_seconds, return_when=cf.FIRST_COMPLETED)
            if not done:
                raise stalled()
            pending = [f for f in pending if not f.done()]
        return pending

    def drain(self, remote: bool = True) -> None:
        """Wait for every job submitted so far, in both lanes (the thread's only, without
        ``remote``). A lane that finishes no job for ``stall_seconds`` raises: WriterTimeout (the
        thread), WriterDied (the process, killed)."""
        self._local = self._wait(self._local, 0, lambda: WriterTimeout(
            f"the background writer finished no job in {self.stall_seconds:.0f} s; {len(self._local)} still wait"))
        if remote and self._process is not None:
            self._remote = self._wait(self._remote, 0, lambda: self._stalled(
                f"{len(self._remote)} submitted writes were not stored"))

    def close(self) -> None:
        """Drain, then stop the writer process (killed if it has not ended ``EXIT_SECONDS`` after
        its pipe closed). A dead process stays dead: ``submit_remote`` still raises WriterDied."""
        try:
            self.drain()
        finally:
            if self._process is not None:
                died = self._process.dead
                self._process.close()
                if died is None:
                    self._process = None


if __name__ == "__main__":
    _serve()
