"""Turns assets and results into the figures and pages a researcher looks at.

``plots`` draws; this module only gathers the numbers each plot needs.
"""
from __future__ import annotations

import html
from collections import Counter
from typing import Any, Optional, Sequence


from gpt2ft import metrics as M
from gpt2ft import plots
from gpt2ft.fmt import fmt
from gpt2ft.run_page import study_note


def _freqs(seqs: Sequence[Sequence[int]], ids: Sequence[int]) -> list[float]:
    c = Counter(t for s in seqs for t in s)
    total = max(sum(c.values()), 1)
    return [c[i] / total for i in ids]


def top100_data(assets, tuned_ids: Sequence[Sequence[int]]) -> dict[str, Any]:
    """``plots.top100_frequencies``'s arguments: the book's top-100 tokens by rank, their
    strings, and their frequencies in the book, the base model's and the tuned samples."""
    book = Counter(assets.data.train_ids)
    ranked = sorted(assets.top_ids, key=lambda i: (-book[i], i))
    total = len(assets.data.train_ids)
    base = assets.references.samples.get("base", [])
    return {"top_ids": ranked, "labels": [assets.tokenizer.decode([i]) for i in ranked],
            "book_freq": [book[i] / total for i in ranked], "base_freq": _freqs(base, ranked),
            "tuned_freq": _freqs(tuned_ids, ranked)}


def novelty_data(assets, named: dict[str, Sequence[Sequence[int]]]) -> dict[str, Any]:
    """``plots.novelty_curves``'s arguments: the held-out book's, the base model's and each
    named sample set's novelty curve."""
    curves = {"held-out book": M.novelty_curve(assets.references.samples.get("book", []), assets.index)}
    if "base" in assets.references.samples:
        curves["base model"] = M.novelty_curve(assets.references.samples["base"], assets.index)
    for name, ids in named.items():
        curves[name] = M.novelty_curve(ids, assets.index)
    return {"curves": curves}


def novelty_table(data: dict[str, Any]) -> dict[str, Any]:
    """``novelty_data``'s curves (all but the base model's) as the MLflow table artifact:
    {"n": [1..16], source: [share at n]}."""
    out = {k: v for k, v in data["curves"].items() if k != "base model"}
    return {"n": list(range(1, 17)), **{k: [v[n] for n in range(1, 17)] for k, v in out.items()}}


