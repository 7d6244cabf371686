"""Every experiment file loads; defaults follow the method; bad values are ConfigErrors."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gpt2ft.config import (Config, ConfigError, DataConfig, FloatRange, IntRange, StudyConfig,
                           TrainConfig, load_config)
from gpt2ft.configio import parse_override

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
GULLIVER = ROOT / "experiments" / "gulliver.yaml"


def test_experiment_files_exist():
    names = {p.name for p in EXPERIMENTS}
    assert {"gulliver.yaml", "tiny.yaml"} <= names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_file_loads_and_validates(path):
    config = load_config(path)
    assert isinstance(config, Config)
    # Every section is its frozen dataclass, not a raw dict that skipped validation.
    for f in dataclasses.fields(config):
        section = getattr(config, f.name)
        assert dataclasses.is_dataclass(section), f.name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(section, dataclasses.fields(section)[0].name, None)
    assert isinstance(config.study.lr, FloatRange) and isinstance(config.study.epochs, IntRange)
    assert config.study.lr.low <= config.study.lr.high
    assert config.study.epochs.low <= config.study.epochs.high
    # A file's own values survive a reload of its dict (what a saved config.yaml would hold).
    assert load_config(path).to_dict() == config.to_dict()


def test_method_defaults():
    """The method: batch 16, block 256, 10 samples of 100 new tokens, top-100 set, 8-grams."""
    g = load_config(GULLIVER)
    assert g.train.batch_size == 16
    assert g.data.block_size == 256
    assert g.sample.n_samples == 10
    assert g.sample.new_tokens == 100
    assert g.metrics.top_k == 100
    assert g.metrics.ngram == 8
    assert g.model.name == "gpt2"
    # The dataclass defaults say the same, so a partial config file still follows the method.
    d = Config()
    assert (d.train.batch_size, d.data.block_size) == (16, 256)
    assert (d.sample.n_samples, d.sample.new_tokens) == (10, 100)
    assert (d.metrics.top_k, d.metrics.ngram) == (100, 8)
    assert load_config(None) == d


def test_override_float_without_dot_is_a_float():
    # PyYAML reads "3e-5" (no dot) as a string; the loader must still make it a float.
    assert parse_override("train.lr=3e-5")[0] == "train.lr"
    c = load_config(GULLIVER, ["train.lr=3e-5"])
    assert isinstance(c.train.lr, float) and c.train.lr == pytest.approx(3e-5)
    c = load_config(None, ["train.epochs=3", "train.max_steps=7", "model.name=smollm2"])
    assert (c.train.epochs, c.train.max_steps, c.model.name) == (3, 7, "smollm2")
    assert isinstance(c.train.epochs, int)


def test_override_part_of_a_range_keeps_the_rest():
    base = load_config(GULLIVER)
    c = load_config(GULLIVER, ["study.lr.low=1e-5"])
    assert c.study.lr.low == pytest.approx(1e-5)
    assert c.study.lr.high == base.study.lr.high
    assert c.study.lr.log == base.study.lr.log
    # Also from the defaults, with no file at all.
    c = load_config(None, ["study.lr.low=1e-5"])
    assert c.study.lr.high == StudyConfig().lr.high
    # The other sections are untouched by an override.
    assert c.train == TrainConfig()


def test_override_null_means_none():
    c = load_config(GULLIVER, ["train.max_steps=null"])
    assert c.train.max_steps is None


@pytest.mark.parametrize("yaml_text, overrides, key", [
    ("bogus: 1\n", [], "bogus"),
    ("train:\n  learning_rate: 0.1\n", [], "train.learning_rate"),
    ("study:\n  lr: {low: 1.0e-5, high: 1.0e-4, middle: 3.0e-5}\n", [], "study.lr.middle"),
    ("", ["train.learning_rate=0.1"], "train.learning_rate"),
    ("", ["study.epochs.mid=3"], "study.epochs.mid"),
    ("", ["nosection.key=1"], "nosection"),
], ids=["top-level", "nested", "in-range", "override-nested", "override-range", "override-top"])
def test_unknown_keys_are_errors_naming_the_key(tmp_path, yaml_text, overrides, key):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert re.search(rf"\b{re.escape(key)}\b", str(info.value)), str(info.value)


@pytest.mark.parametrize("override, names", [
    ("train.lr=0", "train.lr"),
    ("train.lr=-1e-5", "train.lr"),
    ("train.lr=1", "train.lr"),
    ("train.lr=1.5", "train.lr"),
    ("train.epochs=0", "train.epochs"),
    ("train.epochs=-2", "train.epochs"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.device=tpu", "train.device"),
    ("train.precision=fp16", "train.precision"),
    ("study.pick_rule=best", "study.pick_rule"),
    ("train.lr=fast", "train.lr"),
    ("train.epochs=2.5", "train.epochs"),
    ("train.epochs=.inf", "train.epochs must be an integer, got inf."),  # int(inf) raised OverflowError
    ("train.max_steps=.nan", "train.max_steps must be an integer, got nan."),
    ("train.lr=true", "train.lr must be a number, got True."),
    ("data.block_size=4", "data.block_size"),
    ("train.max_steps=0", "train.max_steps"),
    ("study.batch_size=[]", "study.batch_size"),
    ("study.max_failures=0", "study.max_failures"),
    ("sample.new_tokens=4", "sample.new_tokens (4) must be at least metrics.ngram (8)"),
    ("data.block_size=48", "metrics.extraction_prefix + extraction_tokens (64) must fit in data.block_size (48)"),
], ids=lambda v: v if "=" in v else "")
def test_out_of_range_values_are_errors(override, names):
    with pytest.raises(ConfigError) as info:
        load_config(GULLIVER, [override])
    assert names in str(info.value)


def test_unmeasurable_samples_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """Samples shorter than the memorization n-gram could never be measured, so every trial would
    fail after training: the study refuses them in one sentence, exit 2, before any store exists."""
    from gpt2ft.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["study", "--config", str(ROOT / "experiments" / "tiny.yaml"), "--set", "sample.new_tokens=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gpt2ft: error: sample.new_tokens (2) must be at least metrics.ngram (8), since memorization "
                   "counts 8-token spans of each sample."]
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("overrides, where", [
    (["study.lr.low=1e-3", "study.lr.high=1e-4"], "study.lr"),
    (["study.epochs.low=5", "study.epochs.high=2"], "study.epochs"),
])
def test_range_low_above_high_is_an_error(overrides, where):
    with pytest.raises(ConfigError) as info:
        load_config(GULLIVER, overrides)
    message = str(info.value)
    assert message.startswith(where) and "above" in message


def test_range_equal_bounds_is_allowed():
    c = load_config(GULLIVER, ["study.epochs.low=3", "study.epochs.high=3"])
    assert c.study.epochs == IntRange(3, 3)


@pytest.mark.parametrize("build", [
    lambda: TrainConfig(lr=0.0),
    lambda: TrainConfig(lr=1.0),
    lambda: TrainConfig(epochs=0),
    lambda: TrainConfig(batch_size=0),
    lambda: TrainConfig(device="gpu"),
    lambda: TrainConfig(precision="half"),
    lambda: StudyConfig(pick_rule="random"),
    lambda: StudyConfig(lr=FloatRange(1e-3, 1e-4)),
    lambda: StudyConfig(epochs=IntRange(0, 2)),
    lambda: DataConfig(heldout_every=1),
], ids=["lr0", "lr1", "epochs0", "batch0", "device", "precision", "pick_rule", "lr-range",
        "epochs-range", "heldout_every"])
def test_dataclasses_validate_on_construction(build):
    with pytest.raises(ConfigError):
        build()


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  name: gpt2\ntrain:\n  lr: [0.1, 0.2\n  epochs: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "not valid YAML" in message
    line = re.search(r"line (\d+)", message)
    assert line is not None, message
    assert 4 <= int(line.group(1)) <= 6  # the unclosed list starts on line 4


def test_yaml_that_is_not_a_mapping_is_an_error(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError):
        load_config(None, ["train.lr"])


def test_section_given_a_scalar_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="train"):
        load_config(path)


def test_flat_keys_are_dotted():
    flat = load_config(GULLIVER).flat()
    assert flat["train.lr"] == pytest.approx(2e-5)
    assert flat["data.block_size"] == 256
    assert flat["study.lr.low"] == pytest.approx(1e-6)
    assert flat["study.epochs.high"] == 10
    assert flat["study.batch_size"] == [4, 8, 16, 32]
    for key, value in flat.items():
        assert "." in key, key
        assert not isinstance(value, dict), key
    sections = {k.split(".")[0] for k in flat}
    assert sections == {f.name for f in dataclasses.fields(Config)}


@pytest.mark.parametrize("value, expect", [("off", "off"), ("default", "default"),
                                           ("reduce-overhead", "reduce-overhead")])
def test_train_compile_modes_load(value, expect):
    # A bare `off` is a YAML boolean; it must still mean the mode "off".
    assert load_config(GULLIVER, [f"train.compile={value}"]).train.compile == expect


@pytest.mark.parametrize("value", ["on", "max-autotune", "true"])
def test_train_compile_bad_value_is_one_sentence(value):
    with pytest.raises(ConfigError) as info:
        load_config(GULLIVER, [f"train.compile={value}"])
    message = str(info.value)
    assert message.startswith("train.compile must be off, default or reduce-overhead")
    assert message.count(". ") == 0 and message.endswith(".")
