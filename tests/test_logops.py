"""A trial's MLflow writes as data (``gpt2ft.logops``), applied to a fake run that records
every call: the order kept, ``log_seconds`` stored before the ``end``, figures rendered by name."""
from __future__ import annotations

import pytest

from gpt2ft import logops, plots


class _Run:
    """Records each call as (method, arguments)."""

    def __init__(self):
        self.calls: list[tuple] = []

    def log_metrics(self, metrics, step=0):
        self.calls.append(("log_metrics", dict(metrics), step))

    def log_text(self, text, path):
        self.calls.append(("log_text", text, path))

    def log_dict(self, obj, path):
        self.calls.append(("log_dict", obj, path))

    def log_figure(self, fig, path):
        self.calls.append(("log_figure", fig, path))

    def set_tags(self, tags):
        self.calls.append(("set_tags", tags))

    def end(self, status="FINISHED"):
        self.calls.append(("end", status))


@pytest.fixture
def figure(monkeypatch):
    """A plots function the ops can name; records its keyword arguments."""
    seen = []

    def curve_figure(**kwargs):
        seen.append(kwargs)
        return f"figure of {kwargs['title']}"

    monkeypatch.setattr(plots, "curve_figure", curve_figure, raising=False)
    return seen


def test_ops_are_applied_in_order_and_log_seconds_comes_just_before_the_end(figure):
    run = _Run()
    ops = [("metrics", {"memorization": 0.1}, 7), ("text", "# Samples", "samples.md"),
           ("dict", {"history": [1, 2]}, "history.json"),
           ("figure", "curve_figure", {"title": "loss", "points": [1, 2]}, "loss.png"),
           ("tags", {"stopped_early": "false"}), ("end", "FINISHED")]
    seconds = logops.apply(run, ops, step=20)
    order = ["log_metrics", "log_text", "log_dict", "log_figure", "set_tags", "log_metrics", "end"]
    assert [c[0] for c in run.calls] == order
    assert run.calls[0] == ("log_metrics", {"memorization": 0.1}, 7)
    assert run.calls[1] == ("log_text", "# Samples", "samples.md")
    assert run.calls[2] == ("log_dict", {"history": [1, 2]}, "history.json")
    # a figure op names a gpt2ft.plots function and its keyword arguments; the figure is logged
    assert figure == [{"title": "loss", "points": [1, 2]}]
    assert run.calls[3] == ("log_figure", "figure of loss", "loss.png")
    assert run.calls[4] == ("set_tags", {"stopped_early": "false"})
    # a FINISHED run has its log_seconds: logged at the trial's last step, before the end
    (_, logged, step), end = run.calls[5], run.calls[6]
    assert set(logged) == {"log_seconds"} and step == 20 and logged["log_seconds"] >= 0
    assert end == ("end", "FINISHED")
    assert seconds >= logged["log_seconds"]


def test_without_an_end_op_log_seconds_is_the_last_write_and_the_run_stays_open():
    run = _Run()
    logops.apply(run, [("text", "t", "a.md"), ("tags", {"k": "v"})], step=3)
    assert [c[0] for c in run.calls] == ["log_text", "set_tags", "log_metrics"]
    assert set(run.calls[-1][1]) == {"log_seconds"} and run.calls[-1][2] == 3
    empty = _Run()
    logops.apply(empty, [])
    assert [c[0] for c in empty.calls] == ["log_metrics"]


def test_an_end_with_another_status_is_passed_on():
    run = _Run()
    logops.apply(run, [("end", "FAILED")])
    assert run.calls[-1] == ("end", "FAILED")


def test_an_unknown_op_is_an_error_after_the_ops_before_it():
    run = _Run()
    with pytest.raises(ValueError, match="unknown log op 'upload'"):
        logops.apply(run, [("text", "t", "a.md"), ("upload", "x"), ("end", "FINISHED")])
    assert [c[0] for c in run.calls] == ["log_text"]  # no end: the run is not marked FINISHED


def test_apply_remote_keeps_one_client_per_tracking_uri(monkeypatch):
    import gpt2ft.tracking as tracking

    made, runs = [], []

    def client_for(uri):
        made.append(uri)
        return f"client for {uri}"

    def make_run(client, run_id):
        runs.append((client, run_id))
        return _Run()

    monkeypatch.setattr(tracking, "client_for", client_for)
    monkeypatch.setattr(tracking, "Run", make_run)
    monkeypatch.setattr(logops, "_CLIENTS", {})
    for run_id in ("r1", "r2"):
        logops.apply_remote("sqlite:///a.db", run_id, [("tags", {"k": "v"})], 5)
    logops.apply_remote("sqlite:///b.db", "r3", [], 0)
    assert made == ["sqlite:///a.db", "sqlite:///b.db"]
    assert runs == [("client for sqlite:///a.db", "r1"), ("client for sqlite:///a.db", "r2"),
                    ("client for sqlite:///b.db", "r3")]