def trial_figure_specs(assets, res, novelty: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Per trial: loss curves, top-100 frequencies, novelty curve (``novelty_data``, computed
    once by the caller for the figure and the table), each as the name of its ``plots``
    function and plain-data arguments, so another process can draw it."""
    return {
        "loss": ("loss_curves", {"train": res.fit.train_curve, "heldout": res.fit.heldout_curve,
                                 "steps_per_epoch": res.fit.steps_per_epoch}),
        "top100_frequencies": ("top100_frequencies", top100_data(assets, res.ids)),
        "novelty": ("novelty_curves", novelty),
    }


def highlighted_html(assets, ids: Sequence[int], n: int = 8) -> str:
    """A sample as HTML with every token inside a copied n-gram highlighted."""
    if len(ids) < n:
        return html.escape(assets.tokenizer.decode(list(ids)))
    mask = assets.index.hit_mask(list(ids), n)
    copied = [False] * len(ids)
    for start, hit in enumerate(mask):
        if hit:
            for j in range(start, start + n):
                copied[j] = True
    parts, run, state = [], [], copied[0]
    for tok, c in zip(ids, copied):
        if c != state:
            parts.append((state, run))
            run, state = [], c
        run.append(tok)
    parts.append((state, run))
    out = []
    for c, toks in parts:
        text = html.escape(assets.tokenizer.decode(toks))
        out.append(f"<mark>{text}</mark>" if c else text)
    return "".join(out)


#: The headline numbers shown above each column of the samples page.
PAGE_METRICS = ("top100_ratio", "memorization", "longest_copy", "distinct_2", "repetition_4", "fluency_ppl")


def samples_page(assets, columns: dict[str, Sequence[Sequence[int]]], k: int = 3, n: int = 8,
                 metrics: Optional[dict[str, dict[str, float]]] = None,
                 notes: Optional[dict[str, str]] = None) -> str:
    """Samples side by side (base, selected, most-copying), copied spans highlighted, each
    column headed by its measured numbers (``metrics``: column name -> metric -> value) and a
    ``notes`` line where it has one (why a column shows no samples)."""
    head = "".join(f"<th>{html.escape(name)}{_numbers((metrics or {}).get(name, {}))}"
                   f"{_note((notes or {}).get(name, ''))}</th>" for name in columns)
    rows = []
    for i in range(k):
        cells = []
        for ids in columns.values():
            cells.append(f"<td>{highlighted_html(assets, ids[i], n) if i < len(ids) else ''}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>gpt2ft samples</title>"
        "<style>body{font-family:Georgia,serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.6em;vertical-align:top;width:33%}"
        "mark{background:#ffd27f}</style></head><body>"
        f"<h1>Samples side by side</h1><p>Highlighted: tokens inside a {n}-gram that occurs "
        "verbatim in the training text (copied).</p>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table></body></html>")


def _note(text: str) -> str:
    return f"<br><em>{html.escape(text)}</em>" if text else ""


def _numbers(values: dict[str, float]) -> str:
    shown = [f"{k} {fmt(float(values[k]))}" for k in PAGE_METRICS if k in values]
    return f"<br><small>{html.escape(', '.join(shown))}</small>" if shown else ""


#: The selected column's note when the picked point's samples were not kept.
NOT_KEPT = "its samples were not kept (measured while its trial trained, not re-measured)"


def study_columns(summary, sample_ids: dict[int, Any]) -> dict[str, tuple[list, dict[str, Any], str]]:
    """The columns beside the base model, by name: (samples, numbers, note). The selected
    candidate's column is there for any pick, headed by the picked point's own numbers (its step,
    not its trial's end) over its own samples (``sample_ids[trial]``: the caller's, the picked
    point's); when they were not kept, a note says so. Then the trial that copies most, its end."""
    named: dict[str, tuple[list, dict[str, Any], str]] = {}
    done = summary.table[summary.table["state"] == "COMPLETE"]
    selected = summary.selected[0] if summary.selected else None
    if selected is not None:
        ids = list(sample_ids.get(selected) or [])
        named[f"selected (trial {selected}, step {summary.selected[1]})"] = (
            ids, summary.candidate(*summary.selected), "" if ids else NOT_KEPT)
    if len(done):
        worst = int(done.sort_values(["memorization", "number"]).iloc[-1]["number"])
        if worst != selected and sample_ids.get(worst):
            named[f"most copying (trial {worst})"] = (list(sample_ids[worst]), summary.trial(worst), "")
    return named


def study_samples(summary, assets, sample_ids: dict[int, Any]) -> tuple[str, dict[str, list]]:
    """The study's samples page (the base model beside ``study_columns``), and the columns that
    have samples, by name (their novelty curves)."""
    shown = study_columns(summary, sample_ids)
    columns = {"base model": assets.references.samples.get("base", []),
               **{name: ids for name, (ids, _, _) in shown.items()}}
    refs = summary.references
    numbers = {"base model": {k: refs[f"base_{k}"] for k in PAGE_METRICS if f"base_{k}" in refs},
               **{name: values for name, (_, values, _) in shown.items()}}
    notes = {name: note for name, (_, _, note) in shown.items()}
    page = samples_page(assets, columns, metrics=numbers, notes=notes)
    return page, {name: ids for name, (ids, _, _) in shown.items() if ids}


def log_study_report(parent, summary, trajectories, assets, sample_ids: dict[int, Any]) -> None:
    """The study's trials table, figures, samples page and novelty table on its parent run."""
    table = summary.table
    parent.log_text(table.to_csv(index=False), "trials.csv")
    parent.log_text(summary.candidates.to_csv(index=False), "candidates.csv")
    parent.log_text(trajectories.to_csv(index=False), "trajectories.csv")
    refs = {**summary.references, **summary.bounds.as_attrs()}
    chosen = summary.candidate(*summary.selected) if summary.selected else None
    parent.log_figure(plots.style_vs_copying(table.assign(selected=False), refs, trajectories, chosen=chosen),
                      "plots/style_vs_copying.png")
    parent.log_figure(plots.copying_and_loss_by_epoch(trajectories, refs, chosen=chosen),
                      "plots/copying_and_loss_by_epoch.png")
    done = table[table["state"] == "COMPLETE"]
    if len(done):
        parent.log_figure(plots.params_vs_objectives(done, references=refs), "plots/params_vs_objectives.png")
    page, named = study_samples(summary, assets, sample_ids)
    parent.log_text(page, "samples.html")
    novelty = novelty_data(assets, named)
    parent.log_dict(novelty_table(novelty), "novelty_curve.json")
    parent.log_figure(plots.novelty_curves(**novelty), "plots/novelty.png")
    # Last, once its figures exist: the run page's description tells the outcome (gpt2ft.run_page).
    parent.set_tags({"mlflow.note.content": study_note(summary, parent.id)})
