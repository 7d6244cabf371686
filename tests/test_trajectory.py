"""Trajectories: the copying-onset rules on literal numbers, and a tiny model that is trained
until it copies its tiny training slice, measured along the way through the real CLI."""
from __future__ import annotations

import json
import math

import pytest

from conftest import TINY
from gpt2ft import trajectory as T
from gpt2ft.ui_names import plain, ui_name


def _points(mems):
    return [{"step": 10 * i, "epoch": float(i), "memorization": m} for i, m in enumerate(mems)]


def test_onset_is_the_first_point_strictly_above_the_bound():
    assert T.copying_onset(_points([0.0, 0.02, 0.03, 0.5]), 0.02)["step"] == 20  # 0.02 is within
    assert T.copying_onset(_points([0.0, 0.01, math.nan]), 0.02) is None
    assert T.copying_onset(_points([0.9]), 0.02)["epoch"] == 0.0


def test_heldout_turn_is_the_first_rise():
    assert T.heldout_turn_step([(0, 4.0), (10, 3.5), (20, 3.4), (30, 3.6), (40, 3.3)]) == 30
    assert T.heldout_turn_step([(0, 4.0), (10, 3.5)]) is None
    assert T.heldout_turn_step([]) is None


@pytest.mark.parametrize("mems, turn_at, expected", [
    ([0.0, 0.0, 0.4], 10, 1.0),   # held-out loss rose at step 10, copying at 20: it warned first
    ([0.0, 0.4, 0.4], 20, 0.0),   # copying at step 10, the loss only rose at 20
    ([0.0, 0.4, 0.4], 10, 1.0),   # the same evaluation: warned in time
])
def test_onset_metrics_order_of_events(mems, turn_at, expected):
    curve = [(0, 4.0), (10, 3.0), (20, 3.5)] if turn_at == 20 else [(0, 4.0), (10, 4.5), (20, 5.0)]
    out = T.onset_metrics(_points(mems), curve, 0.02)
    assert out["heldout_turn_step"] == turn_at
    assert out["heldout_up_before_copying"] == expected
    assert out["copying_onset_epoch"] == float(mems.index(0.4))


def test_onset_metrics_without_copying_leave_the_onset_out():
    out = T.onset_metrics(_points([0.0, 0.01]), [(0, 4.0), (10, 3.0)], 0.02)
    assert "copying_onset_step" not in out and "heldout_up_before_copying" not in out
    assert out["best_heldout_step"] == 10.0


def test_heldout_at_takes_the_latest_evaluation():
    curve = [(0, 4.0), (10, 3.0), (20, 2.5)]
    assert T.heldout_at(curve, 15) == 3.0 and T.heldout_at(curve, 20) == 2.5


# A 2-layer random GPT-2 on 13 windows of 32 tokens (4 steps an epoch at batch 4), at a high rate
# for 30 epochs: it learns the slice by heart. Sampling greedily (top_k=1) from BOS then reproduces it.
MEMORIZE = ["--set", "data.max_chars=1600", "--set", "data.segment_chars=100", "--set", "data.heldout_every=4",
            "--set", "train.max_steps=null", "--set", "train.lr=3e-3", "--set", "train.batch_size=4",
            "--set", "train.eval_batches=1", "--set", "sample.top_k=1", "--set", "metrics.extraction_prompts=0",
            "--set", "metrics.bootstrap=0"]


def _train(workdir, *extra):
    from mlflow.tracking import MlflowClient

    from gpt2ft.cli import main

    assert main(["train", "--config", str(TINY), "--quiet", *MEMORIZE, *extra]) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gpt2ft-tiny")
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]
    return client, run


@pytest.mark.usefixtures("shared_setup")
def test_a_tiny_model_trained_long_copies_and_its_trajectory_shows_when(workdir, book, monkeypatch):
    monkeypatch.setenv("GPT2FT_CORPUS", str(book))
    # Without the copying stop (study.stop_after=0), to see the whole path into copying.
    client, run = _train(workdir, "--set", "train.epochs=30", "--set", "sample.every_steps=30", "--set",
                         "study.stop_after=0")
    steps = int(plain(run.data.metrics)["steps"])
    assert steps == 120
    path = client.download_artifacts(run.info.run_id, "trajectory.json", str(workdir))
    points = json.loads(open(path).read())
    assert [p["step"] for p in points] == [0, 30, 60, 90, 120]
    # Every point is logged at its step under the final metric's name (a point whose samples
    # decoded to nothing has no value and is not logged), the base model at step 0.
    for name in ("memorization", "top100_ratio", "longest_copy", "distinct_2"):
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, ui_name(name))}
        expected = {p["step"]: p[name] for p in points if name in p and math.isfinite(p[name])}
        assert logged == pytest.approx(expected) and {0, 120} <= set(logged)
    assert plain(run.data.metrics)["memorization"] >= 0.5
    onset = plain(run.data.metrics)["copying_onset_step"]
    assert 0 < onset <= steps
    assert plain(run.data.metrics)["heldout_up_before_copying"] in (0.0, 1.0)
    assert plain(run.data.metrics)["trajectory_seconds"] > 0
    assert points[-1]["memorization"] == pytest.approx(plain(run.data.metrics)["memorization"])


@pytest.mark.usefixtures("shared_setup")
def test_no_onset_when_nothing_copies(workdir, book, monkeypatch):
    monkeypatch.setenv("GPT2FT_CORPUS", str(book))
    client, run = _train(workdir, "--set", "train.epochs=2")
    assert plain(run.data.metrics)["memorization"] <= 0.02
    assert "copying_onset_step" not in plain(run.data.metrics)
    # After every epoch by default: base, epoch 1, the end.
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, ui_name("style_js"))) == [0, 4, 8]


def test_keeping_a_points_checkpoint_is_not_billed_to_measuring(monkeypatch):
    """measure_share counts measuring only: the study's checkpoint of an eligible point, written
    in the candidate hand-off, goes to checkpoint_seconds."""
    import time
    from types import SimpleNamespace

    import torch

    import gpt2ft.trial as TR
    from gpt2ft.judges import Bounds

    monkeypatch.setattr(TR, "measure_model", lambda *a, **k: ({"top100_ratio": 0.5, "memorization": 0.0}, [], []))
    config = SimpleNamespace(sample=SimpleNamespace(n_samples=2), study=SimpleNamespace(stop_after=0))
    assets = SimpleNamespace(config=config, runtime=SimpleNamespace(device=torch.device("cpu")))
    tracer = TR._Tracer(assets, model=None, run=None, seed=0, bounds=Bounds(0.02, 0.05, 4.0),
                        on_candidate=lambda model, p: time.sleep(0.3))
    tracer.saw({"heldout_loss": 3.0}, 4)
    assert tracer(4, 1.0) is False
    assert tracer.keep_seconds >= 0.3 > tracer.seconds
