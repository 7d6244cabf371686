"""The study as it was against the study as issue 19 made it, side by side (``make bench-study``).

Two runs of one experiment (default ``experiments/demo.yaml``), each ``gpt2ft study --yes --quiet`` in
a folder of its own (its own store, setup cache and checkpoints, so both pay the same setup):
**before**, with issue 19's switches off (``study.derived_trials=false``, ``study.stop_after=0``,
``sample.precision=fp32``), and **after**, as committed. Read from each run's MLflow store and Optuna
database: wall time and its setup share, optimizer steps, measuring seconds (every point and every
end, not the end-of-study re-measure) and the measure share, trials, derived trials, candidates, the
copying stops, and the pick (style distance ``|top100_ratio - book_top100_ratio|`` with its standard
error, memorization, extractable rate, held-out loss, its own p_closer_by_top100). Issue 19's target:
a wall time at most 0.6 x before's with a pick at least as good, judged as eligible and a style
distance no more than two combined standard errors above before's (the picks are measured from
different samples, so a smaller difference is noise).

    python3 bench/study.py                      # demo.yaml, ~16 min on the 2-core CPU
    python3 bench/study.py --config experiments/tiny.yaml --set study.n_trials=2   # a smoke run

JSON goes to ``--out`` (default bench/study.json); the runs stay in ``--workdir``.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path[:0] = [str(Path(__file__).resolve().parent)]  # benchlib, which puts the repository root there too
import benchlib as B  # noqa: E402
from gpt2ft.ui_names import plain  # noqa: E402

HERE, ROOT = B.HERE, B.ROOT

#: The switches issue 19 added, set to what the study did before it.
BEFORE = ("study.derived_trials=false", "study.stop_after=0", "sample.precision=fp32")
ARMS = {"before": BEFORE, "after": ()}
#: Wall-time target of issue 19 (after / before).
TARGET = 0.6


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="experiments/demo.yaml", help="experiment (default demo.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, both runs")
    ap.add_argument("--workdir", default=str(HERE / "study-runs"), help="where the two runs' folders go "
                    "(emptied first; default bench/study-runs)")
    ap.add_argument("--out", default=str(HERE / "study.json"), help="JSON results (default bench/study.json)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds each run may take (default 3600)")
    ap.add_argument("--reread", action="store_true", help="run nothing: read the runs in --workdir again, "
                    "with the wall times --out recorded")
    return ap


def run_arm(name: str, config: Path, sets: Sequence[str], folder: Path, timeout: float) -> dict[str, Any]:
    """One ``gpt2ft study`` in ``folder``, timed; what its store holds then."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    cmd = [sys.executable, "-m", "gpt2ft.cli", "study", "--config", str(config), "--yes", "--quiet"]
    for item in sets:
        cmd += ["--set", item]
    B.log(f"bench-study: {name}: {' '.join(cmd[3:])}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    (folder / "study.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"bench-study: the {name} run failed (exit {proc.returncode}); "
                         f"its output is in {folder / 'study.log'}:\n{proc.stderr[-2000:]}")
    return {"wall_seconds": wall, "sets": list(sets), **read_store(folder / "mlruns")}


def read_store(store: Path) -> dict[str, Any]:
    """The figures of one finished study from its MLflow store and Optuna database."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id], max_results=5000)]
    parents = [r for r in runs if r.data.tags.get("gpt2ft.kind") == "study"]
    if len(parents) != 1:
        raise SystemExit(f"bench-study: {store} holds {len(parents)} study runs, expected 1")
    parent = parents[0]
    pm, tags = plain(parent.data.metrics), parent.data.tags
    trials = [r for r in runs if r.data.tags.get("gpt2ft.kind") == "trial" and r.info.status == "FINISHED"]
    stopped = sorted((int(r.data.tags["optuna.trial"]), int(plain(r.data.metrics)["stopped_for_copying_step"]))
                     for r in trials if plain(r.data.metrics).get("stopped_for_copying") == 1)
    # Along the way (trajectory_seconds) and at the end (measure_seconds), as measure_share counts.
    measure = sum(plain(r.data.metrics).get("measure_seconds", 0.0)
                  + plain(r.data.metrics).get("trajectory_seconds", 0.0) for r in trials)
    trial_seconds = sum(plain(r.data.metrics).get("trial_seconds", 0.0) for r in trials)
    with sqlite3.connect(store / "optuna.db") as con:
        derived = con.execute("select count(*) from trial_user_attributes where key = 'derived_from'").fetchone()[0]
    text = Path(client.download_artifacts(parent.info.run_id, "candidates.csv")).read_text()
    candidates = list(csv.DictReader(io.StringIO(text)))
    book = pm["book_top100_ratio"]
    return {
        "setup_seconds": pm.get("setup_seconds"),
        "trials_trained": len(trials),
        "derived_trials": derived,
        "candidates": len(candidates),
        "optimizer_steps": int(sum(plain(r.data.metrics).get("steps", 0) for r in trials)),
        "measure_seconds": measure,
        "trial_seconds": trial_seconds,
        "measure_share": measure / trial_seconds if trial_seconds else math.nan,
        "stopped_for_copying": [{"trial": n, "step": s} for n, s in stopped],
        "sample_precision": tags.get("sample_precision", "fp32"),
        "pick": {
            "eligible": tags.get("pick_eligible") == "true",
            "trial": int(tags["selected_trial"]) if "selected_trial" in tags else None,
            "step": int(tags["selected_step"]) if "selected_step" in tags else None,
            "style_distance": abs(pm["selected_top100_ratio"] - book) if "selected_top100_ratio" in pm else math.nan,
            "style_distance_se": pm.get("selected_top100_ratio_se", math.nan),
            "memorization": pm.get("selected_memorization", math.nan),
            "extractable_rate": pm.get("selected_extractable_rate", math.nan),
            "heldout_loss": pm.get("selected_heldout_loss", math.nan),
            "pick_confidence": pm.get("selected_p_closer_by_top100", math.nan),
            "reason": tags.get("pick_reason", ""),
        },
    }


def verdicts(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Optional[bool]]:
    """Issue 19's targets, each True/False (None where a figure is missing)."""
    ratio = after["wall_seconds"] / before["wall_seconds"]
    a, b = after["pick"], before["pick"]
    noise = 2 * math.sqrt(a["style_distance_se"] ** 2 + b["style_distance_se"] ** 2)
    as_good = None if math.isnan(noise) else bool(a["eligible"] and a["style_distance"] <= b["style_distance"] + noise)
    return {"wall_at_most_0.6": B.at_most(ratio, TARGET), "pick_at_least_as_good": as_good}


