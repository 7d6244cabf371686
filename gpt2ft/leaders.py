"""The pick's leaders: which candidates keep a checkpoint, their re-measure, and the pick's
confidence.

While a trial trains, each measured point that every judge lets through keeps its checkpoint
(at most ``study.checkpoints_per_trial`` per trial, the best in style; superseded ones deleted).
After each trial only the pick's *contenders* keep theirs: the pick and every eligible
candidate within two standard errors of its style (``pick.contenders``). At the study's end
the contenders and the runner-up are re-measured on ``sample.final_n_samples`` samples from
their checkpoints, with one seed for all (sample *i* of each is drawn with the same random
numbers), and ``gpt2ft.confidence`` turns the selected and runner-up's per-sample counts into
``pick_confidence``.

The study object is used through its plain attributes, so this module does not import optuna.
"""
from __future__ import annotations

import logging
import math
import sys
from typing import Any, Callable

from gpt2ft import confidence as K
from gpt2ft import metrics as M
from gpt2ft import pick as P
from gpt2ft import summary as S
from gpt2ft.assets import Assets
from gpt2ft.checkpoints import Checkpoints
from gpt2ft.measure import DIVERSITY, measure_model
from gpt2ft.model import free_accelerator

log = logging.getLogger(__name__)
#: Re-measure rounds at most: a re-measure can change who leads, and the new leaders are then
#: re-measured too; two rounds settled every study tried, three bound the cost.
ROUNDS = 3


def point_row(study: Any, number: int, point: dict[str, float]) -> P.TrialRow:
    """A trajectory point of a running trial as the pick sees it (the study's recorded references)."""
    attrs = study.user_attrs
    refs = attrs.get("references", {})
    why = S.degenerate_why(point, refs, attrs)
    style = S.study_style(attrs, point.get("top100_ratio", math.nan))
    return P.TrialRow(number, style, float(point.get("memorization", math.nan)), degenerate=bool(why), why=why,
                      step=int(point["step"]), extraction=float(point.get("extractable_rate", math.nan)),
                      heldout_loss=float(point.get("heldout_loss", math.nan)))


def keeper(study: Any, number: int, checkpoints: Checkpoints, tokenizer,
           per_trial: int) -> Callable[[Any, dict[str, float]], None]:
    """The ``on_candidate`` callback of one trial: save the point's checkpoint when every judge
    lets it through, and keep only the trial's ``per_trial`` best in style."""
    kept: dict[int, float] = {}
    bounds = S.recorded_bounds(study.user_attrs)

    def keep(model, point: dict[str, float]) -> None:
        row = point_row(study, number, point)
        if P.ineligible_reason(row, bounds) or not math.isfinite(row.style) or not checkpoints.enabled:
            return
        kept[row.step] = row.style
        worst = sorted(kept, key=lambda s: (kept[s], -s))[:-per_trial]
        if row.step in worst:  # worse than the ones kept already: not worth writing
            del kept[row.step]
            return
        checkpoints.save(number, row.step, model, tokenizer)
        for step in worst:
            del kept[step]
            checkpoints.delete(number, step)
    return keep


def _wanted(summary: S.Summary) -> list[tuple[int, int]]:
    """The contenders and the runner-up: whom the confidence needs measured on more samples."""
    if summary.selected is None:
        return []
    rows = S.candidate_rows(summary.candidates)
    runner = P.runner_up(rows, summary.selected, summary.bounds)
    keys = {r.key for r in P.contenders(rows, summary.selected, summary.bounds)}
    return sorted(keys | ({runner.key} if runner else set()))


def remeasure(study: Any, assets: Assets, checkpoints: Checkpoints, n: int, seed: int,
              on_metrics: Callable[[int, dict[str, float]], None]) -> int:
    """Re-measure the leaders with ``n`` samples from their checkpoints (``remeasure_N_S`` on the
    study: Optuna refuses to change a finished trial), until they no longer change; returns how
    many were measured. ``on_metrics(trial, metrics)`` logs them on the trial's run."""
    done = 0
    record_sized_references(study, assets, n)
    for _ in range(ROUNDS):
        todo = [k for k in _wanted(S.summarize(study)) if S.remeasure_key(*k) not in study.user_attrs]
        measured = [k for k in todo if _remeasure_one(study, assets, checkpoints, k, n, seed, on_metrics)]
        done += len(measured)
        if not measured:
            break
    return done


def record_sized_references(study: Any, assets: Assets, n: int) -> dict[str, float]:
    """The book's (and the training text's) ``summary.SIZED`` references matched at ``n`` samples,
    recorded once on the study: a candidate re-measured on ``n`` samples is judged against text of
    its own size (distinct_2 pooled over 50 samples lies below that over 10)."""
    key = S.sized_key(n)
    if key not in study.user_attrs:
        seed, seqs = assets.config.train.seed, assets.references.samples
        study.set_user_attr(key, {f"{src}_{name}": M.matched_reference(seqs.get(src, []), n, DIVERSITY[name], 20,
                                                                       seed)[0]
                                  for src in ("book", "train") for name in S.SIZED})
    return study.user_attrs[key]


def _remeasure_one(study: Any, assets: Assets, checkpoints: Checkpoints, key: tuple[int, int], n: int, seed: int,
                   on_metrics: Callable[[int, dict[str, float]], None]) -> bool:
    model = checkpoints.load(*key, assets.runtime)
    if model is None:
        return False
    m, _, ids = measure_model(assets, model, n, seed)
    del model
    free_accelerator()
    hits, lens = M.top100_counts(ids, assets.top_ids)  # what the paired bootstrap resamples
    study.set_user_attr(S.remeasure_key(*key), {**{k: float(v) for k, v in m.items()}, "n_samples": n,
                                                "top100_hits": hits, "lengths": lens, "sample_ids": ids})
    on_metrics(key[0], {f"final_step{key[1]}_{k}": v for k, v in m.items()})
    print(f"[study] trial {key[0]} at step {key[1]} re-measured with {n} samples: top100_ratio "
          f"{m['top100_ratio']:.3f}, memorization {m['memorization']:.4f}", file=sys.stderr)
    return True


def measure_confidence(study: Any, seed: int) -> float:
    """``pick_confidence``: the probability, by a paired bootstrap over samples, that the selected
    candidate is closer to the book than the runner-up; recorded on the study for
    ``summary.summarize`` to settle the pick with. NaN when either was not re-measured."""
    summary = S.summarize(study)
    rows = S.candidate_rows(summary.candidates)
    raw = P.pick(rows, summary.rule, bounds=summary.bounds) if rows else None  # before any settling
    if raw is None or not raw.eligible:
        return math.nan
    runner = P.runner_up(rows, raw.key, summary.bounds)
    if runner is None:
        return math.nan
    a = study.user_attrs.get(S.remeasure_key(*raw.key)) or {}
    b = study.user_attrs.get(S.remeasure_key(*runner.key)) or {}
    if not (a.get("top100_hits") and b.get("top100_hits")):
        return math.nan
    value = K.paired_closer(a["top100_hits"], a["lengths"], b["top100_hits"], b["lengths"],
                            summary.references.get("book_top100_ratio", math.nan), seed=seed)
    study.set_user_attr("pick_confidence", {"selected": list(raw.key), "runner_up": list(runner.key),
                                            "value": value})
    return value
