"""Errors a user can cause: the real CLI in a subprocess exits 2 with one sentence on stderr,
no traceback, and no MLflow run is left behind.

Every case is a separate ``python -m gpt2ft.cli`` process (a few seconds of imports each),
so the whole table runs at once in a thread pool from one module-scoped fixture, and the
test function then checks one row at a time.
"""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from conftest import TINY, book_path
from gpt2ft.ui_names import plain

SUBPROCESS_TIMEOUT = 180
PASSWORD = "secret"
DEAD_POSTGRES = f"postgresql+psycopg2://u:{PASSWORD}@127.0.0.1:1/db"


@dataclass
class Case:
    id: str
    args: list[str]
    expect: str
    """A fragment the error sentence must contain (it says what is wrong)."""
    corpus: Optional[Callable[[Path], Optional[str]]] = None
    """Builds the GPT2FT_CORPUS value in the case's folder; None: the real book."""
    needs_book: bool = False
    """Whether the failure happens only after the real book has been read."""
    forbidden: tuple[str, ...] = ()
    """Text that must appear in neither stdout nor stderr."""
    fresh_store: bool = True
    """False: start from an initialised, empty ./mlruns/mlflow.db (a user's second command;
    it also spares each case MLflow's table creation, ~2 s of CPU)."""


@dataclass
class Outcome:
    case: Case
    cwd: Path
    returncode: Optional[int] = None
    stdout: str = ""
    stderr: str = ""
    skip: Optional[str] = None
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------ corpus builders

def _write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def missing_corpus(folder: Path) -> str:
    return str(folder / "no-such-book.txt")


def unreadable_corpus(folder: Path) -> str:
    """A regular file that cannot be read. chmod 000 does not stop root (CI runs tests as
    root), so root gets a kernel file that refuses reads to everyone, where there is one."""
    path = Path(_write(folder, "locked.txt", "*** START OF THE PROJECT GUTENBERG EBOOK X ***\n"))
    path.chmod(0)
    candidates = [path] + ([Path("/proc/sys/vm/drop_caches")] if os.geteuid() == 0 else [])
    for cand in candidates:
        try:
            if not cand.is_file():
                continue
            with open(cand, "rb") as fh:
                fh.read(1)
        except OSError:
            return str(cand)
    raise pytest.skip.Exception("running as root and no regular file here refuses reads to root")


def binary_corpus(folder: Path) -> str:
    # A plain text without Gutenberg markers is a book (taken whole); bytes that are no text are not.
    path = folder / "book.bin"
    path.write_bytes(bytes(range(256)) * 64)
    return str(path)


def empty_corpus(folder: Path) -> str:
    return _write(folder, "empty.txt", "")


def short_corpus(folder: Path) -> str:
    return _write(folder, "short.txt",
                  "Header\n\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\n\nA few lines.\n"
                  "Only a few.\n\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\n\nLicence\n")


def invalid_yaml(folder: Path) -> None:
    _write(folder, "bad.yaml", "model:\n  name: random-gpt2\ntrain:\n  lr: [0.1, 0.2\n  epochs: 2\n")


def train(*extra: str) -> list[str]:
    return ["train", "--config", str(TINY), "--quiet", *extra]


CASES = [
    Case("missing_corpus", train(), "does not exist", corpus=missing_corpus, fresh_store=False),
    Case("corpus_is_directory", train("--corpus", "."), "is a directory", fresh_store=False),
    Case("unreadable_corpus", train(), "cannot be read", corpus=unreadable_corpus, fresh_store=False),
    Case("binary_corpus", train(), "is not a text file", corpus=binary_corpus, fresh_store=False),
    Case("empty_corpus", train(), "is empty", corpus=empty_corpus, fresh_store=False),
    Case("too_short_corpus", train(), "too short", corpus=short_corpus, fresh_store=False),
    Case("missing_config", ["train", "--config", "no-such.yaml", "--quiet"], "does not exist"),
    Case("invalid_yaml", ["train", "--config", "bad.yaml", "--quiet"], "not valid YAML at line",
         corpus=lambda folder: invalid_yaml(folder)),
    Case("unknown_config_key", train("--set", "train.learning_rate=1e-3"), "train.learning_rate"),
    Case("lr_zero", train("--set", "train.lr=0"), "train.lr"),
    Case("epochs_zero", train("--set", "train.epochs=0"), "train.epochs"),
    Case("batch_size_zero", train("--set", "train.batch_size=0"), "train.batch_size"),
    Case("study_lr_low_above_high",
         ["study", "--config", str(TINY), "--quiet", "--set", "study.lr.low=1e-2",
          "--set", "study.lr.high=1e-3"], "study.lr"),
    Case("unwritable_store", train("--tracking-uri", "sqlite:////proc/nope/mlflow.db"),
         "/proc/nope"),
    Case("unknown_model_offline", train("--set", "model.name=no-such-org/no-such-model"),
         "no-such-org/no-such-model", needs_book=True),
    Case("unreachable_tracking_server", train("--tracking-uri", "http://127.0.0.1:1"),
         "http://127.0.0.1:1"),
    Case("unreachable_study_storage",
         ["study", "--config", str(TINY), "--quiet", "--storage", DEAD_POSTGRES],
         "Optuna storage", forbidden=(PASSWORD,), fresh_store=False),
]


