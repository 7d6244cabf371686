"""docs/books.md's table: one row per book's demo study, read from the studies' store.

Each argument names a study and the book it trained on (``STUDY=PATH``, or ``STUDY@STORAGE=PATH``
for a study kept elsewhere, e.g. ``make demo``'s); every number comes from
the study's records through ``gpt2ft.summary`` (its references, candidates and pick) and the first
200 characters from the slice ``gpt2ft.data`` cuts with the study's own config, none typed by hand.
``--walls`` reads the wall times a sweep wrote (lines ``NAME rc=0 wall=SECONDS``).

Usage: ``python3 scripts/books_table.py --storage sqlite:///books/optuna.db demo-gulliver=BOOK.txt ...``
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from gpt2ft.config import build_config  # noqa: E402
from gpt2ft.coordination import load_study  # noqa: E402
from gpt2ft.data import load_book  # noqa: E402
from gpt2ft.judges import JUDGE_METRICS  # noqa: E402
from gpt2ft.summary import summarize  # noqa: E402

COPYING = tuple(JUDGE_METRICS.values())  # a judge that is off names no reason
HEAD = ("| book | top100_ratio base / book | pick | pick's top100_ratio | style_prob base → pick → book | "
        "held-out loss base → pick | pick's extractable_rate / discoverable_rate | copying judges some trial crossed | "
        "selected_p_closer_by_top100 "
        "| eligible | goal | wall |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def row(name: str, summary, wall: str) -> tuple[str, bool]:
    """The study's row, and whether it meets the goal (eligible, nearer the book than the base model
    by top100_ratio and by style_prob, some trial crossing a copying judge)."""
    c, refs = summary.candidates, summary.references
    base, book = refs.get("base_top100_ratio", math.nan), refs.get("book_top100_ratio", math.nan)
    sb, sk = refs.get("base_style_prob", math.nan), refs.get("book_style_prob", math.nan)
    crossed = sorted({j for why in c["why_not"].fillna("") for j in COPYING if j in why})
    if summary.selected is None:
        return (f"| {name} | {base:.3f} / {book:.3f} | none eligible | | | | | {', '.join(crossed)} | | no | "
                f"missed | {wall} |"), False
    p = c[c["selected"]].iloc[0]
    met = {"top100_ratio": abs(p["top100_ratio"] - book) < abs(base - book),
           "style_prob": abs(p["style_prob"] - sk) < abs(sb - sk), "a copying judge": bool(crossed)}
    missed = [k for k, ok in met.items() if not ok]
    goal = "met" if not missed else f"**missed** ({', '.join(missed)})"
    return (f"| {name} | {base:.3f} / {book:.3f} | trial {p['number']}, step {p['step']} | {p['top100_ratio']:.3f} | "
            f"{sb:.3f} → {p['style_prob']:.3f} → {sk:.3f} | {refs.get('base_heldout_loss', math.nan):.3f} → "
            f"{p['heldout_loss']:.3f} | {p['extractable_rate']:.3f} / {p.get('discoverable_rate', math.nan):.3f} | "
            f"{', '.join(crossed) or 'none'} | "
            f"{summary.p_closer_by_top100:.2f} | yes | {goal} | {wall} |"), not missed


def opening(study, path: str) -> str:
    """The first 200 characters of the slice the study trained on (its own recorded config)."""
    text = study.user_attrs.get("config_yaml")
    config = build_config(yaml.safe_load(text)) if text else None
    return load_book(config.data, path).train_text[:200] if config else "(no config recorded)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", required=True)
    ap.add_argument("--walls", help="a sweep's wall times, lines 'NAME rc=0 wall=SECONDS'")
    ap.add_argument("studies", nargs="+", metavar="STUDY[@STORAGE]=PATH")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # Optuna's experimental-feature notes on opening the storage
    walls = {}
    if args.walls:
        for line in Path(args.walls).read_text().splitlines():
            m = re.match(r"(\S+) rc=(\d+) wall=(\d+)", line)
            if m:
                walls[m[1]] = f"{int(m[3]) // 60} min {int(m[3]) % 60} s"
    rows, starts, met = [HEAD], [], 0
    for spec in args.studies:
        name, _, path = spec.partition("=")
        name, _, storage = name.partition("@")
        study = load_study(storage or args.storage, name)
        line, ok = row(name, summarize(study), walls.get(Path(path).stem, "-"))
        rows.append(line)
        met += ok
        starts.append(f"* {name}: {opening(study, path)!r}")
    print("\n".join(rows), f"\n{met} of {len(args.studies)} meet the goal.\n", "\n".join(starts), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
