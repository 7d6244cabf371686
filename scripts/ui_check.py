"""Open the MLflow UI in headless Chromium and check that it shows gpt2ft's runs.

``make ui-check`` makes a tiny study in a temporary folder; ``make ui-check ARGS="--store mlruns"``
checks an existing store instead (it is never written to: the UI serves a copy of its database).

Steps: start ``mlflow ui`` on a free port; assert through the REST API that the experiment, its
runs (and the study's child runs) carry the expected metrics and plots, and that a trial's
trajectory metrics (memorization, top100_ratio) hold more than one step; then render the runs
table, a trial's page, its "Model metrics" tab (a chart per trajectory metric), its artifacts
view and, for a study, the study run's page and plot in headless Chromium, every page in
MLflow's model-training mode (``?workflowType=machine_learning``, asserted from the sidebar
text), asserting on the rendered DOM text and saving a screenshot of each page (default
``artifacts/ui/``) for a person to look at. Exit 0 with one line per check, 1 when a check
fails, 2 for a bad argument. ``--print-urls`` only prints each experiment's model-training URL
(``make ui`` does, before it starts the server).

This file holds the checks and what they expect; ``scripts/ui_browser.py`` drives headless
Chromium, ``scripts/ui_mlflow.py`` starts the server and speaks its REST API.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # loaded by path (the tests) rather than run as a script
    sys.path.insert(0, str(HERE))

from ui_browser import CheckFailed, Page, check_page, ensure_chromium, shows  # noqa: E402
from gpt2ft.ui_names import LEAD, LEADING, ui_name  # noqa: E402
from ui_mlflow import (BIN, GENAI_MARKS, TRAINING_MARKS, MlflowUI, Run, all_runs, charted_metrics,  # noqa: E402
                       in_training_mode, list_artifacts, metric_steps, pick_experiment, print_urls, snapshot,
                       ui_mode)

ROOT = HERE.parent
CONFIG = ROOT / "experiments" / "tiny.yaml"
BOOK = ROOT.parent / "shared" / "data" / "gulliver.txt"
DEFAULT_OUT = ROOT / "artifacts" / "ui"

# A fresh store is made by running these gpt2ft commands in order. The study makes one parent
# run named after the study and a child run `trial-<n>` per trial; TRAIN runs (plain runs, no
# nesting) are the stand-in for a store without a study: STORE_COMMANDS = [TRAIN, TRAIN].
STUDY = ["study", "--config", str(CONFIG), "--yes", "--quiet"]
TRAIN = ["train", "--config", str(CONFIG), "--quiet"]
STORE_COMMANDS = [STUDY]

# The tiny config stops at max_steps 20, inside its first epoch (~90 steps), so its trials would
# have no point between the base model (step 0) and the end. A shorter book slice (~18 steps an
# epoch at batch 4), two epochs and no step cap give every trial a point after epoch 1: three
# steps (0, end of epoch 1, end) in each trajectory chart.
STORE_OVERRIDES = ("data.max_chars=12000", "train.max_steps=null", "study.epochs.low=2", "study.batch_size=[4]")

# What every finished trial run must carry, under the names the tracking module logs.
TRIAL_METRICS = ("train_loss", "heldout_loss", "top100_ratio", "memorization")
TRIAL_ARTIFACTS = ("plots/loss.png", "plots/top100_frequencies.png", "plots/novelty.png", "samples.md")
STUDY_ARTIFACTS = ("plots/style_vs_copying.png", "plots/copying_and_loss_by_epoch.png")

# Logged at step 0, after every epoch and at the end (gpt2ft.trajectory.POINT_METRICS): the
# trial page's "Model metrics" tab must chart these, and their histories hold several steps.
TRAJECTORY_METRICS = ("memorization", "top100_ratio")
STUDY_TAG = "gpt2ft.kind"  # value "study" on the parent run
PARENT_TAG = "mlflow.parentRunId"

# Key of the shared view (an experiment tag `mlflow.sharedViewState.<key>`, what the UI's own
# "share view" writes) that adds the trial metrics as runs-table columns. Sorting by a metric
# also makes the table list child runs flat instead of folded under their parent.
VIEW_KEY = "gpt2ft-ui-check"

# The "Model metrics" tab draws a chart only once its card scrolls into view, and sorts cards by
# name: a window tall enough for every card (35 metrics, 3 a row, 360 px each) renders them all.
TALL_WINDOW = (1400, 5200)

# 35 charts in model-training mode took 20-45 s of virtual time here (GenAI mode: under 20 s).
CHART_BUDGETS_MS = (45_000, 90_000)
SCREENSHOTS = ("runs.png", "trial_run.png", "trial_key_charts.png", "trial_metrics.png", "trial_artifacts.png",
               "study_run.png", "study_artifacts.png")
# A first screenful: the window a person opens the page in.
FIRST_SCREEN = (1400, 900)


class BadArgument(Exception):
    """A command-line argument the user can fix."""


@dataclass
class Found:
    """What the REST API showed: the experiment, its runs, the study parent and the trial to open."""
    experiment_id: str
    experiment: str
    runs: list[Run]
    trials: list[Run]
    trial: Run
    parent: Optional[Run] = None
    parent_plot: Optional[str] = None
    children: dict[str, list[Run]] = field(default_factory=dict)


def make_store(folder: Path, corpus: Optional[str] = None, n_trials: Optional[int] = None,
               overrides: tuple[str, ...] = ()) -> Path:
    """Run STORE_COMMANDS in ``folder`` (tiny config, STORE_OVERRIDES, then ``--set`` ``overrides``,
    which win); return ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    corpus = corpus or env.get("GPT2FT_CORPUS") or (str(BOOK) if BOOK.is_file() else None)
    if corpus:
        env["GPT2FT_CORPUS"] = corpus
    gpt2ft = [str(BIN / "gpt2ft")] if (BIN / "gpt2ft").exists() else [sys.executable, "-m", "gpt2ft.cli"]
    for args in STORE_COMMANDS:
        extra = ["--n-trials", str(n_trials)] if n_trials and args[0] == "study" else []
        extra += [a for kv in (*STORE_OVERRIDES, *overrides) for a in ("--set", kv)]
        cmd = gpt2ft + args + extra + ["--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}"]
        # cwd: MLflow puts the Default experiment's folder under the current directory.
        result = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            tail = "\n".join((result.stderr + result.stdout).strip().splitlines()[-15:])
            raise CheckFailed(f"making the store failed: `gpt2ft {' '.join(args)}` exited with "
                              f"{result.returncode}:\n{tail}")
    return folder


