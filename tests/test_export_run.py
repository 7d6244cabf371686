"""``gpt2ft export`` logs its model on the trial's run without ending it (issue 25, item 4): a run
a killed study left RUNNING, its writes pending, must stay RUNNING for the replay to redo them."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("status", ["RUNNING", "FINISHED"])
def test_export_leaves_the_trials_run_status_as_it_was(tmp_path, monkeypatch, status):
    from mlflow.tracking import MlflowClient
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2ft.config import ModelConfig
    from gpt2ft.model import load_tokenizer
    from gpt2ft.trial_writes import log_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = load_tokenizer(ModelConfig(name="random-gpt2"))
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tok), n_positions=64))
    folder = tmp_path / "exported"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp).info.run_id
    if status != "RUNNING":
        client.set_terminated(run, status)
    version = log_model(uri, run, folder, "gpt2ft-test", "champion")
    assert client.get_run(run).info.status == status
    assert client.get_model_version("gpt2ft-test", version).run_id == run
