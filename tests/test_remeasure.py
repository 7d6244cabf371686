"""Issue 27, the pick's re-measure: judged against references of its own size, followed until the
pick and its runner-up are both re-measured, and a confidence by the rule's own criterion."""
from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest

from gpt2ft import leaders as L
from gpt2ft import metrics as M
from gpt2ft import summary as S
from gpt2ft.summary import summarize
from test_candidates import FakeStudy, FakeTrial, pt


# --- item 2: every value against a reference of its own size ---------------------------------

def _sized_study(**attrs) -> FakeStudy:
    """Trial 0's step 4 re-measured on 50 samples: distinct_2 0.55, which the book's value at 10
    samples (0.89, line 0.593) calls a loop and the book's at 50 samples (0.75, line 0.5) does not."""
    trial = FakeTrial(0, [pt(0, 0.37), pt(4, 0.52, distinct_2=0.8, repetition_4=0.0),
                          pt(8, 0.50, distinct_2=0.8, repetition_4=0.0)])
    study = FakeStudy([trial], remeasure_0_4={"top100_ratio": 0.552, "memorization": 0.0, "distinct_2": 0.55,
                                              "repetition_4": 0.0, "n_samples": 50}, **attrs)
    study.user_attrs["references"].update(book_distinct_2=0.89, book_repetition_4=0.004)
    return study


def test_a_remeasured_candidate_is_judged_against_the_book_at_its_own_size():
    sized = {f"{src}_{name}": v for src in ("book", "train") for name, v in
             (("distinct_1", 0.6), ("distinct_2", 0.75), ("distinct_3", 0.9), ("repetition_4", 0.004))}
    s = summarize(_sized_study(**{S.sized_key(50): sized}))
    row = s.candidate(0, 4)
    assert row["remeasured"] and not row["degenerate"] and s.selected == (0, 4)
    # Trial measurements (10 samples) keep the study's own references.
    assert S.references_at({"book_distinct_2": 0.89}, {S.sized_key(50): sized}, math.nan) == {"book_distinct_2": 0.89}


def test_without_references_of_its_size_a_remeasure_is_not_judged_by_diversity():
    s = summarize(_sized_study())
    assert not s.candidate(0, 4)["degenerate"] and s.selected == (0, 4)


def test_the_remeasure_records_the_books_diversity_at_its_own_size(capsys):
    rng = random.Random(0)
    pieces = [[rng.randrange(300) for _ in range(100)] for _ in range(120)]
    assets = SimpleNamespace(config=SimpleNamespace(train=SimpleNamespace(seed=3)),
                             references=SimpleNamespace(samples={"book": pieces, "train": pieces[:40]}))
    study = FakeStudy([])
    got = L.record_sized_references(study, assets, 50)
    assert study.user_attrs[S.sized_key(50)] == got
    assert got["book_distinct_2"] == M.matched_reference(pieces, 50, lambda s: M.distinct_n(s, 2), 20, 3)[0]
    at_10 = M.matched_reference(pieces, 10, lambda s: M.distinct_n(s, 2), 20, 3)[0]
    assert got["book_distinct_2"] < at_10  # distinct-n falls as text grows
    # Issue 34 item 9: 40 pieces cannot make 50 samples; the reference was NaN (the degenerate
    # guard off for the finalists), now it is matched at the 40 the text allows, and said so.
    at_40 = M.matched_reference(pieces[:40], 40, lambda s: M.distinct_n(s, 2), 20, 3)[0]
    assert math.isfinite(at_40) and got["train_distinct_2"] == at_40
    err = capsys.readouterr().err
    assert "the train's references have 40 pieces, fewer than the re-measure's 50" in err and "book's" not in err
    assert set(got) == {f"{src}_{n}" for src in ("book", "train") for n in S.SIZED}
    assert set(S.SIZED) <= set(L.DIVERSITY)


# --- item 3: the re-measure follows the pick; a confidence whenever there is a runner-up --------

class FakeCheckpoints:
    """Checkpoints on disk as a set of keys; a loaded model is its key."""

    enabled = True

    def __init__(self, root, keys):
        self.root, self.on_disk, self.saved_keys = root, set(keys), []

    def path(self, number, step):
        p = self.root / f"trial-{number}-step-{step}"
        if (number, step) in self.on_disk:
            p.mkdir(parents=True, exist_ok=True)
        return p

    def load(self, number, step, runtime, base=None):
        return ("model", (number, step)) if (number, step) in self.on_disk else None

    def save(self, number, step, model, tokenizer):
        self.on_disk.add((number, step))
        self.saved_keys.append((number, step))


def _samples(ratio: float, n: int, spread: int = 6) -> list[list[int]]:
    """``n`` samples of 100 tokens whose pooled top-100 share is ``ratio`` (ids < 100 are the top)."""
    out = []
    for i in range(n):
        k = round(ratio * 100) + (spread if i % 2 else -spread)
        out.append(list(range(k)) + [1000 + j for j in range(100 - k)])
    return out


