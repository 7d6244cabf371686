"""gpt2ft export: the retrain reaches its trial's own step in every evaluation setting, with the
config the trial trained with; the registry alias names the study's pick only; the model card
gives the exported point's own numbers."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2ft import export, lora
from gpt2ft.config import Config, SampleConfig, StudyConfig, TrainConfig
from gpt2ft.data import TokenData
from gpt2ft.model import Runtime, seed_everything
from gpt2ft.train import fit
from gpt2ft.trial import trial_train_config


def _assets(seed: int = 0) -> SimpleNamespace:
    """A tiny GPT-2 on random tokens: 24 training windows (6 steps an epoch at batch 4) that it
    learns by heart at a high rate, so its held-out loss soon rises and the early stop acts."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=48, n_positions=16, n_layer=1, n_embd=16, n_head=2,
                                      bos_token_id=0, eos_token_id=0))
    data = TokenData(train_windows=torch.randint(0, 48, (24, 12), generator=g),
                     heldout_windows=torch.randint(0, 48, (8, 12), generator=g),
                     train_ids=[], heldout_ids=[], block_size=12)
    # As Assets.fresh_model: a copy of the base, with a trial's adapters under train.method lora.
    return SimpleNamespace(fresh_model=lambda train=None: lora.adapt(copy.deepcopy(base), train) if train
                           else copy.deepcopy(base), data=data,
                           runtime=Runtime(torch.device("cpu"), None))


def _config(every_steps: int, eval_every: int) -> Config:
    return Config(train=TrainConfig(eval_every=eval_every, log_every=2, max_steps=None, seed=3),
                  sample=SampleConfig(every_steps=every_steps), study=StudyConfig(early_stop=True))


def _as_the_study_trains(config: Config, params: dict, assets) -> tuple[dict[int, dict], object]:
    """The trial as ``trial.run_trial`` trains it (its fit call: a point every
    ``sample.every_steps`` steps, or at every epoch's end), with each point's weights kept."""
    tcfg = trial_train_config(config, params)
    seed_everything(tcfg.seed)
    model = assets.fresh_model(tcfg)
    kept: dict[int, dict] = {}

    def point(step: int, epoch: float) -> bool:
        kept[step] = {k: v.clone() for k, v in model.state_dict().items()}
        return False

    result = fit(tcfg, model, assets.data, None, assets.runtime, progress=False, on_point=point,
                 point_every=config.sample.every_steps)
    kept[result.steps] = {k: v.clone() for k, v in model.state_dict().items()}
    return kept, result


#: sample.every_steps (0: a point at every epoch's end) x train.eval_every (3 and 4 divide the
#: 12 steps of two 6-step epochs) x the data's seed (under seed 1 a retrain that evaluated at
#: epoch ends only stopped at step 12 where the trial, measured every 2 or 4 steps, went on to 18).
GRID = [(every, ev, seed) for every in (0, 2, 4) for ev in (0, 3, 4) for seed in (0, 1)]


@pytest.mark.parametrize("every_steps, eval_every, seed", GRID)
def test_the_retrain_reaches_every_candidates_step_with_its_weights(every_steps, eval_every, seed):
    """Every measured point of a trial that stops early, retrained to its step: it gets there (the
    early stop compares the losses the trial compared) and holds the trial's weights, bitwise."""
    assets = _assets(seed)
    config = _config(every_steps, eval_every)
    params = {"lr": 1e-2, "epochs": 6, "batch_size": 4}
    kept, result = _as_the_study_trains(config, params, assets)
    assert result.stopped_early and result.steps < 36  # the setting this guards: the early stop acted
    for step, weights in kept.items():
        model, again = export.retrain(config, params, step, assets)
        assert again.steps == step, (every_steps, eval_every, step)
        state = model.state_dict()
        assert all(torch.equal(state[k], weights[k]) for k in weights), (every_steps, eval_every, step)


def test_a_lora_trials_retrain_reaches_every_points_adapter_and_merged_weights():
    """Issue 36: a LoRA trial (rank 4, study.lora_r's param) retrained to each measured point holds
    the trial's adapters there bitwise, so its merged weights (what the export writes) are the trial's."""
    assets = _assets(1)
    config = _config(4, 0)
    params = {"lr": 1e-2, "epochs": 2, "batch_size": 4, "lora_r": 4}
    kept, result = _as_the_study_trains(config, params, assets)
    assert any(".lora_A." in k for k in kept[result.steps]) and len(kept) > 2
    for step, weights in kept.items():
        model, again = export.retrain(config, params, step, assets)
        assert again.steps == step and lora.is_adapted(model)
        state = model.state_dict()
        assert all(torch.equal(state[k], weights[k]) for k in weights), step
    merged, plain = lora.merged_state(model), lora.merged(model).state_dict()  # the export's merge: the same bits
    assert merged.keys() == plain.keys() and all(torch.equal(v, plain[k]) for k, v in merged.items())


