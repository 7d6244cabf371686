"""Open the MLflow UI in headless Chromium and check that it shows gpt2ft's runs.

``make ui-check`` makes a tiny study in a temporary folder; ``make ui-check ARGS="--store mlruns"``
checks an existing store instead (never written to: the UI serves a copy of its database).

Steps: start ``mlflow ui`` on a free port; assert through its REST API (``MlflowClient``, which
lists a run's plots where the run records them) that the experiment, its runs (and the study's
child runs) carry the expected metrics and plots, and that a trial's trajectory metrics hold more
than one step; then render the runs table, a trial's page, its "Model metrics" tab, its artifacts
view and, for a study, the study run's page and plot with ``chromium --headless --dump-dom
--screenshot``, every page in MLflow's model-training mode
(``?workflowType=machine_learning``, asserted from the sidebar), asserting on the rendered text
and keeping a screenshot of each page (default ``artifacts/ui/``) for a person to look at.
Exit 0 with one line per check, 1 when a check fails, 2 for a bad argument. ``--print-urls`` only
prints each experiment's model-training URL (``make ui`` does, before it starts the server).
"""
from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, NamedTuple, Optional

from gpt2ft.ui_names import LEAD, LEADING, plain, plain_name, ui_name  # the names metrics are logged under

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "tiny.yaml"
BOOK = ROOT.parent / "shared" / "data" / "gulliver.txt"
DEFAULT_OUT = ROOT / "artifacts" / "ui"

# The tiny config stops at max_steps 20, inside its first epoch (~90 steps), so its trials would
# have no point between the base model (step 0) and the end. A shorter book slice (~18 steps an
# epoch at batch 4), two epochs and no step cap give every trial a point after epoch 1: three
# steps (0, end of epoch 1, end) in each trajectory chart.
STORE_OVERRIDES = ("data.max_chars=12000", "train.max_steps=null", "study.epochs.low=2", "study.batch_size=[4]")

# What every finished trial run must carry, under the names the tracking module logs.
TRIAL_METRICS = ("train_loss", "heldout_loss", "top100_ratio", "memorization")
TRIAL_ARTIFACTS = ("plots/loss.png", "plots/top100_frequencies.png", "plots/novelty.png", "samples.md")
STUDY_ARTIFACTS = ("plots/style_vs_copying.png", "plots/copying_and_loss_by_epoch.png")
# Logged at step 0, after every epoch and at the end (gpt2ft.trajectory.POINT_METRICS).
TRAJECTORY_METRICS = ("memorization", "top100_ratio")
STUDY_TAG, PARENT_TAG = "gpt2ft.kind", "mlflow.parentRunId"  # the study run has gpt2ft.kind=study

# A shared view (the experiment tag the UI's own "share view" writes) adds the trial metrics as
# runs-table columns; sorting by a metric also lists child runs flat, not folded under the parent.
VIEW_KEY = "gpt2ft-ui-check"

# The browser reaches the UI under this name, mapped to 127.0.0.1 by --host-resolver-rules:
# on localhost the UI auto-opens its "MLflow Assistant" panel over a third of the page.
UI_HOST = "mlflow-ui-check"
START_TIMEOUT_S = 60
# MLflow 3 opens an experiment in its GenAI mode unless the URL carries this parameter. What the
# sidebar and breadcrumb say in each mode (MLflow 3.17.2): model training lists "Model registry";
# GenAI lists "Evaluation runs" and a run's breadcrumb goes through "Evaluations". Both modes show
# the toggle "GenAI Model training", so that text tells nothing.
TRAINING_MODE = "workflowType=machine_learning"
TRAINING_MARKS = ("Model registry",)
GENAI_MARKS = ("Evaluation runs", "Evaluations")

