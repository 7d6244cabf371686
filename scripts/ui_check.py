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
"""
from __future__ import annotations

import argparse
import atexit
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
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
# The venv's own executables: `make ui-check` runs this file with .venv/bin/python, and
# Path.resolve() would follow that symlink out of the venv.
BIN = Path(sys.executable).parent
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

# The browser reaches the UI under this name, mapped to 127.0.0.1 by --host-resolver-rules:
# on localhost the UI auto-opens its "MLflow Assistant" panel over a third of the page.
UI_HOST = "mlflow-ui-check"
# Key of the shared view (an experiment tag `mlflow.sharedViewState.<key>`, what the UI's own
# "share view" writes) that adds the trial metrics as runs-table columns. Sorting by a metric
# also makes the table list child runs flat instead of folded under their parent.
VIEW_KEY = "gpt2ft-ui-check"
WINDOW = (1400, 900)
# The "Model metrics" tab draws a chart only once its card scrolls into view, and sorts cards by
# name: a window tall enough for every card (35 metrics, 3 a row, 360 px each) renders them all.
TALL_WINDOW = (1400, 5200)
# 35 charts in model-training mode took 20-45 s of virtual time here (GenAI mode: under 20 s).
CHART_BUDGETS_MS = (45_000, 90_000)
BUDGET_MS = 20_000      # virtual time per page; pending fetches pause it, so this is not wall time
RETRY_BUDGET_MS = 45_000
START_TIMEOUT_S = 60
SCREENSHOTS = ("runs.png", "trial_run.png", "trial_metrics.png", "trial_artifacts.png", "study_run.png",
               "study_artifacts.png")

# MLflow 3 opens an experiment in its GenAI mode (traces overview, "Evaluations") unless the URL
# carries this parameter; gpt2ft.tracking.Tracker.ui_url adds it, and so does every page here.
TRAINING_MODE = "workflowType=machine_learning"
# What the sidebar and breadcrumb say in each mode (rendered 2026-11-27, MLflow 3.17.2): model
# training lists Runs / Models / Traces / Model registry and a run's breadcrumb goes through
# "Runs"; GenAI lists Overview ... "Evaluation runs" and the breadcrumb goes through "Evaluations".
# Both modes show the toggle "GenAI Model training", so that text tells nothing.
TRAINING_MARKS = ("Model registry",)
GENAI_MARKS = ("Evaluation runs", "Evaluations")


class CheckFailed(Exception):
    """A check did not pass; the message says what was expected and what was found."""


class ChromiumUnavailable(CheckFailed):
    """Chromium is not installed and could not be installed."""


class BadArgument(Exception):
    """A command-line argument the user can fix."""


# --------------------------------------------------------------------------------------------
# Chromium


def find_chromium() -> Optional[str]:
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def ensure_chromium() -> str:
    """The Chromium executable, installed with apt-get (as root) when it is missing."""
    found = find_chromium()
    if found:
        return found
    if not shutil.which("apt-get"):
        raise ChromiumUnavailable("chromium is not installed and there is no apt-get here; "
                                  "install Chromium so that `chromium` is on PATH")
    if os.geteuid() != 0:
        raise ChromiumUnavailable("chromium is not installed and installing it needs root: "
                                  "run `sudo apt-get install -y chromium`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise ChromiumUnavailable(f"`apt-get {' '.join(args)}` did not finish in 15 minutes") from None

    print("ui-check: chromium is missing; apt-get install -y chromium ...", file=sys.stderr, flush=True)
    result = apt("install", "-y", "chromium")
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        apt("update")
        result = apt("install", "-y", "chromium")
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ChromiumUnavailable("`apt-get install -y chromium` failed, also after `apt-get update`: "
                                  + " | ".join(tail))
    found = find_chromium()
    if not found:
        raise ChromiumUnavailable("`apt-get install -y chromium` succeeded but no `chromium` is on PATH")
    return found


@dataclass
class Page:
    """One page rendered by Chromium: its DOM, its visible text and the screenshot."""
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


def render(chromium: str, url: str, png: Path, budget_ms: int = BUDGET_MS,
           window: tuple[int, int] = WINDOW) -> Page:
    """Load ``url`` in a fresh headless profile; write a screenshot and return the final DOM."""
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    # ignore_cleanup_errors: a Chromium killed mid-write can leave its cache busy for a moment.
    with tempfile.TemporaryDirectory(prefix="ui-check-chromium-", ignore_cleanup_errors=True) as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
               f"--host-resolver-rules=MAP {UI_HOST} 127.0.0.1",
               f"--virtual-time-budget={budget_ms}", f"--screenshot={png}", "--dump-dom", url]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            dom, err = proc.communicate(timeout=budget_ms / 1000 + 60)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise CheckFailed(f"chromium did not finish loading {url} within {budget_ms / 1000 + 60:.0f} s")
        except BaseException:  # interrupted: leave no browser behind
            _kill_group(proc)
            raise
    if proc.returncode != 0 or not png.is_file():
        tail = " | ".join(err.strip().splitlines()[-3:])
        raise CheckFailed(f"chromium exited with {proc.returncode} on {url} without a screenshot: {tail}")
    return Page(url, dom, png)


def check_page(chromium: str, url: str, png: Path, expect: list[str],
               extra: Optional[Callable[[Page], Optional[str]]] = None, window: tuple[int, int] = WINDOW,
               budgets: tuple[int, int] = (BUDGET_MS, RETRY_BUDGET_MS)) -> Page:
    """Render ``url`` until its text holds every string in ``expect`` (one retry, longer budget)."""
    for budget in budgets:
        page = render(chromium, url, png, budget, window)
        text = page.text
        missing = [s for s in expect if not shows(text, s)]
        problem = extra(page) if extra and not missing else None
        if not missing and not problem:
            return page
        print(f"ui-check: {url}: {missing or problem} after {budget} ms of virtual time; retrying",
              file=sys.stderr, flush=True)
    what = f"missing {missing}" if missing else problem
    raise CheckFailed(f"{url} rendered without what it should show ({what}); see {png}. "
                      f"Rendered text starts: {text[:300]!r}")


def in_training_mode(url: str) -> str:
    """``url`` with MLflow's model-training mode parameter added to its ``#/...`` route."""
    if TRAINING_MODE in url:
        return url
    return url + ("&" if "?" in url.partition("#")[2] else "?") + TRAINING_MODE


