"""The joints between the parts: the trial table and the re-measure, sampling, the retrain's
settings, the bootstrap's definition and the knee's ties. Each test here fails when one line
of the wiring changes meaning."""
from __future__ import annotations

import dataclasses

import datetime as dt
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from gpt2ft import metrics as M
from gpt2ft import pick as P
from gpt2ft.config import Config, StudyConfig, TrainConfig
from gpt2ft.summary import summarize
from gpt2ft.trial import EARLY_STOP_PATIENCE, trial_train_config


@dataclass
class FakeTrial:
    number: int
    metrics: dict[str, float]
    state: Any = field(default_factory=lambda: SimpleNamespace(name="COMPLETE"))
    params: dict[str, Any] = field(default_factory=lambda: {"lr": 1e-4, "epochs": 1, "batch_size": 4})
    duration: Any = dt.timedelta(seconds=1)

    @property
    def user_attrs(self) -> dict[str, Any]:
        return {"metrics": self.metrics}


class FakeStudy:
    def __init__(self, trials, **attrs):
        self.trials, self.user_attrs = trials, attrs

    def get_trials(self, deepcopy=False):
        return list(self.trials)


def _study(**attrs) -> FakeStudy:
    trials = [FakeTrial(0, {"top100_ratio": 0.55, "memorization": 0.0}),
              FakeTrial(1, {"top100_ratio": 0.60, "memorization": 0.0})]
    return FakeStudy(trials, references={"book_top100_ratio": 0.55}, memorization_bound=0.02,
                     pick_rule="bounded_style", **attrs)


def test_trial_table_uses_the_remeasure_and_it_can_change_the_pick():
    assert summarize(_study()).pick.number == 0
    # Trial 0's ten samples looked like the book; forty more say it is further off than trial 1.
    summary = summarize(_study(final_trial_0={"top100_ratio": 0.70, "memorization": 0.0, "n_samples": 40}))
    assert summary.pick.number == 1
    row = summary.trial(0)
    assert row["top100_ratio"] == 0.70 and row["remeasured"]
    assert row["style_score"] == pytest.approx(-0.15)
    assert bool(summary.table.set_index("number").loc[1, "selected"])


def test_trial_table_style_is_the_distance_not_the_ratio():
    table = summarize(_study()).table.set_index("number")
    assert table.loc[1, "style_score"] == pytest.approx(-abs(0.60 - 0.55))
    assert "style" not in table.columns  # one name, one meaning


def test_export_retrains_with_the_trials_own_settings():
    """The bug this guards: export built its own TrainConfig without the study's early stop."""
    config = Config(train=TrainConfig(early_stop_patience=0), study=StudyConfig(early_stop=True))
    tcfg = trial_train_config(config, {"lr": 3e-4, "epochs": 5, "batch_size": 8})
    assert (tcfg.lr, tcfg.epochs, tcfg.batch_size) == (3e-4, 5, 8)
    assert tcfg.early_stop_patience == EARLY_STOP_PATIENCE
    off = Config(train=TrainConfig(early_stop_patience=0), study=StudyConfig(early_stop=False))
    assert trial_train_config(off, {"lr": 3e-4, "epochs": 5, "batch_size": 8}).early_stop_patience == 0


def test_export_retrain_calls_fit_with_trial_train_config(monkeypatch, tmp_path):
    import yaml

    from gpt2ft import export
    from gpt2ft import trial as trial_module

    seen = {}
    config = Config(study=StudyConfig(early_stop=True))

    def fake_fit(cfg, model, data, on_metrics, runtime, progress=True, point_every=0):
        seen["cfg"], seen["point_every"] = cfg, point_every
        raise RuntimeError("stop here")

    monkeypatch.setattr(trial_module, "fit", fake_fit)  # export retrains through trial.retrain
    monkeypatch.setattr(export, "prepare", lambda *a, **k: SimpleNamespace(
        fresh_model=lambda train=None: None, data=SimpleNamespace(train_windows=None),
        runtime=SimpleNamespace(device=torch.device("cpu"))))
    monkeypatch.setattr(export, "seconds_per_step", lambda *a: 0.1)  # the estimate's one timed step
    info = {"config_yaml": yaml.safe_dump(config.to_dict()), "params": {"lr": 1e-4, "epochs": 3, "batch_size": 2},
            "corpus": "x", "step": 7}
    with pytest.raises(RuntimeError, match="stop here"):
        export._retrain(info, tmp_path, SimpleNamespace(corpus=None, quiet=True))
    # The trial's own settings, stopped at the candidate's step and without early stop (the trial
    # went on past that step, so a stop could only cut the retrain short).
    assert trial_train_config(config, info["params"]).early_stop_patience == EARLY_STOP_PATIENCE
    assert seen["cfg"] == dataclasses.replace(trial_train_config(config, info["params"]), max_steps=7,
                                              early_stop_patience=0)
    assert seen["point_every"] == config.sample.every_steps  # held-out loss where the trial evaluated it