# A first screenful (the window a person opens a page in), and virtual time per page (pending
# fetches pause it, so it is not wall time), with one retry on the longer budget.
WINDOW, BUDGETS_MS = (1400, 900), (20_000, 45_000)
# The "Model metrics" tab draws a chart only once its card scrolls into view: a window tall enough
# for every card (35 metrics, 3 a row, 360 px each) renders them all. 35 charts in model-training
# mode took 20-45 s of virtual time here.
TALL_WINDOW, CHART_BUDGETS_MS = (1400, 5200), (45_000, 90_000)
SCREENSHOTS = ("runs.png", "trial_run.png", "trial_key_charts.png", "trial_metrics.png", "trial_artifacts.png",
               "study_run.png", "study_artifacts.png")


class CheckFailed(Exception):
    """A check did not pass; the message says what was expected and what was found."""


class ChromiumUnavailable(CheckFailed):
    """Chromium is not installed and could not be installed."""


class BadArgument(Exception):
    """A command-line argument the user can fix."""


class Page(NamedTuple):
    """One page rendered by Chromium: its final DOM and its screenshot."""
    url: str
    dom: str
    png: Path

    @property
    def text(self) -> str:
        return visible_text(self.dom)


def visible_text(dom: str) -> str:
    """The text a person reads: no scripts, styles or tags; whitespace collapsed."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body))).strip()


def shows(text: str, s: str) -> bool:
    """``s`` occurs in ``text`` as a whole token: 'trial-1' is not found in 'trial-10'."""
    return re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", text) is not None


def in_training_mode(url: str) -> str:
    """``url`` with MLflow's model-training mode parameter added to its ``#/...`` route."""
    if TRAINING_MODE in url:
        return url
    return url + ("&" if "?" in url.partition("#")[2] else "?") + TRAINING_MODE


def ui_mode(text: str) -> str:
    """Which mode a page's text shows: "model training", "genai" or "unknown" (no sidebar rendered)."""
    if any(shows(text, s) for s in GENAI_MARKS):
        return "genai"
    return "model training" if all(shows(text, s) for s in TRAINING_MARKS) else "unknown"


def charted_metrics(dom: str) -> set[str]:
    """Metric names of the chart cards in ``dom`` that hold a drawn plot (a card out of view, or
    still loading, shows only a spinner and its title is not in the DOM yet)."""
    found = set()
    for card in dom.split('data-testid="experiment-view-compare-runs-card"')[1:]:
        title = re.search(r'<h4[^>]*\btitle="([^"]+)"', card)
        if title and "js-plotly-plot" in card:
            found.add(plain_name(html.unescape(title.group(1))))
    return found


def _training_mode(page: Page) -> Optional[str]:
    """The page is in model-training mode: its sidebar lists TRAINING_MARKS, no GENAI_MARKS."""
    mode = ui_mode(page.text)
    return None if mode == "model training" else (
        f"the {mode} mode (expected the model-training sidebar {list(TRAINING_MARKS)} and none of {list(GENAI_MARKS)})")


def _charts(metrics: tuple[str, ...]) -> Callable[[Page], Optional[str]]:
    """The "Model metrics" tab lists its charts, and every chart it has drawn includes those of
    ``metrics``. Headless Chromium on 2 busy cores does not always draw any of the ~35 plotly
    charts within its budget (a clean-clone CI run: every card a spinner after 90 s of virtual
    time); a page with none drawn passes on its chart count, while the REST check (trajectory)
    asserts the steps behind those charts in every run."""
    def check(page: Page) -> Optional[str]:
        if not re.search(r"Model metrics \(\d+\)", page.text):
            return "no 'Model metrics (N)' chart section"
        drawn = charted_metrics(page.dom)
        missing = [m for m in metrics if m not in drawn]
        return f"no drawn chart of {missing} (charts drawn: {sorted(drawn)})" if drawn and missing else None
    return check