def store_db(store: Path) -> Path:
    """The mlflow.db of ``--store`` (the folder that holds it, or the file itself)."""
    db = store if store.suffix == ".db" else store / "mlflow.db"
    if not db.is_file():
        raise BadArgument(f"no MLflow database at {db}; pass --store the folder holding mlflow.db "
                          "(e.g. --store mlruns), or leave --store out to make a tiny study")
    return db


def check_api(ui: MlflowUI, experiment: Optional[str] = None) -> tuple[Found, str]:
    """The experiment exists; its runs (and child runs) carry TRIAL_METRICS; a trial has its plots."""
    eid, name = pick_experiment(ui, experiment)
    runs = all_runs(ui, eid)
    if not runs:
        raise CheckFailed(f"experiment {name!r} (id {eid}) lists no runs")
    by_id = {r.id: r for r in runs}
    children: dict[str, list[Run]] = {}
    for r in runs:
        if r.tags.get(PARENT_TAG) in by_id:
            children.setdefault(r.tags[PARENT_TAG], []).append(r)
    childless = [r.name for r in runs if r.tags.get(STUDY_TAG) == "study" and r.id not in children]
    if childless:
        raise CheckFailed(f"study runs {childless} list no child runs (tag {PARENT_TAG})")
    if children:  # a study: its trials are the child runs
        trials = [c for kids in children.values() for c in kids]
    else:
        trials = [r for r in runs if PARENT_TAG not in r.tags]
    finished = [r for r in trials if r.status == "FINISHED"]
    if not finished:
        raise CheckFailed(f"experiment {name!r} has no FINISHED trial run "
                          f"({len(trials)} trial runs: {sorted({r.status for r in trials})})")
    lacking = {r.name: [m for m in TRIAL_METRICS if m not in r.metrics] for r in finished}
    lacking = {k: v for k, v in lacking.items() if v}
    if lacking:
        raise CheckFailed(f"finished trial runs lack metrics: {lacking}")

    trial = min(finished, key=lambda r: r.metrics["heldout_loss"])
    arts = list_artifacts(ui, trial.id)
    missing = [a for a in TRIAL_ARTIFACTS if a not in arts]
    if missing:
        raise CheckFailed(f"trial run {trial.name!r} ({trial.id}) lacks artifacts {missing}; it has {sorted(arts)}")
    png = ui.get("/get-artifact", {"path": TRIAL_ARTIFACTS[0], "run_uuid": trial.id})
    if not png.startswith(b"\x89PNG"):
        raise CheckFailed(f"/get-artifact served {TRIAL_ARTIFACTS[0]} of {trial.name!r} as something not a PNG")

    found = Found(eid, name, runs, trials, trial, children=children)
    parent_id = trial.tags.get(PARENT_TAG)
    if parent_id:
        found.parent = by_id[parent_id]
        arts = list_artifacts(ui, parent_id)
        missing = [a for a in STUDY_ARTIFACTS if a not in arts]
        if missing:
            raise CheckFailed(f"study run {found.parent.name!r} ({parent_id}) lacks artifacts {missing}; "
                              f"it has {sorted(arts)}")
        found.parent_plot = STUDY_ARTIFACTS[0]
    failed = len(trials) - len(finished)
    shape = (f"{len(children)} study run(s) ({', '.join(repr(by_id[p].name) for p in children)}) with "
             f"{len(trials)} child runs" if children else f"{len(trials)} runs, none nested")
    summary = (f"experiment {name!r} (id {eid}): {shape}, {len(finished)} finished"
               + (f", {failed} not" if failed else "") + f", all with {', '.join(TRIAL_METRICS)}; "
               f"{trial.name!r} (lowest heldout_loss {trial.metrics['heldout_loss']:.4g}) has "
               f"{', '.join(TRIAL_ARTIFACTS)}" + (f"; study run has {found.parent_plot}" if found.parent else ""))
    return found, summary


