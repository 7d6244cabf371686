"""Issue 26: the goldfish loss. Its mask is a pure function of the token ids (the same in two calls,
two epochs, two batch orders), drops ~1/k of the targets, goes through the model's own loss
(eager and compiled), gives masked targets no gradient and leaves held-out loss alone; a study
searches ``study.goldfish_k`` as any parameter and export retrains a goldfish candidate exactly."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.loss.loss_utils import ForCausalLMLoss

from gpt2ft import compiled, goldfish
from gpt2ft import train as T
from gpt2ft.config import TrainConfig
from gpt2ft.data import TokenData
from gpt2ft.model import Runtime

VOCAB, BLOCK = 96, 24


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    conf = GPT2Config(vocab_size=VOCAB, n_positions=BLOCK, n_layer=1, n_embd=16, n_head=2, bos_token_id=0,
                      eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(conf).train()


def _data(n: int = 20) -> TokenData:
    g = torch.Generator().manual_seed(2)
    return TokenData(torch.randint(0, VOCAB, (n, BLOCK), generator=g),
                     torch.randint(0, VOCAB, (6, BLOCK), generator=g), [], [], BLOCK)


def test_the_mask_is_a_pure_function_of_each_windows_ids():
    x = _data().train_windows
    m = goldfish.dropped(x, 4)
    assert torch.equal(m, goldfish.dropped(x.clone(), 4))  # two calls
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(5))
    assert torch.equal(goldfish.dropped(x[perm], 4), m[perm])  # another batch order
    assert torch.equal(goldfish.dropped(x[3:5], 4), m[3:5])  # another batch size
    assert not m[:, 0].any() and m.any()
    # The hashed context: the same h tokens before a target drop it wherever they stand.
    y = torch.cat([x[:1, 5:], x[:1, :5]], dim=1)
    assert torch.equal(goldfish.dropped(y, 4, h=3)[0, 3:BLOCK - 5], goldfish.dropped(x[:1], 4, h=3)[0, 8:])
    assert not goldfish.dropped(x, 0).any() and goldfish.labels(x, 0) is x


def test_every_epoch_and_batch_order_of_fit_trains_on_the_same_mask(model, monkeypatch):
    seen: dict[tuple, list[torch.Tensor]] = {}
    real = T.forward_backward

    def spy(m, x, mode, full, autocast, labels=None):
        for row, lab in zip(x, labels):
            seen.setdefault(tuple(row.tolist()), []).append(lab.clone())
        return real(m, x, mode, full, autocast, labels)

    monkeypatch.setattr(T, "forward_backward", spy)
    cfg = TrainConfig(lr=1e-3, epochs=2, batch_size=4, log_every=1, goldfish_k=3)
    T.fit(cfg, copy.deepcopy(model), _data(), None, Runtime(torch.device("cpu"), None), progress=False)
    cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=3, log_every=1, goldfish_k=3, seed=9)  # another order
    T.fit(cfg, copy.deepcopy(model), _data(), None, Runtime(torch.device("cpu"), None), progress=False)
    assert len(seen) == 20 and all(len(v) == 3 for v in seen.values())
    for row, labels in seen.items():
        assert all(torch.equal(labels[0], other) for other in labels[1:])
        assert torch.equal(labels[0], goldfish.labels(torch.tensor([row]), 3)[0])


def test_about_one_in_k_targets_of_the_book_is_dropped(book):
    from gpt2ft.config import ModelConfig
    from gpt2ft.model import load_tokenizer

    tok = load_tokenizer(ModelConfig(name="random-gpt2"))
    ids = tok(book.read_text(encoding="utf-8")[:300_000], return_tensors="pt")["input_ids"][0]
    windows = ids[: len(ids) // 256 * 256].view(-1, 256)
    targets = windows[:, 1:].numel()
    for k in (2, 4, 8):
        share = float(goldfish.dropped(windows, k)[:, 1:].float().mean())
        se = math.sqrt((1 / k) * (1 - 1 / k) / targets)
        assert abs(share - 1 / k) < 4 * se, (k, share, se)


def test_k_zero_is_the_plain_loss_and_a_masked_target_has_no_gradient(model):
    x = _data().train_windows[:4]
    plain = compiled.causal_lm_loss(model, x)
    assert torch.equal(compiled.causal_lm_loss(model, x, goldfish.labels(x, 0)), plain)
    assert torch.equal(plain, model(input_ids=x, labels=x).loss)
    logits = model(input_ids=x).logits.detach().requires_grad_(True)
    labels = goldfish.labels(x, 4)
    loss = ForCausalLMLoss(logits, labels, vocab_size=VOCAB)
    loss.backward()
    dropped = goldfish.dropped(x, 4)
    # logits at position j - 1 predict target j: a dropped target's row has no gradient, the others do.
    rows = logits.grad[:, :-1].abs().sum(-1)
    assert torch.all(rows[dropped[:, 1:]] == 0) and torch.all(rows[~dropped[:, 1:]] > 0)
    # The loss is the plain per-token loss averaged over the kept targets only.
    each = torch.nn.functional.cross_entropy(logits.detach()[:, :-1].reshape(-1, VOCAB).float(), x[:, 1:].reshape(-1),
                                             reduction="none").view(4, BLOCK - 1)
    assert float(loss.detach()) == pytest.approx(float(each[~dropped[:, 1:]].mean()), rel=1e-5)


def test_heldout_loss_does_not_depend_on_goldfish_k(model):
    runs = {}
    for k in (0, 4):
        cfg = TrainConfig(lr=3e-3, epochs=1, batch_size=4, log_every=1, goldfish_k=k)
        m = copy.deepcopy(model)
        res = T.fit(cfg, m, _data(), None, Runtime(torch.device("cpu"), None), progress=False)
        # What fit recorded is the plain loss of the trained model, whatever k trained it.
        again = T.evaluate(m, _data().heldout_windows, 4, Runtime(torch.device("cpu"), None))
        assert res.heldout_curve[-1][1] == pytest.approx(again, rel=1e-6)
        runs[k] = res
    assert runs[0].heldout_curve[0] == runs[4].heldout_curve[0]  # the same model before training
    assert runs[0].train_curve[0][1] != runs[4].train_curve[0][1]  # the knob changed the objective


def test_the_compiled_step_takes_the_goldfish_labels(model, monkeypatch):
    compiled.reset()
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    try:
        x = _data().train_windows[:4]
        labels = goldfish.labels(x, 4)
        eager = copy.deepcopy(model)
        want = compiled.forward_backward(eager, x, "off", True, _no_autocast, labels)
        comp = copy.deepcopy(model)
        got = compiled.forward_backward(comp, x, "default", True, _no_autocast, labels)
        assert not compiled._BROKEN
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
        assert float(want.detach()) != pytest.approx(float(compiled.causal_lm_loss(model, x).detach()), rel=1e-4)
        for a, b in zip(eager.parameters(), comp.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    finally:
        compiled.reset()


def _no_autocast():
    import contextlib

    return contextlib.nullcontext()


def test_goldfish_settings_are_checked():
    from conftest import ROOT
    from gpt2ft.config import load_config
    from gpt2ft.errors import ConfigError

    with pytest.raises(ConfigError, match="train.goldfish_k must be 0"):
        load_config(overrides=["train.goldfish_k=1"])
    with pytest.raises(ConfigError, match="study.goldfish_k must list"):
        load_config(overrides=["study.goldfish_k=[0, 1]"])
    # demo.yaml's designs name no goldfish_k: with the knob searched they train with train.goldfish_k.
    demo = load_config(ROOT / "experiments" / "demo.yaml", ["study.goldfish_k=[0, 4]"])
    assert [d["goldfish_k"] for d in demo.study.designs(demo.train.goldfish_k)] == [0, 0, 0]
    assert "goldfish_k" not in load_config(ROOT / "experiments" / "demo.yaml").study.designs(0)[0]
    with pytest.raises(ConfigError, match=r"train.goldfish_k \(2\), which is not in study.goldfish_k \[0, 4\]"):
        load_config(ROOT / "experiments" / "demo.yaml", ["study.goldfish_k=[0, 4]", "train.goldfish_k=2"])
    with pytest.raises(ConfigError, match="outside the search space"):
        load_config(overrides=["study.enqueue=[{lr: 1.0e-5, epochs: 2, batch_size: 4, goldfish_k: 4}]"])
    c = load_config(overrides=["study.goldfish_k=[0, 4]",
                               "study.enqueue=[{lr: 1.0e-5, epochs: 2, batch_size: 4, goldfish_k: 4}]"])
    assert c.study.goldfish_k == [0, 4] and c.study.enqueue[0].goldfish_k == 4


@pytest.mark.usefixtures("shared_setup")
def test_a_study_searches_goldfish_k_and_export_retrains_a_goldfish_candidate(workdir, book, monkeypatch):
    """``study.goldfish_k: [0, 4]``: the param of every trial (trained and derived), a column of
    candidates.csv, a param of each trial's MLflow run; an exported goldfish candidate whose
    checkpoint is gone retrains to that checkpoint's very weights, and its card names the loss."""
    import json

    import optuna
    import pandas as pd
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    from conftest import TINY
    from gpt2ft import checkpoints as CK
    from gpt2ft.cli import main
    from test_derived import SHORT

    monkeypatch.setenv("GPT2FT_CORPUS", str(book))
    monkeypatch.setattr(CK.Checkpoints, "keep_only", lambda self, keep, finished: [])  # retention: tested apart
    sets = [*SHORT[:-1], "study.n_trials=2", "study.goldfish_k=[0, 4]",
            "study.enqueue=[{lr: 1.0e-3, epochs: 3, batch_size: 4, goldfish_k: 0},"
            " {lr: 1.0e-3, epochs: 3, batch_size: 4, goldfish_k: 4}]"]
    assert main(["study", "--config", str(TINY), "--quiet", "--yes", *[x for o in sets for x in ("--set", o)]]) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}")
    trials = study.get_trials()
    assert all("goldfish_k" in t.params for t in trials)
    derived = [t for t in trials if "derived_from" in t.user_attrs]
    assert derived and {t.params["goldfish_k"] for t in derived} == {0, 4}
    trained = {t.params["goldfish_k"]: t for t in trials if "derived_from" not in t.user_attrs}
    # Same rate, seed and windows: only the objective differs, so the paths part.
    assert trained[0].user_attrs["trajectory"][-1] != trained[4].user_attrs["trajectory"][-1]
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gpt2ft-tiny").experiment_id])
    kinds = {r.data.tags.get("gpt2ft.kind"): r for r in runs}
    trial_runs = [r for r in runs if r.data.tags.get("gpt2ft.kind") == "trial"]
    assert sorted(r.data.params["trial.goldfish_k"] for r in trial_runs) == ["0", "4"]
    assert {r.data.params["train.goldfish_k"] for r in trial_runs} == {"0", "4"}
    table = pd.read_csv(client.download_artifacts(kinds["study"].info.run_id, "candidates.csv", str(workdir)))
    assert set(table["goldfish_k"]) == {0, 4}
    fish = trained[4]
    ckpt = CK.Checkpoints(study.user_attrs["checkpoint_root"])
    interior = min(s for n, s in ckpt.saved() if n == fish.number)
    kept = load_file(ckpt.path(fish.number, interior) / "model.safetensors")
    ckpt.delete(fish.number, interior)
    assert main(["export", "--out", "fish", "--trial", str(fish.number), "--step", str(interior),
                 "--no-register", "--quiet"]) == 0
    assert json.loads((workdir / "fish" / "metrics.json").read_text())["retrained"] is True
    again = load_file(workdir / "fish" / "model.safetensors")
    assert all(torch.equal(kept[k], again[k]) for k in kept)
    card = (workdir / "fish" / "README.md").read_text()
    assert "goldfish_k=4" in card and "the goldfish loss" in card
