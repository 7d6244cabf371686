"""Unit tests for the balanced-pick rules on hand-made trial tables."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from gpt2ft.pick import (
    DEGENERATE_FACTOR,
    REPETITION_FLOOR,
    PickResult,
    TrialRow,
    degenerate_reason,
    memorization_bound,
    pareto_front,
    pick,
    style_score,
)

NAN = float("nan")


def numbers(rows: list[TrialRow]) -> list[int]:
    return [r.number for r in rows]


# --- bounded_style ---------------------------------------------------------------------


def test_best_style_within_bound_wins_over_better_style_outside() -> None:
    rows = [
        TrialRow(0, style=-0.10, memorization=0.01),
        TrialRow(1, style=-0.02, memorization=0.03),  # best style inside the bound
        TrialRow(2, style=-0.001, memorization=0.50),  # best style overall, but copies
        TrialRow(3, style=-0.05, memorization=0.00),
    ]
    result = pick(rows, "bounded_style", memorization_bound=0.04)
    assert isinstance(result, PickResult)
    assert result.number == 1
    assert result.rule == "bounded_style"
    assert result.within_bound is True
    assert "trial 1" in result.reason


def test_bound_is_inclusive() -> None:
    rows = [TrialRow(0, -0.2, 0.01), TrialRow(1, -0.1, 0.04)]
    assert pick(rows, "bounded_style", 0.04).number == 1


def test_default_rule_is_bounded_style() -> None:
    rows = [TrialRow(0, -0.2, 0.01), TrialRow(1, -0.1, 0.9)]
    result = pick(rows, memorization_bound=0.05)
    assert result.rule == "bounded_style" and result.number == 0


def test_tie_on_style_prefers_lower_memorization() -> None:
    rows = [
        TrialRow(0, style=-0.01, memorization=0.03),
        TrialRow(1, style=-0.01, memorization=0.02),
        TrialRow(2, style=-0.30, memorization=0.00),
    ]
    assert pick(rows, "bounded_style", 0.05).number == 1


def test_tie_on_both_prefers_lower_number() -> None:
    rows = [
        TrialRow(7, style=-0.01, memorization=0.02),
        TrialRow(4, style=-0.01, memorization=0.02),
        TrialRow(9, style=-0.01, memorization=0.02),
    ]
    assert pick(rows, "bounded_style", 0.05).number == 4


def test_all_over_bound_falls_back_to_lowest_memorization() -> None:
    rows = [
        TrialRow(0, style=-0.01, memorization=0.40),
        TrialRow(1, style=-0.20, memorization=0.10),
        TrialRow(2, style=-0.05, memorization=0.10),  # same memorization, better style
        TrialRow(3, style=-0.00, memorization=0.90),
    ]
    result = pick(rows, "bounded_style", memorization_bound=0.02)
    assert result.number == 2  # the least bad: lowest excess over the bound, then better style
    assert result.within_bound is False and result.eligible is False
    assert result.reason.startswith("no eligible candidate among 4 candidates, so none is selected")
    assert "trial 2 at step 0: memorization 0.1 > 0.02" in result.reason


def test_fallback_full_tie_prefers_lower_number() -> None:
    rows = [TrialRow(5, -0.1, 0.5), TrialRow(3, -0.1, 0.5)]
    result = pick(rows, "bounded_style", 0.01)
    assert result.number == 3 and not result.within_bound and not result.eligible


def test_nan_bound_always_falls_back() -> None:
    rows = [TrialRow(0, -0.1, 0.01), TrialRow(1, -0.2, 0.0)]
    result = pick(rows, "bounded_style", NAN)
    assert result.number == 1 and not result.within_bound and not result.eligible


def test_fail_and_pruned_rows_ignored() -> None:
    rows = [
        TrialRow(0, style=0.0, memorization=0.0, state="FAIL"),
        TrialRow(1, style=0.0, memorization=0.0, state="PRUNED"),
        TrialRow(2, style=0.0, memorization=0.0, state="RUNNING"),
        TrialRow(3, style=-0.3, memorization=0.01),
    ]
    assert pick(rows, "bounded_style", 0.05).number == 3
    assert pick(rows, "knee", 0.05).number == 3
    assert numbers(pareto_front(rows)) == [3]


def test_state_spellings_accepted() -> None:
    class TrialState:  # stand-in for optuna.trial.TrialState (not imported here)
        def __init__(self, name: str) -> None:
            self.name = name

    rows = [
        TrialRow(0, -0.1, 0.01, state=TrialState("COMPLETE")),  # type: ignore[arg-type]
        TrialRow(1, -0.05, 0.01, state="TrialState.COMPLETE"),
        TrialRow(2, -0.01, 0.01, state="complete"),
        TrialRow(3, -0.0, 0.01, state=TrialState("PRUNED")),  # type: ignore[arg-type]
    ]
    assert numbers(pareto_front(rows)) == [2]
    assert len([r for r in rows if pick([r], "knee", 0.05)]) == 3


def test_nan_rows_ignored() -> None:
    rows = [
        TrialRow(0, style=NAN, memorization=0.0),
        TrialRow(1, style=0.0, memorization=NAN),
        TrialRow(2, style=math.inf, memorization=0.0),
        TrialRow(3, style=-0.3, memorization=0.01),
    ]
    assert pick(rows, "bounded_style", 0.05).number == 3
    assert pick(rows, "knee", 0.05).number == 3
    assert numbers(pareto_front(rows)) == [3]


@pytest.mark.parametrize("rule", ["bounded_style", "knee"])
def test_empty_or_unusable_gives_none(rule: str) -> None:
    assert pick([], rule, 0.05) is None
    assert pick([TrialRow(0, NAN, NAN), TrialRow(1, 0.0, 0.0, "FAIL")], rule, 0.05) is None


def test_unknown_rule_raises() -> None:
    with pytest.raises(ValueError, match="unknown pick rule"):
        pick([TrialRow(0, 0.0, 0.0)], "weighted", 0.05)


def test_accepts_generator() -> None:
    rows = (TrialRow(i, -i / 10, i / 100) for i in range(3))
    assert pick(rows, "bounded_style", 0.05).number == 0


# --- Pareto front ----------------------------------------------------------------------


def test_pareto_front_literal_example() -> None:
    rows = [
        TrialRow(0, style=-0.10, memorization=0.01),  # front: least copying
        TrialRow(1, style=-0.05, memorization=0.02),  # front
        TrialRow(2, style=-0.06, memorization=0.03),  # dominated by 1
        TrialRow(3, style=-0.01, memorization=0.20),  # front: best style
        TrialRow(4, style=-0.05, memorization=0.02),  # duplicate of 1: also front
        TrialRow(5, style=-0.10, memorization=0.05),  # dominated by 0 (same style, copies more)
        TrialRow(6, style=-0.02, memorization=0.10),  # front
        TrialRow(7, style=-0.02, memorization=0.15),  # dominated by 6
    ]
    assert numbers(pareto_front(rows)) == [0, 1, 3, 4, 6]


def test_pareto_front_sorted_by_number_and_empty() -> None:
    rows = [TrialRow(9, -0.2, 0.0), TrialRow(2, 0.0, 0.5)]
    assert numbers(pareto_front(rows)) == [2, 9]
    assert pareto_front([]) == []


# --- knee ------------------------------------------------------------------------------


def test_knee_on_five_point_front() -> None:
    # Front in normalised (memorization, style) coordinates, before scaling below:
    #   A (0.0, 0.0)  B (0.1, 0.5)  C (0.2, 0.75)  D (0.5, 0.9)  E (1.0, 1.0)
    # signed distance ~ style - mem: A 0, B 0.4, C 0.55, D 0.4, E 0  -> knee is C.
    # Real units: memorization = 0.01 + 0.2 * m, style = -0.1 + 0.1 * s.
    pts = {10: (0.0, 0.0), 11: (0.1, 0.5), 12: (0.2, 0.75), 13: (0.5, 0.9), 14: (1.0, 1.0)}
    rows = [TrialRow(n, -0.1 + 0.1 * s, 0.01 + 0.2 * m) for n, (m, s) in pts.items()]
    rows.append(TrialRow(15, style=-0.08, memorization=0.15))  # dominated, must not count
    assert numbers(pareto_front(rows)) == [10, 11, 12, 13, 14]
    result = pick(rows, "knee", memorization_bound=1.0)
    assert result.number == 12
    assert result.rule == "knee"
    assert result.within_bound is True
    assert "5-point" in result.reason
    # The knee is taken among eligible candidates only: at 0.1 D (0.11) and E drop out and the
    # front A, B, C bows most at B; at 0.02 only A is left.
    assert pick(rows, "knee", memorization_bound=0.1).number == 11
    assert pick(rows, "knee", memorization_bound=0.02).number == 10


def test_knee_tie_prefers_lower_number() -> None:
    # Symmetric front: B and D are equally far above the line.
    pts = {0: (0.0, 0.0), 1: (0.2, 0.6), 2: (0.4, 0.8), 3: (1.0, 1.0)}  # scores 0, .4, .4, 0
    rows = [TrialRow(n, s, m) for n, (m, s) in pts.items()]
    assert pick(rows, "knee", 1.0).number == 1


def test_knee_with_one_and_two_points() -> None:
    assert pick([TrialRow(4, -0.1, 0.03)], "knee", 0.05).number == 4
    # Two front points normalise to (0,0) and (1,1): equal sums, lower number wins.
    assert pick([TrialRow(8, -0.1, 0.01), TrialRow(6, -0.01, 0.3)], "knee", 1.0).number == 6
    # A dominated third row leaves a one-point front.
    assert pick([TrialRow(1, -0.01, 0.01), TrialRow(0, -0.2, 0.3)], "knee", 0.05).number == 1


# --- references and style score --------------------------------------------------------


def test_memorization_bound() -> None:
    assert memorization_bound(0.01, 0.005) == pytest.approx(0.03)
    assert memorization_bound(0.01, 0.02) == pytest.approx(0.06)  # base model dominates
    assert memorization_bound(0.001, 0.0) == pytest.approx(0.02)  # floor
    assert memorization_bound(0.01, 0.0, factor=5.0, floor=0.0) == pytest.approx(0.05)
    assert memorization_bound(NAN, 0.01) == pytest.approx(0.03)  # failed reference ignored
    assert memorization_bound(NAN, NAN) == pytest.approx(0.02)


def test_style_score() -> None:
    assert style_score(0.56, 0.56) == 0.0
    assert style_score(0.50, 0.56) == pytest.approx(-0.06)
    # Overshooting the book (too many common tokens) is penalised the same as undershooting.
    assert style_score(0.62, 0.56) == pytest.approx(style_score(0.50, 0.56))
    assert style_score(0.57, 0.56) > style_score(0.70, 0.56)
    assert math.isnan(style_score(NAN, 0.56))
    # With a JS divergence the score is its negation: lower divergence = higher score.
    assert style_score(0.9, 0.56, style_js=0.12) == pytest.approx(-0.12)
    assert style_score(0.9, 0.56, style_js=0.05) > style_score(0.56, 0.56, style_js=0.1)


# --- degenerate text -------------------------------------------------------------------


def test_degenerate_distinct_2_line_is_exclusive() -> None:
    # book 0.9, factor 1.5: the line is 0.6; below it is degenerate, on it is not
    assert degenerate_reason(0.59, 0.0, 0.9, 0.0, factor=1.5) == "distinct_2 0.59 < 0.6"
    assert degenerate_reason(0.60, 0.0, 0.9, 0.0, factor=1.5) == ""
    assert degenerate_reason(0.85, 0.0, 0.9, 0.0, factor=1.5) == ""
    assert degenerate_reason(0.40, 0.0, 0.9, 0.0, factor=2.0) == "distinct_2 0.4 < 0.45"


def test_degenerate_repetition_line_is_exclusive_with_floor() -> None:
    # book repeats 0.004: factor 1.5 gives 0.006, the floor 0.15 wins
    assert degenerate_reason(0.9, 0.15, 0.9, 0.004, factor=1.5, floor=0.15) == ""
    assert degenerate_reason(0.9, 0.16, 0.9, 0.004, factor=1.5, floor=0.15) == "repetition_4 0.16 > 0.15"
    # a book that repeats more moves the line: max(2 * 0.1, 0.15) = 0.2
    assert degenerate_reason(0.9, 0.2, 0.9, 0.1, factor=2.0, floor=0.15) == ""
    assert degenerate_reason(0.9, 0.25, 0.9, 0.1, factor=2.0, floor=0.15) == "repetition_4 0.25 > 0.2"


def test_degenerate_both_reasons_and_defaults() -> None:
    assert degenerate_reason(0.2, 0.5, 0.9, 0.0, factor=1.5) == "distinct_2 0.2 < 0.6, repetition_4 0.5 > 0.15"
    assert (DEGENERATE_FACTOR, REPETITION_FLOOR) == (1.5, 0.15)
    assert degenerate_reason(0.888, 0.004, 0.888, 0.004) == ""  # the book itself is fine
    assert degenerate_reason(0.81, 0.10, 0.888, 0.004) == ""  # the base model's samples too


def test_degenerate_nan_cannot_be_judged() -> None:
    assert degenerate_reason(NAN, NAN, 0.9, 0.0) == ""
    assert degenerate_reason(0.1, 0.0, NAN, 0.0) == ""  # no book distinct_2: no line
    # no book repetition: the floor alone still judges an obvious loop
    assert degenerate_reason(0.9, 0.9, 0.9, NAN, floor=0.15) == "repetition_4 0.9 > 0.15"
    assert degenerate_reason(0.9, 0.1, 0.9, NAN, floor=0.15) == ""


LOOP = "distinct_2 0.21 < 0.59"


def looping_table() -> list[TrialRow]:
    return [
        TrialRow(0, style=-0.10, memorization=0.01),
        TrialRow(1, style=-0.05, memorization=0.01),  # best healthy style
        TrialRow(2, style=-0.001, memorization=0.00, degenerate=True, why=LOOP),  # best style
        TrialRow(3, style=-0.002, memorization=0.01, degenerate=True),
    ]


def test_best_style_trial_that_loops_is_not_picked() -> None:
    result = pick(looping_table(), "bounded_style", 0.05)
    assert result.number == 1 and result.within_bound and not result.degenerate
    assert result.reason.endswith(f"; excluded 2: degenerate: 2@0 ({LOOP}), 3@0 (degenerate)")
    assert "among 2 eligible of 4 candidates" in result.reason


def test_knee_front_leaves_out_degenerate_trials() -> None:
    rows = looping_table()
    result = pick(rows, "knee", 0.05)
    assert result.number == 1 and not result.degenerate  # 1 dominates 0 once 2, 3 are out
    assert "1-point Pareto front" in result.reason and "excluded 2: degenerate" in result.reason
    assert numbers(pareto_front(rows)) == [2]  # the plain front still shows everything


def test_no_degenerate_trial_no_note() -> None:
    rows = [TrialRow(0, -0.1, 0.01), TrialRow(1, -0.2, 0.01)]
    assert "degenerate" not in pick(rows, "bounded_style", 0.05).reason


def test_one_excluded_and_many_are_counted() -> None:
    rows = [TrialRow(0, -0.1, 0.01), TrialRow(9, 0.0, 0.0, degenerate=True, why="x")]
    assert pick(rows, "bounded_style", 0.05).reason.endswith("; excluded 1: degenerate: 9@0 (x)")
    rows += [TrialRow(n, 0.0, 0.0, degenerate=True) for n in (1, 2, 3, 4, 5, 6, 7, 8)]
    assert pick(rows, "bounded_style", 0.05).reason.endswith(
        "; excluded 9: degenerate: 1@0 (degenerate), 2@0 (degenerate), 3@0 (degenerate), 4@0 (degenerate), "
        "5@0 (degenerate), 6@0 (degenerate), 3 more")


@pytest.mark.parametrize("rule", ["bounded_style", "knee"])
def test_all_degenerate_means_no_champion(rule: str) -> None:
    rows = [
        TrialRow(0, style=-0.10, memorization=0.01, degenerate=True, why=LOOP),
        TrialRow(1, style=-0.05, memorization=0.02, degenerate=True),
        TrialRow(2, style=-0.01, memorization=0.50, state="FAIL"),  # not usable, not counted
    ]
    result = pick(rows, rule, 0.05)
    assert result.eligible is False and result.degenerate is True
    assert result.number == 0  # the least bad: both fail one judge, 0 copies less
    assert result.reason.startswith("no eligible candidate among 2 candidates, so none is selected; ")
    assert result.reason.endswith(f"trial 0 at step 0: degenerate: {LOOP}")
    assert pick([replace(r, degenerate=False) for r in rows], rule, 0.05).eligible


def test_degenerate_rows_that_cannot_be_used_do_not_count() -> None:
    rows = [TrialRow(0, -0.1, 0.01), TrialRow(1, NAN, 0.0, degenerate=True),
            TrialRow(2, 0.0, 0.0, "PRUNED", degenerate=True)]
    assert "degenerate" not in pick(rows, "bounded_style", 0.05).reason