def test_one_evaluation_a_step_so_eval_every_dividing_an_epoch_keeps_the_early_stop():
    """eval_every 3 in a 6-step epoch evaluated each epoch's end twice; the second compared the
    loss with itself, the rise never counted and the trial ran all its epochs."""
    assets = _assets()
    config = _config(0, 3)
    tcfg = trial_train_config(config, {"lr": 1e-2, "epochs": 6, "batch_size": 4})
    seed_everything(tcfg.seed)
    result = fit(tcfg, assets.fresh_model(), assets.data, None, assets.runtime, progress=False)
    steps = [s for s, _ in result.heldout_curve]
    assert len(steps) == len(set(steps)), steps
    assert result.stopped_early and result.steps < 36


def test_export_retrains_with_the_config_its_trial_trained_with(monkeypatch):
    """A study resumed with other --set values trains its later trials under them: the retrain
    reads the trial's recorded config, not the one recorded when the study was created."""
    import yaml

    created, resumed = _config(0, 0), _config(2, 0)
    trial = SimpleNamespace(number=1, params={"lr": 1e-2, "epochs": 2, "batch_size": 4}, state=None,
                            user_attrs={"config_yaml": yaml.safe_dump(resumed.to_dict())})
    study = SimpleNamespace(study_name="s", user_attrs={"config_yaml": yaml.safe_dump(created.to_dict())},
                            get_trials=lambda deepcopy=False: [trial])
    assert export.trial_config_yaml(study, trial) == trial.user_attrs["config_yaml"]
    del trial.user_attrs["config_yaml"]  # a study of an older version: the study's own
    assert export.trial_config_yaml(study, trial) == study.user_attrs["config_yaml"]


@pytest.mark.usefixtures("shared_setup")
def test_a_resumed_studys_trial_is_retrained_under_its_own_settings(workdir, book, monkeypatch):
    """Created measuring at every epoch's end, resumed with a 5-step warm-up, sample.every_steps=4 and
    eval_every 6: the resumed trial records the config it trained with, and its interior candidate
    retrains to its step with the checkpoint's very weights (not the study's config: no warm-up)."""
    import json

    import optuna
    from safetensors.torch import load_file

    from conftest import TINY
    from gpt2ft import checkpoints as CK
    from gpt2ft.cli import main

    monkeypatch.setenv("GPT2FT_CORPUS", str(book))
    monkeypatch.setattr(CK.Checkpoints, "keep_only", lambda self, keep, finished: [])  # retention: tested apart
    base = ["--config", str(TINY), "--quiet", "--yes", "--set", "train.max_steps=12",
            "--set", "sample.final_n_samples=4",
            "--set", "study.enqueue=[{lr: 1.0e-3, epochs: 1, batch_size: 4}, {lr: 2.0e-3, epochs: 1, batch_size: 4}]"]
    assert main(["study", *base, "--set", "study.n_trials=1"]) == 0
    resumed = ["study.n_trials=2", "sample.every_steps=4", "train.warmup_steps=5", "train.eval_every=6"]
    assert main(["study", *base, *[x for o in resumed for x in ("--set", o)]]) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}")
    trial = next(t for t in study.trials if t.number == 1)
    assert "every_steps: 4" in trial.user_attrs["config_yaml"]
    assert "every_steps: 4" not in study.user_attrs["config_yaml"]
    ckpt = CK.Checkpoints(study.user_attrs["checkpoint_root"])
    interior = min(s for n, s in ckpt.saved() if n == 1)
    assert interior < 12
    kept = load_file(ckpt.path(1, interior) / "model.safetensors")
    ckpt.delete(1, interior)
    assert main(["export", "--out", "again", "--trial", "1", "--step", str(interior), "--no-register", "--quiet"]) == 0
    assert json.loads((workdir / "again" / "metrics.json").read_text())["retrained"] is True
    again = load_file(workdir / "again" / "model.safetensors")
    assert all(torch.equal(kept[k], again[k]) for k in kept)


# --- the registry alias and the card --------------------------------------------------------

@pytest.fixture
def exported_study(workdir, monkeypatch):
    """A literal study (tests/test_candidates.py's fakes): trial 0 measured at steps 4 and 8 of a
    3-epoch trial, step 4 eligible and selected, step 8 excluded by the memorization judge; both
    points' checkpoints kept (a tiny GPT-2)."""
    from test_candidates import FakeStudy, FakeTrial, pt

    from gpt2ft.checkpoints import Checkpoints
    from gpt2ft.config import ModelConfig
    from gpt2ft.model import load_model, load_tokenizer

    class Trial(FakeTrial):
        @property
        def user_attrs(self):
            return {**super().user_attrs, "mlflow_run_id": None}  # export logs to a run of its own

    trial = Trial(0, [pt(0, 0.37), pt(4, 0.531, mem=0.0), pt(8, 0.5595, mem=0.4)])
    study = FakeStudy([trial], checkpoint_root=str(workdir / "ck"))
    tok = load_tokenizer(ModelConfig(name="random-gpt2"))
    model = load_model(ModelConfig(name="random-gpt2", n_layer=1, n_embd=16, n_head=2), tok, block_size=32)
    for step in (4, 8):
        model.save_pretrained(Checkpoints(workdir / "ck").path(0, step))
        tok.save_pretrained(Checkpoints(workdir / "ck").path(0, step))
    monkeypatch.setattr(export, "load_study", lambda url, name: study)
    return workdir


