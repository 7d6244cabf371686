"""The tables of a study: every measured point as a candidate, and one row per trial. The pick,
the plots, the printed tables, ``candidates.csv``/``trials.csv`` and export all read them.

A candidate is one point of a trial's trajectory (an epoch end or ``sample.every_steps`` point,
and the trial's end; the base model at step 0 is a reference, not a candidate), with its own
measurement or the tighter re-measure made from its checkpoint (``remeasure_N_S`` on the study).
The style score is ``pick.style_score`` against the book's ratio recorded on the study, the
bounds are the study's recorded ones (``bounds``), and the selected candidate is
``gpt2ft.pick`` (settled by ``gpt2ft.confidence`` once the study has measured its confidence)
applied to exactly these rows. So a dot in a figure, a row in a table and the pick cannot
disagree.

The study is read through its plain attributes (``user_attrs``, ``get_trials``), so this module
does not import optuna.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Optional

import pandas as pd

from gpt2ft import confidence as K
from gpt2ft import judges as J
from gpt2ft import pick as P

#: When copying began and whether held-out loss warned first (``gpt2ft.trajectory``).
ONSET_METRICS = ("copying_onset_step", "copying_onset_epoch", "heldout_turn_step", "heldout_up_before_copying")
#: Per-candidate metrics carried into the tables (beside params, state and the pick's columns).
TABLE_METRICS = ("top100_ratio", "top100_ratio_se", "memorization", "near_verbatim", "extractable_rate",
                 "discoverable_rate", "discoverable_rate_heldout", "extraction_log10p", "extraction_log10p_heldout",
                 "mia_auc", "mia_auc_se", "mia_auc_loss", "mia_auc_minkpp", "heldout_loss",
                 "fluency_ppl", "distinct_2", "repetition_4", "style_prob", "longest_copy", "near_verbatim_longest",
                 "style_js", "train_loss")


@dataclass(frozen=True)
class Summary:
    """A study at a glance: its candidates, its trials, the pick on them and what the pick used."""

    table: pd.DataFrame
    """One row per trial (its end candidate's numbers); ``selected`` marks the selected trial."""
    candidates: pd.DataFrame
    """One row per (trial, step) candidate; ``eligible``, ``why_not``, ``selected``."""
    pick: Optional[P.PickResult]
    references: dict[str, float]
    bounds: J.Bounds
    rule: str
    p_closer_by_top100: float = math.nan
    """Probability, by the paired bootstrap, that the *selected* point is closer to the book than
    the other finalist by the rule's criterion (``top100_ratio``; the knee score under ``knee``)."""
    p_closer_by_style_prob: float = math.nan
    """Probability that the selected point's mean ``style_prob`` is the higher of the two."""

    @property
    def bound(self) -> float:
        """The memorization bound (the judge most tables show)."""
        return self.bounds.memorization

    @property
    def selected(self) -> Optional[tuple[int, int]]:
        """(trial, step) of the champion; None when nothing is eligible."""
        return self.pick.key if self.pick is not None and self.pick.eligible else None

    def trial(self, number: int) -> dict[str, Any]:
        row = self.table[self.table["number"] == number]
        return row.iloc[0].to_dict() if len(row) else {}

    def candidate(self, number: int, step: int) -> dict[str, Any]:
        c = self.candidates
        row = c[(c["number"] == number) & (c["step"] == step)]
        return row.iloc[0].to_dict() if len(row) else {}


#: The user attribute that marks a derived trial: an interior point of a trained trial, told to
#: Optuna as a trial of its own (``study.derived_trials``) so the sampler learns from every point.
DERIVED = "derived_from"


def is_derived(trial: Any) -> bool:
    return DERIVED in trial.user_attrs


def trained(trials: list[Any]) -> list[Any]:
    """The trials that trained (not derived ones): what ``n_trials``, slots and tables count."""
    return [t for t in trials if not is_derived(t)]


def derived_points(trial: Any, low: int, high: int) -> list[dict[str, Any]]:
    """The points of a finished trial that Optuna may learn from as trials of their own: interior
    points (the end is the trial itself) at a whole epoch within the search space's [low, high],
    with finite metrics. Training is the same up to them whatever the epoch count (constant rate
    after warm-up, the data order from the trial's seed, measuring draws no training random
    numbers), so epoch e of an E-epoch trial *is* an e-epoch trial."""
    end = int(trial.user_attrs.get("metrics", {}).get("steps", 0))
    out = []
    for p in trial.user_attrs.get("trajectory", []):
        epoch, step = float(p.get("epoch", math.nan)), int(p.get("step", 0))
        finite = all(math.isfinite(float(p.get(k, math.nan))) for k in ("top100_ratio", "memorization"))
        if 0 < step < end and finite and epoch.is_integer() and low <= epoch <= high and epoch < trial.params["epochs"]:
            out.append(p)
    return out


def recorded_bounds(attrs: dict[str, Any]) -> J.Bounds:
    """The bounds the study recorded when it was set up (older studies: memorization only)."""
    return J.Bounds.from_attrs(attrs).only(attrs.get("judges", J.JUDGES))


def study_style(attrs: dict[str, Any], top100_ratio: float) -> float:
    """The study's style score of a ``top100_ratio``: ``pick.style_score`` against the book's ratio
    the study recorded at setup (the one place the objective is computed)."""
    return P.style_score(top100_ratio, attrs.get("references", {}).get("book_top100_ratio", math.nan))


def remeasure_key(number: int, step: int) -> str:
    return f"remeasure_{number}_{step}"


#: Metrics of the degenerate guard whose book value depends on how much text is measured:
#: distinct-n falls as text grows (``metrics.distinct_n``), so each is matched at the samples' count.
SIZED = ("distinct_1", "distinct_2", "distinct_3", "repetition_4")


def sized_key(n_samples: int) -> str:
    """The study attribute holding the book's ``SIZED`` references matched at ``n_samples`` samples
    (recorded by the re-measure, ``leaders.record_sized_references``)."""
    return f"references_{int(n_samples)}_samples"


def references_at(refs: dict[str, float], attrs: dict[str, Any], n_samples: float) -> dict[str, float]:
    """The references a measurement of ``n_samples`` samples is judged against: the study's own
    (matched at ``sample.n_samples``) for a trial's measurement (``n_samples`` NaN), else with the
    ``SIZED`` values matched at ``n_samples``; NaN (no evidence) where none were recorded."""
    if not math.isfinite(n_samples):
        return refs
    sized = {f"{src}_{name}": math.nan for src in ("book", "train") for name in SIZED}
    return {**refs, **sized, **attrs.get(sized_key(int(n_samples)), {})}


def _remeasure(attrs: dict[str, Any], number: int, step: int, is_end: bool) -> dict[str, float]:
    """The re-measured metrics of (trial, step); a study of an older version re-measured trial
    ends only, as ``final_trial_N``."""
    found = attrs.get(remeasure_key(number, step)) or (attrs.get(f"final_trial_{number}") if is_end else None)
    return {k: float(v) for k, v in (found or {}).items() if isinstance(v, (int, float))}


def _book_value(refs: dict[str, float], name: str) -> float:
    """The book's size-matched value: from held-out text, else from the training text (the same
    author's prose) when the held-out part is too short for one sample-sized draw."""
    value = refs.get(f"book_{name}", math.nan)
    return value if math.isfinite(value) else refs.get(f"train_{name}", math.nan)


def degenerate_why(m: dict[str, float], refs: dict[str, float], attrs: dict[str, Any]) -> str:
    """Why a candidate's samples are degenerate ("" when they are not), by ``judges.degenerate_reason``
    against the book's size-matched diversity and fluency and the study's recorded factors."""
    return J.degenerate_reason(m.get("distinct_2", math.nan), m.get("repetition_4", math.nan),
                               _book_value(refs, "distinct_2"), _book_value(refs, "repetition_4"),
                               attrs.get("degenerate_factor", J.DEGENERATE_FACTOR),
                               attrs.get("repetition_floor", J.REPETITION_FLOOR),
                               m.get("fluency_ppl", math.nan), refs.get("book_fluency_ppl", math.nan),
                               attrs.get("fluency_factor", J.FLUENCY_FACTOR))


def _points(attrs: dict[str, Any], trial: Any) -> list[dict[str, Any]]:
    """The trial's candidates: its trajectory without the base model (step 0), the end last; a
    trial of an older version without a trajectory is its end alone."""
    m = trial.user_attrs.get("metrics", {})
    end = int(m.get("steps", 0))
    points = [dict(p) for p in trial.user_attrs.get("trajectory", []) if int(p.get("step", 0)) > 0]
    if not points:
        points = [{"step": end, "epoch": math.nan, **m}]
    last = int(points[-1]["step"])
    for p in points:
        step = int(p["step"])
        p["is_end"] = step == last
        if p["is_end"]:  # the end's own numbers (train loss, standard errors) beside its trajectory point
            for k, v in m.items():
                p.setdefault(k, v)
        again = _remeasure(attrs, trial.number, step, p["is_end"])
        p.update(again)
        p["remeasured"] = bool(again)
    return points


def _candidate_row(trial: Any, p: dict[str, Any], refs: dict[str, float], attrs: dict[str, Any]) -> dict[str, Any]:
    why = degenerate_why(p, references_at(refs, attrs, float(p.get("n_samples", math.nan))), attrs)
    return {"number": trial.number, "step": int(p["step"]), "epoch": float(p.get("epoch", math.nan)),
            "state": trial.state.name, **trial.params, "is_end": bool(p["is_end"]),
            **{k: float(p.get(k, math.nan)) for k in TABLE_METRICS},
            "style_score": study_style(attrs, p.get("top100_ratio", math.nan)),
            "n_samples": float(p.get("n_samples", math.nan)), "remeasured": bool(p["remeasured"]),
            "degenerate": bool(why), "degenerate_why": why}


def candidate_rows(table: pd.DataFrame) -> list[P.TrialRow]:
    """The candidate table as the pick sees it."""
    return [P.TrialRow(int(r.number), float(r.style_score), float(r.memorization), str(r.state),
                       degenerate=bool(r.degenerate), why=str(r.degenerate_why), step=int(r.step),
                       extraction=float(r.extractable_rate), heldout_loss=float(r.heldout_loss),
                       style_se=float(r.top100_ratio_se), copying=P.copying_of(r._asdict()))
            for r in table.itertuples()]


CANDIDATE_COLUMNS = ["number", "step", "epoch", "state", "is_end", *TABLE_METRICS, "style_score", "n_samples",
                     "remeasured", "degenerate", "degenerate_why"]


def candidates(study: Any) -> pd.DataFrame:
    """Every COMPLETE trial's candidates, one row per (trial, step), before the pick's columns."""
    attrs = study.user_attrs
    refs = dict(attrs.get("references", {}))
    rows = [_candidate_row(t, p, refs, attrs) for t in trained(study.get_trials(deepcopy=False))
            if t.state.name == "COMPLETE" for p in _points(attrs, t)]
    return pd.DataFrame(rows, columns=list(dict.fromkeys(CANDIDATE_COLUMNS + [k for r in rows for k in r])))


def _judge(cands: pd.DataFrame, rule: str, bounds: J.Bounds, attrs: dict[str, Any]):
    """The pick on the candidates, settled by the study's recorded confidence, and its columns."""
    rows = candidate_rows(cands)
    picked = P.pick(rows, rule, bounds=bounds) if rows else None
    confidence = (math.nan, math.nan)
    if picked is not None and picked.eligible:
        picked, confidence = _settled(picked, rows, bounds, rule, attrs.get("pick_confidence"))
    chosen = picked.key if picked is not None and picked.eligible else None
    lead = {r.key for r in P.contenders(rows, chosen, bounds)} if chosen else set()
    front = {r.key for r in P.pareto_front([r for r in rows if not P.ineligible_reason(r, bounds)])}
    why = [P.ineligible_reason(r, bounds) for r in rows]
    keys = [r.key for r in rows]
    cands["within_bound"] = [bool(r.memorization <= bounds.memorization) for r in rows]
    cands["why_not"] = why
    cands["eligible"] = [not w for w in why]
    cands["on_front"] = [k in front for k in keys]
    cands["contender"] = [k in lead for k in keys]
    cands["selected"] = [k == chosen for k in keys]
    return picked, confidence


def _settled(picked: P.PickResult, rows: list[P.TrialRow], bounds: J.Bounds, rule: str,
             recorded: Optional[dict[str, Any]]) -> tuple[P.PickResult, tuple[float, float]]:
    """Apply the recorded confidence when it was measured for this very pair (the rule's pick, its
    runner-up); with the finally selected point's own two probabilities (by top100_ratio, by
    style_prob): the recorded ones are the rule's pick's, so a tie-break that chose the runner-up
    reports their complements."""
    runner = P.runner_up(rows, picked.key, bounds, rule)
    if runner is None:
        return replace(picked, reason=f"{picked.reason}; no selected_p_closer_by_top100: the only eligible "
                                      "candidate, nothing to compare it with"), (math.nan, math.nan)
    pair = (tuple(recorded.get("selected", ())), tuple(recorded.get("runner_up", ()))) if recorded else ()
    if pair != (picked.key, runner.key):
        return picked, (math.nan, math.nan)
    chosen = next(r for r in rows if r.key == picked.key)
    value, style = float(recorded.get("value", math.nan)), float(recorded.get("style_value", math.nan))
    settled = K.settle(picked, chosen, runner, value, style_confidence=style)
    return settled, ((value, style) if settled.key == picked.key else (1 - value, 1 - style))


def _trial_row(study: Any, trial: Any, cands: pd.DataFrame, bound: float) -> dict[str, Any]:
    mine = cands[cands["number"] == trial.number]
    end = mine[mine["is_end"]].iloc[0].to_dict() if len(mine) else {}
    m = trial.user_attrs.get("metrics", {}) if trial.state.name == "COMPLETE" else {}
    return {"number": trial.number, "state": trial.state.name, **trial.params,
            **{k: float(end.get(k, math.nan)) for k in TABLE_METRICS},
            "style_score": float(end.get("style_score", math.nan)),
            "seconds": trial.duration.total_seconds() if trial.duration else math.nan,
            "stopped_early": bool(trial.user_attrs.get("stopped_early", False)),
            "stopped_for_copying": bool(m.get("stopped_for_copying", 0.0)),
            "remeasured": bool(end.get("remeasured", False)),
            "within_bound": bool(end.get("memorization", math.nan) <= bound),
            "degenerate": bool(end.get("degenerate", False)), "degenerate_why": str(end.get("degenerate_why", "")),
            "eligible": bool(end.get("eligible", False)), "on_front": bool(end.get("on_front", False)),
            "selected": bool(mine["selected"].any()) if len(mine) else False,
            "selected_step": float(mine[mine["selected"]]["step"].iloc[0]) if len(mine) and mine["selected"].any()
            else math.nan,
            **{k: float(m.get(k, math.nan)) for k in ONSET_METRICS},
            "best_heldout_epoch": float(m.get("best_epoch", math.nan)),
            "best_heldout_loss": float(m.get("best_heldout_loss", math.nan))}


def trajectories(study: Any) -> pd.DataFrame:
    """Every trial's measurements along training, one row per (trial, point): ``number``,
    ``lr`` (and the trial's other params), ``step``, ``epoch`` (0 = the base model), the sample
    metrics, ``heldout_loss``."""
    rows = [{"number": t.number, "lr": t.params.get("lr", math.nan), **t.params, **p}
            for t in trained(study.get_trials(deepcopy=False)) if t.state.name == "COMPLETE"
            for p in t.user_attrs.get("trajectory", [])]
    columns = ["number", "lr", "step", "epoch", "top100_ratio", "memorization", "heldout_loss"]
    return pd.DataFrame(rows, columns=list(dict.fromkeys(columns + [k for r in rows for k in r])))


def pick_rows(table: pd.DataFrame) -> list[P.TrialRow]:
    """A table (candidates, or one row per trial) as the pick sees it."""
    if "step" not in table.columns:
        table = table.assign(step=0)
    for col in ("extractable_rate", "heldout_loss", "top100_ratio_se"):
        if col not in table.columns:
            table = table.assign(**{col: math.nan})
    return candidate_rows(table)


def summarize(study: Any) -> Summary:
    """Build the tables from the study and apply the study's pick rule to its candidates."""
    attrs = study.user_attrs
    refs = dict(attrs.get("references", {}))
    bounds = recorded_bounds(attrs)
    rule = attrs.get("pick_rule", P.RULES[0])
    cands = candidates(study)
    picked, confidence = _judge(cands, rule, bounds, attrs)
    rows = [_trial_row(study, t, cands, bounds.memorization) for t in trained(study.get_trials(deepcopy=False))]
    table = pd.DataFrame(rows, columns=_columns(rows))
    return Summary(table, cands, picked, refs, bounds, rule, *confidence)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every key that any row has, in first-seen order (failed trials may lack params)."""
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r))
    return list(seen) or ["number", "state", *TABLE_METRICS, "style_score", "within_bound", "degenerate",
                          "degenerate_why", "eligible", "on_front", "selected"]
