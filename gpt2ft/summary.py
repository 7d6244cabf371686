"""The one table of a study's trials: the pick, the plots and the printed tables all read it.

A trial's numbers are its own measurement, or the tighter re-measure with more samples
(``final_trial_N`` on the study) where one was made; the style objective is
``pick.style_score`` against the book's ratio recorded on the study (``references``); the
Pareto front and the selected trial are ``gpt2ft.pick`` applied to exactly these rows. So a
dot in a figure, a row in a printed table and the pick can never disagree.

The study is read through its plain attributes (``user_attrs``, ``get_trials``), so this
module does not import optuna.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import pandas as pd

from gpt2ft import pick as P

#: When copying began and whether held-out loss warned first (``gpt2ft.trajectory``).
ONSET_METRICS = ("copying_onset_step", "copying_onset_epoch", "heldout_turn_step", "heldout_up_before_copying")
#: Per-trial metrics carried into the table (beside params, state and the pick's columns).
TABLE_METRICS = ("top100_ratio", "memorization", "heldout_loss", "train_loss", "style_prob",
                 "longest_copy", "style_js", "distinct_2", "repetition_4", "fluency_ppl")


@dataclass(frozen=True)
class Summary:
    """A study at a glance: the trial table, the pick on it, and what the pick used."""

    table: pd.DataFrame
    pick: Optional[P.PickResult]
    references: dict[str, float]
    bound: float
    rule: str

    def trial(self, number: int) -> dict[str, Any]:
        row = self.table[self.table["number"] == number]
        return row.iloc[0].to_dict() if len(row) else {}


def trial_metrics(study: Any, trial: Any) -> dict[str, float]:
    """A trial's metrics, with the re-measured values where the trial was re-measured."""
    metrics = dict(trial.user_attrs.get("metrics", {}))
    final = study.user_attrs.get(f"final_trial_{trial.number}")
    if final:
        metrics.update(final)
    return metrics


def _book_diversity(refs: dict[str, float], name: str) -> float:
    """The book's size-matched diversity: from held-out text, else from the training text (the
    same author's prose) when the held-out part is too short for one sample-sized draw."""
    value = refs.get(f"book_{name}", math.nan)
    return value if math.isfinite(value) else refs.get(f"train_{name}", math.nan)


def _degenerate(m: dict[str, float], refs: dict[str, float], attrs: dict[str, Any]) -> str:
    """Why a trial's samples are degenerate ("" when they are not), by ``pick.degenerate_reason``
    against the book's size-matched diversity and the study's recorded factor and floor."""
    return P.degenerate_reason(m.get("distinct_2", math.nan), m.get("repetition_4", math.nan),
                               _book_diversity(refs, "distinct_2"), _book_diversity(refs, "repetition_4"),
                               attrs.get("degenerate_factor", P.DEGENERATE_FACTOR),
                               attrs.get("repetition_floor", P.REPETITION_FLOOR))


def _row(study: Any, trial: Any, book_ratio: float, bound: float) -> dict[str, Any]:
    m = trial_metrics(study, trial) if trial.state.name == "COMPLETE" else {}
    top, mem = float(m.get("top100_ratio", math.nan)), float(m.get("memorization", math.nan))
    why = _degenerate(m, study.user_attrs.get("references", {}), study.user_attrs) if m else ""
    return {"number": trial.number, "state": trial.state.name, **trial.params,
            **{k: float(m.get(k, math.nan)) for k in TABLE_METRICS},
            "style_score": P.style_score(top, book_ratio),
            "seconds": trial.duration.total_seconds() if trial.duration else math.nan,
            "stopped_early": bool(trial.user_attrs.get("stopped_early", False)),
            "remeasured": f"final_trial_{trial.number}" in study.user_attrs,
            "within_bound": bool(mem <= bound), "degenerate": bool(why), "degenerate_why": why,
            **{k: float(m.get(k, math.nan)) for k in ONSET_METRICS},
            "best_heldout_epoch": float(m.get("best_epoch", math.nan)),
            "best_heldout_loss": float(m.get("best_heldout_loss", math.nan))}


def trajectories(study: Any) -> pd.DataFrame:
    """Every trial's measurements along training, one row per (trial, point): ``number``,
    ``lr``, ``step``, ``epoch`` (0 = the base model), the sample metrics, ``heldout_loss``."""
    rows = [{"number": t.number, "lr": t.params.get("lr", math.nan), **p}
            for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"
            for p in t.user_attrs.get("trajectory", [])]
    columns = ["number", "lr", "step", "epoch", "top100_ratio", "memorization", "heldout_loss"]
    return pd.DataFrame(rows, columns=list(dict.fromkeys(columns + [k for r in rows for k in r])))


def pick_rows(table: pd.DataFrame) -> list[P.TrialRow]:
    """The table as the pick sees it: style score to maximise, memorization to minimise."""
    return [P.TrialRow(int(r.number), float(r.style_score), float(r.memorization), str(r.state),
                       degenerate=bool(r.degenerate), why=str(r.degenerate_why)) for r in table.itertuples()]


def summarize(study: Any) -> Summary:
    """Build the table from the study and apply the study's pick rule to it."""
    attrs = study.user_attrs
    refs = dict(attrs.get("references", {}))
    bound = float(attrs.get("memorization_bound", math.nan))
    rule = attrs.get("pick_rule", P.RULES[0])
    rows = [_row(study, t, refs.get("book_top100_ratio", math.nan), bound)
            for t in study.get_trials(deepcopy=False)]
    table = pd.DataFrame(rows, columns=_columns(rows))
    picked = P.pick(pick_rows(table), rule, bound) if len(table) else None
    front = {r.number for r in P.pareto_front(pick_rows(table))} if len(table) else set()
    table["on_front"] = table["number"].isin(front)
    table["eligible"] = (table["state"] == "COMPLETE") & table["within_bound"] & ~table["degenerate"]
    table["selected"] = table["number"] == (picked.number if picked else -1)
    return Summary(table, picked, refs, bound, rule)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every key that any row has, in first-seen order (failed trials may lack params)."""
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r))
    return list(seen) or ["number", "state", *TABLE_METRICS, "style_score", "within_bound", "degenerate",
                          "degenerate_why"]
