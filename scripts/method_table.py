"""docs/goldfish.md's and docs/lora.md's tables from a study that searched a way of training:
``study.goldfish_k`` (``make demo-goldfish``) or ``study.lora_r`` (``make demo-lora``).

Per method (k or rank) and learning rate: the best eligible point (the pick's own criterion, style
score, among that group's points), its ``top100_ratio`` +- its standard error, ``style_prob`` and
held-out loss, the last eligible epoch and the first epoch each judge of copying fails, every judge
with the bound the study recorded whether its pick used it or not (scripts/judges_table.py); then
the pick the study would make on each method's candidates alone, against the first method's, and
what a method costs in held-out loss at matched rates and epochs. Every number is read from the
study's store (Optuna's records, through ``gpt2ft.summary``), none typed by hand.

Usage: ``python3 scripts/method_table.py [--by goldfish_k|lora_r] [--storage URL] [--study NAME]``
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpt2ft import judges as J  # noqa: E402
from gpt2ft import pick as P  # noqa: E402
from gpt2ft.coordination import load_study  # noqa: E402
from gpt2ft.summary import pick_rows, summarize  # noqa: E402
from judges_table import SHORT, first_failures  # noqa: E402

#: The study each knob's demo writes.
STUDIES = {"goldfish_k": "demo-goldfish", "lora_r": "demo-lora"}


def _epoch(v: float) -> str:
    return "-" if not math.isfinite(v) else (f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}")


def method(by: str, value) -> str:
    if by == "lora_r":
        return "full fine-tuning" if int(value) == 0 else f"LoRA r {int(value)}"
    return f"goldfish_k {int(value)}"


def rows(summary, by: str, attrs) -> list[str]:
    c, book = summary.candidates, summary.references.get("book_top100_ratio", math.nan)
    fails = first_failures(c, J.Bounds.from_attrs(attrs))
    used = set(attrs.get("judges", J.JUDGES))
    heads = " / ".join(SHORT[j] + ("" if j in used else " (off)") for j in J.JUDGES)
    out = ["| method | lr | best eligible point | top100_ratio (± se) | distance to the book | style_prob | "
           f"held-out loss | last eligible epoch | first epoch failing: {heads} |",
           "|---|---|---|---|---|---|---|---|---|"]
    for (value, lr), g in c.groupby([by, "lr"]):
        last = _epoch(float(g["epoch"].max()))
        first = " / ".join(_epoch(min(fails[n][j] for n in set(g["number"]))) if any(
            math.isfinite(fails[n][j]) for n in set(g["number"])) else f"none by {last}" for j in J.JUDGES)
        ok = g[g["eligible"]]
        if not len(ok):
            out.append(f"| {method(by, value)} | {lr:.2g} | none eligible | | | | | - | {first} |")
            continue
        b = ok.loc[ok["style_score"].idxmax()]
        out.append(f"| {method(by, value)} | {lr:.2g} | trial {b['number']}, epoch {_epoch(b['epoch'])} (step "
                   f"{b['step']}) | {b['top100_ratio']:.3f} ± {b['top100_ratio_se']:.3f} | "
                   f"{abs(b['top100_ratio'] - book):.3f} | {b['style_prob']:.3f} | {b['heldout_loss']:.3f} | "
                   f"{_epoch(float(ok['epoch'].max()))} | {first} |")
    return out


def picks(summary, by: str) -> list[str]:
    """The pick on each method's candidates alone (the study's rule and bounds), each against the
    first method's (k 0 or full fine-tuning) in distance to the book's top100_ratio."""
    c, book = summary.candidates, summary.references.get("book_top100_ratio", math.nan)
    out, chosen = [], {}
    for value, g in c.groupby(by):
        p = P.pick(pick_rows(g), summary.rule, bounds=summary.bounds)
        if p is None or not p.eligible:
            out.append(f"* {method(by, value)}: nothing eligible")
            continue
        r = chosen[value] = g[(g["number"] == p.key[0]) & (g["step"] == p.key[1])].iloc[0]
        out.append(f"* {method(by, value)}: trial {r['number']} (lr {r['lr']:.2g}) at epoch {_epoch(r['epoch'])}: "
                   f"top100_ratio {r['top100_ratio']:.3f} ± {r['top100_ratio_se']:.3f} (book {book:.3f}), "
                   f"style_prob {r['style_prob']:.3f}, held-out loss {r['heldout_loss']:.3f}, "
                   f"memorization {r['memorization']:.3g}, extractable_rate {r['extractable_rate']:.3g}")
    if len(chosen) >= 2:
        first, *others = sorted(chosen)
        a = chosen[first]
        for value in others:
            b = chosen[value]
            gain = abs(a["top100_ratio"] - book) - abs(b["top100_ratio"] - book)
            se = math.hypot(a["top100_ratio_se"], b["top100_ratio_se"])
            out.append(f"* {method(by, value)} closer to the book than {method(by, first)} by {gain:+.3f} in "
                       f"top100_ratio (standard error of the difference {se:.3f}: {gain / se:+.1f} se)")
    if summary.selected is not None:
        r = c[(c["number"] == summary.selected[0]) & (c["step"] == summary.selected[1])].iloc[0]
        out.append(f"* the study's pick: {method(by, r[by])}, trial {r['number']} (lr {r['lr']:.2g}) "
                   f"at epoch {_epoch(r['epoch'])}")
    return out


def heldout_cost(summary, by: str) -> list[str]:
    """Held-out loss of each method minus the first's at the same rate and epoch (whole epochs)."""
    c = summary.candidates
    c = c[c["epoch"].map(lambda e: math.isfinite(e) and float(e).is_integer())]
    first, out = c[by].min(), []
    for lr, g in c.groupby("lr"):
        plain = g[g[by] == first].set_index("epoch")["heldout_loss"]
        for value, h in g[g[by] != first].groupby(by):
            d = (h.set_index("epoch")["heldout_loss"] - plain).dropna()
            if len(d):
                out.append(f"* lr {lr:.2g}, {method(by, value)}: held-out loss {d.mean():+.3f} nats/token on average "
                           f"over epochs {', '.join(_epoch(e) for e in d.index)} ({', '.join(f'{v:+.3f}' for v in d)})")
    return out or ["* no rate was trained by more than one method"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--by", choices=sorted(STUDIES), default="goldfish_k", help="the searched knob")
    ap.add_argument("--storage", default="sqlite:///mlruns/optuna.db")
    ap.add_argument("--study", help="default: demo-goldfish or demo-lora, by --by")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # Optuna's experimental-feature notes on opening the storage
    study = load_study(args.storage, args.study or STUDIES[args.by])
    summary = summarize(study)
    if args.by not in summary.candidates.columns:
        print(f"study {study.study_name!r} did not search study.{args.by}.", file=sys.stderr)
        return 2
    refs = summary.references
    print(f"base model: top100_ratio {refs.get('base_top100_ratio', math.nan):.3f}, style_prob "
          f"{refs.get('base_style_prob', math.nan):.3f}, held-out loss {refs.get('base_heldout_loss', math.nan):.3f}; "
          f"book: top100_ratio {refs.get('book_top100_ratio', math.nan):.3f}, style_prob "
          f"{refs.get('book_style_prob', math.nan):.3f}\n")
    print("\n".join(rows(summary, args.by, study.user_attrs)), "\n\nThe pick on each method's candidates alone:",
          "\n".join(picks(summary, args.by)), "\nWhat a method costs in held-out loss:",
          "\n".join(heldout_cost(summary, args.by)), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
