"""MLflow's side of the UI check: ``mlflow ui`` on a free port serving a copy of a store, its REST
API, the store's experiments read straight from SQLite (``make ui``'s banner), and what a
rendered page of it says (which of its two modes it is in, which charts are drawn).
"""
from __future__ import annotations

import atexit
import html
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ui_browser import UI_HOST, CheckFailed, kill_group, shows

from gpt2ft.ui_names import plain, plain_name, ui_name  # the names metrics are logged under

# The venv's own executables: `make ui-check` runs the check with .venv/bin/python, and
# Path.resolve() would follow that symlink out of the venv.
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 60

# MLflow 3 opens an experiment in its GenAI mode (traces overview, "Evaluations") unless the URL
# carries this parameter; gpt2ft.tracking.Tracker.ui_url adds it, and so does every page here.
TRAINING_MODE = "workflowType=machine_learning"

# What the sidebar and breadcrumb say in each mode (rendered 2026-11-27, MLflow 3.17.2): model
# training lists Runs / Models / Traces / Model registry and a run's breadcrumb goes through
# "Runs"; GenAI lists Overview ... "Evaluation runs" and the breadcrumb goes through "Evaluations".
# Both modes show the toggle "GenAI Model training", so that text tells nothing.
TRAINING_MARKS = ("Model registry",)
GENAI_MARKS = ("Evaluation runs", "Evaluations")


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
            found.add(plain_name(html.unescape(title.group(1))))
    return found


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
            kill_group(self.proc)

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
                   plain({m["key"]: m["value"] for m in data.get("metrics", [])}),
                   {t["key"]: t["value"] for t in data.get("tags", [])})


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


def metric_steps(ui: MlflowUI, run_id: str, key: str) -> list[int]:
    """The distinct steps at which metric ``key`` (its own name) was logged to the run, in order (REST
    get-history of its logged name, gpt2ft.ui_names)."""
    key, steps, token = ui_name(key), set(), None
    while True:
        query = {"run_id": run_id, "metric_key": key, "max_results": 25000, **({"page_token": token} if token else {})}
        page = ui.api("metrics/get-history", query=query)
        steps |= {int(m["step"]) for m in page.get("metrics", [])}
        token = page.get("next_page_token")
        if not token:
            return sorted(steps)