def _fake_assets(n_ngram: int = 8):
    from gpt2ft.ngram_index import NgramIndex

    config = SimpleNamespace(train=SimpleNamespace(seed=0), metrics=SimpleNamespace(ngram=n_ngram))
    return SimpleNamespace(config=config,
                           references=SimpleNamespace(samples={}), top_ids=frozenset(range(100)),
                           index=NgramIndex([5000 + i for i in range(64)], max_n=16), runtime=None, tokenizer=None,
                           classifier=None, fresh_model=lambda train=None: None)


def _measure_by_key(values):
    def measure(assets, model, n, seed):
        ratio = values[model[1]]
        return {"top100_ratio": ratio, "memorization": 0.0}, [], _samples(ratio, n)
    return measure


def _moving_study() -> FakeStudy:
    """0@8 leads, 1@4 is its runner-up; re-measured, both fall behind 1@8, which kept no checkpoint."""
    return FakeStudy([FakeTrial(0, [pt(0, 0.37), pt(4, 0.50), pt(8, 0.552), pt(12, 0.551, mem=0.3)]),
                      FakeTrial(1, [pt(0, 0.37), pt(4, 0.545), pt(8, 0.53)])])


def test_the_remeasure_follows_the_pick_until_pick_and_runner_up_are_both_remeasured(tmp_path, monkeypatch):
    study = _moving_study()
    assert summarize(study).selected == (0, 8)
    monkeypatch.setattr(L, "measure_model", _measure_by_key({(0, 8): 0.50, (1, 4): 0.51, (1, 8): 0.548}))
    ckpt, retrained, logged = FakeCheckpoints(tmp_path, {(0, 8), (1, 4)}), [], []

    def retrain(key):
        retrained.append(key)
        return ("model", key)
    assert L.remeasure(study, _fake_assets(), ckpt, 20, 0, lambda n, m: logged.append(n), retrain) == 3
    assert retrained == [(1, 8)] and (1, 8) in ckpt.saved_keys  # kept after its retrain, for export
    assert study.user_attrs["remeasure_1_8"]["retrained"] and not study.user_attrs["remeasure_0_8"]["retrained"]
    value = L.measure_confidence(study, 0)
    s = summarize(study)
    assert s.selected == (1, 8) and s.candidate(1, 8)["remeasured"] and s.candidate(1, 4)["remeasured"]
    assert study.user_attrs["pick_confidence"]["runner_up"] == [1, 4]
    assert value > 0.8 and s.p_closer_by_top100 == value


def test_the_remeasure_records_per_sample_style_prob_and_the_classifier_settles_a_tie(tmp_path, monkeypatch):
    """Pick and runner-up indistinguishable by top100_ratio on the re-measure: the classifier's
    per-sample probabilities, recorded with it, decide; the same two with the classifier unsure
    fall back on the lower held-out loss."""
    study = FakeStudy([FakeTrial(0, [pt(0, 0.37), pt(4, 0.54, loss=3.6)]),
                       FakeTrial(1, [pt(0, 0.37), pt(4, 0.545, loss=3.9)])])
    assert summarize(study).selected == (1, 4)

    def measure(assets, model, n, seed):  # the same top-100 hits; texts that say whose they are
        return {"top100_ratio": 0.54, "memorization": 0.0}, [f"{model[1]}:{i}" for i in range(n)], _samples(0.54, n)
    monkeypatch.setattr(L, "measure_model", measure)

    def assets(by_trial):
        def prob(texts):
            return [by_trial[int(t[1])] + (0.05 if int(t.split(":")[1]) % 2 else -0.05) for t in texts]
        return SimpleNamespace(**{**vars(_fake_assets()), "classifier": SimpleNamespace(usable=True, prob=prob)})
    ckpt = FakeCheckpoints(tmp_path, {(0, 4), (1, 4)})
    L.remeasure(study, assets({0: 0.2, 1: 0.6}), ckpt, 20, 0, lambda n, m: None)
    probs = study.user_attrs["remeasure_1_4"]["style_probs"]
    assert len(probs) == 20 and probs[:2] == pytest.approx([0.55, 0.65])
    assert L.measure_confidence(study, 0) < 0.8
    recorded = study.user_attrs["pick_confidence"]  # equal re-measures: either may lead, trial 1 decides
    assert {tuple(recorded["selected"]), tuple(recorded["runner_up"])} == {(0, 4), (1, 4)}
    assert recorded["style_value"] == (1.0 if recorded["selected"] == [1, 4] else 0.0)
    s = summarize(study)
    assert s.selected == (1, 4) and "the style classifier finds it more like the book" in s.pick.reason
    # The classifier sees no difference: the lower held-out loss, trial 0.
    for key in ("remeasure_0_4", "remeasure_1_4", "pick_confidence"):
        del study.user_attrs[key]
    L.remeasure(study, assets({0: 0.4, 1: 0.4}), ckpt, 20, 0, lambda n, m: None)
    L.measure_confidence(study, 0)
    assert study.user_attrs["pick_confidence"]["style_value"] == 0.5
    assert summarize(study).selected == (0, 4)


