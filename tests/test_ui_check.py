"""The MLflow UI, rendered by headless Chromium, shows a tiny study: scripts/ui_check.py's checks."""
from __future__ import annotations

import importlib.util
import os
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


def test_visible_text_keeps_what_a_person_reads():
    dom = ("<html><head><script>var train_loss = 1;</script><style>td {}</style></head>"
           "<body><td>heldout_loss</td>\n  <td>8.41</td><td>a &amp; b</td></body></html>")
    assert ui_check.visible_text(dom) == "heldout_loss 8.41 a & b"
    text = "trial-10 memorization_4 plots/loss.png 7.928"
    assert [ui_check.shows(text, s) for s in ("trial-1", "trial-10", "memorization", "loss.png", "7.9")] == [
        False, True, False, True, False]


def test_store_without_database_is_a_user_error(tmp_path):
    with pytest.raises(ui_check.BadArgument, match="--store"):
        ui_check.store_db(tmp_path)
    assert ui_check.main(["--store", str(tmp_path), "--out", str(tmp_path / "ui")]) == 2


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        return ui_check.ensure_chromium()
    except ui_check.ChromiumUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser check, but {exc}")
        pytest.skip(f"chromium is not installed and could not be installed: {exc}")


@pytest.mark.slow
def test_ui_shows_a_tiny_study(book, chromium, tmp_path, monkeypatch):
    from gpt2ft.config import load_config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # One trial and no final re-measure of the pick (not what this test is about) keep this near
    # a minute and a half on two idle cores; the runs' layout is the same as with three trials.
    store = ui_check.make_store(tmp_path / "store", corpus=str(book), n_trials=1,
                                overrides=("sample.final_n_samples=0",))
    out = tmp_path / "ui"
    lines = ui_check.run_checks(store, out, load_config(ui_check.CONFIG).tracking.experiment, chromium)

    assert [line.split(":")[0] for line in lines] == [
        "chromium", "mlflow ui", "REST API", "runs table", "trial run page", "trial artifacts",
        "study run page", "study artifacts"]
    assert "1 study run(s) ('tiny') with 1 child runs" in lines[2]
    assert sorted(p.name for p in out.iterdir()) == sorted(ui_check.SCREENSHOTS)
    for png in out.iterdir():
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000, png
