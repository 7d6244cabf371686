"""The study run's description: the pick, why, every candidate and the two figures, in Markdown."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd

from gpt2ft.judges import Bounds
from gpt2ft.run_page import study_note


def summary(selected=(1, 8), confidence=0.77) -> SimpleNamespace:
    cands = pd.DataFrame({"number": [1, 1, 2], "step": [8, 12, 12], "epoch": [2.0, 3.0, 3.0],
                          "top100_ratio": [0.531, 0.56, 0.55], "memorization": [0.0, 0.0017, 0.0287],
                          "extractable_rate": [0.0, 0.0, 0.25], "heldout_loss": [3.839, 4.029, 4.881],
                          "n_samples": [20, 20, 10], "eligible": [True, True, False],
                          "selected": [k == selected for k in [(1, 8), (1, 12), (2, 12)]],
                          "why_not": ["", "", "memorization 0.0287 > 0.02; heldout_loss 4.88 > 4.15"]})
    rows = {(r["number"], r["step"]): r for r in cands.to_dict("records")}
    return SimpleNamespace(pick=SimpleNamespace(reason="trial 1 at step 12 is the best style score"),
                           selected=selected, candidate=lambda n, s: rows[(n, s)], candidates=cands,
                           p_closer_by_top100=confidence, p_closer_by_style_prob=0.9,
                           references={"book_top100_ratio": 0.554, "base_top100_ratio": 0.407},
                           bounds=Bounds(memorization=0.02, extraction=0.05, heldout_loss=4.145))


def test_the_note_leads_with_the_pick_and_shows_every_candidate_and_both_figures() -> None:
    note = study_note(summary(), "abc123")
    first = note.split("\n\n")[0]
    assert "trial 1 at step 8 (epoch 2)" in first
    assert "`selected_p_closer_by_top100` 0.77, `selected_p_closer_by_style_prob` 0.90" in first
    assert "0.531" in first and "0.407" in first and "0.554" in first  # pick, base model, book
    assert "Why: trial 1 at step 12 is the best style score" in note
    rows = [line for line in note.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 3  # header and one row per candidate
    assert rows[1].endswith("| **selected** |") and "out: memorization 0.0287 > 0.02" in rows[3]
    assert "![Style vs copying" in note and "path=plots%2Fstyle_vs_copying.png&run_uuid=abc123" in note
    assert "path=plots%2Fcopying_and_loss_by_epoch.png" in note


def test_without_a_pick_the_note_says_why() -> None:
    note = study_note(summary(selected=None, confidence=math.nan), "r")
    assert note.startswith("**Nothing selected**: trial 1 at step 12") and "selected_p_closer" not in note


def test_a_long_study_fits_mlflow_s_tag_and_keeps_the_pick_on_top() -> None:
    s = summary()
    many = pd.concat([s.candidates] * 70, ignore_index=True)  # 210 candidates, as 20 trials of 10 epochs give
    many["step"] = range(len(many))
    many["selected"] = many.index == 150
    many["why_not"] = ["memorization 0.0287 > 0.02; extractable_rate 0.25 > 0.05; heldout_loss 4.88 > 4.15"] * len(many)
    s.candidates, s.selected = many, (1, 150)
    s.candidate = lambda n, st: many.iloc[st].to_dict()
    note = study_note(s, "r")
    assert len(note) <= 8000  # MLflow's limit for a tag value
    rows = [line for line in note.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1].startswith("| 1 | 150 |") and rows[1].endswith("**selected** |")
    assert "186 more in `candidates.csv`" in note
