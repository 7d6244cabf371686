"""Choose the "balanced" candidate of a study: the model whose samples read most like the book
while no judge of copying objects to it.

A *candidate* is one measured point of a trial: every epoch end (or ``sample.every_steps``
point) and the trial's end. The best-balanced model of a study is often *inside* a trial -- the
epoch before copying set in -- so the pick sees every point, not only trial ends.

Everything here is a pure function over a small table of candidates (``TrialRow``), so the rule
can be tested on hand-made tables and re-applied to a finished study offline, without Optuna,
MLflow or a model. Who may be chosen is :mod:`gpt2ft.judges`' business: a candidate is
*eligible* when its sampled memorization, its ``extractable_rate`` and its held-out loss are all
within their bounds and its samples are not degenerate.

Two numbers rank the eligible candidates:

* ``style`` -- a score to MAXIMISE (see :func:`style_score`: by default the negated
  distance of the sampled ``top100_ratio`` from the book's own value);
* ``memorization`` -- share of sampled 8-grams found verbatim in the training text,
  to MINIMISE (0 = nothing copied, 1 = everything copied).

Rules (``pick(rows, rule=...)``):

``"bounded_style"`` (default)
    Best style among the eligible candidates. Bounds, rather than a weighted sum, because the
    metrics are in incomparable units and the research question is "how close to the book can
    we get *without* copying more than the book itself would?".
``"knee"``
    The knee of the eligible candidates' Pareto front: the trade-off point that gains most over
    the straight line between the front's two extremes; a second opinion.

When no candidate is eligible there is **no champion**: the result names the least-bad
candidate and what fails it, with ``eligible=False``; callers select nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from gpt2ft.judges import (DEGENERATE_FACTOR, EXTRA_METRICS, FLUENCY_FACTOR, JUDGE_METRICS, JUDGES,
                           REPETITION_FLOOR, Bounds, copying_failures, degenerate_reason, reference_bound)

__all__ = [
    "DEGENERATE_FACTOR",
    "FLUENCY_FACTOR",
    "REPETITION_FLOOR",
    "RULES",
    "Bounds",
    "PickResult",
    "TrialRow",
    "contenders",
    "copying_of",
    "criterion",
    "degenerate_reason",
    "ineligible_reason",
    "memorization_bound",
    "pareto_front",
    "pick",
    "runner_up",
    "state_name",
    "style_score",
]

#: Names accepted by :func:`pick`; the first is the default.
RULES: tuple[str, ...] = ("bounded_style", "knee")

_KNEE_TIE_TOL = 1e-9
#: How many excluded candidates a reason names per judge before it only counts the rest.
_WHY_SHOWN = 6


@dataclass(frozen=True)
class TrialRow:
    """One candidate as the pick sees it: trial ``number`` measured at ``step``.

    ``style`` is the score to maximise (use :func:`style_score`) and ``style_se`` its standard
    error; ``memorization`` the share of sampled 8-grams copied from training (to minimise);
    ``extraction`` the ``extractable_rate`` and ``heldout_loss`` the loss on the book's held-out
    windows (NaN: not measured, no evidence). ``state`` is the Optuna state name of the trial
    (the enum itself or any case also works); only COMPLETE rows are ever picked. ``degenerate``
    rows (see :func:`degenerate_reason`, whose text goes in ``why``) are never eligible.
    """

    number: int
    style: float
    memorization: float
    state: str = "COMPLETE"
    degenerate: bool = False
    why: str = ""
    step: int = 0
    extraction: float = math.nan
    heldout_loss: float = math.nan
    style_se: float = math.nan
    copying: tuple[tuple[str, float], ...] = ()
    """The other judges' metrics as (name, value) pairs (``near_verbatim``, ``discoverable_rate``,
    ``mia_auc``, see ``judges.JUDGE_METRICS``); a tuple so that a row stays hashable."""

    @property
    def values(self) -> dict[str, float]:
        """Every metric a copying judge reads."""
        return {**dict(self.copying), "memorization": self.memorization, "extractable_rate": self.extraction,
                "heldout_loss": self.heldout_loss}

    @property
    def key(self) -> tuple[int, int]:
        return (self.number, self.step)

    @property
    def label(self) -> str:
        return f"trial {self.number} at step {self.step}"


@dataclass(frozen=True)
class PickResult:
    """The chosen candidate, the rule that chose it, and a human-readable reason.

    ``eligible`` False means no candidate passed every judge: ``number``/``step`` then name the
    least-bad candidate, which must not be crowned (no champion). ``within_bound`` says whether
    the candidate respects the memorization bound; ``degenerate`` whether its samples are.
    """

    number: int
    rule: str
    reason: str
    within_bound: bool
    degenerate: bool = False
    step: int = 0
    eligible: bool = True

    @property
    def key(self) -> tuple[int, int]:
        return (self.number, self.step)


def copying_of(values) -> tuple[tuple[str, float], ...]:
    """``TrialRow.copying`` from any mapping of a candidate's metrics (NaN where one is missing)."""
    return tuple((name, float(values.get(name, math.nan))) for name in EXTRA_METRICS)


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
    """Largest memorization a candidate may have and still count as "not copying":
    ``max(factor * book_memorization, factor * base_memorization, floor)``
    (:func:`gpt2ft.judges.reference_bound`).

    * ``book_memorization`` -- share of 8-grams of *held-out* text of the same book that
      also occur in the training text (about 0.01): how much genuine Swift prose overlaps
      with training purely by chance (names, stock phrases);
    * ``base_memorization`` -- the same measurement on the model before fine-tuning: overlap
      it already had is not caused by fine-tuning;
    * ``floor`` -- samples are only ~1,000 tokens, so a handful of chance 8-gram matches moves
      the share by ~0.005; a floor stops that noise from rejecting every candidate.
    """
    return reference_bound(book_memorization, base_memorization, factor, floor)


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
    memorization), sorted by (trial number, step).

    Rows with identical metrics do not dominate each other, so duplicates both stay.
    O(n^2), which is fine for the hundreds of candidates of a study.
    """
    usable = _usable(rows)
    front = [r for r in usable if not any(_dominates(o, r) for o in usable)]
    return sorted(front, key=lambda r: r.key)


def _failures(row: TrialRow, bounds: Bounds) -> list[tuple[str, str]]:
    """Every judge ``row`` fails, as (judge, text): the degenerate guard, then the copying judges."""
    out = [("degenerate", row.why or "degenerate")] if row.degenerate else []
    return out + copying_failures(row.values, bounds)


def ineligible_reason(row: TrialRow, bounds: Bounds) -> str:
    """Why ``row`` may not be picked (``"memorization 0.031 > 0.02; heldout_loss 5.1 > 3.9"``),
    or ``""`` when every judge lets it through."""
    return "; ".join(f"{judge}: {text}" if judge == "degenerate" else text for judge, text in _failures(row, bounds))


def _pick_bounded_style(eligible: list[TrialRow]) -> tuple[TrialRow, str]:
    # Highest style; then less copying; then the earlier trial and step (deterministic).
    best = min(eligible, key=lambda r: (-r.style, r.memorization, r.key))
    return best, f"best style score ({best.style:.4g}; memorization {best.memorization:.4g})"


def _knee_score(front: list[TrialRow]) -> Callable[[float, float], float]:
    """Normalised style minus normalised memorization, both scaled to the front's range (a
    column without spread is not scaled: it adds 0 on the front, and a dominated point still
    scores below the point that dominates it)."""
    def scale(values: list[float]) -> tuple[float, float]:
        lo, hi = min(values), max(values)
        return lo, (hi - lo) if hi > lo else 1.0
    (s_lo, s_span), (m_lo, m_span) = scale([r.style for r in front]), scale([r.memorization for r in front])
    return lambda style, mem: (style - s_lo) / s_span - (mem - m_lo) / m_span


def criterion(rows: Iterable[TrialRow], rule: str, bounds: Bounds) -> Callable[[float, float], float]:
    """The rule's own measure of a candidate from its (style, memorization), higher is better: the
    style for ``bounded_style``; for ``knee`` the knee score on the eligible candidates' front
    (:func:`_pick_knee`). The runner-up and the pick's confidence compare by it."""
    front = pareto_front([r for r in _usable(rows) if not _failures(r, bounds)]) if rule == "knee" else []
    return _knee_score(front) if front else (lambda style, mem: style)


