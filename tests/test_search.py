"""Issue 27, the search: the sampler's random start counts trained trials only (derived trials are
COMPLETE trials too), and the stopping rule counts trained trials only."""
from __future__ import annotations

import optuna
import pytest

from conftest import TINY
from gpt2ft import study as S
from gpt2ft.config import load_config
from gpt2ft.errors import ConfigError
from gpt2ft.summary import DERIVED


def _runner(n_trials: int, startup: int):
    """A StudyRunner over an in-memory study, with nothing but what ``objective`` reads."""
    config = load_config(TINY, [f"study.n_trials={n_trials}", f"study.startup_trials={startup}",
                                "study.epochs={low: 1, high: 10}", "study.batch_size=[2, 4, 8, 16]"])
    runner = S.StudyRunner.__new__(S.StudyRunner)
    runner.config, runner.n_trials, runner.command_id = config, n_trials, "test"
    runner.study = optuna.create_study(directions=["maximize", "minimize"])
    return runner


def _random_draw(seed: int, space) -> dict:
    """What the start-up sampler draws for a trial seeded ``seed``."""
    alone = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed))
    return S.suggest(alone.ask(), space)


def test_the_first_trained_trials_come_from_the_startup_sampler_though_derived_trials_complete(monkeypatch):
    runner = _runner(n_trials=5, startup=3)
    study, drawn = runner.study, {}

    def train(runner_, trial, params):
        # Each trained trial adds its interior epochs as COMPLETE trials, as tell_derived does.
        drawn[trial.number] = params
        for e in range(1, params["epochs"]):
            study.add_trial(optuna.trial.create_trial(
                params={**params, "epochs": e}, distributions=trial.distributions,
                values=[-abs(params["lr"] - 1e-3) * e, 0.001 * e], user_attrs={DERIVED: trial.number}))
        return -abs(params["lr"] - 1e-3), 0.0

    monkeypatch.setattr(S, "train_and_measure", train)
    study.optimize(runner.objective, n_trials=5, callbacks=[runner.stop_when_done])
    numbers = sorted(drawn)
    assert len(numbers) == 5 and len(study.trials) > 10  # TPE's own start-up (10) is spent on derived trials
    seed, space = runner.config.train.seed, runner.config.study
    assert [drawn[n] for n in numbers[:3]] == [_random_draw(seed + n, space) for n in numbers[:3]]
    # Past the start-up TPE models every COMPLETE trial: its draws are no longer the random ones.
    assert [drawn[n] for n in numbers[3:]] != [_random_draw(seed + n, space) for n in numbers[3:]]
    assert isinstance(S.make_sampler(study, space, 0), optuna.samplers.TPESampler)


def test_make_sampler_counts_trained_complete_trials_only():
    runner = _runner(n_trials=5, startup=2)
    study, space = runner.study, runner.config.study
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)}
    for i in range(12):  # twelve derived trials of one trained trial that has not completed
        study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, distributions=dist, values=[-0.1, 0.0],
                                                  user_attrs={DERIVED: 99}))
    assert isinstance(S.make_sampler(study, space, 0), optuna.samplers.RandomSampler)
    for i in range(2):
        study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, distributions=dist, values=[-0.1, 0.0]))
    assert isinstance(S.make_sampler(study, space, 0), optuna.samplers.TPESampler)


def test_startup_trials_is_validated():
    with pytest.raises(ConfigError, match="startup_trials"):
        load_config(TINY, ["study.startup_trials=0"])


def test_derived_trials_do_not_count_towards_n_trials():
    """The stopping rule: two trained trials of n_trials 3, with many derived ones, go on."""
    runner = _runner(n_trials=3, startup=1)
    study = runner.study
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)}
    for derived in (False, False, *[True] * 6):
        study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, distributions=dist, values=[-0.1, 0.0],
                                                  user_attrs={DERIVED: 0} if derived else {}))
    stops = []
    study.stop = lambda: stops.append(len(study.trials))
    runner.stop_when_done(study, study.trials[-1])
    assert stops == []
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, distributions=dist, values=[-0.1, 0.0]))
    runner.stop_when_done(study, study.trials[-1])
    assert stops == [9]
