"""scripts/books_table.py: docs/books.md's goal column is computed from the study, not typed."""
from __future__ import annotations

import sys
from pathlib import Path

from gpt2ft.summary import summarize
from test_candidates import FakeStudy, copying_trial

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import books_table  # noqa: E402


def _study(pick_style: float) -> FakeStudy:
    trial = copying_trial(0)
    for point in trial.trajectory:
        point["style_prob"] = 0.1 if point["step"] == 0 else pick_style
    study = FakeStudy([trial])
    study.user_attrs["references"].update(base_top100_ratio=0.37, base_style_prob=0.1, book_style_prob=0.8)
    return study


def test_a_pick_that_moved_by_both_judges_with_copying_crossed_meets_the_goal():
    line, ok = books_table.row("demo-x", summarize(_study(0.4)), "5 min 0 s")
    assert ok and "| trial 0, step 8 | 0.540 | 0.100 → 0.400 → 0.800 |" in line
    assert "extractable_rate, heldout_loss, memorization" in line and line.endswith("| met | 5 min 0 s |")


def test_a_pick_the_classifier_does_not_see_move_misses_by_style_prob():
    line, ok = books_table.row("demo-x", summarize(_study(0.05)), "-")
    assert not ok and "**missed** (style_prob)" in line


def test_no_copying_crossed_misses_the_goal():
    study = _study(0.4)
    study.trials[0].trajectory[:] = [p for p in study.trials[0].trajectory if p["step"] < 12]
    line, ok = books_table.row("demo-x", summarize(study), "-")
    assert not ok and "| none |" in line and "(a copying judge)" in line
