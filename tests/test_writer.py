"""Writes off the trial's critical path: the background writer, and the study's replay of the
writes a process left undone (died, or a write failed) from what Optuna recorded durably."""
from __future__ import annotations

import datetime as dt
import gc
import io
import math
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpt2ft import study as S
from gpt2ft.trial import TrialResult
from gpt2ft.trial_writes import TrialWrites
from gpt2ft.train import FitResult
from gpt2ft import writer as W
from gpt2ft.writer import BackgroundWriter, WriterDied, WriterTimeout


def test_jobs_run_in_order_off_the_callers_thread_and_drain_waits_for_them():
    w = BackgroundWriter(max_pending=4)
    seen: list[tuple[int, str]] = []
    gate = threading.Event()

    def job(i: int):
        def run():
            gate.wait(5)
            seen.append((i, threading.current_thread().name))
        return run

    t = time.perf_counter()
    for i in range(3):
        w.submit(job(i))
    assert time.perf_counter() - t < 1.0 and seen == []  # submit did not wait for the jobs
    gate.set()
    w.drain()
    assert [i for i, _ in seen] == [0, 1, 2]
    assert {name for _, name in seen} == {"gpt2ft-writer"}
    assert w.done == 3 and not w.failed


def test_a_failing_job_is_counted_and_the_next_still_runs():
    w = BackgroundWriter()
    ran = []
    bad = w.submit(lambda: 1 / 0, name="trial 7")
    good = w.submit(lambda: ran.append(True) or "saved", name="trial 8")
    w.drain()
    assert w.failed == ["trial 7"] and ran == [True] and w.done == 1
    with pytest.raises(ZeroDivisionError):  # whoever waits for the job learns why it failed
        bad.result()
    assert good.result() == "saved"


def test_a_full_queue_holds_the_caller_back():
    w = BackgroundWriter(max_pending=1)
    release = threading.Event()
    w.submit(release.wait)          # taken by the thread at once, blocks it
    time.sleep(0.1)
    w.submit(lambda: None)          # waits in the queue: now full
    threading.Timer(0.5, release.set).start()
    w.submit(lambda: None)          # must wait until the first job ends
    assert w.blocked_seconds >= 0.3
    w.drain()
    assert w.done == 3


def test_remote_jobs_run_in_another_process_and_failures_reach_their_future():
    w = BackgroundWriter()
    try:
        pid = w.submit_remote(os.getpid, name="pid")
        bad = w.submit_remote(math.sqrt, -1.0, name="trial 3")
        w.drain()
        assert pid.result() != os.getpid()
        with pytest.raises(ValueError):
            bad.result()
        assert w.failed == ["trial 3"] and w.done == 1
    finally:
        w.close()


class _Weights:
    """Stands for a trial's model: only a weak reference to it is kept by the test."""


def _holding(obj, fail: bool):
    def job():  # a closure over obj, as the study's checkpoint job is over the model
        if fail:
            raise OSError(f"disk full while saving {obj!r}")
        return "saved"
    return job


@pytest.mark.parametrize("fail", [False, True])
def test_a_finished_job_is_dropped_before_the_next_arrives(fail):
    """The writer thread must not hold a finished job (and the model its closure holds) while it
    waits for the next one: the previous trial's weights would live through the next trial. A
    failed job's traceback must not hold it either."""
    w = BackgroundWriter()
    weights = _Weights()
    ref = weakref.ref(weights)
    future = w.submit(_holding(weights, fail), name="checkpoint 0")
    del weights
    w.drain()
    assert future.done() and (future.exception() is not None) == fail
    deadline = time.monotonic() + 5
    while ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert ref() is None, "the writer still holds the last job's objects"


def test_remote_backpressure_holds_the_n_plus_first_submit_until_one_finishes():
    w = BackgroundWriter(max_pending=2)
    try:
        w.submit_remote(os.getpid).result(timeout=30)  # the process is up: its start is not timed below
        t = time.perf_counter()
        first = w.submit_remote(time.sleep, 1.5, name="trial 0")
        w.submit_remote(time.sleep, 0.0, name="trial 1")
        assert time.perf_counter() - t < 0.5  # two may wait: neither submit blocked
        w.submit_remote(time.sleep, 0.0, name="trial 2")  # a third must wait for the first to end
        assert first.done() and time.perf_counter() - t >= 1.4
        assert w.blocked_seconds >= 1.0
        w.drain()
        assert w.done == 4 and not w.failed
    finally:
        w.close()