def check_trajectory(ui: MlflowUI, trial: Run) -> str:
    """Each TRAJECTORY_METRICS of the trial run has more than one step (base, epochs, end)."""
    steps = {k: metric_steps(ui, trial.id, k) for k in TRAJECTORY_METRICS}
    flat = {k: v for k, v in steps.items() if len(v) < 2}
    if flat:
        raise CheckFailed(f"trial run {trial.name!r} ({trial.id}) has no trajectory: metrics/get-history "
                          f"gives {flat} (expected step 0, a step per epoch and the end)")
    return (f"trial {trial.name!r}: " + "; ".join(f"{k} at steps {v}" for k, v in steps.items())
            + " (metrics/get-history)")


def share_view(ui: MlflowUI, found: Found) -> str:
    """Write the shared runs-table view (metric columns, sorted by heldout_loss) to the served copy."""
    state = {"selectedColumns": ["attributes.`Duration`"] + [f"metrics.`{ui_name(m)}`" for m in TRIAL_METRICS],
             "orderByKey": f"metrics.`{ui_name('heldout_loss')}`", "orderByAsc": True}
    ui.api("experiments/set-experiment-tag", {"experiment_id": found.experiment_id,
                                              "key": f"mlflow.sharedViewState.{VIEW_KEY}",
                                              "value": json.dumps(state)})
    return in_training_mode(f"{ui.browser_base}/#/experiments/{found.experiment_id}/runs"
                            f"?viewStateShareKey={VIEW_KEY}")


def _shows_image(artifact: str) -> Callable[[Page], Optional[str]]:
    """The artifact view shows an image once the file was fetched into a blob: URL."""
    def check(page: Page) -> Optional[str]:
        if re.search(rf'<img[^>]*alt="{re.escape(artifact)}"[^>]*src="blob:', page.dom):
            return None
        return f"no loaded <img> of {artifact}"
    check.what = "the loaded image"
    return check


def _lists_a_child(children: list[Run]) -> Callable[[Page], Optional[str]]:
    """The study run's page links its child runs (not necessarily all of a long list)."""
    def check(page: Page) -> Optional[str]:
        text = page.text
        return None if any(shows(text, c.name) for c in children) else "no child run listed"
    check.what = "a child run's name"
    return check


def _both(*checks: Optional[Callable[[Page], Optional[str]]]) -> Callable[[Page], Optional[str]]:
    """The first problem any of ``checks`` finds (None ones skipped)."""
    checks = tuple(c for c in checks if c)

    def check(page: Page) -> Optional[str]:
        return next((p for p in (c(page) for c in checks) if p), None)
    check.what = " and ".join(c.what for c in checks)
    return check


def _training_mode(page: Page) -> Optional[str]:
    """The page is in model-training mode: its sidebar lists TRAINING_MARKS, no GENAI_MARKS."""
    mode = ui_mode(page.text)
    if mode == "model training":
        return None
    return (f"the {mode} mode (expected the model-training sidebar {list(TRAINING_MARKS)} "
            f"and none of {list(GENAI_MARKS)})")


