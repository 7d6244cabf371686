"""What the study's MLflow run says on its own page: the pick, its reason, the candidate table and
the two figures, as the run's description (the ``mlflow.note.content`` tag, which MLflow 3's run
page renders as Markdown above its metrics: tables, and images served from the run's own
artifacts, checked in Chromium). A researcher reads the outcome there without downloading
``candidates.csv`` or opening the artifacts one by one. Pure: text from the summary.
"""
from __future__ import annotations

import math
from typing import Any

from gpt2ft.fmt import fmt
from gpt2ft.judges import JUDGE_METRICS

#: The figures the study's run logs (gpt2ft.report), shown in its description.
FIGURES = {"plots/style_vs_copying.png": "Style vs copying: each trial's path from the base model",
           "plots/copying_and_loss_by_epoch.png": "Copying and held-out loss by epoch"}
_COLUMNS = ("number", "step", "epoch", "goldfish_k", "lora_r", "top100_ratio", "memorization", "near_verbatim",
            "extractable_rate", "discoverable_rate", "mia_auc", "heldout_loss", "n_samples")
#: MLflow keeps a tag of at most 8,000 characters: a long study's table shows its first rows (the
#: pick first, then the eligible by closeness to the book) and says where the rest are.
MAX_ROWS = 24


def study_note(summary: Any, run_id: str) -> str:
    """The study run's description, in Markdown."""
    return "\n\n".join([_pick_lines(summary), _candidate_table(summary), _figures(run_id),
                        "Every column: `candidates.csv` and `trials.csv`; samples side by side: `samples.html` "
                        "(Artifacts tab)."])


def _pick_lines(summary: Any) -> str:
    pick = summary.pick
    if pick is None:
        return "**No candidate measured yet.**"
    if summary.selected is None:
        return f"**Nothing selected**: {pick.reason}"
    number, step = summary.selected
    row = summary.candidate(number, step)
    conf = "".join(f", `selected_p_closer_by_{by}` {p:.2f}" for by, p in (("top100", summary.p_closer_by_top100),
                   ("style_prob", summary.p_closer_by_style_prob)) if math.isfinite(p))
    book = summary.references.get("book_top100_ratio", math.nan)
    base = summary.references.get("base_top100_ratio", math.nan)
    return (f"**The pick: trial {number} at step {step} (epoch {fmt(row.get('epoch', math.nan))})**{conf}. "
            f"`top100_ratio` {fmt(row.get('top100_ratio', math.nan))} (base model {fmt(base)}, the book "
            f"{fmt(book)}), `memorization` {fmt(row.get('memorization', math.nan))}, `near_verbatim` "
            f"{fmt(row.get('near_verbatim', math.nan))}, `discoverable_rate` "
            f"{fmt(row.get('discoverable_rate', math.nan))}, `mia_auc` {fmt(row.get('mia_auc', math.nan))}, "
            f"`heldout_loss` {fmt(row.get('heldout_loss', math.nan))}.\n\nWhy: {pick.reason}")


def _candidate_table(summary: Any) -> str:
    c = summary.candidates
    if c is None or c.empty:
        return ""
    cols = [k for k in _COLUMNS if k in c.columns]
    lines = ["| " + " | ".join(cols + ["the pick says"]) + " |", "|" + "---|" * (len(cols) + 1)]
    book = summary.references.get("book_top100_ratio", math.nan)
    order = c.assign(_sel=~c["selected"].astype(bool), _out=~c["eligible"].astype(bool),
                     _dist=(c["top100_ratio"] - book).abs() if "top100_ratio" in c.columns else 0.0)
    shown = order.sort_values(["_sel", "_out", "_dist"]).head(MAX_ROWS) if len(c) > MAX_ROWS else c
    for row in shown.to_dict("records"):
        says = "**selected**" if row.get("selected") else "eligible" if row.get("eligible") else \
            f"out: {row.get('why_not', '')}"
        lines.append("| " + " | ".join(fmt(row.get(k)) for k in cols) + f" | {says} |")
    if len(c) > MAX_ROWS:
        lines.append(f"\n{len(c) - MAX_ROWS} more in `candidates.csv`.")
    bounds = ", ".join(f"`{JUDGE_METRICS[j]}` <= {fmt(b)}" for j, b in summary.bounds.by_judge().items()
                       if math.isfinite(b))
    return f"Candidates (bounds: {bounds}):\n\n" + "\n".join(lines)


def _figures(run_id: str) -> str:
    # Relative to the UI's own address: the image is the run's artifact, served by the same server.
    return "\n\n".join(f"![{title}](get-artifact?path={path.replace('/', '%2F')}&run_uuid={run_id})"
                       for path, title in FIGURES.items())