def test_a_writer_process_killed_mid_job_fails_its_pending_jobs():
    w = BackgroundWriter()
    try:
        pid = w.submit_remote(os.getpid).result(timeout=30)
        slow = w.submit_remote(time.sleep, 60, name="trial 3")
        queued = w.submit_remote(time.sleep, 0, name="trial 4")
        time.sleep(0.3)  # the process is inside trial 3's job
        os.kill(pid, signal.SIGKILL)
        t = time.perf_counter()
        with pytest.raises(WriterDied, match=r"died \(exit code -9\) before trial 3's writes were stored"):
            slow.result(timeout=10)
        with pytest.raises(WriterDied, match="before trial 4's writes"):
            queued.result(timeout=10)
        assert time.perf_counter() - t < 5
        assert not w.remote_alive and w.failed == ["trial 3", "trial 4"]
        t = time.perf_counter()
        with pytest.raises(WriterDied, match="trial 5's writes were not sent"):
            w.submit_remote(time.sleep, 0, name="trial 5")  # at once: the caller writes inline instead
        assert time.perf_counter() - t < 0.5
    finally:
        w.close()
    assert not w.remote_alive  # closing does not revive a dead lane


def test_a_reply_that_cannot_be_unpickled_fails_the_lane_and_hangs_nothing():
    """The job's result is an instance of a class that exists only in the writer process (its
    ``__main__``): it pickles there and cannot be unpickled here."""
    w = BackgroundWriter()
    try:
        w.submit_remote(exec, "global Poison\nclass Poison:\n    pass\n").result(timeout=30)
        bad = w.submit_remote(eval, "Poison()", name="trial 2")
        with pytest.raises(WriterDied, match=r"sent a reply that could not be read \(AttributeError.*Poison"):
            bad.result(timeout=10)
        assert not w.remote_alive
        with pytest.raises(WriterDied):
            w.submit_remote(os.getpid)
    finally:
        w.close()


def test_a_message_cut_short_is_an_error_not_the_end():
    whole = W._frame((True, 1.5))
    assert W._read_message(io.BytesIO(whole)) == (True, 1.5)
    assert W._read_message(io.BytesIO(b"")) is None  # a clean end
    for cut in (3, len(whole) - 2):
        with pytest.raises(EOFError):
            W._read_message(io.BytesIO(whole[:cut]))
    with pytest.raises(ValueError, match="corrupt"):
        W._read_message(io.BytesIO(b"\xff" * 8 + b"garbage"))


def test_a_stuck_writer_process_is_killed_after_stall_seconds():
    w = BackgroundWriter(max_pending=1, stall_seconds=1.0)
    try:
        stuck = w.submit_remote(time.sleep, 60, name="trial 0")
        t = time.perf_counter()
        with pytest.raises(WriterDied, match="answered no job for 1 s and was killed; trial 1's writes were not sent"):
            w.submit_remote(time.sleep, 0, name="trial 1")  # waits for room, at most stall_seconds
        assert time.perf_counter() - t < 5
        with pytest.raises(WriterDied, match="trial 0's writes were stored"):
            stuck.result(timeout=1)
        assert not w.remote_alive
    finally:
        w.close()
    other = BackgroundWriter(stall_seconds=1.0)
    try:
        other.submit_remote(time.sleep, 60)
        t = time.perf_counter()
        with pytest.raises(WriterDied, match="1 submitted writes were not stored"):
            other.drain()
        assert time.perf_counter() - t < 5
    finally:
        other.close()


def test_a_stuck_writer_thread_times_out_submit_and_drain():
    w = BackgroundWriter(max_pending=1, stall_seconds=0.3)
    gate = threading.Event()
    try:
        w.submit(lambda: gate.wait(30))
        time.sleep(0.1)  # taken by the thread
        w.submit(lambda: None)  # queued: the queue is full now
        with pytest.raises(WriterTimeout, match="finished no job in 0 s; trial 9 was not queued"):
            w.submit(lambda: None, name="trial 9")
        with pytest.raises(WriterTimeout):
            w.drain()
    finally:
        gate.set()
    w.drain()
    assert w.done == 2


def test_waiting_for_one_job_is_bounded_and_says_what_hung():
    """A checkpoint's save on a hung filesystem: the trial's wait for it ends after
    ``stall_seconds`` with what did not finish (issue 25, item 8); a job that ends is its result."""
    w = BackgroundWriter(stall_seconds=0.3)
    gate = threading.Event()
    try:
        hung = w.submit(lambda: gate.wait(30), name="checkpoint 3")
        t = time.perf_counter()
        with pytest.raises(WriterTimeout, match="checkpoint of trial 3 at step 8 did not finish in 0 s"):
            w.result(hung, "the checkpoint of trial 3 at step 8")
        assert 0.25 < time.perf_counter() - t < 5
    finally:
        gate.set()
    assert w.result(w.submit(lambda: 42), "a job") == 42


