"""Issue 35: paths a GPU study walks that the CPU suite did not reach (the retrain's stop, the
resume's estimate)."""
from __future__ import annotations

from conftest import TINY
from gpt2ft.config import load_config
from gpt2ft.trial import candidate_train_config, trial_train_config

PARAMS = {"lr": 1e-4, "epochs": 2, "batch_size": 2}


def test_a_retrain_to_a_candidates_step_has_no_early_stop():
    """Item 5: the trial went on past ``step``, so its early stop could only cut a retrain short
    (on CUDA a nondeterministic held-out loss on a plateau can trip it): export then failed."""
    config = load_config(TINY, ["study.early_stop=true"])
    assert trial_train_config(config, PARAMS).early_stop_patience > 0  # the trial itself stops early
    retrain = candidate_train_config(config, PARAMS, 7)
    assert (retrain.max_steps, retrain.early_stop_patience) == (7, 0)
    assert retrain.lr == PARAMS["lr"] and retrain.batch_size == PARAMS["batch_size"]


def test_a_trials_final_writes_are_stored_only_once_optuna_holds_it_complete(monkeypatch):
    """Item 11 (the flaky crash test): the writes end the trial's run FINISHED; queued before the
    tell, a worker stopped between the two left a FAILED trial whose run the writer process still
    ended FINISHED. They now wait for after_trial, which Optuna calls after the tell."""
    import optuna

    from gpt2ft import study as S

    stored = []
    runner = S.StudyRunner.__new__(S.StudyRunner)
    runner.config = load_config(TINY, ["study.derived_trials=false"])
    runner.writes = type("W", (), {"store": lambda self, *a: stored.append(a)})()
    monkeypatch.setattr(runner, "apply_pick", lambda say=True: None, raising=False)
    monkeypatch.setattr(S, "trial_end_line", lambda *a: "")
    monkeypatch.setattr(S, "prune_checkpoints", lambda r: None)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for state in ("FAIL", "COMPLETE"):
        trial = study.ask()
        runner.unstored = (trial.number, f"run-{trial.number}", [("end", "FINISHED")], 3)
        study.tell(trial, [0.0, 0.0] if state == "COMPLETE" else None, state=getattr(optuna.trial.TrialState, state))
        runner.after_trial(study, study.trials[trial.number])
        assert runner.unstored is None
    assert stored == [("run-1", [("end", "FINISHED")], 3, 1)]  # the FAILED trial's run is not ended FINISHED


def _cost_assets(config):
    import torch
    from types import SimpleNamespace
    return SimpleNamespace(config=config, runtime=SimpleNamespace(device=torch.device("cpu")),
                           data=SimpleNamespace(train_windows=torch.zeros(570, 8)), fresh_model=lambda *a: None)


def test_a_resumed_study_is_estimated_by_the_trials_left(monkeypatch, capsys):
    """Item 8: 20 trials of two hours' training in all, refused without --yes; resumed with 19
    complete, the one left (6 minutes) runs and the estimate says so."""
    import pytest

    from gpt2ft import cli
    from gpt2ft.errors import UserError

    config = load_config(TINY, ["study.n_trials=20", "train.max_steps=null"])
    assets = _cost_assets(config)
    step = 2 * 3600 / cli.study_steps(570, config)
    monkeypatch.setattr("gpt2ft.train.seconds_per_step", lambda *a: step)
    with pytest.raises(UserError, match="20 trials of"):
        cli._refuse_long_cpu_study(assets, yes=False)
    cli._refuse_long_cpu_study(assets, yes=False, done=19)
    assert "(1 of 20 trials left of random-gpt2) takes about 6 min" in capsys.readouterr().err
    cli._refuse_long_cpu_study(assets, yes=False, done=20)  # nothing left: nothing timed, nothing said
    assert capsys.readouterr().err == ""


def test_trials_complete_counts_trained_complete_trials_of_the_named_study(tmp_path):
    import optuna

    from gpt2ft.coordination import open_storage, trials_complete
    from gpt2ft.summary import DERIVED

    url = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    for value, attrs in ((1.0, {}), (2.0, {}), (3.0, {DERIVED: 0})):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    assert (trials_complete(url, "s"), trials_complete(url, "other")) == (2, 0)


def test_an_export_that_retrains_says_how_long_first(monkeypatch, tmp_path, capsys):
    """Item 8: a candidate whose checkpoint is gone is retrained; the estimate (one step timed at
    the trial's batch size, times its steps) comes before the retrain starts."""
    from types import SimpleNamespace

    from gpt2ft import export as E
    from gpt2ft.study import config_yaml

    config = load_config(TINY)
    said = []
    monkeypatch.setattr(E, "prepare", lambda *a, **k: SimpleNamespace(
        fresh_model=lambda *a: None, data=SimpleNamespace(train_windows=None), runtime=SimpleNamespace(
            device=SimpleNamespace(type="cpu")), tokenizer=SimpleNamespace(save_pretrained=lambda f: None)))
    monkeypatch.setattr(E, "seconds_per_step", lambda model, cfg, *a: said.append(cfg.batch_size) or 30.0)

    def retrain(*a, **k):
        said.append(capsys.readouterr().err)
        model = SimpleNamespace(save_pretrained=lambda f: None)
        model.to = lambda d: model
        return model, SimpleNamespace(steps=240, heldout_curve=[(240, 3.0)])

    monkeypatch.setattr(E, "retrain", retrain)
    info = {"config_yaml": config_yaml(config), "corpus": "x", "params": PARAMS, "step": 240, "metrics": {}}
    E._retrain(info, tmp_path, SimpleNamespace(corpus=None, quiet=True))
    assert said[0] == PARAMS["batch_size"]
    assert "retraining 240 steps takes about 2.0 hours on cpu" in said[1]
