"""The real ``gpt2ft train`` entry point on CPU with the tiny config, in a temporary directory:
one finished MLflow run holding every named metric, the tags and the exact artefacts."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch

from conftest import TINY

from gpt2ft.cli import main
from gpt2ft.ui_names import plain, ui_name

METRICS = ("train_loss", "heldout_loss", "heldout_perplexity", "top100_ratio", "top100_ratio_se",
           "memorization", "memorization_4", "memorization_16", "longest_copy", "style_js",
           "extractable_rate", "extractable_rate_heldout", "book_top100_ratio", "book_memorization",
           "base_top100_ratio", "base_memorization", "train_memorization")
DETERMINISTIC = ("heldout_loss", "top100_ratio", "memorization")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: OpenMP threads fighting other processes make
    each small op many times slower, and one thread loses nothing at this size."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def corpus(book, monkeypatch) -> Path:
    monkeypatch.setenv("GPT2FT_CORPUS", str(book))
    return book


def _client(workdir: Path):
    from mlflow.tracking import MlflowClient

    db = workdir / "mlruns" / "mlflow.db"
    assert db.is_file(), "the SQLite store is not at ./mlruns/mlflow.db"
    return MlflowClient(tracking_uri=f"sqlite:///{db}")


def _runs(client) -> list:
    from mlflow.entities import ViewType

    exps = client.search_experiments(view_type=ViewType.ALL)
    return client.search_runs([e.experiment_id for e in exps], run_view_type=ViewType.ALL,
                              order_by=["attributes.start_time ASC"])


def _local(uri: str) -> Path:
    parsed = urlparse(uri)
    assert parsed.scheme in ("", "file"), uri
    return Path(unquote(parsed.path))


def test_train_smoke(workdir, corpus, capsys):
    assert main(["train", "--config", str(TINY), "--quiet"]) == 0

    client = _client(workdir)
    runs = _runs(client)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_id in capsys.readouterr().out  # the summary names the run

    metrics = plain(run.data.metrics)
    missing = [m for m in METRICS if m not in metrics]
    assert missing == []
    assert metrics["train_memorization"] == 1.0  # the training text copies itself
    for name in METRICS:
        assert metrics[name] == metrics[name], f"{name} is NaN"
    for name in ("top100_ratio", "memorization", "memorization_4", "memorization_16",
                 "extractable_rate", "extractable_rate_heldout", "book_top100_ratio"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["memorization_16"] <= metrics["memorization"] <= metrics["memorization_4"]

    train_hist = client.get_metric_history(run.info.run_id, ui_name("train_loss"))
    held_hist = client.get_metric_history(run.info.run_id, ui_name("heldout_loss"))
    assert len({m.step for m in train_hist}) > 1
    assert 0 in {m.step for m in held_hist}
    assert len(held_hist) > 1

    params = run.data.params
    import yaml

    tiny = yaml.safe_load(TINY.read_text())
    assert float(params["train.lr"]) == pytest.approx(float(tiny["train"]["lr"]))
    assert int(params["data.block_size"]) == tiny["data"]["block_size"]
    assert params["model.name"] == "random-gpt2"

    tags = run.data.tags
    assert tags["corpus_sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert tags["device"].split(":")[0] in ("cpu", "cuda", "mps")
    assert tags["torch_version"] == torch.__version__

    # Artifacts: the exact files, and they live under ./mlruns, not in the working directory.
    top = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"samples.md", "history.json", "plots"} <= top
    plots = {f.path for f in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/loss.png" in plots
    root = _local(run.info.artifact_uri)
    assert root.resolve().is_relative_to((workdir / "mlruns").resolve())
    for rel in ("samples.md", "history.json", "plots/loss.png"):
        assert (root / rel).is_file() and (root / rel).stat().st_size > 0, rel
    assert (root / "plots" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((root / "history.json").read_text())
    assert history["history"] and history["heldout_curve"][0][0] == 0
    assert "Sample 1" in (root / "samples.md").read_text()
    assert sorted(os.listdir(workdir)) == ["mlruns"]


def test_same_seed_same_metrics(workdir, corpus, capsys):
    # On the CPU, where a rerun is bitwise identical (CUDA kernels with atomics are not).
    argv = ["train", "--config", str(TINY), "--quiet", "--set", "train.max_steps=6",
            "--set", "train.device=cpu"]
    assert main(argv) == 0
    assert main(argv) == 0
    client = _client(workdir)
    runs = _runs(client)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    first, second = (plain(r.data.metrics) for r in runs)
    for name in DETERMINISTIC:
        assert first[name] == second[name], name

    def history(run, name):
        return [(m.step, m.value) for m in
                sorted(client.get_metric_history(run.info.run_id, ui_name(name)), key=lambda m: m.step)]

    for name in ("heldout_loss", "train_loss"):
        assert history(runs[0], name) == history(runs[1], name), name
    assert first["steps"] == second["steps"] == 6
