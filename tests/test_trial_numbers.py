"""A trial's own numbers, from literal inputs: its training summary (``_fit_metrics``) and the
settings a study trial trains with (``trial_train_config``)."""
from __future__ import annotations

import math

import pytest

from conftest import TINY
from gpt2ft.train import FitResult
from gpt2ft.trial import EARLY_STOP_PATIENCE, _fit_metrics, trial_train_config


def _fit(heldout_curve, steps_per_epoch=10, steps=30) -> FitResult:
    # Three epochs of 10 steps, logged every 5 steps: the epoch means (history) differ from the
    # last log interval (train_curve) on purpose.
    return FitResult(history=[{"epoch": e, "step": 10 * e, "train_loss": 3.0 - 0.5 * e, "heldout_loss": 9.0}
                              for e in (1, 2, 3)],
                     train_curve=[(5 * i, 3.0 - 0.1 * i) for i in range(1, 7)],
                     heldout_curve=heldout_curve, steps=steps, tokens=3000, step_seconds=2.0,
                     steps_per_epoch=steps_per_epoch)


def test_best_epoch_is_where_the_best_evaluation_fell_inside_an_epoch():
    """train.eval_every puts evaluations between epoch ends; the best one at step 15 is half-way
    through epoch 2 (1.5 epochs trained), not epoch 0."""
    m = _fit_metrics(_fit([(0, 4.0), (10, 3.0), (15, 2.5), (20, 2.7), (30, 2.9)]))
    assert m["best_epoch"] == 1.5
    assert m["best_heldout_loss"] == 2.5


@pytest.mark.parametrize("best_step, epoch", [(0, 0.0), (10, 1.0), (30, 3.0)])
def test_best_epoch_at_epoch_ends_and_before_training(best_step, epoch):
    curve = [(s, 3.0 if s != best_step else 1.0) for s in (0, 10, 20, 30)]
    assert _fit_metrics(_fit(curve))["best_epoch"] == epoch


def test_best_epoch_is_nan_when_the_epoch_length_is_unknown():
    assert math.isnan(_fit_metrics(_fit([(0, 4.0), (15, 2.0)], steps_per_epoch=0))["best_epoch"])


def test_train_loss_and_overfit_gap_share_one_convention():
    """Both use the last log interval (train_curve's end: 2.4), not the last epoch's mean (1.5)."""
    m = _fit_metrics(_fit([(0, 4.0), (30, 2.9)]))
    assert m["train_loss"] == pytest.approx(2.4)
    assert m["heldout_loss"] == 2.9
    assert m["overfit_gap"] == pytest.approx(2.9 - 2.4)
    assert m["overfit_gap"] == pytest.approx(m["heldout_loss"] - m["train_loss"])
    assert m["heldout_perplexity"] == pytest.approx(math.exp(2.9))
    assert m["steps"] == 30.0 and m["tokens_per_second"] == 1500.0


def test_an_explicit_early_stop_patience_is_kept():
    """study.early_stop fills in the default patience only where train.early_stop_patience is 0."""
    from gpt2ft.config import load_config

    params = {"lr": 3e-4, "epochs": 5, "batch_size": 8}
    explicit = load_config(TINY, ["study.early_stop=true", "train.early_stop_patience=5"])
    assert EARLY_STOP_PATIENCE != 5
    assert trial_train_config(explicit, params).early_stop_patience == 5
    default = load_config(TINY, ["study.early_stop=true", "train.early_stop_patience=0"])
    assert trial_train_config(default, params).early_stop_patience == EARLY_STOP_PATIENCE
    tcfg = trial_train_config(explicit, params)
    assert (tcfg.lr, tcfg.epochs, tcfg.batch_size) == (3e-4, 5, 8)
