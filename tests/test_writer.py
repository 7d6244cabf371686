"""Writes off the trial's critical path: the background writer, and the study's replay of the
writes a process left undone (died, or a write failed) from what Optuna recorded durably."""
from __future__ import annotations

import datetime as dt
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpt2ft import study as S
from gpt2ft.trial import TrialResult
from gpt2ft.train import FitResult
from gpt2ft.writer import BackgroundWriter


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
        tracker=tracker, assets=None, command_id="me",
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
