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
from typing import Sequence

from gpt2ft.pick import PickResult, TrialRow

#: Below this probability of being closer to the book, two candidates tie in style.
THRESHOLD = 0.8
#: Bootstrap replicates: the probability's own Monte-Carlo error is below 0.01 at 2,000.
N_BOOT = 2000


def paired_closer(a_hits: Sequence[int], a_lens: Sequence[int], b_hits: Sequence[int], b_lens: Sequence[int],
                  target: float, n_boot: int = N_BOOT, seed: int = 0) -> float:
    """Probability that A's pooled ratio ``sum(hits) / sum(lens)`` is closer to ``target`` than
    B's, over ``n_boot`` bootstrap replicates that resample sample *indices* (the same indices for
    both: the pairing). Ties count one half. Needs equally many samples on both sides; NaN when
    there are none or the target is unknown."""
    n = len(a_hits)
    if n == 0 or not (len(a_lens) == len(b_hits) == len(b_lens) == n) or not math.isfinite(target):
        return math.nan
    rng = random.Random(seed)
    wins = 0.0
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        a = _distance(a_hits, a_lens, idx, target)
        b = _distance(b_hits, b_lens, idx, target)
        wins += 1.0 if a < b else 0.5 if a == b else 0.0
    return wins / n_boot


def _distance(hits: Sequence[int], lens: Sequence[int], idx: list[int], target: float) -> float:
    total = sum(lens[i] for i in idx)
    return abs(sum(hits[i] for i in idx) / total - target) if total else math.inf


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
