"""The search, for the study's loop (``gpt2ft.study``): what a trial draws and the sampler that
draws it, and what it is told of a trial's copying.

The space: the learning rate (log), epochs, batch size, and where the study searches them the
goldfish loss's k (``study.goldfish_k``) and the LoRA rank (``study.lora_r``, 0 = full
fine-tuning). The rank is drawn first, so that the rate comes from its method's own range
(``study.lora_lr`` for a rank above 0): one Optuna parameter ``lr`` whose range depends on the
rank, which Optuna allows (the same kind of distribution, the same log). TPE models the rate over
every trial's, so ranges that overlap learn from each other.

With ``study.constrained`` every trained and derived trial carries its copying judges as Optuna
constraints (``Trial.set_constraint``, Optuna 5's API; ``TPESampler(constraints_func=...)`` is
deprecated there): each judge's value minus its bound. TPE ranks a trial that fails any below
every feasible one, by how far it fails, so past its random start-up it proposes fewer points
that copy. The random start-up draws ignore them.
"""
from __future__ import annotations

from typing import Any, Mapping

import optuna

from gpt2ft import judges as J
from gpt2ft.studyconfig import StudyConfig
from gpt2ft.summary import recorded_bounds, trained


def suggest(trial: optuna.Trial, space: StudyConfig, rank: int = 0) -> dict[str, Any]:
    """A trial's params: lr, epochs, batch_size, and goldfish_k and lora_r where searched (params
    of every trial then, carried by derived trials). ``rank`` is the train section's (its rate's
    range when the rank is not searched)."""
    drawn = {}
    if space.lora_r is not None:
        drawn["lora_r"] = trial.suggest_categorical("lora_r", list(space.lora_r))
    lr = space.lr_range(drawn.get("lora_r", rank))
    params = {
        "lr": trial.suggest_float("lr", lr.low, lr.high, log=lr.log),
        "epochs": trial.suggest_int("epochs", space.epochs.low, space.epochs.high),
        "batch_size": trial.suggest_categorical("batch_size", list(space.batch_size)),
    }
    if space.goldfish_k is not None:
        params["goldfish_k"] = trial.suggest_categorical("goldfish_k", list(space.goldfish_k))
    return {**params, **drawn}


def make_sampler(study: optuna.Study, space: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    """Random draws until ``space.startup_trials`` trained trials are COMPLETE, then TPE on every
    COMPLETE trial, derived ones included. TPE's own random start counts every COMPLETE trial, and
    a trained trial of E epochs adds E - 1 derived ones: in gulliver.yaml (1-10 epochs) it ended
    after two or three trained configurations, from which TPE then modelled the rate and batch size."""
    done = len(trained(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))))
    if done < space.startup_trials:
        return optuna.samplers.RandomSampler(seed=seed)  # what TPE's start-up draws with the same seed
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=0)


def constraints(attrs: Mapping[str, Any], metrics: Mapping[str, float], space: StudyConfig) -> dict[str, float]:
    """The constraints a trial (its end's ``metrics``) or a derived trial (its point's) is told
    with: ``judges.constraint_values`` against the bounds the study recorded in ``attrs`` (the
    pick's own judges); none when ``study.constrained`` is off."""
    return J.constraint_values(metrics, recorded_bounds(dict(attrs))) if space.constrained else {}
