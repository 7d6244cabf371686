"""docs/goldfish.md's tables from a study that searched ``study.goldfish_k`` (``make demo-goldfish``).

Per learning rate and goldfish_k: the best eligible point (the pick's own criterion, style
score, among that trial's points), its ``top100_ratio`` +- its standard error, ``style_prob`` and
held-out loss, the last eligible epoch and the first epoch each copying judge fails; then the
pick the study would make on each k's candidates alone, and what k costs in held-out loss
(matched epochs of the same rate). Every number is read from the study's store (Optuna's
records, through ``gpt2ft.summary``), none typed by hand.

Usage: ``python3 scripts/goldfish_table.py [--storage sqlite:///mlruns/optuna.db] [--study demo-goldfish]``
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt2ft import pick as P  # noqa: E402
from gpt2ft.coordination import load_study  # noqa: E402
from gpt2ft.summary import pick_rows, summarize  # noqa: E402

JUDGES = (("memorization", "memorization"), ("extraction", "extractable_rate"), ("held-out", "heldout_loss"))


def _epoch(v: float) -> str:
    return "-" if not math.isfinite(v) else (f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}")


def _first_failing(g, name: str) -> str:
    """The first epoch at which a point of ``g`` fails judge ``name`` ("none by epoch E" if none)."""
    bad = g[g["why_not"].fillna("").str.contains(name)]
    return _epoch(float(bad["epoch"].min())) if len(bad) else f"none by {_epoch(float(g['epoch'].max()))}"


def rows(summary) -> list[str]:
    c, refs = summary.candidates, summary.references
    book = refs.get("book_top100_ratio", math.nan)
    out = ["| lr | goldfish_k | best eligible point | top100_ratio (± se) | distance to the book | style_prob | "
           "held-out loss | last eligible epoch | first epoch failing: memorization / extraction / held-out |",
           "|---|---|---|---|---|---|---|---|---|"]
    for (lr, k), g in c.groupby(["lr", "goldfish_k"]):
        ok = g[g["eligible"]]
        fails = " / ".join(_first_failing(g, name) for _, name in JUDGES)
        if not len(ok):
            out.append(f"| {lr:.2g} | {k} | none eligible | | | | | - | {fails} |")
            continue
        b = ok.loc[ok["style_score"].idxmax()]
        out.append(f"| {lr:.2g} | {k} | trial {b['number']}, epoch {_epoch(b['epoch'])} (step {b['step']}) | "
                   f"{b['top100_ratio']:.3f} ± {b['top100_ratio_se']:.3f} | {abs(b['top100_ratio'] - book):.3f} | "
                   f"{b['style_prob']:.3f} | {b['heldout_loss']:.3f} | {_epoch(float(ok['epoch'].max()))} | {fails} |")
    return out


def picks(summary) -> list[str]:
    """The pick on each k's candidates alone (the study's rule and bounds), and their distance."""
    c, book = summary.candidates, summary.references.get("book_top100_ratio", math.nan)
    out, chosen = [], {}
    for k, g in c.groupby("goldfish_k"):
        p = P.pick(pick_rows(g), summary.rule, bounds=summary.bounds)
        if p is None or not p.eligible:
            out.append(f"* goldfish_k {k}: nothing eligible")
            continue
        r = g[(g["number"] == p.key[0]) & (g["step"] == p.key[1])].iloc[0]
        chosen[k] = r
        out.append(f"* goldfish_k {k}: trial {r['number']} (lr {r['lr']:.2g}) at epoch {_epoch(r['epoch'])}: "
                   f"top100_ratio {r['top100_ratio']:.3f} ± {r['top100_ratio_se']:.3f} (book {book:.3f}), "
                   f"style_prob {r['style_prob']:.3f}, held-out loss {r['heldout_loss']:.3f}, "
                   f"memorization {r['memorization']:.3g}, extractable_rate {r['extractable_rate']:.3g}")
    if len(chosen) == 2:
        a, b = (chosen[k] for k in sorted(chosen))
        gain = abs(a["top100_ratio"] - book) - abs(b["top100_ratio"] - book)
        se = math.hypot(a["top100_ratio_se"], b["top100_ratio_se"])
        out.append(f"* closer to the book with the goldfish loss by {gain:+.3f} in top100_ratio "
                   f"(standard error of the difference {se:.3f}: {gain / se:+.1f} se)")
    return out


def heldout_cost(summary) -> list[str]:
    """Held-out loss of k > 0 minus k = 0 at the same rate and epoch (whole epochs both measured)."""
    c = summary.candidates
    c = c[c["epoch"].map(lambda e: math.isfinite(e) and float(e).is_integer())]
    out = []
    for lr, g in c.groupby("lr"):
        plain = g[g["goldfish_k"] == 0].set_index("epoch")["heldout_loss"]
        for k, h in g[g["goldfish_k"] > 0].groupby("goldfish_k"):
            d = (h.set_index("epoch")["heldout_loss"] - plain).dropna()
            if len(d):
                out.append(f"* lr {lr:.2g}, goldfish_k {k}: held-out loss {d.mean():+.3f} nats/token on average over "
                           f"epochs {', '.join(_epoch(e) for e in d.index)} ({', '.join(f'{v:+.3f}' for v in d)})")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", default="sqlite:///mlruns/optuna.db")
    ap.add_argument("--study", default="demo-goldfish")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # Optuna's experimental-feature notes on opening the storage
    summary = summarize(load_study(args.storage, args.study))
    if "goldfish_k" not in summary.candidates.columns:
        print(f"study {args.study!r} did not search study.goldfish_k.", file=sys.stderr)
        return 2
    refs = summary.references
    print(f"base model: top100_ratio {refs.get('base_top100_ratio', math.nan):.3f}, style_prob "
          f"{refs.get('base_style_prob', math.nan):.3f}, held-out loss {refs.get('base_heldout_loss', math.nan):.3f}; "
          f"book: top100_ratio {refs.get('book_top100_ratio', math.nan):.3f}, style_prob "
          f"{refs.get('book_style_prob', math.nan):.3f}\n")
    print("\n".join(rows(summary)), "\n\nThe pick on each k's candidates alone:",
          "\n".join(picks(summary)), "\nWhat k costs in held-out loss:", "\n".join(heldout_cost(summary)), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
