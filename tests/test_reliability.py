"""Faults: NaN loss, a trial that raises, atomic outputs, export with nothing to export, masking."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import TINY
from gpt2ft.ui_names import plain


class _NaNAfter(torch.nn.Module):
    """A model whose loss turns NaN after ``k`` forward passes in training mode (its logits over a
    two-token vocabulary are zeros, then NaN; the loss is computed from them as for any model)."""

    def __init__(self, k: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.k = k
        self.calls = 0

    def forward(self, input_ids, labels=None):
        if self.training:
            self.calls += 1
        value = self.w * 1.0 if self.calls <= self.k or not self.training else self.w * math.nan
        return type("Out", (), {"logits": value * torch.zeros(*input_ids.shape, 2)})()


def _data(n: int = 64):
    from gpt2ft.data import TokenData

    windows = torch.zeros((n, 8), dtype=torch.long)
    return TokenData(windows, windows[:4], [0] * 16, [0] * 16, 8)


def test_nan_loss_is_caught_within_log_every_steps():
    from gpt2ft.config import TrainConfig
    from gpt2ft.model import resolve_runtime
    from gpt2ft.train import NonFiniteLoss, fit

    cfg = TrainConfig(lr=1e-3, epochs=5, batch_size=1, log_every=4, device="cpu")
    model = _NaNAfter(k=6)
    with pytest.raises(NonFiniteLoss, match="step 8"):
        fit(cfg, model, _data(), None, resolve_runtime(cfg), progress=False)
    assert model.calls == 8  # stopped at the first log step after the NaN, not at the end


@pytest.mark.usefixtures("shared_setup")
def test_failing_trial_is_isolated(workdir, book, monkeypatch):
    """A trial that raises is FAIL in Optuna and FAILED in MLflow with the reason; the study
    goes on and still reaches n_trials completed trials."""
    import optuna
    from mlflow.tracking import MlflowClient

    import gpt2ft.trial as trial_mod
    from gpt2ft.cli import main

    monkeypatch.setenv("GPT2FT_CORPUS", str(book))
    real_fit = trial_mod.fit
    calls = {"n": 0}

    def flaky_fit(cfg, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_fit(cfg, *args, **kwargs)

    monkeypatch.setattr(trial_mod, "fit", flaky_fit)
    assert main(["study", "--config", str(TINY), "--quiet", "--n-trials", "2",
                 "--set", "study.keep_checkpoints=false"]) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir}/mlruns/optuna.db")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "out of memory" in study.trials[1].user_attrs["fail_reason"]
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("gpt2ft-tiny")
    runs = {r.data.tags.get("optuna.trial"): r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("gpt2ft.kind") == "trial"}
    assert runs["1"].info.status == "FAILED"
    assert "out of memory" in runs["1"].data.tags["failure_reason"]
    assert runs["0"].info.status == runs["2"].info.status == "FINISHED"


def test_atomic_dir_keeps_the_old_folder_on_error(tmp_path):
    from gpt2ft.fsutil import atomic_dir

    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("crash while writing")
    assert (target / "weights").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary left behind


def test_export_without_completed_trial(workdir):
    import optuna

    from gpt2ft.cli import main

    Path("mlruns").mkdir()
    optuna.create_study(study_name="empty", storage=f"sqlite:///{workdir}/mlruns/optuna.db",
                        directions=["maximize", "minimize"])
    assert main(["export", "--out", str(workdir / "out"), "--study-name", "empty"]) == 2
    assert not (workdir / "out").exists()


@pytest.mark.parametrize("url,masked", [
    ("postgresql+psycopg2://bob:s3cret@db:5432/optuna", "postgresql+psycopg2://bob:***@db:5432/optuna"),
    ("http://u:p@127.0.0.1:5000", "http://u:***@127.0.0.1:5000"),
    ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ("postgresql://bob@db/optuna", "postgresql://bob@db/optuna"),
])
def test_mask_url(url, masked):
    from gpt2ft.urls import mask_url

    assert mask_url(url) == masked


FAST = ["--quiet", "--set", "train.max_steps=3", "--set", "train.eval_batches=1", "--set", "sample.n_samples=2",
        "--set", "sample.new_tokens=16", "--set", "sample.trajectory=false"]


def _stores(workdir: Path):
    """(the Optuna study, its MLflow trial runs by trial number, its parent run)."""
    import optuna
    from mlflow.tracking import MlflowClient

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir}/mlruns/optuna.db")
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("gpt2ft-tiny").experiment_id])
    trials = {int(r.data.tags["optuna.trial"]): r for r in runs if r.data.tags.get("gpt2ft.kind") == "trial"}
    (parent,) = [r for r in runs if r.data.tags.get("gpt2ft.kind") == "study"]
    return study, trials, parent


@pytest.mark.usefixtures("shared_setup")
def test_trials_that_keep_failing_after_fit_stop_the_study(workdir, book, monkeypatch, capsys):
    """Trials whose samples cannot be measured fail after training: each is FAIL in Optuna, FAILED
    in MLflow with the reason (no FINISHED written before the check) and leaves no checkpoint;
    after study.max_failures of them in a row the study stops with one sentence and exit 3,
    and what completed is logged and picked."""
    import gpt2ft.trial as trial_mod
    from gpt2ft.checkpoints import Checkpoints
    from gpt2ft.cli import main

    monkeypatch.setenv("GPT2FT_CORPUS", str(book))
    real_measure, calls = trial_mod.measure_model, {"n": 0}

    def unmeasurable_after_first(*args, **kwargs):
        metrics, texts, ids = real_measure(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 1:
            metrics["memorization"] = math.nan
        return metrics, texts, ids

    monkeypatch.setattr(trial_mod, "measure_model", unmeasurable_after_first)
    assert main(["study", "--config", str(TINY), "--n-trials", "3", "--set", "study.max_failures=2",
                 "--set", "sample.final_n_samples=0", *FAST]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("gpt2ft: error: 2 trials failed in a row, the last (trial 2) with RuntimeError: metrics are "
                       "not finite (no samples to measure), so the study stopped (study.max_failures); its 1 "
                       "completed trial(s) are logged and picked from: fix the cause and run the same command again.")
    study, runs, parent = _stores(workdir)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "FAIL"]
    saved = Checkpoints(study.user_attrs["checkpoint_root"]).saved()
    for number in (1, 2):
        assert runs[number].info.status == "FAILED"
        assert "not finite" in runs[number].data.tags["failure_reason"]
        assert not [k for k in saved if k[0] == number]
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["selected"] == "true"
    assert study.user_attrs["selected"]["trial"] == 0 and parent.data.tags["selected_trial"] == "0"
    assert [k for k in saved if k[0] == 0]
    assert parent.info.status == "FAILED" and "2 trials failed in a row" in parent.data.tags["failure_reason"]


@pytest.mark.usefixtures("shared_setup")
def test_dead_writer_and_failing_replay_do_not_stop_the_study(workdir, book, monkeypatch, capsys, caplog):
    """The writer process dies: the jobs it had are lost (trials 0 and 1) and the next submit
    raises WriterDied (trial 2), whose writes are then made in process. At the end the replay
    redoes the lost ones, each on its own: trial 0's writes fail again and are reported, trial
    1's are stored, and the finish (re-measure, pick, parent run) still completes."""
    from concurrent.futures import Future

    import gpt2ft.study as study_mod
    from gpt2ft.cli import main
    from gpt2ft.writer import BackgroundWriter

    monkeypatch.setenv("GPT2FT_CORPUS", str(book))
    submitted = []

    def dying_writer(self, fn, *args, name="job"):
        submitted.append(name)
        if len(submitted) > 2:
            raise study_mod.WriterDied("the writer process has ended")
        lost: Future = Future()
        lost.set_exception(study_mod.WriterDied("the writer process ended"))
        return lost

    real_ops, replayed = study_mod.trial_ops, []

    def first_replay_fails(assets, res, *args):
        replayed.append(res.fit.steps)
        if len(replayed) == 1:
            raise OSError("disk full (injected)")
        return real_ops(assets, res, *args)

    monkeypatch.setattr(BackgroundWriter, "submit_remote", dying_writer)
    monkeypatch.setattr(study_mod, "trial_ops", first_replay_fails)
    assert main(["study", "--config", str(TINY), "--set", "study.writer=process",
                 "--set", "sample.final_n_samples=4", *FAST]) == 0
    err, warned = capsys.readouterr().err, caplog.text
    assert submitted == ["trial 0", "trial 1", "trial 2"]
    assert "the writer process has died (the writer process has ended); trial 2's writes" in warned
    assert "trial 0: its samples, tables and plots could not be written now (OSError: disk full (injected))" in warned
    assert "trial 1: its samples, tables and plots were not stored" in err
    assert "re-measured with 4 samples" in err
    study, runs, parent = _stores(workdir)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert runs[0].info.status == "RUNNING"  # left for the next run's replay
    assert runs[1].info.status == runs[2].info.status == "FINISHED"
    assert {"style_score", "log_seconds"} <= set(plain(runs[1].data.metrics)) & set(plain(runs[2].data.metrics))
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["selected_trial"] == str(study.user_attrs["selected"]["trial"])


def test_a_trial_killed_before_recording_its_run_id_is_still_found(tmp_path):
    """A kill between creating a trial's MLflow run and recording its id in Optuna leaves only the
    run's tags to find it by: exactly that study's trial, and only while it is RUNNING."""
    from gpt2ft.tracking import Tracker
    from gpt2ft.trial_writes import TrialWrites

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "found")
    tags = {"optuna.study": "s", "optuna.trial": 1, "gpt2ft.kind": "trial"}
    mine = tracker.start("trial-1", tags=tags)
    tracker.start("trial-1", tags={**tags, "optuna.study": "other"})
    tracker.start("trial-2", tags={**tags, "optuna.trial": 2})
    assert tracker.open_trial_runs("s", 1) == [mine.id]
    TrialWrites(tracker).fail("s", 1, None, "killed")
    assert tracker.open_trial_runs("s", 1) == []
    failed = tracker.client.get_run(mine.id)
    assert failed.info.status == "FAILED" and failed.data.tags["failure_reason"] == "killed"
    # The other study's trial 1 and this study's trial 2 are left RUNNING.
    assert sorted(r.info.status for r in tracker.runs()) == ["FAILED", "RUNNING", "RUNNING"]
