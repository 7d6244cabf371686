"""Issue 36: LoRA beside full fine-tuning (``train.method``, ``gpt2ft.lora``). Rank 0 trains as full
fine-tuning always did; a rank trains the adapters only; every reader after training (the sampling
copy, a reloaded checkpoint, the export) sees the adapters merged, and the exported folder loads in
plain ``transformers`` where peft cannot even be imported."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch

from conftest import TINY
from gpt2ft import lora
from gpt2ft.config import Config, DataConfig, ModelConfig, TrainConfig, load_config
from gpt2ft.data import TokenData
from gpt2ft.model import Runtime, base_model, load_tokenizer, seed_everything
from gpt2ft.train import fit
from gpt2ft.trial import trial_train_config

CPU = Runtime(torch.device("cpu"), None)


@pytest.fixture(scope="module")
def tiny():
    """tiny.yaml's model (random 2-layer GPT-2, GPT-2's 50,257 tokens) on 16 random 32-token windows."""
    config = load_config(TINY, ["train.max_steps=3", "train.log_every=1", "train.eval_batches=1"])
    tok = load_tokenizer(config.model, config.data.cache_dir)
    g = torch.Generator().manual_seed(0)
    data = TokenData(train_windows=torch.randint(0, len(tok), (16, 32), generator=g),
                     heldout_windows=torch.randint(0, len(tok), (4, 32), generator=g),
                     train_ids=[], heldout_ids=[], block_size=32)
    return config, tok, base_model(config, tok), data


def _train(tiny, params: dict):
    """A study trial's training with ``params``, as ``trial.run_trial`` sets it up (seed, then the copy)."""
    config, _, base, data = tiny
    tcfg = trial_train_config(config, params)
    seed_everything(tcfg.seed)
    model = lora.adapt(copy.deepcopy(base), tcfg)
    return model, fit(tcfg, model, data, None, CPU, progress=False), tcfg


@pytest.fixture(scope="module")
def adapted(tiny):
    """A rank-8 trial of tiny.yaml's model after its three steps, and its training settings."""
    model, res, tcfg = _train(tiny, {"lr": 1e-2, "epochs": 1, "batch_size": 2, "lora_r": 8})
    return model, res, tcfg


def test_rank_0_trains_exactly_as_full_fine_tuning_did(tiny, monkeypatch):
    """study.lora_r 0 is train.method full, and the optimizer change (trainable parameters only)
    leaves it bitwise: the same losses and weights as AdamW over model.parameters(), the code before."""
    from gpt2ft import train as T

    params = {"lr": 1e-3, "epochs": 1, "batch_size": 2}
    model, res, tcfg = _train(tiny, {**params, "lora_r": 0})
    assert tcfg == trial_train_config(tiny[0], params) and tcfg.method == "full" and not lora.is_adapted(model)

    def before(model, cfg, runtime):
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    monkeypatch.setattr(T, "make_optimizer", before)
    old, old_res, _ = _train(tiny, params)
    assert res.train_curve == old_res.train_curve and res.heldout_curve == old_res.heldout_curve
    assert len(res.train_curve) == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), old.state_dict().values()))


def test_a_rank_trains_only_the_adapters_of_every_block_linear_layer(tiny, adapted):
    base = tiny[2]
    model, res, tcfg = adapted
    assert (tcfg.method, tcfg.lora_r) == ("lora", 8) and lora.is_adapted(model) and res.steps == 3
    # The default targets: GPT-2's attention and MLP Conv1D layers, not the output layer.
    adapted = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"c_attn", "c_proj", "c_fc"}
    assert not hasattr(model.get_base_model().lm_head, "lora_A")
    assert lora.trainable(model) == model.get_nb_trainable_parameters()[0] == 2 * (
        8 * (64 + 192) + 8 * (64 + 64) + 8 * (64 + 256) + 8 * (256 + 64))
    before = base.state_dict()
    after = {k.replace(".base_layer.", "."): v for k, v in model.get_base_model().state_dict().items()
             if ".lora_" not in k}
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # B starts at 0


def test_the_goldfish_loss_trains_the_adapters_too():
    """train.goldfish_k with train.method lora: the masked loss reaches the adapters alone."""
    from test_export import _assets

    assets, curves = _assets(0), {}
    for k in (0, 4):
        cfg = TrainConfig(lr=1e-2, epochs=1, batch_size=4, log_every=1, method="lora", lora_r=4, goldfish_k=k)
        seed_everything(cfg.seed)
        model = assets.fresh_model(cfg)
        curves[k] = fit(cfg, model, assets.data, None, CPU, progress=False).train_curve
        assert lora.is_adapted(model) and not any(p.requires_grad for n, p in model.named_parameters()
                                                  if "lora_" not in n)
    assert len(curves[4]) == 6 and curves[4] != curves[0]