def test_sample_gives_exactly_new_tokens_without_eos_from_bos():
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2ft.generate import sample
    from gpt2ft.model import Runtime

    torch.manual_seed(0)
    vocab, eos = 40, 7
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=vocab, n_positions=64,
                                       bos_token_id=eos, eos_token_id=eos))
    # Make EOS by far the likeliest token: only the ban keeps it out.
    with torch.no_grad():
        model.lm_head.weight[eos] += 5.0
    prompts = []
    original = model.generate

    def spy(*args, **kwargs):
        prompts.append(kwargs["input_ids"].clone())
        return original(*args, **kwargs)

    model.generate = spy
    tok = SimpleNamespace(bos_token_id=eos, eos_token_id=eos)
    out = sample(model, tok, Runtime(torch.device("cpu"), None), n=3, new_tokens=25, seed=1)
    assert [len(s) for s in out] == [25, 25, 25]
    assert all(eos not in s for s in out)
    assert prompts[0].tolist() == [[eos]] * 3


def test_bootstrap_se_is_the_ddof1_std_of_n_boot_whole_sequence_resamples():
    samples = [[1], [2], [4], [8], [16]]
    calls = []

    def stat(s):
        calls.append(1)
        return float(np.mean([x[0] for x in s]))

    se = M.bootstrap_se(samples, stat, n_boot=37, seed=5)
    assert len(calls) == 37
    rng = np.random.default_rng(5)
    reps = [np.mean([samples[i][0] for i in rng.integers(0, 5, size=5)]) for _ in range(37)]
    assert se == pytest.approx(float(np.std(reps, ddof=1)))
    assert se != pytest.approx(float(np.std(reps, ddof=0)))


def test_knee_ties_within_tolerance_go_to_the_lower_trial_number():
    # Two interior points whose normalised scores differ by rounding only (< 1e-9) tie.
    rows = [P.TrialRow(0, -0.30, 0.00), P.TrialRow(3, -0.10, 0.50), P.TrialRow(1, -0.10 - 1e-12, 0.50 - 1e-12),
            P.TrialRow(2, 0.00, 1.00)]
    assert P.pick(rows, "knee", memorization_bound=1.0).number == 1
    # A real difference (1e-3) is not a tie: the better point wins despite its higher number.
    rows = [P.TrialRow(0, -0.30, 0.00), P.TrialRow(1, -0.10, 0.50), P.TrialRow(3, -0.099, 0.50),
            P.TrialRow(2, 0.00, 1.00)]
    assert P.pick(rows, "knee", memorization_bound=1.0).number == 3
    assert math.isfinite(P.style_score(0.5, 0.55))


def test_trial_table_marks_degenerate_text_and_the_pick_skips_it():
    trials = [FakeTrial(0, {"top100_ratio": 0.55, "memorization": 0.0, "distinct_2": 0.20, "repetition_4": 0.6}),
              FakeTrial(1, {"top100_ratio": 0.60, "memorization": 0.0, "distinct_2": 0.85, "repetition_4": 0.01})]
    study = FakeStudy(trials, references={"book_top100_ratio": 0.55, "book_distinct_2": 0.89,
                                          "book_repetition_4": 0.004},
                      memorization_bound=0.02, pick_rule="bounded_style", degenerate_factor=1.5,
                      repetition_floor=0.15)
    summary = summarize(study)
    table = summary.table.set_index("number")
    assert table.loc[0, "degenerate"] and "distinct_2" in table.loc[0, "degenerate_why"]
    assert not table.loc[0, "eligible"] and table.loc[1, "eligible"]
    assert summary.pick.number == 1  # trial 0 reads exactly like the book, but loops
    assert "degenerate" in summary.pick.reason
    # The study's recorded factor is the one applied: at 5x the same text passes.
    study.user_attrs["degenerate_factor"] = 5.0
    study.user_attrs["repetition_floor"] = 0.7
    assert summarize(study).pick.number == 0


