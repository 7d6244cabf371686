"""How sure the pick is: a paired bootstrap over samples, and what to do when it is not sure.

Ten or twenty samples of 100 tokens measure a ``top100_ratio`` to a few points, about as far
apart as the candidates the pick ranks. So the leading candidates are re-measured on
``sample.final_n_samples`` samples drawn with the same seed (sample *i* of one model and
sample *i* of the other share their random numbers: a paired design), and the pick reports the
probability that the selected candidate really is closer to the book than the runner-up.

Below :data:`THRESHOLD` the two are indistinguishable in style, and style is no reason to prefer
either: the one with the lower held-out loss (then less copying) is chosen instead, and the
reason says so. Pure functions over per-sample counts; only the standard library.
"""
from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Callable, Sequence

from gpt2ft.pick import PickResult, TrialRow

#: Below this probability of being closer to the book, two candidates tie in style.
THRESHOLD = 0.8
#: Bootstrap replicates: the probability's own Monte-Carlo error is below 0.01 at 2,000.
N_BOOT = 2000


def paired_better(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]],
                  score: Callable[[list[float]], float], n_boot: int = N_BOOT, seed: int = 0) -> float:
    """Probability that A scores higher than B, over ``n_boot`` bootstrap replicates that resample
    sample *indices* (the same indices for both: the pairing). ``a`` and ``b`` are columns of
    per-sample counts (e.g. top-100 hits, tokens); ``score`` maps a replicate's column sums to a
    number, higher better. Ties count one half. Needs equally many samples in every column; NaN
    when there are none or a score is NaN."""
    n = len(a[0]) if a else 0
    if n == 0 or any(len(col) != n for col in (*a, *b)):
        return math.nan
    rng = random.Random(seed)
    wins = 0.0
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        sa, sb = score([sum(col[i] for i in idx) for col in a]), score([sum(col[i] for i in idx) for col in b])
        if math.isnan(sa) or math.isnan(sb):
            return math.nan
        wins += 1.0 if sa > sb else 0.5 if sa == sb else 0.0
    return wins / n_boot


def paired_closer(a_hits: Sequence[int], a_lens: Sequence[int], b_hits: Sequence[int], b_lens: Sequence[int],
                  target: float, n_boot: int = N_BOOT, seed: int = 0) -> float:
    """Probability that A's pooled ratio ``sum(hits) / sum(lens)`` is closer to ``target`` than
    B's (:func:`paired_better`); NaN when the target is unknown."""
    if not math.isfinite(target):
        return math.nan
    return paired_better([a_hits, a_lens], [b_hits, b_lens],
                         lambda s: -abs(s[0] / s[1] - target) if s[1] else -math.inf, n_boot, seed)


def settle(result: PickResult, chosen: TrialRow, runner: TrialRow | None, confidence: float,
           threshold: float = THRESHOLD) -> PickResult:
    """The pick after its confidence is known: unchanged when the chosen candidate is closer to
    the book with probability >= ``threshold`` (or there is no runner-up, or the probability is
    unknown); otherwise the one of the two with the lower held-out loss, then the lower
    memorization, then the lower (trial, step), with a reason that says why."""
    if runner is None or not math.isfinite(confidence) or confidence >= threshold:
        if runner is not None and math.isfinite(confidence):
            result = replace(result, reason=f"{result.reason}; pick_confidence {confidence:.2f} against "
                                            f"{runner.label}")
        return result

    def key(r: TrialRow) -> tuple[float, float, tuple[int, int]]:
        loss = r.heldout_loss if math.isfinite(r.heldout_loss) else math.inf
        return (loss, r.memorization, r.key)
    winner = min((chosen, runner), key=key)
    other = runner if winner is chosen else chosen
    why = (f"; style indistinguishable from {other.label} (pick_confidence {confidence:.2f} < {threshold}), so "
           f"{winner.label} is chosen for lower held-out loss and less copying (held-out loss "
           f"{winner.heldout_loss:.4g} vs {other.heldout_loss:.4g}, memorization {winner.memorization:.4g} vs "
           f"{other.memorization:.4g})")
    return replace(result, number=winner.number, step=winner.step, reason=result.reason + why)
