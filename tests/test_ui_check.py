"""The MLflow UI, rendered by headless Chromium, shows a tiny study: scripts/ui_check.py's checks."""
from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_ui_check():
    spec = importlib.util.spec_from_file_location("ui_check", ROOT / "scripts" / "ui_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


ui_check = _load_ui_check()
# The browser and MLflow helpers were scripts/ui_browser.py and ui_mlflow.py; they are ui_check's own now.
ui_browser = ui_mlflow = ui_check


def test_visible_text_keeps_what_a_person_reads():
    dom = ("<html><head><script>var train_loss = 1;</script><style>td {}</style></head>"
           "<body><td>heldout_loss</td>\n  <td>8.41</td><td>a &amp; b</td></body></html>")
    assert ui_browser.visible_text(dom) == "heldout_loss 8.41 a & b"
    text = "trial-10 memorization_4 plots/loss.png 7.928"
    assert [ui_browser.shows(text, s) for s in ("trial-1", "trial-10", "memorization", "loss.png", "7.9")] == [
        False, True, False, True, False]


# What headless Chromium read on the same trial page of MLflow 3.17.2 (visible_text, shortened)
# without and with ?workflowType=machine_learning.
GENAI_TEXT = ("Run a6d38 - MLflow MLflow 3.17.2 GenAI Model training gpt2ft-tiny Overview Observability "
              "Traces Sessions Evaluation Judges Review Datasets Evaluation runs Prompts & versions Playground "
              "Prompts Agent versions AI Gateway New Docs Settings gpt2ft-tiny Evaluations trial-0 Overview "
              "Model metrics System metrics Traces Artifacts")
TRAINING_TEXT = ("Run a6d38 - MLflow MLflow 3.17.2 GenAI Model training gpt2ft-tiny Runs Models Traces "
                 "Model registry Docs Settings gpt2ft-tiny Runs trial-0 Overview Model metrics System metrics "
                 "Traces Artifacts")
# The GenAI experiment root (a traces overview) and a page that rendered no sidebar at all.
GENAI_ROOT_TEXT = ("Overview - Experiment 1 - MLflow MLflow 3.17.2 GenAI Model training gpt2ft-tiny Overview "
                   "Observability Traces Sessions Evaluation Judges Review Datasets Evaluation runs Prompts")
BLANK_TEXT = "MLflow You need to enable JavaScript to run this app."


def test_mode_follows_the_sidebar_and_breadcrumb():
    assert ui_mlflow.ui_mode(TRAINING_TEXT) == "model training"
    assert ui_mlflow.ui_mode(GENAI_TEXT) == "genai"
    assert ui_mlflow.ui_mode(GENAI_ROOT_TEXT) == "genai"
    assert ui_mlflow.ui_mode(BLANK_TEXT) == "unknown"
    # The GenAI breadcrumb alone gives it away, even were "Model registry" on the page.
    assert ui_mlflow.ui_mode(TRAINING_TEXT.replace("Runs trial-0", "Evaluations trial-0")) == "genai"


def test_page_check_fails_without_the_training_mode():
    page = ui_browser.Page("u", f"<body><nav>{TRAINING_TEXT}</nav></body>", Path("p.png"))
    assert ui_check._training_mode(page) is None
    for text in (GENAI_TEXT, BLANK_TEXT):
        problem = ui_check._training_mode(ui_browser.Page("u", f"<body>{text}</body>", Path("p.png")))
        assert problem and "Model registry" in problem


def test_every_page_url_asks_for_the_training_mode():
    base = "http://h:5/#/experiments/1/runs"
    assert ui_mlflow.in_training_mode(base) == base + "?workflowType=machine_learning"
    assert ui_mlflow.in_training_mode(base + "?viewStateShareKey=k") == (
        base + "?viewStateShareKey=k&workflowType=machine_learning")
    # A "?" before the "#" is the server's query, not the route's.
    assert ui_mlflow.in_training_mode("http://h:5/?x=1#/experiments/1") == (
        "http://h:5/?x=1#/experiments/1?workflowType=machine_learning")
    once = ui_mlflow.in_training_mode(base)
    assert ui_mlflow.in_training_mode(once) == once


def _card(title: str, body: str) -> str:
    return (f'<div data-testid="experiment-view-compare-runs-card" class="c"><div><h4 class="t" '
            f'title="{title}">{title}</h4></div>{body}</div>')


def test_charted_metrics_are_the_cards_with_a_drawn_plot():
    plot = '<div class="css-i3dpcn js-plotly-plot"><svg class="main-svg"></svg></div>'
    spinner = '<div class="du-bois-light-spin du-bois-light-spin-spinning"></div>'
    section = "<span>Model metrics (35)</span>"
    dom = (section + '<div data-testid="draggable-chart-cards-grid">' + _card("memorization", plot)
           + _card("memorization_4", spinner) + _card("top100_ratio", plot) + spinner + "</div>")
    assert ui_mlflow.charted_metrics(dom) == {"memorization", "top100_ratio"}
    page = ui_browser.Page("u", dom, Path("p.png"))
    assert ui_check._charts(("memorization", "top100_ratio"))(page) is None
    # Charts were drawn, but not this one: a failure.
    assert "memorization_4" in ui_check._charts(("memorization_4",))(page)
    assert ui_mlflow.charted_metrics(spinner * 35) == set()
    # None drawn yet (headless, busy cores): the section's chart count stands in; no section fails.
    assert ui_check._charts(("memorization",))(ui_browser.Page("u", section + spinner * 35, Path("p.png"))) is None
    assert "Model metrics" in ui_check._charts(("memorization",))(ui_browser.Page("u", spinner, Path("p.png")))


def _fake_store(db: Path, experiments: list[tuple[int, str, str, int]]) -> None:
    """The two tables study_urls reads, with MLflow's column names."""
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE experiments (experiment_id INTEGER, name TEXT, lifecycle_stage TEXT)")
    con.execute("CREATE TABLE runs (run_uuid TEXT, experiment_id INTEGER)")
    for eid, name, stage, n_runs in experiments:
        con.execute("INSERT INTO experiments VALUES (?, ?, ?)", (eid, name, stage))
        con.executemany("INSERT INTO runs VALUES (?, ?)", [(f"{eid}-{i}", eid) for i in range(n_runs)])
    con.commit()
    con.close()


def test_make_ui_prints_each_study_in_training_mode(tmp_path, capsys):
    _fake_store(tmp_path / "mlflow.db", [(0, "Default", "active", 0), (1, "gpt2ft-gulliver", "active", 4),
                                         (2, "old", "deleted", 2)])
    assert ui_mlflow.study_urls(tmp_path / "mlflow.db", "http://127.0.0.1:5000") == [
        "gpt2ft-gulliver (4 runs): http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning"]
    assert ui_check.main(["--print-urls", "--store", str(tmp_path), "--port", "5001"]) == 0
    assert "http://127.0.0.1:5001/#/experiments/1/runs?workflowType=machine_learning" in capsys.readouterr().out
    # No store yet: said, and still exit 0 so that `make ui` starts the server.
    assert ui_check.main(["--print-urls", "--store", str(tmp_path / "none")]) == 0
    assert "no MLflow store" in capsys.readouterr().out


def test_store_without_database_is_a_user_error(tmp_path):
    with pytest.raises(ui_check.BadArgument, match="--store"):
        ui_check.store_db(tmp_path)
    assert ui_check.main(["--store", str(tmp_path), "--out", str(tmp_path / "ui")]) == 2


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        return ui_browser.ensure_chromium()
    except ui_browser.ChromiumUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser check, but {exc}")
        pytest.skip(f"chromium is not installed and could not be installed: {exc}")


@pytest.mark.slow
def test_ui_shows_a_tiny_study(book, chromium, tmp_path, monkeypatch):
    from gpt2ft.config import load_config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # One trial and no final re-measure of the pick (not what this test is about) keep this near
    # four minutes on two busy cores (two epochs of STORE_OVERRIDES, six pages); the runs' layout
    # is the same as with three trials.
    store = ui_check.make_store(tmp_path / "store", corpus=str(book), n_trials=1,
                                overrides=("sample.final_n_samples=0",))
    out = tmp_path / "ui"
    lines = ui_check.run_checks(store, out, load_config(ui_check.CONFIG).tracking.experiment, chromium)

    assert [line.split(":")[0] for line in lines] == [
        "chromium", "mlflow ui", "REST API", "trajectory", "runs table", "trial run page", "trial key charts",
        "trial model metrics", "trial artifacts", "study run page", "study artifacts"]
    assert "1 study run(s) ('tiny') with 1 child runs" in lines[2]
    # STORE_OVERRIDES give the trial two epochs: base, end of epoch 1, end.
    assert re.search(r"memorization at steps \[0, \d+, \d+\]", lines[3]), lines[3]
    for line in lines[4:]:
        assert "workflowType=machine_learning" in line and "the model-training mode" in line, line
    assert "the section 'Style and copying' first" in lines[6]  # what a trial's page opens with
    assert "the Model metrics charts (drawn ones include memorization, top100_ratio)" in lines[7]
    assert "the pick and its reason in the description" in lines[9]
    assert ui_mlflow.study_urls(store / "mlflow.db")[0].endswith("/runs?workflowType=machine_learning")
    assert sorted(p.name for p in out.iterdir()) == sorted(ui_check.SCREENSHOTS)
    for png in out.iterdir():
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000, png