# ---------------------------------------------------------------------------- running

def _env(corpus: Optional[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "GPT2FT_CORPUS")}
    env["HF_HUB_OFFLINE"] = "1"
    if corpus is not None:
        env["GPT2FT_CORPUS"] = corpus
    return env


def _cli(args: list[str], cwd: Path, corpus: Optional[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2ft.cli", *args], cwd=cwd, env=_env(corpus),
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)


def _make_store_template(root: Path) -> Path:
    """An MLflow SQLite store with its tables created and nothing in it."""
    from mlflow.tracking import MlflowClient

    db = root / "template" / "mlflow.db"
    db.parent.mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def _copy_store(template: Path, cwd: Path) -> Path:
    db = cwd / "mlruns" / "mlflow.db"
    db.parent.mkdir(parents=True)
    src, dst = sqlite3.connect(template), sqlite3.connect(db)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return db


def _run_case(case: Case, root: Path, template: Future) -> Outcome:
    cwd = root / case.id
    cwd.mkdir()
    out = Outcome(case, cwd)
    if not case.fresh_store:
        _copy_store(template.result(), cwd)
    book = book_path()
    try:
        corpus = case.corpus(cwd) if case.corpus is not None else None
    except pytest.skip.Exception as exc:
        out.skip = str(exc)
        return out
    if corpus is None:
        if case.needs_book and book is None:
            out.skip = "the book is not available: set GPT2FT_CORPUS to pg829.txt"
            return out
        # Cases that fail before the book is read still get a path, never a download.
        corpus = str(book) if book is not None else missing_corpus(cwd)
    proc = _cli(case.args, cwd, corpus)
    out.returncode, out.stdout, out.stderr = proc.returncode, proc.stdout, proc.stderr
    return out


def _snapshot(client, run_id: str) -> dict:
    run = client.get_run(run_id)
    return {"status": run.info.status, "start": run.info.start_time, "end": run.info.end_time,
            "metrics": dict(plain(run.data.metrics)), "params": dict(run.data.params),
            "tags": {k: v for k, v in run.data.tags.items()},
            "history": sorted((m.step, m.value) for m in client.get_metric_history(run_id, "heldout_loss")),
            "artifacts": sorted(f.path for f in client.list_artifacts(run_id))}


def _run_against_existing_store(root: Path, template: Future) -> Outcome:
    """A good run made straight through MLflow, then a failing command on the same store."""
    import yaml
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    cwd = root / "existing_store"
    cwd.mkdir()
    db = _copy_store(template.result(), cwd)
    store = db.parent
    uri = f"sqlite:///{db}"
    experiment = yaml.safe_load(TINY.read_text())["tracking"]["experiment"]
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(experiment,
                                      artifact_location=(store / "artifacts" / experiment).as_uri())
    run_id = client.create_run(exp_id, run_name="good").info.run_id
    client.log_param(run_id, "train.lr", "0.001")
    for step, value in ((0, 10.5), (5, 9.75), (10, 9.25)):
        client.log_metric(run_id, "heldout_loss", value, step=step)
    client.log_metric(run_id, "memorization", 0.125)
    client.log_text(run_id, "good samples", "samples.md")
    client.set_terminated(run_id, "FINISHED")
    book = book_path()
    if book is not None:  # fail as late as possible: after the book, at the model
        case = Case("existing_store", train("--set", "model.name=no-such-org/no-such-model"),
                    "no-such-org/no-such-model")
        corpus = str(book)
    else:
        case = Case("existing_store", train(), "does not exist")
        corpus = missing_corpus(cwd)
    out = Outcome(case, cwd)
    out.extra["run_id"], out.extra["uri"] = run_id, uri
    out.extra["before"] = _snapshot(client, run_id)
    proc = _cli(case.args, cwd, corpus)
    out.returncode, out.stdout, out.stderr = proc.returncode, proc.stdout, proc.stderr
    out.extra["after"] = _snapshot(client, run_id)
    out.extra["all_runs"] = [r.info.run_id for r in client.search_runs([exp_id], run_view_type=ViewType.ALL)]
    return out


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("bad_input")
    with ThreadPoolExecutor(max_workers=3) as pool:
        # FIFO: the template is built first, while the cases that need no store run beside it.
        template = pool.submit(_make_store_template, root)
        order = sorted(CASES, key=lambda c: not c.fresh_store)
        futures = {c.id: pool.submit(_run_case, c, root, template) for c in order}
        existing = pool.submit(_run_against_existing_store, root, template)
        results = {cid: f.result() for cid, f in futures.items()}
        results["existing_store"] = existing.result()
    return results


def _runs_in(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    finally:
        con.close()


def _assert_one_sentence_error(out: Outcome) -> None:
    report = f"{out.case.id}: rc={out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert out.returncode == 2, report
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout, report
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("gpt2ft: error: "), report
    errors = [ln for ln in lines if ln.startswith("gpt2ft: error:")]
    assert len(errors) == 1, report
    assert out.case.expect in errors[0], report
    assert errors[0].rstrip().endswith("."), report  # a sentence, not a fragment
    for text in out.case.forbidden:
        assert text not in out.stderr and text not in out.stdout, report


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_bad_input_exits_2_with_one_sentence_and_no_run(outcomes, case_id):
    out = outcomes[case_id]
    if out.skip:
        pytest.skip(out.skip)
    _assert_one_sentence_error(out)
    db = out.cwd / "mlruns" / "mlflow.db"
    if db.exists():
        assert _runs_in(db) == 0, f"{case_id} left a run in {db}"
    assert not (out.cwd / "mlflow.db").exists()  # never MLflow's default store in the cwd


def test_existing_run_is_untouched_by_a_failing_command(outcomes):
    out = outcomes["existing_store"]
    _assert_one_sentence_error(out)
    before, after = out.extra["before"], out.extra["after"]
    assert before["status"] == "FINISHED"
    assert before["history"] == [(0, 10.5), (5, 9.75), (10, 9.25)]
    assert before["artifacts"] == ["samples.md"]
    assert after == before
    assert out.extra["all_runs"] == [out.extra["run_id"]]


@pytest.mark.parametrize("args", [train("--set", "train.lr=0"), train("--corpus", "no-such-book.txt"),
                                  ["study", "--config", str(TINY), "--quiet", "--set", "study.epochs.low=0"]])
def test_config_and_corpus_errors_come_before_the_heavy_imports(args, tmp_path):
    """A mistyped key, range or path is answered in a fraction of a second: before torch,
    transformers or MLflow (several seconds of imports) are loaded."""
    probe = ("import sys; from gpt2ft.cli import main; rc = main(sys.argv[1:]); "
             "print(rc, sorted(m for m in ('torch', 'transformers', 'mlflow') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe, *args], cwd=tmp_path, env=_env(None),
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.stdout.split("\n")[0] == "2 []", (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("gpt2ft: error: "), proc.stderr


# ------------------------------------------------------------- a tracking server that is not there

@pytest.fixture
def silent_server():
    """A TCP port that accepts connections (the kernel's backlog) but never answers: a hung server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.mark.parametrize("server", ["dead", "silent"])
def test_unreachable_tracking_server_fails_fast(server, silent_server, workdir, capsys):
    """MLflow alone retries for minutes; the CLI gives up within seconds, in one sentence."""
    import mlflow  # noqa: F401  (imports are not what is timed)

    import gpt2ft.measure  # noqa: F401
    from gpt2ft.cli import main

    uri = "http://127.0.0.1:1" if server == "dead" else silent_server
    t = time.perf_counter()
    rc = main(["train", "--config", str(TINY), "--quiet", "--tracking-uri", uri])
    seconds = time.perf_counter() - t
    err = capsys.readouterr().err
    assert rc == 2 and seconds < 15, (rc, seconds, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("gpt2ft: error: ") and uri in lines[0], err
    assert "Traceback" not in err and lines[0].endswith(".")
    assert list(workdir.iterdir()) == []  # nothing written: no store, no run
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the fast-fail setting was temporary
