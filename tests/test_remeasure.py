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


def test_the_remeasure_records_the_books_diversity_at_its_own_size():
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
    assert math.isnan(got["train_distinct_2"])  # 40 pieces cannot make 50 samples
    assert set(got) == {f"{src}_{n}" for src in ("book", "train") for n in S.SIZED}
    assert set(S.SIZED) <= set(L.DIVERSITY)