def ui_mode(text: str) -> str:
    """Which mode a rendered page's text shows: "model training", "genai" or "unknown"
    (neither sidebar rendered, e.g. the page did not load)."""
    if any(shows(text, s) for s in GENAI_MARKS):
        return "genai"
    if all(shows(text, s) for s in TRAINING_MARKS):
        return "model training"
    return "unknown"


def charted_metrics(dom: str) -> set[str]:
    """Metric names of the chart cards in ``dom`` that hold a drawn plot (a card scrolled out of
    view, or still loading, shows only a spinner and its title is not in the DOM yet)."""
    cards = dom.split('data-testid="experiment-view-compare-runs-card"')[1:]
    found = set()
    for card in cards:
        title = re.search(r'<h4[^>]*\btitle="([^"]+)"', card)
        if title and "js-plotly-plot" in card:
            found.add(html.unescape(title.group(1)))
    return found


# --------------------------------------------------------------------------------------------
# The store and the server


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


def snapshot(db: Path, folder: Path) -> Path:
    """A consistent copy of a SQLite store. The server may migrate its database and this check
    writes a view tag; neither should touch the user's store. Artifacts stay where they are:
    gpt2ft's experiments record them as absolute file URIs."""
    copy = folder / "mlflow.db"
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    dst = sqlite3.connect(copy)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return copy