def test_each_trial_keeps_its_best_eligible_point_and_the_runner_up():
    study = _moving_study()
    s = summarize(study)
    # 0@8 is the pick, 1@4 its runner-up and trial 1's best; 0@12 copies; 0@4 and 1@8 are neither.
    assert L.keep_set(s) >= {(0, 8), (1, 4)} and (0, 12) not in L.keep_set(s)
    study.trials[1].trajectory[2]["top100_ratio"] = 0.549  # now trial 1's best, and the runner-up
    assert {(0, 8), (1, 8)} <= L.keep_set(summarize(study))
    # A trial whose best point is far behind the pick keeps that point still.
    study.trials.append(FakeTrial(2, [pt(0, 0.37), pt(4, 0.40), pt(8, 0.42)]))
    assert (2, 8) in L.keep_set(summarize(study)) and (2, 4) not in L.keep_set(summarize(study))


def test_one_eligible_candidate_says_there_was_nothing_to_compare():
    study = FakeStudy([FakeTrial(0, [pt(0, 0.37), pt(4, 0.53), pt(8, 0.55, mem=0.3)])])
    s = summarize(study)
    assert s.selected == (0, 4) and math.isnan(s.p_closer_by_top100)
    assert s.pick.reason.endswith("no selected_p_closer_by_top100: the only eligible candidate, nothing to compare "
                                  "it with")
    assert math.isnan(L.measure_confidence(study, 0))


# --- item 4: under the knee the confidence compares by the knee ---------------------------------

def _knee_rows():
    from gpt2ft import pick as P

    # A: least copying; B: the knee; C: the best style, copying most; D: between A and B.
    return {"A": P.TrialRow(0, -0.10, 0.0, step=4), "B": P.TrialRow(1, -0.02, 0.002, step=4),
            "C": P.TrialRow(2, -0.001, 0.019, step=4), "D": P.TrialRow(3, -0.05, 0.001, step=4)}


def test_under_the_knee_the_runner_up_is_second_by_the_knee_score():
    from gpt2ft import judges as J
    from gpt2ft import pick as P

    r, bounds = _knee_rows(), J.Bounds(0.02, 0.05, 4.0)
    rows = list(r.values())
    assert P.pick(rows, "knee", bounds=bounds).key == r["B"].key
    assert P.runner_up(rows, r["B"].key, bounds, "knee").key == r["D"].key
    assert P.runner_up(rows, r["B"].key, bounds).key == r["C"].key  # by style: the best-style one
    knee = P.criterion(rows, "knee", bounds)
    assert knee(r["B"].style, r["B"].memorization) > knee(r["D"].style, r["D"].memorization)


def _remeasured(ratio: float, copied: int, n: int = 20) -> dict:
    hits = [round(ratio * 100) + (3 if i % 2 else -3) for i in range(n)]
    return {"top100_ratio": ratio, "memorization": copied / (93 * n), "n_samples": n, "top100_hits": hits,
            "lengths": [100] * n, "copied": [copied if i == 0 else 0 for i in range(n)], "ngrams": [93] * n}


def test_the_knee_pick_is_confident_against_its_own_runner_up():
    """Trial 1 (the knee) against trial 3 (second by the knee): trial 2 reads closer to the book,
    but the knee does not rank by style alone, so the confidence must not compare by style."""
    def trial(number, top, mem, loss):
        return FakeTrial(number, [pt(0, 0.37), pt(4, top, mem=mem, loss=loss)])
    study = FakeStudy([trial(0, 0.45, 0.0, 3.5), trial(1, 0.53, 0.002, 3.7), trial(2, 0.549, 0.019, 3.6),
                       trial(3, 0.50, 0.001, 3.6)], pick_rule="knee")
    for number, top, copied in ((0, 0.45, 0), (1, 0.53, 4), (2, 0.549, 35), (3, 0.50, 2)):
        study.user_attrs[f"remeasure_{number}_4"] = _remeasured(top, copied)
    assert summarize(study).selected == (1, 4)
    value = L.measure_confidence(study, 0)
    assert study.user_attrs["pick_confidence"]["runner_up"] == [3, 4]
    s = summarize(study)
    assert value > 0.8 and s.selected == (1, 4) and "selected_p_closer_by_top100" in s.pick.reason


# --- item 5: what names the pick names its epoch count ------------------------------------------