def test_an_excluded_candidate_is_registered_without_the_champion_alias(exported_study, capsys):
    import json

    from mlflow.tracking import MlflowClient

    from gpt2ft.cli import main
    from gpt2ft.tracking import resolve_uri

    assert main(["export", "--out", "pick", "--quiet"]) == 0
    client = MlflowClient(tracking_uri=resolve_uri())
    assert str(client.get_model_version_by_alias("gpt2ft-fake", "champion").version) == "1"
    capsys.readouterr()
    assert main(["export", "--out", "named", "--trial", "0", "--step", "8", "--quiet"]) == 0
    said = capsys.readouterr()
    assert "trial 0 at step 8 is excluded by the memorization judge (memorization 0.4 > 0.02)" in said.err
    assert "version 2, without alias 'champion'" in said.out
    assert str(client.get_model_version_by_alias("gpt2ft-fake", "champion").version) == "1"  # still the pick
    assert json.loads((exported_study / "named" / "metrics.json").read_text())["excluded_by"] == ["memorization"]


def test_the_model_card_gives_the_picked_points_numbers_and_epochs(exported_study):
    """The pick is step 4 of a 3-epoch trial (epoch 1): its card and metrics.json give epoch 1's
    hyperparameters and step 4's numbers, not the trial's end (0.5595)."""
    import json

    from gpt2ft.cli import main

    assert main(["export", "--out", "pick", "--quiet", "--no-register"]) == 0
    meta = json.loads((exported_study / "pick" / "metrics.json").read_text())
    assert (meta["step"], meta["epoch"], meta["params"]["epochs"], meta["trial_params"]["epochs"]) == (4, 1.0, 1, 3)
    assert meta["metrics"]["top100_ratio"] == 0.531
    card = (exported_study / "pick" / "README.md").read_text()
    assert "epochs=1" in card and "epochs=3" not in card
    assert "| top100_ratio | 0.531 |" in card and "0.5595" not in card


def test_a_retrain_off_the_cpu_says_its_weights_are_close_not_equal(tmp_path, monkeypatch, capsys):
    """Bitwise retrain is a CPU promise: on CUDA, nondeterministic kernels make a retrained point
    close to the measured one. The retrain says so and records its held-out loss beside the
    measured one (on a CPU it records bitwise: true)."""
    import json

    import yaml

    from gpt2ft.train import FitResult

    model = GPT2LMHeadModel(GPT2Config(vocab_size=48, n_positions=16, n_layer=1, n_embd=16, n_head=2,
                                       bos_token_id=0, eos_token_id=0))
    fitted = FitResult(steps=8, heldout_curve=[(0, 4.0), (8, 3.9012)])
    monkeypatch.setattr(export, "retrain", lambda config, params, step, assets, progress=False: (model, fitted))
    # The step timed before the retrain (its estimate) would need the device itself.
    monkeypatch.setattr(export, "seconds_per_step", lambda model, tcfg, windows, runtime: 0.25)
    info = {"config_yaml": yaml.safe_dump(Config().to_dict()), "corpus": "x", "step": 8,
            "params": {"lr": 1e-4, "epochs": 3, "batch_size": 4}, "metrics": {"heldout_loss": 3.9}}
    args = SimpleNamespace(corpus=None, quiet=True)
    for device, bitwise in (("cuda", False), ("cpu", True)):
        monkeypatch.setattr(export, "prepare", lambda *a, **k: SimpleNamespace(
            runtime=Runtime(torch.device(device), None), tokenizer=SimpleNamespace(save_pretrained=lambda f: None),
            fresh_model=lambda train=None: model, data=SimpleNamespace(train_windows=None)))
        folder = tmp_path / device
        folder.mkdir()
        done = export._retrain(info, folder, args)
        assert json.loads((folder / "retrained.json").read_text()) == done
        assert (done["device"], done["bitwise"], done["heldout_loss"], done["measured_heldout_loss"]) == (
            device, bitwise, 3.9012, 3.9)
        card = export.model_card({**info, "study_name": "s", "number": 0, "reason": "Named", "references": {}},
                                 done)
        assert ("close to, not equal to, the measured ones" in card) is (not bitwise)
    err = capsys.readouterr().err
    assert "retrained on cuda: nondeterministic kernels" in err
    assert "retraining 8 steps takes about 2 s on cuda (one step timed: 0.25 s)" in err