def _leads_with_key_charts(page: Page) -> Optional[str]:
    """The first chart section is gpt2ft.ui_names.LEAD ("... Auto-refresh Style and copying (8) Add
    chart detail (20) ..." in the text), and the first screenful draws only its charts."""
    names = re.findall(r"(?:Auto-refresh|Add chart) (.+?) \(\d+\)", page.text)
    if names[:1] != [LEAD]:
        return f"the first chart section is {names[:1]} (sections: {names}), not {LEAD!r}"
    stray = sorted(charted_metrics(page.dom) - set(LEADING))
    return f"the first screenful draws {stray}, not only the key charts" if stray else None


def _tells_the_pick(page: Page, children: list) -> Optional[str]:
    """The study run's description (gpt2ft.run_page) leads with the pick and why; it lists a child run."""
    text = page.text
    if not shows(text, "Nothing selected") and not (shows(text, "The pick:") and shows(text, "Why:")):
        return "no pick and its reason in the run's description"
    return None if any(shows(text, c.name) for c in children) else "no child run listed"


def _shows_image(page: Page, artifact: str) -> Optional[str]:
    """The artifact view shows an image once the file was fetched into a blob: URL."""
    return None if re.search(rf'<img[^>]*alt="{re.escape(artifact)}"[^>]*src="blob:', page.dom) else (
        f"no loaded <img> of {artifact}")


def ensure_chromium() -> str:
    """The Chromium executable, installed with apt-get (as root) when it is missing."""
    if not shutil.which("chromium"):
        if not shutil.which("apt-get") or os.geteuid() != 0:
            raise ChromiumUnavailable("chromium is not installed and installing it needs root and apt-get: "
                                      "run `sudo apt-get install -y chromium`")
        print("ui-check: chromium is missing; apt-get install -y chromium ...", file=sys.stderr, flush=True)
        # A fresh machine may have no package lists yet.
        apt = "apt-get install -y chromium || (apt-get update && apt-get install -y chromium)"
        result = subprocess.run(["sh", "-c", apt], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                                capture_output=True, text=True)
        if result.returncode != 0 or not shutil.which("chromium"):
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise ChromiumUnavailable(f"`apt-get install -y chromium` failed, also after `apt-get update`: {tail}")
    return shutil.which("chromium")


def check_page(chromium: str, url: str, png: Path, expect: list[str], checks: list[Callable],
               window: tuple[int, int] = WINDOW, budgets: tuple[int, int] = BUDGETS_MS) -> None:
    """Render ``url`` in a fresh headless profile until its text holds every string in ``expect``
    and none of ``checks`` finds a problem (one retry on a longer budget); keep the screenshot."""
    png.parent.mkdir(parents=True, exist_ok=True)
    for budget in budgets:
        png.unlink(missing_ok=True)
        # ignore_cleanup_errors: a Chromium killed mid-write can leave its cache busy for a moment.
        with tempfile.TemporaryDirectory(prefix="ui-check-chromium-", ignore_cleanup_errors=True) as profile:
            cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
                   f"--host-resolver-rules=MAP {UI_HOST} 127.0.0.1",
                   f"--virtual-time-budget={budget}", f"--screenshot={png}", "--dump-dom", url]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=budget / 1000 + 60)
            except subprocess.TimeoutExpired:
                raise CheckFailed(f"chromium did not finish loading {url} within {budget / 1000 + 60:.0f} s") from None
        if done.returncode != 0 or not png.is_file():
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise CheckFailed(f"chromium exited with {done.returncode} on {url} without a screenshot: {tail}")
        page = Page(url, done.stdout, png)
        missing = [s for s in expect if not shows(page.text, s)]
        problem = f"missing {missing}" if missing else next(filter(None, (c(page) for c in checks)), None)
        if not problem:
            return
        print(f"ui-check: {url}: {problem} after {budget} ms of virtual time", file=sys.stderr, flush=True)
    raise CheckFailed(f"{url} rendered without what it should show ({problem}); see {png}. "
                      f"Rendered text starts: {page.text[:300]!r}")


