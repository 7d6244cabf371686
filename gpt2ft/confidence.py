"""How sure the pick is: a paired bootstrap over samples, and what to do when it is not sure.

Ten or twenty samples of 100 tokens measure a ``top100_ratio`` to a few points, about as far
apart as the candidates the pick ranks. So the leading candidates are re-measured on
``sample.final_n_samples`` samples drawn with the same seed (sample *i* of one model and
sample *i* of the other share their random numbers: a paired design), and the pick reports the
probabilities that the *selected* candidate really is closer to the book than the other finalist
(``selected_p_closer_by_top100``, ``selected_p_closer_by_style_prob``: where a tie-break chose the
rule's runner-up, the complements of the rule's pick's own).

Below :data:`THRESHOLD` the two are indistinguishable by ``top100_ratio``, and the second style
judge decides if it can: the one the style classifier finds more like the book (``style_prob``,
by the same paired bootstrap, with probability >= THRESHOLD either way). Only when neither judge
of style can tell them apart is the one with the lower held-out loss (then less copying) chosen.
Both are eligible, so both passed every copying judge; held-out loss first would pick the
less-trained point whatever the classifier saw (The Professor's first demo: a pick whose
``style_prob`` had not moved from the base model's, beside a runner-up the classifier scored
twice as high). The reason says which rule decided. Pure functions over per-sample values (numpy
draws and sums the bootstrap's replicates).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np

from gpt2ft.pick import PickResult, TrialRow

#: Below this probability of being closer to the book, two candidates tie in style.
THRESHOLD = 0.8
#: Bootstrap replicates: the probability's own Monte-Carlo error is below 0.01 at 2,000.
N_BOOT = 2000


def paired_better(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]],
                  score: Callable[[list[float]], float], n_boot: int = N_BOOT, seed: int = 0) -> float:
    """Probability that A scores higher than B, over ``n_boot`` bootstrap replicates that resample
    sample *indices* (the same indices for both: the pairing), drawn at once from
    ``np.random.default_rng(seed)``. ``a`` and ``b`` are columns of per-sample counts (e.g. top-100
    hits, tokens); ``score`` maps a replicate's column sums to a number, higher better. Ties count
    one half. Needs equally many samples in every column; NaN when there are none or a score is NaN."""
    n = len(a[0]) if a else 0
    if n == 0 or any(len(col) != n for col in (*a, *b)):
        return math.nan
    picks = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    # Each side's column sums per replicate, (n_boot, columns); the score stays a plain function of them.
    sa, sb = (np.array([score(row) for row in np.asarray(side, dtype=np.float64)[:, picks].sum(axis=2).T.tolist()])
              for side in (a, b))
    if np.isnan(sa).any() or np.isnan(sb).any():
        return math.nan
    return float(np.mean((sa > sb) + 0.5 * (sa == sb)))


def paired_closer(a_hits: Sequence[int], a_lens: Sequence[int], b_hits: Sequence[int], b_lens: Sequence[int],
                  target: float, n_boot: int = N_BOOT, seed: int = 0) -> float:
    """Probability that A's pooled ratio ``sum(hits) / sum(lens)`` is closer to ``target`` than
    B's (:func:`paired_better`); NaN when the target is unknown."""
    if not math.isfinite(target):
        return math.nan
    return paired_better([a_hits, a_lens], [b_hits, b_lens],
                         lambda s: -abs(s[0] / s[1] - target) if s[1] else -math.inf, n_boot, seed)


def settle(result: PickResult, chosen: TrialRow, runner: TrialRow | None, confidence: float,
           threshold: float = THRESHOLD, style_confidence: float = math.nan) -> PickResult:
    """The pick after its confidence is known: unchanged when the chosen candidate is closer to
    the book with probability >= ``threshold`` (or there is no runner-up, or the probability is
    unknown); otherwise the one of the two the classifier prefers (``style_confidence``: the
    probability that the chosen one's ``style_prob`` is the higher, >= ``threshold`` or <= 1 -
    ``threshold``), else the one with the lower held-out loss, then the lower memorization, then
    the lower (trial, step); with a reason that says why."""
    if runner is None or not math.isfinite(confidence) or confidence >= threshold:
        if runner is not None and math.isfinite(confidence):
            result = replace(result, reason=f"{result.reason}; selected_p_closer_by_top100 {confidence:.2f} "
                                            f"against {runner.label}")
        return result

    def tie(other: TrialRow) -> str:
        return (f"; style indistinguishable from {other.label} ({chosen.label} is the closer with probability "
                f"{confidence:.2f} < {threshold})")
    if math.isfinite(style_confidence) and max(style_confidence, 1 - style_confidence) >= threshold:
        winner, other = (chosen, runner) if style_confidence >= threshold else (runner, chosen)
        why = (f"{tie(other)} by top100_ratio, so {winner.label} is chosen: the style classifier finds it more like "
               f"the book (probability {max(style_confidence, 1 - style_confidence):.2f} that its style_prob is "
               "the higher)")
        return replace(result, number=winner.number, step=winner.step, reason=result.reason + why)

    def key(r: TrialRow) -> tuple[float, float, tuple[int, int]]:
        loss = r.heldout_loss if math.isfinite(r.heldout_loss) else math.inf
        return (loss, r.memorization, r.key)
    winner = min((chosen, runner), key=key)
    other = runner if winner is chosen else chosen
    classifier = ("" if not math.isfinite(style_confidence) else
                  f" (and by style_prob: {chosen.label}'s is the higher with probability {style_confidence:.2f})")
    why = (f"{tie(other)}{classifier}, so {winner.label} is chosen for lower held-out loss and less copying "
           f"(held-out loss {winner.heldout_loss:.4g} vs {other.heldout_loss:.4g}, memorization "
           f"{winner.memorization:.4g} vs {other.memorization:.4g})")
    return replace(result, number=winner.number, step=winner.step, reason=result.reason + why)
