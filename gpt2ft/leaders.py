"""The pick's leaders: which candidates keep a checkpoint, their re-measure, and the pick's
confidence.

While a trial trains, each measured point that every judge lets through keeps its checkpoint
(at most ``study.checkpoints_per_trial`` per trial, the best in style; superseded ones deleted).
After each trial, the pick's *contenders* (the pick and every eligible candidate within two
standard errors of its style, ``pick.contenders``), its runner-up and each trial's best eligible
point in style keep theirs (``keep_set``). At the study's end the contenders, the pick and its
runner-up are re-measured on ``sample.final_n_samples`` samples, with one seed for all (sample
*i* of each is drawn with the same random numbers), and the re-measure follows the pick until the
pick and its runner-up are both re-measured (``remeasure``). ``gpt2ft.confidence`` then turns
their per-sample counts into the pick's confidence by the rule's own criterion.

The study object is used through its plain attributes, so this module does not import optuna.
"""
from __future__ import annotations

import logging
import math
import sys
from typing import Any, Callable, Optional

import yaml

from gpt2ft import confidence as K
from gpt2ft import metrics as M
from gpt2ft import pick as P
from gpt2ft import summary as S
from gpt2ft.assets import Assets
from gpt2ft.checkpoints import Checkpoints
from gpt2ft.measure import DIVERSITY, measure_model
from gpt2ft.config import build_config
from gpt2ft.model import free_accelerator
from gpt2ft.trial import retrain

log = logging.getLogger(__name__)


def point_row(study: Any, number: int, point: dict[str, float]) -> P.TrialRow:
    """A trajectory point of a running trial as the pick sees it (the study's recorded references)."""
    attrs = study.user_attrs
    refs = attrs.get("references", {})
    why = S.degenerate_why(point, refs, attrs)
    style = S.study_style(attrs, point.get("top100_ratio", math.nan))
    return P.TrialRow(number, style, float(point.get("memorization", math.nan)), degenerate=bool(why), why=why,
                      step=int(point["step"]), extraction=float(point.get("extractable_rate", math.nan)),
                      heldout_loss=float(point.get("heldout_loss", math.nan)), copying=P.copying_of(point))


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


def pick_pair(summary: S.Summary) -> tuple[Optional[P.TrialRow], Optional[P.TrialRow]]:
    """The rule's own pick (before any confidence settles it) and its runner-up by the rule's
    criterion, as rows; (None, None) when nothing is eligible."""
    rows = S.candidate_rows(summary.candidates)
    raw = P.pick(rows, summary.rule, bounds=summary.bounds) if rows else None
    if raw is None or not raw.eligible:
        return None, None
    runner = P.runner_up(rows, raw.key, summary.bounds, summary.rule)
    return next(r for r in rows if r.key == raw.key), runner


def keep_set(summary: S.Summary) -> set[tuple[int, int]]:
    """The checkpoints a finished trial keeps: the pick's contenders, its runner-up, and each
    trial's best eligible point in style (the candidate a re-measure of the others most likely
    makes the pick)."""
    pick, runner = pick_pair(summary)
    rows = S.candidate_rows(summary.candidates)
    keep = {r.key for r in P.contenders(rows, pick.key, summary.bounds)} if pick else set()
    keep |= {runner.key} if runner else set()
    best: dict[int, P.TrialRow] = {}
    for r in rows:
        if not P.ineligible_reason(r, summary.bounds) and math.isfinite(r.style) and (
                r.number not in best or r.style > best[r.number].style):
            best[r.number] = r
    return keep | {r.key for r in best.values()}


def remeasure(study: Any, assets: Assets, checkpoints: Checkpoints, n: int, seed: int,
              on_metrics: Callable[[int, dict[str, float]], None],
              retrain: Optional[Callable[[tuple[int, int]], Any]] = None) -> int:
    """Re-measure the leaders with ``n`` samples (``remeasure_N_S`` on the study: Optuna refuses to
    change a finished trial) and follow the pick: whenever the re-measured values move it, the new
    pick and its runner-up are re-measured too, until both are. Contenders are re-measured from
    their checkpoints; the pick and its runner-up also without one, retrained to their step by
    ``retrain(key)`` (then kept). Returns how many were measured; ``on_metrics(trial, metrics)``
    logs them on the trial's run."""
    record_sized_references(study, assets, n)
    tried: set[tuple[int, int]] = set()
    measured = 0
    while True:
        summary = S.summarize(study)
        pick, runner = pick_pair(summary)
        if pick is None:
            break
        must = [r.key for r in (pick, runner) if r is not None]
        rows = S.candidate_rows(summary.candidates)
        maybe = [r.key for r in P.contenders(rows, pick.key, summary.bounds) if checkpoints.path(*r.key).is_dir()]
        todo = [k for k in dict.fromkeys(must + maybe)
                if k not in tried and S.remeasure_key(*k) not in study.user_attrs]
        if not todo:
            break
        for key in todo:
            tried.add(key)
            measured += _remeasure_one(study, assets, checkpoints, key, n, seed, on_metrics,
                                       retrain if key in must else None)
    return measured


