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


def test_the_lora_rank_is_a_categorical_param_and_picks_the_rate_range_of_its_method():
    """Issue 36: study.lora_r is drawn beside the rest, 0 meaning full fine-tuning; a rank above 0
    draws its rate from study.lora_lr, rank 0 from study.lr. One Optuna parameter lr throughout."""
    config = load_config(TINY, ["study.lora_r=[0, 8, 64]", "study.lora_lr={low: 5.0e-3, high: 2.0e-2}",
                                "study.lr={low: 1.0e-5, high: 1.0e-4}"])
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(0))
    drawn = []
    for _ in range(24):
        trial = study.ask()
        drawn.append(S.suggest(trial, config.study))
        study.tell(trial, [0.0, 0.0])
    assert {p["lora_r"] for p in drawn} == {0, 8, 64}
    for p in drawn:
        low, high = (1e-5, 1e-4) if p["lora_r"] == 0 else (5e-3, 2e-2)
        assert low <= p["lr"] <= high, p
    assert isinstance(study.trials[0].distributions["lora_r"], optuna.distributions.CategoricalDistribution)
    # Not searched: no lora_r param, and the train section's method picks the range.
    plain = load_config(TINY, ["study.lora_lr={low: 5.0e-3, high: 2.0e-2}", "train.method=lora"])
    params = S.suggest(optuna.create_study().ask(), plain.study, plain.train.rank)
    assert "lora_r" not in params and 5e-3 <= params["lr"] <= 2e-2


def test_enqueued_designs_name_the_rank_or_train_at_the_configs():
    config = load_config(TINY, ["study.lora_r=[0, 8]", "study.lora_lr={low: 5.0e-3, high: 2.0e-2}",
                                "study.enqueue=[{lr: 1.0e-2, epochs: 1, batch_size: 2, lora_r: 8},"
                                " {lr: 1.0e-3, epochs: 2, batch_size: 4}]"])
    designs = config.study.designs(config.train.goldfish_k, config.train.rank)
    assert [d["lora_r"] for d in designs] == [8, 0]
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial(designs[0])
    assert S.suggest(study.ask(), config.study) == designs[0]
    with pytest.raises(ConfigError, match=r"enqueue\[0\] \(0.001, 1, 2, lora_r 8\) lies outside the search space"):
        load_config(TINY, ["study.lora_r=[0, 8]", "study.lora_lr={low: 5.0e-3, high: 2.0e-2}",
                           "study.enqueue=[{lr: 1.0e-3, epochs: 1, batch_size: 2, lora_r: 8}]"])
    with pytest.raises(ConfigError, match=r"trains at rank 8 \(train.method lora\), which is not in study.lora_r"):
        load_config(TINY, ["study.lora_r=[0, 64]", "train.method=lora",
                           "study.enqueue=[{lr: 1.0e-3, epochs: 1, batch_size: 2}]"])


def test_the_constraints_are_each_judges_value_minus_its_bound():
    """Issue 36 item 3: what the sampler is told of a point's copying. Above 0 exactly where the
    judge fails it (the bound is inclusive); a judge that is off or has no evidence is left out."""
    import math

    from gpt2ft import judges as J

    bounds = J.Bounds(memorization=0.02, extraction=0.05, heldout_loss=4.0, discoverable=0.05)
    values = {"memorization": 0.03, "extractable_rate": 0.05, "heldout_loss": 3.5, "near_verbatim": 0.9,
              "discoverable_rate": math.nan}
    got = J.constraint_values(values, bounds)
    assert got == pytest.approx({"memorization": 0.01, "extractable_rate": 0.0, "heldout_loss": -0.5})
    assert {J.JUDGE_METRICS[j] for j, _ in J.copying_failures(values, bounds)} == {k for k, v in got.items() if v > 0}
    # The study's recorded bounds and judges decide (held-out loss not among them here); off, nothing is told.
    attrs = {**bounds.as_attrs(), "judges": ["memorization", "extraction"]}
    assert S.constraints(attrs, values, load_config(TINY).study) == pytest.approx(
        {"memorization": 0.01, "extractable_rate": 0.0})
    assert S.constraints(attrs, values, load_config(TINY, ["study.constrained=false"]).study) == {}