@contextlib.contextmanager
def mlflow_ui(db: Path, workdir: Path):
    """``mlflow ui`` serving ``db`` on a free port of 127.0.0.1 in its own process group, always
    stopped after; yields (port, seconds until it answered HTTP 200)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hosts = ",".join(f"{h}:{port}" for h in (UI_HOST, "127.0.0.1", "localhost"))
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{db}", "--allowed-hosts", hosts,
           "--cors-allowed-origins", f"http://{UI_HOST}:{port}"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    log, t = workdir / "mlflow-ui.log", time.perf_counter()
    with open(log, "w") as out:
        # cwd: the server resolves relative artifact roots against it; keep them out of the repo.
        proc = subprocess.Popen(cmd, cwd=workdir, env={**env, "MLFLOW_DISABLE_TELEMETRY": "true"}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).close()
                break
            except OSError:  # not listening yet, or not HTTP 200
                if proc.poll() is not None or time.perf_counter() - t > START_TIMEOUT_S:
                    tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-8:])
                    raise CheckFailed(f"`mlflow ui` did not answer HTTP 200 within {START_TIMEOUT_S} s "
                                      f"(exit code {proc.poll()}): {tail}") from None
                time.sleep(0.5)
        yield port, time.perf_counter() - t
    finally:  # the whole group: the server's workers too; it serves a throw-away copy, so no grace period
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def make_store(folder: Path, corpus: Optional[str] = None, n_trials: Optional[int] = None,
               overrides: tuple[str, ...] = ()) -> Path:
    """Run ``gpt2ft study`` in ``folder`` (tiny config, STORE_OVERRIDES, then ``--set`` ``overrides``,
    which win); return ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    corpus = corpus or env.get("GPT2FT_CORPUS") or (str(BOOK) if BOOK.is_file() else None)
    if corpus:
        env["GPT2FT_CORPUS"] = corpus
    cmd = [sys.executable, "-m", "gpt2ft.cli", "study", "--config", str(CONFIG), "--yes", "--quiet",
           "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", *(["--n-trials", str(n_trials)] if n_trials else []),
           *[a for kv in (*STORE_OVERRIDES, *overrides) for a in ("--set", kv)]]
    # cwd: MLflow puts the Default experiment's folder under the current directory.
    result = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        tail = "\n".join((result.stderr + result.stdout).strip().splitlines()[-15:])
        raise CheckFailed(f"making the store failed: `gpt2ft study` exited with {result.returncode}:\n{tail}")
    return folder


def store_db(store: Path) -> Path:
    """The mlflow.db of ``--store`` (the folder that holds it, or the file itself)."""
    db = store if store.suffix == ".db" else store / "mlflow.db"
    if not db.is_file():
        raise BadArgument(f"no MLflow database at {db}; pass --store the folder holding mlflow.db "
                          "(e.g. --store mlruns), or leave --store out to make a tiny study")
    return db


