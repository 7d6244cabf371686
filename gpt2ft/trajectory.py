"""A trial's path through training, and the numbers that say when copying began.

A trajectory is a list of points, one per measurement of the samples, in training order:
``{"step", "epoch", <sample metrics>..., "heldout_loss"}``. Step 0 is the base model (measured
once per study and reused), the last point is the trial's final measurement. Everything here
is a pure function over such lists, so the rules can be checked on literal numbers.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

Point = Mapping[str, Any]
#: Metrics of a trajectory point, logged as MLflow step metrics under these (the final) names.
POINT_METRICS = ("top100_ratio", "top100_ratio_se", "memorization", "memorization_se", "memorization_4",
                 "memorization_16", "longest_copy", "style_js", "style_prob", "distinct_1", "distinct_2", "distinct_3",
                 "repetition_4", "fluency_ppl", "near_verbatim", "near_verbatim_longest", "extractable_rate",
                 "extractable_rate_heldout", "extraction_prob", "extraction_prob_heldout", "discoverable_rate",
                 "discoverable_rate_heldout", "extraction_log10p", "extraction_log10p_heldout", "mia_auc",
                 "mia_auc_se", "mia_auc_loss", "mia_auc_minkpp")


def copying_onset(points: Sequence[Point], bound: float) -> Optional[Point]:
    """The first point whose ``memorization`` is above ``bound`` (the pick's bound is
    inclusive: a trial at exactly the bound still counts as not copying); None if none is."""
    for p in points:
        mem = p.get("memorization", math.nan)
        if math.isfinite(mem) and mem > bound:
            return p
    return None


def heldout_turn_step(curve: Sequence[tuple[int, float]]) -> Optional[int]:
    """The first evaluation step at which held-out loss is above the evaluation before it:
    the earliest warning of overfitting; None while it only falls."""
    for (_, before), (step, loss) in zip(curve, curve[1:]):
        if loss > before:
            return step
    return None


def onset_metrics(points: Sequence[Point], heldout_curve: Sequence[tuple[int, float]],
                  bound: float) -> dict[str, float]:
    """The copying-onset numbers of one trial, as metrics.

    ``copying_onset_step`` / ``copying_onset_epoch``: the first point above ``bound`` (absent
    when the trial never copies). ``best_heldout_step``: the evaluation with the lowest
    held-out loss. ``heldout_turn_step``: the first rise of held-out loss (absent if none).
    ``heldout_up_before_copying``: 1 when held-out loss turned up no later than copying set in
    (the loss warned in time), 0 when copying came first (absent without an onset).
    """
    out: dict[str, float] = {}
    if heldout_curve:
        out["best_heldout_step"] = float(min(heldout_curve, key=lambda sl: sl[1])[0])
    turn = heldout_turn_step(heldout_curve)
    if turn is not None:
        out["heldout_turn_step"] = float(turn)
    onset = copying_onset(points, bound)
    if onset is not None:
        out["copying_onset_step"] = float(onset["step"])
        out["copying_onset_epoch"] = float(onset["epoch"])
        out["heldout_up_before_copying"] = float(turn is not None and turn <= onset["step"])
    return out


def heldout_at(curve: Sequence[tuple[int, float]], step: int) -> float:
    """Held-out loss evaluated at ``step`` (the latest evaluation at or before it)."""
    before = [loss for s, loss in curve if s <= step]
    return before[-1] if before else math.nan


def point(step: int, epoch: float, metrics: Mapping[str, float], heldout_loss: float) -> dict[str, float]:
    """One trajectory point from a measurement's metrics."""
    return {"step": int(step), "epoch": float(epoch), "heldout_loss": float(heldout_loss),
            **{k: float(metrics[k]) for k in POINT_METRICS if k in metrics}}
