"""Choose the "balanced" trial of a study: the one whose samples read most like the book
while copying the training text no more than ordinary prose of the same book does.

Everything here is a pure function over a small table of trials (``TrialRow``), so the
rule can be tested on hand-made tables and re-applied to a finished study offline,
without Optuna, MLflow or a model.

Two numbers describe each trial:

* ``style`` -- a score to MAXIMISE (see :func:`style_score`: by default the negated
  distance of the sampled ``top100_ratio`` from the book's own value);
* ``memorization`` -- share of sampled 8-grams found verbatim in the training text,
  to MINIMISE (0 = nothing copied, 1 = everything copied).

Rules (``pick(rows, rule=...)``):

``"bounded_style"`` (default)
    Best style among trials whose memorization is at most a bound derived from human
    references (:func:`memorization_bound`). A bound, rather than a weighted sum, because
    the two metrics are in incomparable units and the research question is "how close to
    the book can we get *without* copying more than the book itself would?".
``"knee"``
    The knee of the Pareto front: the trade-off point that gains most over the straight
    line between the front's two extremes. Needs no references; useful as a second opinion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = [
    "RULES",
    "PickResult",
    "TrialRow",
    "memorization_bound",
    "pareto_front",
    "pick",
    "state_name",
    "style_score",
]

#: Names accepted by :func:`pick`; the first is the default.
RULES: tuple[str, ...] = ("bounded_style", "knee")

_KNEE_TIE_TOL = 1e-9


@dataclass(frozen=True)
class TrialRow:
    """One trial as the pick sees it.

    ``style`` is the score to maximise (use :func:`style_score`), ``memorization`` the
    share of sampled 8-grams copied verbatim from training (to minimise). ``state`` is the
    Optuna state name (``trial.state.name``; the enum itself or any case also works);
    only COMPLETE rows are ever picked.
    """

    number: int
    style: float
    memorization: float
    state: str = "COMPLETE"


@dataclass(frozen=True)
class PickResult:
    """The chosen trial, the rule that chose it, and a one-sentence human-readable reason.

    ``within_bound`` is False only when the ``bounded_style`` rule found no trial under the
    memorization bound and fell back to the least-copying trial; for ``knee`` it says
    whether the knee happens to respect the bound that was passed in.
    """

    number: int
    rule: str
    reason: str
    within_bound: bool


def style_score(
    top100_ratio: float,
    book_top100_ratio: float,
    style_js: float | None = None,
) -> float:
    """Style score to MAXIMISE: ``-abs(top100_ratio - book_top100_ratio)``.

    ``top100_ratio`` is the share of sampled tokens that are among the book's 100 most
    frequent tokens. More is not simply better: the book itself scores about 0.56, and a
    model that only repeats "the", "of", "and" would score near 1.0. What counts is
    closeness to the book, so the score is the negated distance (0 = exactly the book's
    ratio, more negative = further away).

    ``style_js`` (Jensen-Shannon divergence between sampled and held-out book token
    distributions, lower = closer) is an alternative, finer style measure. When it is
    given (not None) the score is ``-style_js`` instead, so the same "maximise" contract
    holds; by default (None) the top-100 distance above is used.

    Returns NaN when the metric it uses is missing/NaN, which :func:`pick` then ignores.
    """
    if style_js is not None:
        return -float(style_js)
    return -abs(float(top100_ratio) - float(book_top100_ratio))


def memorization_bound(
    book_memorization: float,
    base_memorization: float,
    factor: float = 3.0,
    floor: float = 0.02,
) -> float:
    """Largest memorization a trial may have and still count as "not copying".

    ``max(factor * book_memorization, factor * base_memorization, floor)``.

    Why these terms:

    * ``book_memorization`` -- share of 8-grams of *held-out* text of the same book that
      also occur in the training text (about 0.01). That is how much genuine Swift prose
      overlaps with training purely by chance (names, stock phrases); a sample may overlap
      as much, times a tolerance ``factor``.
    * ``base_memorization`` -- the same measurement on the model before fine-tuning: any
      overlap the base model already had is not caused by fine-tuning, so the bound never
      sits below what we started from (times the same tolerance).
    * ``floor`` -- samples are only ~1,000 tokens per trial, so a handful of chance 8-gram
      matches moves the share by ~0.005; a floor stops that noise from rejecting every
      trial when the references are tiny or zero.

    Non-finite references (a measurement that failed) are ignored rather than poisoning the
    bound; with none finite the bound is ``floor``.
    """
    candidates = [float(floor)]
    for ref in (book_memorization, base_memorization):
        if ref is not None and math.isfinite(ref):
            candidates.append(float(factor) * float(ref))
    return max(candidates)


def state_name(state: object) -> str:
    """An Optuna trial state as its upper-case name, whatever form it comes in."""
    # Accept "COMPLETE", "complete", optuna's TrialState.COMPLETE or its str()
    # ("TrialState.COMPLETE") alike, so a caller passing the enum does not silently get
    # an empty table.
    name = getattr(state, "name", None)
    return str(name if isinstance(name, str) else state).rsplit(".", 1)[-1].upper()


def _usable(rows: Iterable[TrialRow]) -> list[TrialRow]:
    """COMPLETE rows whose two metrics are finite numbers (NaN/inf rows cannot be ranked)."""
    out = []
    for r in rows:
        if state_name(r.state) != "COMPLETE":
            continue
        try:
            style, mem = float(r.style), float(r.memorization)
        except (TypeError, ValueError):
            continue
        if math.isfinite(style) and math.isfinite(mem):
            out.append(r)
    return out


def _dominates(a: TrialRow, b: TrialRow) -> bool:
    """True when ``a`` is at least as good as ``b`` on both objectives and better on one."""
    no_worse = a.style >= b.style and a.memorization <= b.memorization
    better = a.style > b.style or a.memorization < b.memorization
    return no_worse and better


def pareto_front(rows: Iterable[TrialRow]) -> list[TrialRow]:
    """Non-dominated COMPLETE rows with finite metrics (maximise style, minimise
    memorization), sorted by trial number.

    Rows with identical metrics do not dominate each other, so duplicates both stay.
    O(n^2), which is fine for the tens-to-hundreds of trials of a study.
    """
    usable = _usable(rows)
    front = [r for r in usable if not any(_dominates(o, r) for o in usable)]
    return sorted(front, key=lambda r: r.number)


def _normalise(values: Sequence[float]) -> list[float]:
    """Min-max scale to [0, 1]; a constant column maps to all zeros (no spread, no signal)."""
    lo, hi = min(values), max(values)
    if hi <= lo:
        return [0.0 for _ in values]
    return [(v - lo) / (hi - lo) for v in values]


def _pick_bounded_style(usable: list[TrialRow], bound: float) -> PickResult:
    within = [r for r in usable if r.memorization <= bound]
    if within:
        # Highest style; then less copying; then the earlier trial (deterministic).
        best = min(within, key=lambda r: (-r.style, r.memorization, r.number))
        reason = (
            f"trial {best.number} has the best style score ({best.style:.4g}) among "
            f"{len(within)} of {len(usable)} completed trials with memorization "
            f"<= {bound:.4g} (its memorization: {best.memorization:.4g})"
        )
        return PickResult(best.number, "bounded_style", reason, True)
    # Every trial copies more than the bound: report the least-copying one rather than
    # nothing, so a run still has a model to show, but flag it loudly.
    best = min(usable, key=lambda r: (r.memorization, -r.style, r.number))
    reason = (
        f"no completed trial has memorization <= {bound:.4g} (all {len(usable)} copy more); "
        f"fell back to trial {best.number}, the lowest memorization ({best.memorization:.4g}), "
        f"style score {best.style:.4g}"
    )
    return PickResult(best.number, "bounded_style", reason, False)


def _pick_knee(usable: list[TrialRow], bound: float) -> PickResult:
    front = pareto_front(usable)
    styles = _normalise([r.style for r in front])
    # Memorization is inverted below by subtraction: low copying is good.
    mems = _normalise([r.memorization for r in front])
    # On a Pareto front the least-copying extreme is normalised to (mem 0, style 0) and the
    # best-style extreme to (mem 1, style 1), so the line joining them is style = mem and a
    # point's signed distance to it is (style_n - mem_n) / sqrt(2). We maximise the signed
    # distance: points above the line buy more style per unit of copying than the straight
    # trade-off. (For a front that bows the other way no interior point beats the line and
    # an extreme is returned.) With 1 or 2 points there is no line; the same quantity is the
    # "best normalised style minus memorization" the rule asks for.
    scores = [s - m for s, m in zip(styles, mems)]
    # Scores are in [-1, 1]; differences below 1e-9 are rounding noise from normalising,
    # so treat them as ties and let the lower trial number decide.
    top = max(scores)
    tied = [i for i in range(len(front)) if scores[i] >= top - _KNEE_TIE_TOL]
    best_i = min(tied, key=lambda i: front[i].number)
    best = front[best_i]
    reason = (
        f"trial {best.number} is the knee of the {len(front)}-point Pareto front "
        f"(normalised style minus memorization {scores[best_i]:.3f}; style score "
        f"{best.style:.4g}, memorization {best.memorization:.4g})"
    )
    return PickResult(best.number, "knee", reason, best.memorization <= bound)


def pick(
    rows: Iterable[TrialRow],
    rule: str = "bounded_style",
    memorization_bound: float = 0.02,
) -> PickResult | None:
    """Choose one trial by ``rule`` (see the module docstring and :data:`RULES`).

    Only COMPLETE rows with finite style and memorization take part; FAIL/PRUNED/RUNNING
    rows and rows with NaN metrics are ignored. Returns None when no row takes part.
    Ties are always broken deterministically (see each rule), ending with the lower trial
    number. Raises ValueError for an unknown rule.

    ``bounded_style``: highest style among rows with memorization <= ``memorization_bound``
    (ties: lower memorization, then lower number); if none is within the bound, the row
    with the lowest memorization (ties: higher style, then lower number) with
    ``within_bound=False``. A NaN bound admits no row, so it always falls back.

    ``knee``: the knee of :func:`pareto_front` (normalised signed distance above the line
    joining its two extremes; scores within 1e-9 count as ties, broken by lower number);
    ``within_bound`` reports whether it respects ``memorization_bound``.
    """
    if rule not in RULES:
        raise ValueError(f"unknown pick rule {rule!r}; expected one of {', '.join(RULES)}")
    usable = _usable(rows)
    if not usable:
        return None
    bound = float(memorization_bound)
    if rule == "bounded_style":
        return _pick_bounded_style(usable, bound)
    return _pick_knee(usable, bound)
