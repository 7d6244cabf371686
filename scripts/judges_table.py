"""When each judge of copying first objects: per trial, the first epoch at which each judge fails,
the three older judges and issue 33's side by side (docs/pick.md, docs/books.md).

Every judge is applied with the bound the study recorded for it, whether the study's pick used it
(``study.judges``) or not, so a judge that is off still says when it would have objected. Every
number is read from the study's store through ``gpt2ft.summary``; none is typed by hand.

Usage: ``python3 scripts/judges_table.py [--storage URL] STUDY[@STORAGE][=LABEL] ...``
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

#: Column heads, in JUDGES' order.
SHORT = {"memorization": "mem", "near-verbatim": "near-verbatim", "extraction": "greedy ext",
         "sampled extraction": "sampled ext", "membership": "membership", "held-out loss": "held-out"}


def first_failures(candidates, bounds: J.Bounds) -> dict[int, dict[str, float]]:
    """``{trial: {judge: first failing epoch (NaN: none)}}`` over the candidates of each trial."""
    out: dict[int, dict[str, float]] = {}
    for row in candidates.sort_values(["number", "step"]).to_dict("records"):
        seen = out.setdefault(int(row["number"]), {j: math.nan for j in J.JUDGES})
        for judge, _ in J.copying_failures(J.judged_values(row), bounds):
            if math.isnan(seen[judge]):
                seen[judge] = float(row["epoch"])
    return out


def _epoch(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}"


def table(label: str, summary, attrs) -> list[str]:
    bounds = J.Bounds.from_attrs(attrs)
    c = summary.candidates
    used = set(attrs.get("judges", J.JUDGES))
    lines = []
    for number, fails in first_failures(c, bounds).items():
        mine = c[c["number"] == number]
        picked = " (the pick's trial)" if mine["selected"].any() else ""
        cells = " | ".join(_epoch(fails[j]) for j in J.JUDGES)
        lines.append(f"| {label} | {number}{picked} | {mine['lr'].iloc[0]:.2g} | "
                     f"{_epoch(float(mine['epoch'].max()))} | {cells} |")
    heads = " | ".join(SHORT[j] + ("" if j in used else " (off)") for j in J.JUDGES)
    bound_line = ", ".join(f"{J.JUDGE_METRICS[j]} <= {b:.3g}" for j, b in bounds.by_judge().items()
                           if math.isfinite(b))
    return [f"| book | trial | lr | last epoch | {heads} |", "|" + "---|" * (4 + len(J.JUDGES)),
            *lines, "", f"{label}: bounds {bound_line}"]


POINT_COLUMNS = ("memorization", "near_verbatim", "near_verbatim_longest", "extractable_rate", "discoverable_rate",
                 "discoverable_rate_heldout", "extraction_log10p", "extraction_log10p_heldout", "mia_auc",
                 "mia_auc_se", "mia_auc_loss", "heldout_loss")


def points(label: str, summary) -> list[str]:
    """Every measured point's copying evidence, the numbers behind the first failing epochs."""
    c = summary.candidates.sort_values(["number", "step"])
    cols = [k for k in POINT_COLUMNS if k in c.columns]
    lines = [f"| book | trial | epoch | {' | '.join(cols)} |", "|" + "---|" * (3 + len(cols))]
    for r in c.to_dict("records"):
        cells = " | ".join("-" if not math.isfinite(float(r[k])) else f"{float(r[k]):.3g}" for k in cols)
        lines.append(f"| {label} | {r['number']} | {_epoch(float(r['epoch']))} | {cells} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", default="sqlite:///mlruns/optuna.db")
    ap.add_argument("--points", action="store_true", help="also every point's copying measures")
    ap.add_argument("studies", nargs="+", help="STUDY[@STORAGE][=LABEL]")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    for spec in args.studies:
        name, _, label = spec.partition("=")
        name, _, storage = name.partition("@")
        study = load_study(storage or args.storage, name)
        summary = summarize(study)
        print("\n".join(table(label or name, summary, study.user_attrs)) + "\n")
        if args.points:
            print("\n".join(points(label or name, summary)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