def record_sized_references(study: Any, assets: Assets, n: int) -> dict[str, float]:
    """The book's (and the training text's) ``summary.SIZED`` references matched at ``n`` samples,
    recorded once on the study: a candidate re-measured on ``n`` samples is judged against text of
    its own size (distinct_2 pooled over 50 samples lies below that over 10). Where a text has
    fewer pieces than ``n`` (a novella's held-out part: about 25 chunks of 100 tokens against 50
    samples), at the largest size it allows, said on stderr: a NaN reference would switch the
    degenerate guard off for exactly the points the pick chooses among. The smaller size makes the
    guard a little stricter (distinct_2 of less text is higher), never absent."""
    key = S.sized_key(n)
    if key not in study.user_attrs:
        seed, seqs, refs = assets.config.train.seed, assets.references.samples, {}
        for src in ("book", "train"):
            pieces = seqs.get(src, [])
            at = min(n, len(pieces)) or n
            if at < n:
                print(f"[study] the {src}'s references have {at} pieces, fewer than the re-measure's {n} "
                      f"samples: its re-measured points are judged by diversity against {at}", file=sys.stderr)
            refs.update({f"{src}_{name}": M.matched_reference(pieces, at, DIVERSITY[name], 20, seed)[0]
                         for name in S.SIZED})
        study.set_user_attr(key, refs)
    return study.user_attrs[key]


def retrainer(study: Any, assets: Assets) -> Callable[[tuple[int, int]], Any]:
    """``remeasure``'s ``retrain``: a candidate trained again to its step (``trial.retrain``) under
    the config its trial trained with; bitwise its weights on a CPU (``tests/test_candidates.py``),
    close to them on a GPU, and then measured, so the re-measure describes the model it keeps."""
    def again(key: tuple[int, int]):
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == key[0])
        text = trial.user_attrs.get("config_yaml") or study.user_attrs.get("config_yaml")
        config = build_config(yaml.safe_load(text)) if text else assets.config
        model, result = retrain(config, trial.params, key[1], assets)
        return model if result.steps == key[1] else None
    return again


def _remeasure_one(study: Any, assets: Assets, checkpoints: Checkpoints, key: tuple[int, int], n: int, seed: int,
                   on_metrics: Callable[[int, dict[str, float]], None],
                   retrain: Optional[Callable[[tuple[int, int]], Any]]) -> bool:
    model = checkpoints.load(*key, assets.runtime, assets.fresh_model)
    retrained = model is None and retrain is not None
    if retrained:
        model = retrain(key)
        if model is not None:
            checkpoints.save(*key, model, assets.tokenizer)  # export then finds the model it measured
    if model is None:
        log.warning("trial %d at step %d kept no checkpoint and is not re-measured", *key)
        return False
    m, texts, ids = measure_model(assets, model, n, seed)
    del model
    free_accelerator()
    # What the paired bootstrap resamples: the top-100 and the copied n-gram counts per sample,
    # and the classifier's probability per sample (the tie-break when top100_ratio cannot decide).
    hits, lens = M.top100_counts(ids, assets.top_ids)
    copied, ngrams = M.memorization_counts(ids, assets.index, (assets.config.metrics.ngram,))[
        assets.config.metrics.ngram]
    clf = assets.classifier
    probs = clf.prob(texts) if clf is not None and clf.usable else []
    study.set_user_attr(S.remeasure_key(*key), {**{k: float(v) for k, v in m.items()}, "n_samples": n,
                                                "top100_hits": hits, "lengths": lens, "copied": copied,
                                                "ngrams": ngrams, "style_probs": probs, "sample_ids": ids,
                                                "retrained": retrained})
    on_metrics(key[0], {f"final_step{key[1]}_{k}": v for k, v in m.items()})
    print(f"[study] trial {key[0]} at step {key[1]} re-measured with {n} samples"
          f"{' (retrained: no checkpoint was kept)' if retrained else ''}: top100_ratio "
          f"{m['top100_ratio']:.3f}, memorization {m['memorization']:.4f}", file=sys.stderr)
    return True


def measure_confidence(study: Any, seed: int) -> float:
    """The probability, by a paired bootstrap over samples, that the rule's own pick (not
    necessarily the point finally selected: ``summary`` reports the selected one's) beats its
    runner-up by the rule's criterion (``pick.criterion``: closeness to the book, or the knee
    score); recorded on the study for ``summary.summarize`` to settle the pick
    with, beside ``style_value``, the probability that the pick's mean ``style_prob`` is the higher
    (the same resampled indices). NaN when either was not re-measured."""
    summary = S.summarize(study)
    pick, runner = pick_pair(summary)
    if pick is None or runner is None:
        return math.nan
    a = study.user_attrs.get(S.remeasure_key(*pick.key)) or {}
    b = study.user_attrs.get(S.remeasure_key(*runner.key)) or {}
    # Copying counts only where the criterion weighs copying (a re-measure of an older version has none).
    columns = ("top100_hits", "lengths", *(("copied", "ngrams") if summary.rule == "knee" else ()))
    if not all(a.get(c) and b.get(c) for c in columns):
        return math.nan
    score = P.criterion(S.candidate_rows(summary.candidates), summary.rule, summary.bounds)
    target = summary.references.get("book_top100_ratio", math.nan)

    def of(sums: list[float]) -> float:
        top = sums[0] / sums[1] if sums[1] else math.nan
        return score(P.style_score(top, target), sums[2] / sums[3] if len(sums) > 2 and sums[3] else 0.0)
    value = K.paired_better([a[c] for c in columns], [b[c] for c in columns], of, seed=seed)
    # The second style judge, for confidence.settle when the first cannot tell the two apart.
    style = (K.paired_better([a["style_probs"]], [b["style_probs"]], lambda sums: sums[0], seed=seed)
             if a.get("style_probs") and b.get("style_probs") else math.nan)
    study.set_user_attr("pick_confidence", {"selected": list(pick.key), "runner_up": list(runner.key),
                                            "value": value, "style_value": style})
    return value