def test_close_kills_a_writer_process_that_does_not_exit(monkeypatch):
    """A job left a thread running in the writer process, so it would not end at its EOF."""
    monkeypatch.setattr(W, "EXIT_SECONDS", 0.5)
    w = BackgroundWriter()
    w.submit_remote(exec, "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()")
    w.drain()
    proc = w._process.proc
    t = time.perf_counter()
    w.close()
    assert time.perf_counter() - t < 5 and proc.returncode == -signal.SIGKILL


def _record(number: int) -> dict:
    res = TrialResult({"top100_ratio": 0.5 + number / 100, "memorization": 0.0},
                      FitResult(history=[{"epoch": 1, "step": 3, "train_loss": 2.0, "heldout_loss": 2.5}],
                                train_curve=[(3, 2.0)], heldout_curve=[(0, 3.0), (3, 2.5)], steps=3,
                                steps_per_epoch=3),
                      [f"text {number}"], [[1, 2, number]], trajectory=[{"step": 0.0}])
    return res.record()


class _Tracker:
    def __init__(self, statuses):
        self.statuses, self.logged = statuses, []

    def status(self, run_id):
        return self.statuses[run_id]

    def handle(self, run_id):
        tracker = self

        class Handle:
            def set_tags(self, tags):
                tracker.logged.append((run_id, "tags", tags))

            def log_metrics(self, metrics, step=0):
                tracker.logged.append((run_id, "metrics", metrics))

            def log_text(self, text, path):
                tracker.logged.append((run_id, "text", path))

            def end(self, status="FINISHED"):
                tracker.statuses[run_id] = status
        return Handle()


def test_replay_redoes_unfinished_runs_of_complete_trials_but_not_a_live_writers(monkeypatch):
    """A COMPLETE trial whose run is still RUNNING is redone from its Optuna record: at once when
    this command ran it, after the grace period when another command did (it may still write);
    a FINISHED run is never touched."""
    now = dt.datetime.now()
    young, old = now - dt.timedelta(seconds=5), now - dt.timedelta(seconds=120)
    cases = {  # number: (command, completed, run status)
        0: ("me", young, "RUNNING"), 1: ("other", young, "RUNNING"),
        2: ("other", old, "RUNNING"), 3: ("me", young, "FINISHED")}
    trials = [SimpleNamespace(number=n, datetime_complete=when,
                              user_attrs={**_record(n), "mlflow_run_id": f"run{n}", "command_id": who})
              for n, (who, when, _) in cases.items()]
    tracker = _Tracker({f"run{n}": status for n, (_, _, status) in cases.items()})
    rendered = []

    def ops(assets, res):
        rendered.append((res.ids, res.fit.heldout_curve))
        return [("text", "samples", "samples.md")]

    monkeypatch.setattr(S, "trial_ops", ops)
    runner = SimpleNamespace(
        study=SimpleNamespace(get_trials=lambda deepcopy, states: trials,
                              user_attrs={"references": {"book_top100_ratio": 0.55}}),
        tracker=tracker, writes=TrialWrites(tracker), assets=None, command_id="me",
        config=SimpleNamespace(study=SimpleNamespace(grace_period=30)))
    assert S.replay_unlogged(runner) == 2
    assert tracker.statuses == {"run0": "FINISHED", "run1": "RUNNING", "run2": "FINISHED", "run3": "FINISHED"}
    # What was rendered is the record's own content, and the style objective is recomputed from it.
    assert rendered == [([[1, 2, 0]], [(0, 3.0), (3, 2.5)]), ([[1, 2, 2]], [(0, 3.0), (3, 2.5)])]
    styles = {rid: m["style_score"] for rid, kind, m in tracker.logged if kind == "metrics" and "style_score" in m}
    assert styles == pytest.approx({"run0": -0.05, "run2": -0.03})
    # The trial's own writes come first, then the study's, then the end (FINISHED means all stored).
    run0 = [(kind, sorted(x) if isinstance(x, dict) else x) for rid, kind, x in tracker.logged if rid == "run0"]
    assert run0 == [("text", "samples.md"), ("tags", ["stopped_early"]), ("metrics", ["style_score"]),
                    ("metrics", ["log_seconds"])]


def test_a_trials_record_round_trips():
    rec = _record(4)
    again = TrialResult.from_record(rec).record()
    assert again == rec


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_writer_process_ends_with_its_killed_parent(tmp_path):
    """A study killed with SIGKILL must not leave its writer process behind: the writer reads
    its jobs from the parent's pipe and ends at its EOF."""
    script = tmp_path / "parent.py"
    script.write_text("import os, time\nfrom gpt2ft.writer import BackgroundWriter\n"
                      "w = BackgroundWriter()\nw.submit_remote(time.sleep, 0.01).result()\n"
                      "print(os.getpid(), flush=True)\ntime.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        assert len(children) == 1
        os.kill(pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while Path(f"/proc/{children[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        status = Path(f"/proc/{children[0]}/status")
        assert not status.exists() or "zombie" in status.read_text()
    finally:
        parent.kill()