def test_enqueued_trials_must_lie_in_the_search_space():
    from gpt2ft.config import ConfigError, load_config

    ok = load_config(None, ["study.enqueue=[{lr: 1e-4, epochs: 2, batch_size: 16}]"])
    assert ok.study.enqueue[0].epochs == 2
    with pytest.raises(ConfigError, match=r"enqueue\[0\].*outside the search space"):
        load_config(None, ["study.enqueue=[{lr: 1e-4, epochs: 2, batch_size: 3}]"])


def test_degenerate_rule_falls_back_to_the_training_texts_diversity():
    """A held-out part too short for one sample-sized draw leaves book_distinct_2 NaN; the
    training text (the same prose) stands in, so the guard still judges distinct_2."""
    trials = [FakeTrial(0, {"top100_ratio": 0.55, "memorization": 0.0, "distinct_2": 0.50, "repetition_4": 0.01})]
    refs = {"book_top100_ratio": 0.55, "book_distinct_2": math.nan, "train_distinct_2": 0.89,
            "train_repetition_4": 0.006}
    study = FakeStudy(trials, references=refs, memorization_bound=0.02, pick_rule="bounded_style")
    row = summarize(study).trial(0)
    assert row["degenerate"] and "0.5" in row["degenerate_why"]
    refs["train_distinct_2"] = math.nan  # nothing to judge by: not flagged
    assert not summarize(study).trial(0)["degenerate"]


def _tiny_lm(vocab: int, seed: int, sharpness: float):
    """A 1-layer GPT-2 over GPT-2's vocabulary; a large ``sharpness`` makes it confident, so its
    samples repeat themselves and can be copied."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=128, n_layer=1, n_embd=16, n_head=2,
                                       bos_token_id=vocab - 1, eos_token_id=vocab - 1))
    with torch.no_grad():
        model.transformer.wte.weight.mul_(sharpness)
    return model.eval()


@pytest.fixture
def one_torch_thread():
    """A tiny model beside busy neighbours: two OpenMP threads make each small op ~10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_a_measurement_keeps_the_values_of_the_unbatched_unvectorised_code(one_torch_thread):
    """measure_model counts each sample once for the pooled ratios and their bootstrap, and
    greedy-decodes the training and held-out prompts in one batch; every value is the one the
    per-resample loop and the two extraction calls gave, exactly (not approximately)."""
    from conftest import TINY
    from gpt2ft.config import ModelConfig, load_config
    from gpt2ft.generate import greedy, sample
    from gpt2ft.measure import measure_model, renormalise
    from gpt2ft.model import Runtime, load_tokenizer
    from gpt2ft.ngram_index import NgramIndex
    from gpt2ft.sampler import Sampler
    from gpt2ft.words import WordIndex

    tok = load_tokenizer(ModelConfig(name="random-gpt2"))
    eos, rt, n = tok.eos_token_id, Runtime(torch.device("cpu"), None), 16
    model = _tiny_lm(len(tok), seed=0, sharpness=20.0)
    config = load_config(TINY, ["metrics.extraction_prompts=4", f"metrics.extraction_tokens={n}",
                                f"metrics.extraction_prefix={n}"])
    # The prompts are rows 0, 2, 4, 6 of each stream (four pieces spread over eight): training rows
    # 0 and 2 and held-out row 4 continue as the model continues them, so they are extractable.
    gen = torch.Generator().manual_seed(0)
    train, held = (torch.randint(0, len(tok) - 1, (8, 2 * n), generator=gen) for _ in range(2))
    for windows, rows in ((train, (0, 2)), (held, (4,))):
        for r in rows:
            windows[r, n:] = torch.tensor(greedy(model, rt, [windows[r, :n].tolist()], n, eos)[0])
    # Training text that holds one sample whole and part of another: copying to count.
    ids, _ = renormalise(tok, sample(model, tok, rt, 4, config.sample.new_tokens, seed=0))
    book = ids[0] + train.flatten().tolist() + ids[1][:20]
    top = frozenset(sorted(set(ids[2]))[:10])
    judge = _tiny_lm(len(tok), 1, 1.0)
    assets = SimpleNamespace(config=config, tokenizer=tok, runtime=rt, base_model=judge, fluency_judge=judge,
                             sampler=Sampler(None), word_index=WordIndex(tok.decode(book)),
                             references=SimpleNamespace(losses={}),
                             index=NgramIndex(book), top_ids=top, classifier=None,
                             data=SimpleNamespace(train_windows=train, heldout_windows=held, heldout_ids=book))
    got, _, got_ids = measure_model(assets, model, 4, seed=0)
    assert got_ids == ids

    def top_ratio(seqs):  # the loops these metrics were written as
        return sum(int(t) in top for s in seqs for t in s) / sum(len(s) for s in seqs)

    def mem(k):
        def stat(seqs):
            hits = [assets.index.hits(s, k) for s in seqs]
            total = sum(t for _, t in hits)
            return sum(f for f, _ in hits) / total if total else math.nan
        return stat

    boot = config.metrics.bootstrap
    want = {"top100_ratio": top_ratio(ids), "memorization": mem(8)(ids), "memorization_4": mem(4)(ids),
            "memorization_16": mem(16)(ids), "top100_ratio_se": M.bootstrap_se(ids, top_ratio, boot, 0),
            "memorization_se": M.bootstrap_se(ids, mem(8), boot, 0)}
    for name, stream in (("extractable_rate", train), ("extractable_rate_heldout", held)):
        prompts = stream[0::2]  # one greedy call per stream, as before
        conts = greedy(model, rt, prompts[:, :n].tolist(), n, eos)
        want[name] = M.extractable_rate(conts, prompts[:, n:].tolist())
    assert (want["extractable_rate"], want["extractable_rate_heldout"]) == (0.5, 0.25)
    assert 0 < want["memorization"] < 1 and want["memorization_se"] > 0 and want["top100_ratio_se"] > 0
    assert {k: got[k] for k in want} == want