_training_mode.what = f"the model-training mode ({', '.join(TRAINING_MARKS)}; no {', '.join(GENAI_MARKS)})"


def _charts(metrics: tuple[str, ...]) -> Callable[[Page], Optional[str]]:
    """The "Model metrics" tab lists its charts, and every chart it has drawn includes those of
    ``metrics``. Headless Chromium on 2 busy cores does not always draw any of the ~35 plotly
    charts within its time budget (seen in a clean-clone CI run: every card still a spinner
    after 90 s of virtual time); a page with none drawn yet passes on its chart count, while the
    REST check (``trajectory``) asserts the steps behind those charts in every run."""
    def check(page: Page) -> Optional[str]:
        if not re.search(r"Model metrics \(\d+\)", page.text):
            return "no 'Model metrics (N)' chart section"
        drawn = charted_metrics(page.dom)
        missing = [m for m in metrics if m not in drawn]
        return f"no drawn chart of {missing} (charts drawn: {sorted(drawn)})" if drawn and missing else None
    check.what = f"the Model metrics charts (drawn ones include {', '.join(metrics)})"
    return check


def _sections(text: str) -> list[str]:
    """The "Model metrics" tab's section names, top to bottom, from the page's text ("... Auto-refresh
    Style and copying (8) Add chart detail (20) Add chart ..." as MLflow 3.17 renders it)."""
    return [name for name, _ in re.findall(r"(?:Auto-refresh|Add chart) (.+?) \((\d+)\)", text)]


def _leads_with_key_charts(page: Page) -> Optional[str]:
    """The first section of a trial's charts is the leading one (gpt2ft.ui_names.LEAD), and every chart
    drawn in the first screenful is one of its charts (a chart is drawn once it is in view)."""
    names = _sections(page.text)
    if not names or names[0] != LEAD:
        return f"the first chart section is {names[:1]} (sections: {names}), not {LEAD!r}"
    drawn = charted_metrics(page.dom)
    stray = sorted(drawn - set(LEADING))
    return f"the first screenful draws {stray}, not only the key charts" if stray else None


_leads_with_key_charts.what = f"the section {LEAD!r} first, and only its charts in the first screenful"


def _tells_the_pick(page: Page) -> Optional[str]:
    """The study run's description (gpt2ft.run_page) leads its page with the pick and why."""
    text = page.text
    if not (shows(text, "The pick:") or shows(text, "Nothing selected")):
        return "no pick in the run's description"
    return None if shows(text, "Why:") or shows(text, "Nothing selected") else "the pick's reason is missing"


_tells_the_pick.what = "the pick and its reason in the description"


def _num(v: float) -> Optional[str]:
    """How the UI prints a metric value (JavaScript's shortest round-trip form), where Python agrees."""
    return repr(v) if 1e-3 <= abs(v) < 1e15 else None


def check_pages(ui: MlflowUI, found: Found, chromium: str, out: Path) -> list[str]:
    """Render each page in model-training mode, assert on its text and that mode, keep its
    screenshot; one summary line per page."""
    eid, trial, parent = found.experiment_id, found.trial, found.parent
    base = f"{ui.browser_base}/#/experiments/{eid}/runs"
    loss = _num(trial.metrics["heldout_loss"])
    pages: list[tuple[str, str, str, list[str], Any]] = [
        ("runs table", share_view(ui, found), "runs.png",
         [trial.name, *TRIAL_METRICS, "matching runs"] + ([loss] if loss else []), None),
        ("trial run page", f"{base}/{trial.id}", "trial_run.png",
         [trial.name, "Metrics", *TRIAL_METRICS] + ([loss] if loss else []), None),
        ("trial key charts", f"{base}/{trial.id}/model-metrics", "trial_key_charts.png",
         [trial.name, LEAD], _leads_with_key_charts),
        ("trial model metrics", f"{base}/{trial.id}/model-metrics", "trial_metrics.png",
         [trial.name, "Model metrics"], _charts(TRAJECTORY_METRICS)),
        ("trial artifacts", f"{base}/{trial.id}/artifacts/{TRIAL_ARTIFACTS[0]}", "trial_artifacts.png",
         [trial.name, TRIAL_ARTIFACTS[0]] + [Path(a).name for a in TRIAL_ARTIFACTS], _shows_image(TRIAL_ARTIFACTS[0])),
    ]
    if parent is not None:
        pages += [
            ("study run page", f"{base}/{parent.id}", "study_run.png", [parent.name, "Child runs", "Description"],
             _both(_tells_the_pick, _lists_a_child(found.children[parent.id]))),
            ("study artifacts", f"{base}/{parent.id}/artifacts/{found.parent_plot}", "study_artifacts.png",
             [parent.name, found.parent_plot], _shows_image(found.parent_plot)),
        ]
    lines = []
    for what, url, png, expect, extra in pages:
        t = time.perf_counter()
        url, extra = in_training_mode(url), _both(_training_mode, extra)
        if png == "trial_metrics.png":
            check_page(chromium, url, out / png, expect, extra, TALL_WINDOW, CHART_BUDGETS_MS)
        elif png in ("trial_key_charts.png", "study_run.png"):
            check_page(chromium, url, out / png, expect, extra, FIRST_SCREEN, CHART_BUDGETS_MS)
        else:
            check_page(chromium, url, out / png, expect, extra)
        lines.append(f"{what}: #{url.split('#', 1)[1]} shows {', '.join(repr(s) for s in expect)}"
                     f" and {extra.what} ({time.perf_counter() - t:.1f} s) -> {png}")
    return lines


