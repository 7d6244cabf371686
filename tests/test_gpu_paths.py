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