def test_one_teacher_forced_pass_says_whether_greedy_decoding_reproduces_the_suffix(one_torch_thread):
    """suffix_scores' exact match is greedy decoding's (generate, step by step), from one forward pass;
    a suffix off greedy's path at its first, a middle or its last token is not reproduced."""
    from gpt2ft.extraction import suffix_scores
    from gpt2ft.generate import greedy
    from gpt2ft.model import Runtime

    model, rt, n = _tiny_lm(300, seed=0, sharpness=20.0), Runtime(torch.device("cpu"), None), 12
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 299, (4, n), generator=gen).tolist()
    full = greedy(model, rt, prompts, n, 299)
    # Truths: row 0 is the model's own continuation; the others leave it at 0, 5 and n - 1.
    truths = [list(c) for c in full]
    for row, at in {1: 0, 2: 5, 3: n - 1}.items():
        truths[row][at] = (truths[row][at] + 1) % 299
    rows = torch.tensor([p + t for p, t in zip(prompts, truths)])
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        scores = suffix_scores(model, rt, rows, n, 0, 1.0, [])
    finally:
        hook.remove()
    assert len(calls) == 1
    assert scores["exact"].tolist() == [True, False, False, False]
    assert M.extractable_rate(full, truths) == 0.25

    class NoKeep(torch.nn.Module):  # a causal LM whose forward has no logits_to_keep
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    again = suffix_scores(NoKeep(model), rt, rows, n, 0, 1.0, [])
    assert all(np.allclose(again[k], scores[k]) for k in scores)


def test_a_static_cache_draws_the_same_samples(one_torch_thread):
    """generate.sample's ``decode`` changes how it decodes, not what it draws; an unknown one is refused."""
    from gpt2ft.generate import sample
    from gpt2ft.model import Runtime

    model, rt = _tiny_lm(300, seed=0, sharpness=5.0), Runtime(torch.device("cpu"), None)
    tok = SimpleNamespace(bos_token_id=299, eos_token_id=299)
    dynamic = sample(model, tok, rt, n=3, new_tokens=20, seed=4)
    assert sample(model, tok, rt, n=3, new_tokens=20, seed=4, decode="static") == dynamic
    with pytest.raises(ValueError, match="decode must be one of"):
        sample(model, tok, rt, n=3, new_tokens=20, seed=4, decode="paged")
