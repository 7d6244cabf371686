"""Issue 19: the study buys each number once. Optuna learns from every measured point (derived
trials), and a trial stops once its points only copy (``study.stop_after``)."""
from __future__ import annotations

import json
import math

import pytest

from conftest import TINY
from test_trajectory import _train
from gpt2ft.ui_names import plain

# 8 windows of 32 tokens: 2 steps an epoch at batch 4, so a 3-epoch trial has two interior epochs.
SHORT = ["data.max_chars=1500", "data.segment_chars=100", "data.heldout_every=4", "train.max_steps=null",
         "study.epochs={low: 1, high: 3}", "study.batch_size=[4]", "sample.final_n_samples=4",
         "study.enqueue=[{lr: 1.0e-3, epochs: 3, batch_size: 4}]"]


#: Issue 36: the same study searches the LoRA rank, its 3-epoch trial a rank-8 one, the other full fine-tuning.
LORA = [*SHORT[:-1], "study.n_trials=2", "study.lora_r=[0, 8]",
        "study.enqueue=[{lr: 1.0e-3, epochs: 3, batch_size: 4, lora_r: 8},"
        " {lr: 1.0e-3, epochs: 1, batch_size: 4, lora_r: 0}]"]


@pytest.mark.usefixtures("shared_setup")
def test_every_interior_epoch_is_told_to_optuna_and_counts_for_nothing_else(workdir, book, monkeypatch):
    """Also issue 36 on the same study: ``study.lora_r`` a param of every trial and derived trial, of
    the trial's MLflow run and of candidates.csv; each trial's and derived trial's constraints its
    copying judges' values minus their bounds; the LoRA point's export retrains to its weights."""
    import optuna
    from mlflow.tracking import MlflowClient

    from gpt2ft import checkpoints as CK
    from gpt2ft.cli import main
    from gpt2ft.pick import style_score
    from gpt2ft.summary import summarize

    monkeypatch.setenv("GPT2FT_CORPUS", str(book))
    monkeypatch.setattr(CK.Checkpoints, "keep_only", lambda self, keep, finished: [])  # retention: tested apart
    sets = [x for o in LORA for x in ("--set", o)]
    assert main(["study", "--config", str(TINY), "--quiet", "--yes", *sets]) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}")
    trials = study.get_trials()
    trained = [t for t in trials if "derived_from" not in t.user_attrs]
    derived = [t for t in trials if "derived_from" in t.user_attrs]
    # n_trials counts trained trials: two ran, though trial 0's two epochs were told as trials first.
    assert [t.state.name for t in trained] == ["COMPLETE", "COMPLETE"]
    first = trained[0]
    mine = [t for t in derived if t.user_attrs["derived_from"] == first.number]
    assert sorted(t.params["epochs"] for t in mine) == [1, 2]
    book_ratio = study.user_attrs["references"]["book_top100_ratio"]
    points = {p["step"]: p for p in first.user_attrs["trajectory"]}
    for t in mine:
        assert t.state.name == "COMPLETE" and t.params["lr"] == first.params["lr"]
        p = points[t.user_attrs["step"]]
        assert p["epoch"] == t.params["epochs"]
        assert t.values == pytest.approx([style_score(p["top100_ratio"], book_ratio), p["memorization"]])
        assert "mlflow_run_id" not in t.user_attrs
    # No MLflow run of their own, no row of their own: the candidates are the trained trials' points.
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gpt2ft-tiny")
    kinds = [r.data.tags.get("gpt2ft.kind") for r in client.search_runs([exp.experiment_id])]
    assert kinds.count("trial") == 2
    s = summarize(study)
    assert sorted(s.table["number"]) == [t.number for t in trained]
    c = s.candidates
    assert set(c["number"]) == {t.number for t in trained} and not c.duplicated(["number", "step"]).any()
    assert len(c[c["number"] == first.number]) == 3  # epochs 1, 2 and the end, once each
    _the_rank_and_the_constraints(workdir, study, trained, mine, client.search_runs([exp.experiment_id]))
    _the_lora_points_export_retrains_to_its_weights(workdir, study, first)