def table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The two arms side by side as a Markdown table, as docs/performance.md shows it."""
    def stops(arm):
        return ", ".join(f"trial {s['trial']} at step {s['step']}" for s in arm["stopped_for_copying"]) or "-"

    def get(*keys):
        return lambda arm: arm[keys[0]] if len(keys) == 1 else arm[keys[0]][keys[1]]

    figures = [  # (label, the figure of an arm, whether after / before is worth a ratio)
        ("wall seconds (command)", get("wall_seconds"), True), ("· of which setup", get("setup_seconds"), True),
        ("· trials and pick (wall - setup)", lambda a: a["wall_seconds"] - (a["setup_seconds"] or 0.0), True),
        ("optimizer steps", get("optimizer_steps"), True), ("measuring seconds", get("measure_seconds"), True),
        ("measure share", get("measure_share"), True), ("trials trained", get("trials_trained"), False),
        ("derived trials told to Optuna", get("derived_trials"), False),
        ("candidates weighed by the pick", get("candidates"), False), ("stopped for copying", stops, False),
        ("sampling precision", get("sample_precision"), False),
        ("pick (trial, step)", lambda a: f"{a['pick']['trial']}, {a['pick']['step']}", False),
        *((label, get("pick", key), False) for label, key in (
            ("pick style distance", "style_distance"), ("· its standard error", "style_distance_se"),
            ("pick memorization", "memorization"), ("pick extractable rate", "extractable_rate"),
            ("pick held-out loss", "heldout_loss"), ("pick confidence", "pick_confidence")))]
    lines = ["| figure | before | after | after / before |", "|---|---:|---:|---:|"]
    for label, fig, with_ratio in figures:
        x, y = fig(before), fig(after)
        ratio = y / x if with_ratio and isinstance(x, (int, float)) and isinstance(y, (int, float)) and x else None
        lines.append(f"| {label} | {B.fmt(x)} | {B.fmt(y)} | {B.fmt(ratio)} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    config = Path(args.config).resolve()
    root = Path(args.workdir).resolve()
    results: dict[str, Any] = {"config": str(config), "sets": args.set, "load_average_start": os.getloadavg()[0]}
    if args.reread:
        old = json.loads(Path(args.out).read_text())
        results.update({k: old[k] for k in ("config", "sets", "load_average_start")})
        for name in ARMS:
            results[name] = {"wall_seconds": old[name]["wall_seconds"], "sets": old[name]["sets"],
                             **read_store(root / name / "mlruns")}
    for name, switches in ARMS.items() if not args.reread else ():
        results[name] = run_arm(name, config, [*args.set, *switches], root / name, args.timeout)
        B.log(f"bench-study: {name} took {results[name]['wall_seconds']:.0f} s")
    results["load_average_end"] = os.getloadavg()[0]
    results["ratios"] = {"wall": results["after"]["wall_seconds"] / results["before"]["wall_seconds"]}
    results["verdicts"] = verdicts(results["before"], results["after"])
    B.write_json(results, Path(args.out))
    print(table(results["before"], results["after"]))
    print(f"\nverdicts: {results['verdicts']} (target: wall <= {TARGET} x before, a pick at least as good)")
    print(f"results in {args.out}; the runs in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
