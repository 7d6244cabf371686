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