def _pick_knee(eligible: list[TrialRow]) -> tuple[TrialRow, str]:
    front = pareto_front(eligible)
    knee = _knee_score(front)
    # On a Pareto front the least-copying extreme is normalised to (mem 0, style 0) and the
    # best-style extreme to (mem 1, style 1), so the line joining them is style = mem and a
    # point's signed distance to it is (style_n - mem_n) / sqrt(2). We maximise the signed
    # distance: points above the line buy more style per unit of copying than the straight
    # trade-off. With 1 or 2 points there is no line; the same quantity is the "best
    # normalised style minus memorization".
    scores = [knee(r.style, r.memorization) for r in front]
    # Scores are in [-1, 1]; differences below 1e-9 are rounding noise from normalising,
    # so treat them as ties and let the lower trial number (then step) decide.
    top = max(scores)
    tied = [i for i in range(len(front)) if scores[i] >= top - _KNEE_TIE_TOL]
    best_i = min(tied, key=lambda i: front[i].key)
    best = front[best_i]
    return best, (f"knee of the {len(front)}-point Pareto front (normalised style minus memorization "
                  f"{scores[best_i]:.3f}; style score {best.style:.4g}, memorization {best.memorization:.4g})")


def _exclusions(excluded: list[tuple[TrialRow, list[tuple[str, str]]]]) -> str:
    """``"memorization: 2@16 (memorization 0.031 > 0.02), ...; extraction: ..."``: every
    excluded candidate under each judge that excluded it (the first few, then a count)."""
    parts = []
    for judge in ("degenerate",) + JUDGES:
        hits = [f"{r.number}@{r.step} ({text})" for r, fails in sorted(excluded, key=lambda e: e[0].key)
                for j, text in fails if j == judge]
        if hits:
            more = f", {len(hits) - _WHY_SHOWN} more" if len(hits) > _WHY_SHOWN else ""
            parts.append(f"{judge}: {', '.join(hits[:_WHY_SHOWN])}{more}")
    return "; ".join(parts)