def test_all_linear_on_a_llama_block_adapts_its_seven_layers_not_the_output_layer():
    """The offline stand-in SmolLM2 is a Llama: its default targets are q/k/v/o and gate/up/down."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    adapted = lora.adapt(model, TrainConfig(method="lora", lora_r=2))
    names = {name.rsplit(".", 1)[-1] for name, m in adapted.named_modules() if hasattr(m, "lora_A")}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert adapted.peft_config["default"].lora_alpha == 4  # lora_alpha null: 2 x r


def test_targets_that_name_no_layer_are_one_sentence(tiny):
    from gpt2ft.errors import UserError

    with pytest.raises(UserError, match=r"lora_target_modules \['q_proj'\] do not name layers of GPT2LMHeadModel"):
        lora.adapt(copy.deepcopy(tiny[2]), TrainConfig(method="lora", lora_target_modules=["q_proj"]))


def test_the_sampling_copy_and_a_reloaded_checkpoint_hold_the_merged_weights(tiny, adapted, tmp_path):
    """What the judges decode with and what a re-measure reloads are the plain model with
    W + s B A, the bits merge_and_unload makes; the checkpoint keeps the adapter alone."""
    from gpt2ft.checkpoints import Checkpoints
    from gpt2ft.sampler import Sampler

    model = copy.deepcopy(adapted[0])
    expect = lora.merged(copy.deepcopy(model)).state_dict()
    sampler = Sampler(None)
    decoder = sampler.weights_of(model)
    assert decoder is not model and not lora.is_adapted(decoder)
    assert all(torch.equal(decoder.state_dict()[k], v) for k, v in expect.items())
    bf16 = Sampler(torch.bfloat16).weights_of(model)
    assert all(torch.equal(bf16.state_dict()[k], v.to(torch.bfloat16)) for k, v in expect.items())
    with torch.no_grad():  # trained further: the same copy, updated in place
        next(p for n, p in model.named_parameters() if "lora_B" in n).add_(1.0)
    assert sampler.weights_of(model) is decoder
    assert not all(torch.equal(decoder.state_dict()[k], v) for k, v in expect.items())

    ck = Checkpoints(tmp_path)
    ck.save(0, 4, model, tiny[1])
    files = {p.name for p in ck.path(0, 4).iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files and "model.safetensors" not in files
    adapter = (ck.path(0, 4) / "adapter_model.safetensors").stat().st_size
    assert adapter < 0.05 * sum(p.numel() * 4 for p in tiny[2].parameters())
    with pytest.raises(ValueError, match="needs the base model"):
        ck.load(0, 4, CPU)
    again = ck.load(0, 4, CPU, base=lambda: copy.deepcopy(tiny[2]))
    merged = lora.merged_state(model)
    assert not lora.is_adapted(again) and all(torch.equal(again.state_dict()[k], v) for k, v in merged.items())


#: In the loading process peft cannot be imported at all (sys.modules' None makes any import fail).
_LOAD_WITHOUT_PEFT = """
import json, sys
sys.modules["peft"] = None
from transformers import pipeline
from transformers.utils import is_peft_available
generate = pipeline("text-generation", model=sys.argv[1])
ids = generate.tokenizer("The", return_tensors="pt").input_ids
out = generate.model.generate(ids, max_new_tokens=12, do_sample=False)
text = generate("The", max_new_tokens=12, do_sample=False)[0]["generated_text"]
print(json.dumps({"peft": is_peft_available(), "tokens": out[0].tolist(), "text": text}))
"""


@pytest.mark.usefixtures("shared_setup")
def test_an_exported_lora_candidate_loads_without_peft_and_decodes_as_the_study_did(workdir, monkeypatch):
    """The export merges the adapter into whole weights; a process where peft cannot be imported
    loads them with pipeline() and decodes greedily the tokens the trial's measurements decoded
    (the merged sampling copy) and those of the adapted model itself."""
    import yaml

    from test_candidates import FakeStudy, FakeTrial, pt

    from gpt2ft import export
    from gpt2ft.checkpoints import Checkpoints
    from gpt2ft.cli import main
    from gpt2ft.sampler import Sampler

    config = Config(model=ModelConfig(name="random-gpt2", n_layer=1, n_embd=16, n_head=2),
                    data=DataConfig(block_size=64), train=TrainConfig(method="lora", lora_r=4, seed=5))
    tok = load_tokenizer(config.model)
    model = lora.adapt(base_model(config, tok), config.train)
    with torch.no_grad():  # a trained adapter: B away from its zeros
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    Checkpoints(workdir / "ck").save(0, 4, model, tok)
    trial = FakeTrial(0, [pt(0, 0.37), pt(4, 0.531)], params={"lr": 1e-3, "epochs": 1, "batch_size": 4})
    study = FakeStudy([trial], checkpoint_root=str(workdir / "ck"), config_yaml=yaml.safe_dump(config.to_dict()))
    monkeypatch.setattr(export, "load_study", lambda url, name: study)
    assert main(["export", "--out", "pick", "--quiet", "--no-register"]) == 0
    folder = workdir / "pick"
    assert (folder / "model.safetensors").is_file() and not (folder / "adapter_config.json").exists()
    assert "Method: LoRA through peft (lora_r=4, lora_alpha=8" in (folder / "README.md").read_text()
    done = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_PEFT, str(folder)], capture_output=True, text=True,
                          check=True)
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    ids = tok("The", return_tensors="pt").input_ids
    model.eval()  # GPT-2's dropout off, as every measurement decodes
    with torch.no_grad():
        measured = Sampler(None).weights_of(model).generate(ids, max_new_tokens=12, do_sample=False)[0].tolist()
        adapted = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)[0].tolist()
    assert loaded["peft"] is False and len(loaded["tokens"]) == ids.shape[1] + 12
    assert loaded["tokens"] == measured == adapted
    assert loaded["text"] == tok.decode(measured)


def test_demo_lora_runs_the_demos_designs_for_each_method_at_its_own_rates():
    from conftest import ROOT

    c = load_config(ROOT / "experiments" / "demo_lora.yaml")
    designs = c.study.designs(c.train.goldfish_k, c.train.rank)
    assert [d["lora_r"] for d in designs] == [0] * 3 + [8] * 3 + [64] * 3 and c.study.n_trials == 9
    assert [d["epochs"] for d in designs] == [2, 3, 8] * 3
    for d in designs:
        r = c.study.lr_range(d["lora_r"])
        assert r.low <= d["lr"] <= r.high and (r is c.study.lora_lr) == (d["lora_r"] > 0)