def test_selected_params_and_epochs_name_the_picked_points_epoch_count():
    from gpt2ft.study import _selection

    study = FakeStudy([FakeTrial(0, [pt(0, 0.37, loss=3.8), pt(4, 0.50), pt(8, 0.54, loss=3.62),
                                     pt(12, 0.551, mem=0.3, ext=0.5, loss=5.1)])])
    s = summarize(study)
    assert s.selected == (0, 8) and study.trials[0].params["epochs"] == 3  # picked at epoch 2 of 3
    run_id, tags, metrics, _ = _selection(study, s, s.candidate(0, 8))
    assert run_id == "run-0" and tags["selected_step"] == 8
    assert tags["selected_params"] == {"lr": 1e-4, "epochs": 2, "batch_size": 4}
    assert metrics["selected_epochs"] == 2 and metrics["selected_epoch"] == 2
    assert metrics["selected_top100_ratio"] == 0.54 and metrics["selected_heldout_loss"] == 3.62


@pytest.mark.usefixtures("shared_setup")
def test_a_study_whose_checkpoints_are_gone_still_remeasures_and_is_confident(workdir, book, monkeypatch):
    """Every finished trial's checkpoints deleted: the finish retrains the pick and its runner-up
    to their steps, re-measures them, and the parent run has selected_p_closer_by_top100; the retrained
    candidate is kept for export, bitwise the weights it would retrain to."""
    import optuna
    from mlflow.tracking import MlflowClient

    from conftest import TINY
    from gpt2ft import checkpoints as CK
    from gpt2ft.cli import main

    monkeypatch.setenv("GPT2FT_CORPUS", str(book))
    keep_only = CK.Checkpoints.keep_only
    monkeypatch.setattr(CK.Checkpoints, "keep_only", lambda self, keep, finished: keep_only(self, [], finished))
    overrides = ["sample.every_steps=5", "train.max_steps=10", "study.n_trials=2", "sample.final_n_samples=6",
                 "study.enqueue=[{lr: 1.0e-3, epochs: 1, batch_size: 4}, {lr: 3.0e-4, epochs: 1, batch_size: 4}]"]
    sets = [x for o in overrides for x in ("--set", o)]
    assert main(["study", "--config", str(TINY), "--quiet", "--yes", *sets]) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}")
    s = summarize(study)
    assert s.candidates["eligible"].sum() >= 2, s.candidates[["number", "step", "why_not"]]
    pick, runner = L.pick_pair(s)
    for key in (pick.key, runner.key):
        assert study.user_attrs[S.remeasure_key(*key)]["retrained"]
    assert study.user_attrs["pick_confidence"]["selected"] == list(pick.key)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    # Under its name or a chart section's prefix ("Pick/selected_p_closer_by_top100").
    logged = [v for k, v in parent.data.metrics.items() if k.split("/")[-1] == "selected_p_closer_by_top100"]
    assert len(logged) == 1 and math.isfinite(logged[0])
    assert pick.key in CK.Checkpoints(study.user_attrs["checkpoint_root"]).saved()


def test_a_remeasure_without_copying_counts_still_gives_a_style_confidence():
    """A study re-measured by an older version kept top-100 counts only: enough for bounded_style."""
    study = FakeStudy([FakeTrial(0, [pt(0, 0.37), pt(4, 0.55)]), FakeTrial(1, [pt(0, 0.37), pt(4, 0.50)])])
    for number, top in ((0, 0.55), (1, 0.50)):
        study.user_attrs[f"remeasure_{number}_4"] = {k: v for k, v in _remeasured(top, 0).items()
                                                     if k not in ("copied", "ngrams")}
    assert L.measure_confidence(study, 0) > 0.95
    study.user_attrs["pick_rule"] = "knee"  # the knee weighs copying: without its counts, no confidence
    assert math.isnan(L.measure_confidence(study, 0))


def test_a_training_trial_keeps_its_best_eligible_points_in_style(tmp_path):
    """The keeper (``study.checkpoints_per_trial`` = 2): each point every judge lets through is saved
    while it is among the trial's two best in style; a copying point is never saved."""
    study = FakeStudy([])
    ckpt = FakeCheckpoints(tmp_path, set())
    deleted = []
    ckpt.delete = lambda number, step: (deleted.append(step), ckpt.on_disk.discard((number, step)))
    keep = L.keeper(study, 7, ckpt, None, 2)
    for step, top, mem in ((5, 0.45, 0.0), (10, 0.50, 0.0), (15, 0.553, 0.0), (20, 0.554, 0.3), (25, 0.40, 0.0)):
        keep(None, pt(step, top, mem=mem))
    assert ckpt.on_disk == {(7, 10), (7, 15)} and deleted == [5]
    assert [s for _, s in ckpt.saved_keys] == [5, 10, 15]  # 20 copies; 25 is worse than both kept