def study_urls(db: Path, host: str = "http://127.0.0.1:5000") -> list[str]:
    """One line per active experiment with runs in the SQLite store ``db``: its name, run count
    and the URL of its runs table in model-training mode (the form of Tracker.ui_url). Read
    with sqlite3 alone, so `make ui` prints it in a blink and never writes to the store."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT e.experiment_id, e.name, COUNT(r.run_uuid) FROM experiments e "
                           "LEFT JOIN runs r ON r.experiment_id = e.experiment_id "
                           "WHERE e.lifecycle_stage = 'active' GROUP BY e.experiment_id, e.name "
                           "ORDER BY e.experiment_id").fetchall()
    finally:
        con.close()
    return [f"{name} ({n} runs): {host}/#/experiments/{eid}/runs?{TRAINING_MODE}" for eid, name, n in rows if n]


def print_urls(store: Path, port: int) -> int:
    """`make ui`'s banner: the URLs of ``store``'s experiments, or why there are none; always 0,
    so the server starts either way."""
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL what is left after 10 s."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


class MlflowUI:
    """``mlflow ui`` on a free port of 127.0.0.1, in its own process group; always stopped."""

    def __init__(self, db: Path, workdir: Path):
        self.db, self.workdir = db, workdir
        self.port = free_port()
        self.api_base = f"http://127.0.0.1:{self.port}"
        self.browser_base = f"http://{UI_HOST}:{self.port}"
        self.log_path = workdir / "mlflow-ui.log"
        self.proc: Optional[subprocess.Popen] = None
        self.start_seconds = 0.0

    def __enter__(self) -> "MlflowUI":
        mlflow = [str(BIN / "mlflow")] if (BIN / "mlflow").exists() else [sys.executable, "-m", "mlflow"]
        hosts = ",".join(f"{h}:{self.port}" for h in (UI_HOST, "127.0.0.1", "localhost"))
        cmd = mlflow + ["ui", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                        "--backend-store-uri", f"sqlite:///{self.db}",
                        "--allowed-hosts", hosts, "--cors-allowed-origins", self.browser_base]
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        t = time.perf_counter()
        with open(self.log_path, "w") as log:
            # cwd: the server resolves relative artifact roots against it; keep them out of the repo.
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - t
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CheckFailed(f"`mlflow ui` exited with {self.proc.returncode} before serving: "
                                  f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.api_base + "/", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise CheckFailed(f"`mlflow ui` did not answer HTTP 200 within {START_TIMEOUT_S} s: {self.log_tail()}")

    def log_tail(self, n: int = 8) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-n:])
        except OSError:
            return "(no log)"

    def get(self, path: str, query: Optional[dict] = None) -> bytes:
        url = f"{self.api_base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return r.read()
        except urllib.error.HTTPError as exc:
            raise CheckFailed(f"GET {path} answered HTTP {exc.code}: {exc.read()[:300]!r}") from None

    def api(self, endpoint: str, body: Optional[dict] = None, query: Optional[dict] = None) -> dict:
        """GET (with ``query``) or POST (JSON ``body``) to ``/api/2.0/mlflow/<endpoint>``."""
        path = f"/api/2.0/mlflow/{endpoint}"
        if body is None:
            return json.loads(self.get(path, query) or b"{}")
        req = urllib.request.Request(self.api_base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise CheckFailed(f"POST {path} answered HTTP {exc.code}: {exc.read()[:300]!r}") from None


# --------------------------------------------------------------------------------------------
# REST checks


@dataclass
class Run:
    id: str
    name: str
    status: str
    metrics: dict[str, float]
    tags: dict[str, str]

    @classmethod
    def from_api(cls, r: dict) -> "Run":
        data = r.get("data", {})
        return cls(r["info"]["run_id"], r["info"].get("run_name", ""), r["info"]["status"],
                   {m["key"]: m["value"] for m in data.get("metrics", [])},
                   {t["key"]: t["value"] for t in data.get("tags", [])})


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


def list_artifacts(ui: MlflowUI, run_id: str, path: str = "") -> set[str]:
    """Artifact paths of a run, one folder level below ``path`` included."""
    out: set[str] = set()
    for f in ui.api("artifacts/list", query={"run_id": run_id, "path": path}).get("files", []):
        out.add(f["path"])
        if f.get("is_dir") and path == "":
            out |= list_artifacts(ui, run_id, f["path"])
    return out


def all_runs(ui: MlflowUI, experiment_id: str) -> list[Run]:
    runs, token = [], None
    while True:
        body = {"experiment_ids": [experiment_id], "max_results": 1000, "order_by": ["attributes.start_time DESC"]}
        if token:
            body["page_token"] = token
        page = ui.api("runs/search", body)
        runs += [Run.from_api(r) for r in page.get("runs", [])]
        token = page.get("next_page_token")
        if not token:
            return runs


def pick_experiment(ui: MlflowUI, name: Optional[str]) -> tuple[str, str]:
    """(id, name): the named experiment, else the one holding the most recently started run."""
    exps = ui.api("experiments/search", {"max_results": 1000}).get("experiments", [])
    if name:
        for e in exps:
            if e["name"] == name:
                return e["experiment_id"], name
        raise CheckFailed(f"no experiment named {name!r} in the store; it has {sorted(e['name'] for e in exps)}")
    latest: tuple[int, str, str] = (-1, "", "")
    for e in exps:
        page = ui.api("runs/search", {"experiment_ids": [e["experiment_id"]], "max_results": 1,
                                      "order_by": ["attributes.start_time DESC"]})
        for r in page.get("runs", []):
            latest = max(latest, (int(r["info"]["start_time"]), e["experiment_id"], e["name"]))
    if latest[0] < 0:
        raise CheckFailed(f"the store has no runs (experiments: {sorted(e['name'] for e in exps)})")
    return latest[1], latest[2]


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


def metric_steps(ui: MlflowUI, run_id: str, key: str) -> list[int]:
    """The distinct steps at which ``key`` was logged to the run, in order (REST get-history)."""
    steps, token = set(), None
    while True:
        query = {"run_id": run_id, "metric_key": key, "max_results": 25000, **({"page_token": token} if token else {})}
        page = ui.api("metrics/get-history", query=query)
        steps |= {int(m["step"]) for m in page.get("metrics", [])}
        token = page.get("next_page_token")
        if not token:
            return sorted(steps)


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
    state = {"selectedColumns": ["attributes.`Duration`"] + [f"metrics.`{m}`" for m in TRIAL_METRICS],
             "orderByKey": "metrics.`heldout_loss`", "orderByAsc": True}
    ui.api("experiments/set-experiment-tag", {"experiment_id": found.experiment_id,
                                              "key": f"mlflow.sharedViewState.{VIEW_KEY}",
                                              "value": json.dumps(state)})
    return in_training_mode(f"{ui.browser_base}/#/experiments/{found.experiment_id}/runs"
                            f"?viewStateShareKey={VIEW_KEY}")


# --------------------------------------------------------------------------------------------
# Browser checks


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
        ("trial model metrics", f"{base}/{trial.id}/model-metrics", "trial_metrics.png",
         [trial.name, "Model metrics"], _charts(TRAJECTORY_METRICS)),
        ("trial artifacts", f"{base}/{trial.id}/artifacts/{TRIAL_ARTIFACTS[0]}", "trial_artifacts.png",
         [trial.name, TRIAL_ARTIFACTS[0]] + [Path(a).name for a in TRIAL_ARTIFACTS], _shows_image(TRIAL_ARTIFACTS[0])),
    ]
    if parent is not None:
        pages += [
            ("study run page", f"{base}/{parent.id}", "study_run.png", [parent.name, "Child runs"],
             _lists_a_child(found.children[parent.id])),
            ("study artifacts", f"{base}/{parent.id}/artifacts/{found.parent_plot}", "study_artifacts.png",
             [parent.name, found.parent_plot], _shows_image(found.parent_plot)),
        ]
    lines = []
    for what, url, png, expect, extra in pages:
        t = time.perf_counter()
        url, extra = in_training_mode(url), _both(_training_mode, extra)
        if png == "trial_metrics.png":
            check_page(chromium, url, out / png, expect, extra, TALL_WINDOW, CHART_BUDGETS_MS)
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