def _least_bad(usable: list[TrialRow], bounds: Bounds) -> TrialRow:
    """The candidate closest to eligible: not degenerate, fewest failed judges, then the
    smallest excess over the bounds it fails (relative), then least copying, then best style."""
    def excess(r: TrialRow) -> float:
        total, values = 0.0, r.values
        for judge, bound in bounds.by_judge().items():
            value = values.get(JUDGE_METRICS[judge], math.nan)
            if math.isfinite(value) and value > bound:
                total += (value - bound) / max(abs(bound), 1e-9)
        return total
    return min(usable, key=lambda r: (r.degenerate, len(_failures(r, bounds)), excess(r), r.memorization, -r.style,
                                      r.key))


def pick(
    rows: Iterable[TrialRow],
    rule: str = "bounded_style",
    memorization_bound: float = 0.02,
    bounds: Optional[Bounds] = None,
) -> PickResult | None:
    """Choose one candidate by ``rule`` (see the module docstring and :data:`RULES`).

    Only COMPLETE rows with finite style and memorization take part; FAIL/PRUNED/RUNNING rows
    and rows with NaN metrics are ignored. Returns None when no row takes part. ``bounds`` (all
    three judges) overrides ``memorization_bound`` (the memorization judge alone). Raises
    ValueError for an unknown rule.

    Eligible rows pass the degenerate guard and every copying judge (:func:`ineligible_reason`;
    each bound inclusive). ``bounded_style``: highest style among them (ties: lower
    memorization, then lower trial number and step). ``knee``: the knee of their Pareto front
    (scores within 1e-9 tie, broken by trial number and step). The reason names every excluded
    candidate and the judge that excluded it.

    With no eligible row the result has ``eligible=False`` and names the least-bad candidate
    and why it fails: no champion.
    """
    if rule not in RULES:
        raise ValueError(f"unknown pick rule {rule!r}; expected one of {', '.join(RULES)}")
    usable = _usable(rows)
    if not usable:
        return None
    bounds = bounds if bounds is not None else Bounds(memorization=float(memorization_bound))
    judged = [(r, _failures(r, bounds)) for r in usable]
    eligible = [r for r, fails in judged if not fails]
    excluded = [(r, fails) for r, fails in judged if fails]
    noun = "candidate" if len(usable) == 1 else "candidates"
    if not eligible:
        worst = _least_bad(usable, bounds)
        reason = (f"no eligible candidate among {len(usable)} {noun}, so none is selected; the least bad is "
                  f"{worst.label}: {ineligible_reason(worst, bounds)}")
        return PickResult(worst.number, rule, reason, worst.memorization <= bounds.memorization,
                          worst.degenerate, worst.step, eligible=False)
    best, why = (_pick_bounded_style if rule == "bounded_style" else _pick_knee)(eligible)
    reason = f"{best.label} is the {why} among {len(eligible)} eligible of {len(usable)} {noun}"
    if excluded:
        reason += f"; excluded {len(excluded)}: {_exclusions(excluded)}"
    return PickResult(best.number, rule, reason, True, False, best.step)


def runner_up(rows: Iterable[TrialRow], chosen: tuple[int, int], bounds: Bounds,
              rule: str = "bounded_style") -> Optional[TrialRow]:
    """The eligible candidate other than ``chosen`` (its (number, step)) that ``rule``'s own
    :func:`criterion` ranks best (ties: less copying, then the lower trial and step), or None."""
    rows = list(rows)
    score = criterion(rows, rule, bounds)
    others = [r for r in _usable(rows) if r.key != tuple(chosen) and not _failures(r, bounds)]
    return min(others, key=lambda r: (-score(r.style, r.memorization), r.memorization, r.key)) if others else None


def contenders(rows: Iterable[TrialRow], chosen: tuple[int, int], bounds: Bounds, k: float = 2.0) -> list[TrialRow]:
    """The chosen candidate and every eligible candidate within ``k`` standard errors of its style:
    ``style >= chosen.style - k * sqrt(se_chosen^2 + se_other^2)`` (the standard error of a
    difference of two independent measurements; a NaN error counts as 0). These could still
    become the pick when measured more precisely, so their checkpoints are kept and they are
    re-measured. Sorted by (number, step)."""
    usable = _usable(rows)
    head = next((r for r in usable if r.key == tuple(chosen)), None)
    if head is None:
        return []

    def se(r: TrialRow) -> float:
        return r.style_se if math.isfinite(r.style_se) else 0.0
    out = [r for r in usable if r.key == head.key or (
        not _failures(r, bounds) and r.style >= head.style - k * math.hypot(se(head), se(r)))]
    return sorted(out, key=lambda r: r.key)
