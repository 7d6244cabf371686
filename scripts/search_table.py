"""docs/lora.md's measurement of ``study.constrained`` (issue 36 item 3): studies run with the same
seeds with and without it, compared on what TPE proposed after its random start-up.

Per study: its trained trials in order (the first ``study.startup_trials`` are the random start-up,
the same in every study of one seed), then over the later trials' points (every whole epoch and
the end, derived trials included) the share that fails a judge of the pick, and the best eligible
point's distance to the book's ``top100_ratio`` (± its standard error), over all points and over
the later ones. Every number is read from the study's store.

Usage: ``python3 scripts/search_table.py --storage URL --startup 3 STUDY [STUDY ...]``
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt2ft import judges as J  # noqa: E402
from gpt2ft.coordination import load_study  # noqa: E402
from gpt2ft.summary import summarize  # noqa: E402


def best(points, book: float) -> str:
    ok = points[points["eligible"]]
    if not len(ok):
        return "none eligible"
    b = ok.loc[(ok["top100_ratio"] - book).abs().idxmin()]
    return (f"{abs(b['top100_ratio'] - book):.3f} ± {b['top100_ratio_se']:.3f} (trial {b['number']}, "
            f"epoch {b['epoch']:.0f}, lr {b['lr']:.2g})")


def row(name: str, storage: str, startup: int) -> str:
    summary = summarize(load_study(storage, name))
    c, book = summary.candidates, summary.references.get("book_top100_ratio", math.nan)
    order = sorted(set(c["number"]))
    later = c[c["number"].isin(order[startup:])]
    # A point fails a judge where the sampler's constraint is above 0 (the pick's judges, their bounds).
    fail = sum(any(v > 0 for v in J.constraint_values(r, summary.bounds).values()) for _, r in later.iterrows())
    drawn = ", ".join(f"{g['lr'].iloc[0]:.2g} x {g['epochs'].iloc[0]:.0f}" for _, g in later.groupby("number"))
    return (f"| {name} | {len(order)} ({startup} random) | {drawn} | {fail} of {len(later)} "
            f"({fail / max(len(later), 1):.2f}) | {best(c, book)} | {best(later, book)} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", default="sqlite:///mlruns/optuna.db")
    ap.add_argument("--startup", type=int, default=3, help="the studies' study.startup_trials")
    ap.add_argument("studies", nargs="+")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # Optuna's experimental-feature notes on opening the storage
    print("| study | trained trials | TPE's trials (lr x epochs) | their points failing a judge | best eligible: "
          "distance to the book (all points) | the same, TPE's points |\n|---|---|---|---|---|---|")
    print("\n".join(row(s, args.storage, args.startup) for s in args.studies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