def study_urls(db: Path, host: str = "http://127.0.0.1:5000") -> list[str]:
    """One line per active experiment with runs in the SQLite store ``db``: its name, run count
    and its runs table in model-training mode (the form of Tracker.ui_url). Read with sqlite3
    alone, so `make ui` prints it in a blink and never writes to the store."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        rows = con.execute("SELECT e.experiment_id, e.name, COUNT(r.run_uuid) FROM experiments e "
                           "LEFT JOIN runs r ON r.experiment_id = e.experiment_id "
                           "WHERE e.lifecycle_stage = 'active' GROUP BY e.experiment_id, e.name "
                           "ORDER BY e.experiment_id").fetchall()
    return [f"{name} ({n} runs): {host}/#/experiments/{eid}/runs?{TRAINING_MODE}" for eid, name, n in rows if n]


def print_urls(store: Path, port: int) -> int:
    """`make ui`'s banner: the URLs of ``store``'s experiments, or why there are none; always 0,
    so that the server starts either way."""
    db = store if store.suffix == ".db" else store / "mlflow.db"
    if not db.is_file():
        print(f"ui: no MLflow store at {db} yet (`make study` makes one); starting the UI anyway")
        return 0
    try:
        lines = study_urls(db, f"http://127.0.0.1:{port}")
    except sqlite3.Error as exc:  # e.g. a store mid-migration: the server may still open it
        print(f"ui: could not read the experiments of {db} ({exc}); starting the UI anyway")
        return 0
    print("ui: open in MLflow's model-training mode:" if lines else f"ui: {db} holds no runs yet")
    for line in lines:
        print(f"  {line}")
    return 0


def check_api(client, experiment: Optional[str] = None) -> tuple[SimpleNamespace, str]:
    """The experiment (named, else the one with the latest run) has runs; a study's runs have child
    runs; the finished trials carry TRIAL_METRICS; the best trial and its study run their plots."""
    exps = client.search_experiments()
    if experiment is None:
        latest = client.search_runs([e.experiment_id for e in exps], max_results=1,
                                    order_by=["attributes.start_time DESC"])
        experiment = next((e.name for e in exps if latest and e.experiment_id == latest[0].info.experiment_id), None)
    exp = next((e for e in exps if e.name == experiment), None)
    if exp is None:
        raise CheckFailed(f"no experiment named {experiment!r} in the store; it has "
                          f"{sorted(e.name for e in exps)}" if experiment else "the store has no runs")
    runs = [SimpleNamespace(id=r.info.run_id, name=r.info.run_name, status=r.info.status, tags=r.data.tags,
                            metrics=plain(r.data.metrics))
            for r in client.search_runs([exp.experiment_id], max_results=50_000)]
    if not runs:
        raise CheckFailed(f"experiment {exp.name!r} (id {exp.experiment_id}) lists no runs")
    by_id = {r.id: r for r in runs}
    children: dict[str, list] = {}
    for r in runs:
        if r.tags.get(PARENT_TAG) in by_id:
            children.setdefault(r.tags[PARENT_TAG], []).append(r)
    childless = [r.name for r in runs if r.tags.get(STUDY_TAG) == "study" and r.id not in children]
    if childless:
        raise CheckFailed(f"study runs {childless} list no child runs (tag {PARENT_TAG})")
    # A study's trials are its child runs; a store of plain `gpt2ft train` runs has no nesting.
    trials = [c for kids in children.values() for c in kids] or [r for r in runs if PARENT_TAG not in r.tags]
    finished = [r for r in trials if r.status == "FINISHED"]
    if not finished:
        raise CheckFailed(f"experiment {exp.name!r} has no FINISHED trial run "
                          f"({len(trials)} trial runs: {sorted({r.status for r in trials})})")
    lacking = {r.name: gap for r in finished if (gap := [m for m in TRIAL_METRICS if m not in r.metrics])}
    if lacking:
        raise CheckFailed(f"finished trial runs lack metrics: {lacking}")
    trial = min(finished, key=lambda r: r.metrics["heldout_loss"])
    parent = by_id.get(trial.tags.get(PARENT_TAG))
    for run, wanted, what in ((trial, TRIAL_ARTIFACTS, "trial"), (parent, STUDY_ARTIFACTS, "study")):
        tops = client.list_artifacts(run.id) if run else []  # and one folder level down
        arts = {f.path for t in tops for f in [t, *(client.list_artifacts(run.id, t.path) if t.is_dir else [])]}
        if run and set(wanted) - arts:
            raise CheckFailed(f"{what} run {run.name!r} ({run.id}) lacks artifacts {sorted(set(wanted) - arts)}; "
                              f"it has {sorted(arts)}")
    found = SimpleNamespace(experiment_id=exp.experiment_id, trial=trial, parent=parent, children=children)
    failed = len(trials) - len(finished)
    shape = (f"{len(children)} study run(s) ({', '.join(repr(by_id[p].name) for p in children)}) with "
             f"{len(trials)} child runs" if children else f"{len(trials)} runs, none nested")
    return found, (f"experiment {exp.name!r} (id {exp.experiment_id}): {shape}, {len(finished)} finished"
                   + (f", {failed} not" if failed else "") + f", all with {', '.join(TRIAL_METRICS)}; "
                   f"{trial.name!r} (lowest heldout_loss {trial.metrics['heldout_loss']:.4g}) has "
                   f"{', '.join(TRIAL_ARTIFACTS)}" + (f"; study run has {STUDY_ARTIFACTS[0]}" if parent else ""))


def check_trajectory(client, trial: SimpleNamespace) -> str:
    """Each TRAJECTORY_METRICS of the trial run has more than one step (base, epochs, end)."""
    steps = {k: sorted({m.step for m in client.get_metric_history(trial.id, ui_name(k))}) for k in TRAJECTORY_METRICS}
    flat = {k: v for k, v in steps.items() if len(v) < 2}
    if flat:
        raise CheckFailed(f"trial run {trial.name!r} ({trial.id}) has no trajectory: metrics/get-history "
                          f"gives {flat} (expected step 0, a step per epoch and the end)")
    return f"trial {trial.name!r}: {'; '.join(f'{k} at steps {v}' for k, v in steps.items())} (metrics/get-history)"


def _num(v: float) -> Optional[str]:
    """How the UI prints a metric value (JavaScript's shortest round-trip form), where Python agrees."""
    return repr(v) if 1e-3 <= abs(v) < 1e15 else None


def check_pages(client, found: SimpleNamespace, port: int, chromium: str, out: Path) -> list[str]:
    """Render each page in model-training mode, assert on its text and that mode, keep its
    screenshot; one summary line per page."""
    eid, trial, parent = found.experiment_id, found.trial, found.parent
    state = {"selectedColumns": ["attributes.`Duration`"] + [f"metrics.`{ui_name(m)}`" for m in TRIAL_METRICS],
             "orderByKey": f"metrics.`{ui_name('heldout_loss')}`", "orderByAsc": True}
    client.set_experiment_tag(eid, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(state))  # on the served copy
    base = f"http://{UI_HOST}:{port}/#/experiments/{eid}/runs"
    loss = [s for s in [_num(trial.metrics["heldout_loss"])] if s]
    charts, plot, study_plot = f"{base}/{trial.id}/model-metrics", TRIAL_ARTIFACTS[0], STUDY_ARTIFACTS[0]
    # (what, route, screenshot, strings it shows, [(what else it shows, its check)], window and budgets)
    pages = [
        ("runs table", f"{base}?viewStateShareKey={VIEW_KEY}", "runs.png",
         [trial.name, *TRIAL_METRICS, "matching runs", *loss], []),
        ("trial run page", f"{base}/{trial.id}", "trial_run.png", [trial.name, "Metrics", *TRIAL_METRICS, *loss], []),
        ("trial key charts", charts, "trial_key_charts.png", [trial.name, LEAD],
         [(f"the section {LEAD!r} first, and only its charts in the first screenful", _leads_with_key_charts)],
         WINDOW, CHART_BUDGETS_MS),
        ("trial model metrics", charts, "trial_metrics.png", [trial.name, "Model metrics"],
         [(f"the Model metrics charts (drawn ones include {', '.join(TRAJECTORY_METRICS)})",
           _charts(TRAJECTORY_METRICS))], TALL_WINDOW, CHART_BUDGETS_MS),
        ("trial artifacts", f"{base}/{trial.id}/artifacts/{plot}", "trial_artifacts.png",
         [trial.name, plot, *(Path(a).name for a in TRIAL_ARTIFACTS)],
         [("the loaded image", lambda page: _shows_image(page, plot))]),
    ]
    if parent is not None:
        pages += [
            ("study run page", f"{base}/{parent.id}", "study_run.png", [parent.name, "Child runs", "Description"],
             [("the pick and its reason in the description and a child run's name",
               lambda page: _tells_the_pick(page, found.children[parent.id]))], WINDOW, CHART_BUDGETS_MS),
            ("study artifacts", f"{base}/{parent.id}/artifacts/{study_plot}", "study_artifacts.png",
             [parent.name, study_plot], [("the loaded image", lambda page: _shows_image(page, study_plot))]),
        ]
    mode = f"the model-training mode ({', '.join(TRAINING_MARKS)}; no {', '.join(GENAI_MARKS)})"
    lines = []
    for what, url, png, expect, extra, *sizes in pages:
        t, url = time.perf_counter(), in_training_mode(url)
        check_page(chromium, url, out / png, expect, [_training_mode] + [c for _, c in extra], *sizes)
        lines.append(f"{what}: #{url.split('#', 1)[1]} shows {', '.join(repr(s) for s in expect)} and "
                     f"{' and '.join([mode] + [w for w, _ in extra])} ({time.perf_counter() - t:.1f} s) -> {png}")
    return lines


def run_checks(store: Path, out: Path = DEFAULT_OUT, experiment: Optional[str] = None,
               chromium: Optional[str] = None) -> list[str]:
    """Every check against the store folder ``store``; one summary line per check.

    Raises CheckFailed on the first failure. The UI stops before this returns."""
    db = store_db(store)
    t = time.perf_counter()
    chromium = chromium or ensure_chromium()
    lines = [f"chromium: {chromium} ({time.perf_counter() - t:.1f} s)"]
    for name in SCREENSHOTS:  # a stale study_run.png must not pass for this run's
        (out / name).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="ui-check-") as tmp:
        # The server may migrate its database and this check writes a view tag: serve a copy.
        # Artifacts stay where they are: gpt2ft's experiments record them as absolute file URIs.
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as src, \
                    contextlib.closing(sqlite3.connect(Path(tmp) / "mlflow.db")) as copy:
                src.backup(copy)
        except sqlite3.Error as exc:
            raise BadArgument(f"{db} is not a readable SQLite database ({exc}); pass --store an MLflow store")
        with mlflow_ui(Path(tmp) / "mlflow.db", Path(tmp)) as (port, seconds):
            from mlflow import MlflowClient  # a few seconds to import: only once the server is up
            client = MlflowClient(f"http://127.0.0.1:{port}")
            lines.append(f"mlflow ui: HTTP 200 after {seconds:.1f} s on port {port} (serving a copy of {db})")
            t = time.perf_counter()
            found, summary = check_api(client, experiment)
            lines.append(f"REST API: {summary} ({time.perf_counter() - t:.1f} s)")
            t = time.perf_counter()
            lines.append(f"trajectory: {check_trajectory(client, found.trial)} ({time.perf_counter() - t:.1f} s)")
            lines += check_pages(client, found, port, chromium, out)
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="folder holding mlflow.db (default: make a tiny study "
                        "in a temporary folder)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the screenshots "
                        "(default artifacts/ui/)")
    parser.add_argument("--print-urls", action="store_true", help="only print the model-training URL of "
                        "each experiment in --store (default mlruns) and exit: `make ui`'s banner")
    parser.add_argument("--port", type=int, default=5000, help="port of the UI the printed URLs point at")
    args = parser.parse_args(argv)
    if args.print_urls:
        return print_urls(args.store or Path("mlruns"), args.port)
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="ui-check-store-") as tmp:
            store = args.store
            if store is None:
                ensure_chromium()  # fail before the minutes spent making the store
                t = time.perf_counter()
                store = make_store(Path(tmp))
                print(f"ok   store: `gpt2ft study` with {CONFIG.name} --set {' '.join(STORE_OVERRIDES)} "
                      f"in {time.perf_counter() - t:.0f} s", flush=True)
            for line in run_checks(store, args.out):
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