def run_checks(store: Path, out: Path = DEFAULT_OUT, experiment: Optional[str] = None,
               chromium: Optional[str] = None) -> list[str]:
    """Every check against the store folder ``store``; one summary line per check.

    Raises CheckFailed on the first failure. The UI stops before this returns."""
    t = time.perf_counter()
    chromium = chromium or ensure_chromium()
    lines = [f"chromium: {chromium} ({time.perf_counter() - t:.1f} s)"]
    db = store_db(store)
    for name in SCREENSHOTS:  # a stale study_run.png must not pass for this run's
        (out / name).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="ui-check-") as tmp:
        served = snapshot(db, Path(tmp))
        with MlflowUI(served, Path(tmp)) as ui:
            lines.append(f"mlflow ui: HTTP 200 after {ui.start_seconds:.1f} s on port {ui.port} "
                         f"(serving a copy of {db})")
            t = time.perf_counter()
            found, summary = check_api(ui, experiment)
            lines.append(f"REST API: {summary} ({time.perf_counter() - t:.1f} s)")
            t = time.perf_counter()
            lines.append(f"trajectory: {check_trajectory(ui, found.trial)} ({time.perf_counter() - t:.1f} s)")
            lines += check_pages(ui, found, chromium, out)
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="folder holding mlflow.db (default: make a tiny study "
                        "in a temporary folder)")
    parser.add_argument("--experiment", help="experiment to check (default: the tiny config's for a made "
                        "store, else the one with the most recent run)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the screenshots "
                        "(default artifacts/ui/)")
    parser.add_argument("--corpus", help="the book, for making the store (else $GPT2FT_CORPUS, else "
                        f"{BOOK} when present)")
    parser.add_argument("--print-urls", action="store_true", help="only print the model-training URL of "
                        "each experiment in --store (default mlruns) and exit: `make ui`'s banner")
    parser.add_argument("--port", type=int, default=5000, help="port of the UI the printed URLs point at")
    args = parser.parse_args(argv)
    if args.print_urls:
        return print_urls(args.store or Path("mlruns"), args.port)
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="ui-check-store-") as tmp:
            store, experiment = args.store, args.experiment
            if store is None:
                ensure_chromium()  # fail before the minutes spent making the store
                t = time.perf_counter()
                store = make_store(Path(tmp), args.corpus)
                if experiment is None:
                    sys.path.insert(0, str(ROOT))
                    from gpt2ft.config import load_config
                    experiment = load_config(CONFIG).tracking.experiment
                print(f"ok   store: `gpt2ft {' / '.join(c[0] for c in STORE_COMMANDS)}` with {CONFIG.name} "
                      f"--set {' '.join(STORE_OVERRIDES)} in {time.perf_counter() - t:.0f} s", flush=True)
            for line in run_checks(store, args.out, experiment):
                print(f"ok   {line}", flush=True)
    except BadArgument as exc:
        print(f"ui-check: error: {exc}", file=sys.stderr)
        return 2
    except CheckFailed as exc:
        print(f"FAIL {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ui-check: interrupted", file=sys.stderr)
        return 130
    print(f"ui-check: all checks passed in {time.perf_counter() - t0:.0f} s; screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    # SIGTERM (a CI timeout) must still run the finally blocks that stop the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