def _the_rank_and_the_constraints(workdir, study, trained, mine, runs):
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from gpt2ft import judges as J
    from gpt2ft.summary import recorded_bounds

    assert [t.params["lora_r"] for t in trained] == [8, 0] and {t.params["lora_r"] for t in mine} == {8}
    runs = {r.data.tags.get("optuna.trial", "study"): r for r in runs}
    lora_run, full_run = runs[str(trained[0].number)], runs[str(trained[1].number)]
    assert (lora_run.data.params["trial.lora_r"], lora_run.data.params["train.method"]) == ("8", "lora")
    assert (full_run.data.params["trial.lora_r"], full_run.data.params["train.method"]) == ("0", "full")
    # tiny.yaml's GPT-2 (2 layers of 64): 3.3M parameters, all trained in full fine-tuning; at rank 8 the
    # adapters of c_attn (64 -> 192), c_proj (64 -> 64), c_fc (64 -> 256) and c_proj (256 -> 64), 16,384.
    trainable = [plain(r.data.metrics)["trainable_params"] for r in (lora_run, full_run)]
    assert trainable[0] == 2 * 8 * (256 + 128 + 320 + 320) and trainable[1] > 3e6
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    table = pd.read_csv(client.download_artifacts(runs["study"].info.run_id, "candidates.csv", str(workdir)))
    assert set(zip(table["number"], table["lora_r"])) == {(trained[0].number, 8), (trained[1].number, 0)}
    bounds = recorded_bounds(study.user_attrs)
    points = {p["step"]: p for p in trained[0].user_attrs["trajectory"]}
    told = [(t, t.user_attrs["metrics"]) for t in trained] + [(t, points[t.user_attrs["step"]]) for t in mine]
    for t, values in told:
        expect = {J.JUDGE_METRICS[j]: values[J.JUDGE_METRICS[j]] - b for j, b in bounds.by_judge().items()
                  if math.isfinite(b)}
        # The default judges only: the three reported measures are no constraints unless switched on.
        assert set(expect) == {"memorization", "extractable_rate", "heldout_loss"}
        assert t.constraints == pytest.approx(expect)


def _the_lora_points_export_retrains_to_its_weights(workdir, study, trial):
    """The rank-8 trial's checkpoint is its adapter; once it is gone the export retrains the point,
    and the folder holds that adapter merged onto the base model, bitwise."""
    import torch
    import yaml
    from safetensors.torch import load_file

    from gpt2ft import checkpoints as CK
    from gpt2ft import lora
    from gpt2ft.cli import main
    from gpt2ft.config import build_config
    from gpt2ft.model import base_model, load_tokenizer

    ckpt = CK.Checkpoints(study.user_attrs["checkpoint_root"])
    step = min(s for n, s in ckpt.saved() if n == trial.number)
    assert (ckpt.path(trial.number, step) / "adapter_config.json").is_file()
    config = build_config(yaml.safe_load(trial.user_attrs["config_yaml"]))
    kept = lora.load_merged(base_model(config, load_tokenizer(config.model)), ckpt.path(trial.number, step))
    ckpt.delete(trial.number, step)
    assert main(["export", "--out", "lora", "--trial", str(trial.number), "--step", str(step), "--no-register",
                 "--quiet"]) == 0
    assert json.loads((workdir / "lora" / "metrics.json").read_text())["retrained"] is True
    again = load_file(workdir / "lora" / "model.safetensors")
    state = kept.state_dict()  # a tied output layer is saved once: the folder may hold one key fewer
    assert set(again) <= set(state) and len(again) >= len(state) - 1
    assert all(torch.equal(again[k], state[k]) for k in again)
    assert "Method: LoRA through peft (lora_r=8" in (workdir / "lora" / "README.md").read_text()


@pytest.mark.usefixtures("shared_setup")
def test_a_trial_that_only_copies_stops_and_its_last_point_is_its_end(workdir, book, monkeypatch):
    """The memorizing tiny model of test_trajectory, for 40 epochs (160 steps without the stop): two points in a
    row that copy while held-out loss is above its lowest end it, a measurement earlier."""
    monkeypatch.setenv("GPT2FT_CORPUS", str(book))
    client, run = _train(workdir, "--set", "train.epochs=40", "--set", "sample.every_steps=10")
    m = plain(run.data.metrics)
    assert m["stopped_for_copying"] == 1.0
    steps = int(m["steps"])
    assert steps < 160 and m["stopped_for_copying_step"] == steps
    points = json.loads(open(client.download_artifacts(run.info.run_id, "trajectory.json", str(workdir))).read())
    assert [p["step"] for p in points] == [0, *range(10, steps + 1, 10)]  # the stop point is the end, once
    assert points[-1]["memorization"] == pytest.approx(m["memorization"]) and m["memorization"] > 0.02
    assert points[-1]["heldout_loss"] > min(p["heldout_loss"] for p in points if math.isfinite(p["heldout_loss"]))


def test_the_copying_stop_rule_on_literal_points():
    from gpt2ft import judges as J
    from gpt2ft.trial import _Tracer

    tracer = _Tracer.__new__(_Tracer)
    tracer.stop_after, tracer.copying_in_row = 2, 0
    tracer.bounds = J.Bounds(0.02, 0.05, 4.0)
    tracer.heldout = {0: 3.8, 4: 3.5}

    def point(step, mem, loss):
        tracer.heldout[step] = loss
        return tracer.only_copies({"step": step, "memorization": mem, "extractable_rate": 0.0, "heldout_loss": loss})
    assert not point(8, 0.3, 3.6)  # copies, held-out above its lowest: one in a row
    assert not point(12, 0.3, 3.4)  # copies, but held-out loss is at a new low: the row restarts
    assert not point(16, 0.0, 3.7)  # held-out above, but copies nothing
    assert not point(20, 0.5, 3.7) and point(24, 0.6, 3.9)  # two in a row: stop
    tracer.stop_after, tracer.copying_in_row = 0, 0
    assert not point(28, 0.9, 5.0)  # 0 = off
