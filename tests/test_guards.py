"""Promises that nothing else checks: checkpoint pruning keeps what it is told to keep; the
fluency judge is the base model, not the trial's; perplexity pools tokens over sequences of
unequal length, with the delta-method error; size-matched diversity references report mean
and spread; a flat held-out loss is not a turn upward."""
from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2ft import trajectory as T
from gpt2ft.checkpoints import Checkpoints
from gpt2ft.fluency import perplexity


# --- checkpoints.keep_only ------------------------------------------------------------------

def test_keep_only_keeps_exactly_the_kept_and_deletes_the_other_finished(tmp_path):
    ck = Checkpoints(tmp_path)
    keys = [(n, s) for n in range(6) for s in (4, 8)]
    for key in keys:
        ck.path(*key).mkdir()
        (ck.path(*key) / "model.safetensors").write_bytes(b"w")
    assert ck.saved() == keys and ck.saved(2) == [(2, 4), (2, 8)]
    # as the study calls it: pairs from pandas columns of numpy integers; trial 5 still runs elsewhere
    keep = zip(pd.Series([1, 3], dtype="int64"), pd.Series([8, 4], dtype="int64"))
    gone = ck.keep_only(keep, pd.Series([0, 1, 2, 3, 4], dtype="int64"))
    assert ck.saved() == [(1, 8), (3, 4), (5, 4), (5, 8)]
    assert sorted(gone) == sorted(set(keys) - {(1, 8), (3, 4), (5, 4), (5, 8)})
    assert (ck.path(1, 8) / "model.safetensors").is_file() and (ck.path(3, 4) / "model.safetensors").is_file()
    ck.keep_only([(3, 4)], [1, 3, 7])  # a finished trial without a checkpoint (7) is no error
    assert ck.saved() == [(3, 4), (5, 4), (5, 8)]
    ck.keep_only([(3, 4)], [3])
    assert ck.path(3, 4).is_dir()


# --- models for fluency ---------------------------------------------------------------------

def _gpt2(vocab: int, seed: int, sharpness: float = 1.0) -> GPT2LMHeadModel:
    """A 1-layer GPT-2; ``sharpness`` scales its (tied) embeddings, so its predictions range
    from near uniform (1) to confident (tens)."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=64, n_layer=1, n_embd=16, n_head=2,
                                       bos_token_id=0, eos_token_id=0))
    with torch.no_grad():
        model.transformer.wte.weight.mul_(sharpness)
    return model.eval()


def test_the_fluency_judge_is_the_base_model_not_the_trials():
    """The trial's samples are judged by the pretrained base model. A model judging its own
    samples would find them very probable: here the trial model is confident, the base model
    nearly uniform, so the two perplexities are far apart."""
    from conftest import TINY
    from gpt2ft.config import ModelConfig, load_config
    from gpt2ft.measure import FLUENCY_PIECES, chunks_of, measure_model
    from gpt2ft.model import Runtime, load_tokenizer
    from gpt2ft.ngram_index import NgramIndex
    from gpt2ft.sampler import Sampler
    from gpt2ft.words import WordIndex

    tok = load_tokenizer(ModelConfig(name="random-gpt2"))
    base, trial = _gpt2(len(tok), seed=0), _gpt2(len(tok), seed=1, sharpness=40.0)
    book = tok("It is a truth that the king of Lilliput was a small man.")["input_ids"] * 20
    config = load_config(TINY, ["metrics.bootstrap=0", "metrics.extraction_prompts=0", "sample.new_tokens=16"])
    assets = SimpleNamespace(config=config, tokenizer=tok, runtime=Runtime(torch.device("cpu"), None),
                             base_model=base, fluency_judge=base, sampler=Sampler(None),
                             word_index=WordIndex(tok.decode(book)),
                             index=NgramIndex(book), top_ids=frozenset(book),
                             data=SimpleNamespace(heldout_ids=book), classifier=None)
    metrics, _texts, ids = measure_model(assets, trial, 4, seed=0)
    judged = chunks_of(ids, FLUENCY_PIECES)
    by_base, by_trial = perplexity(base, judged, "cpu"), perplexity(trial, judged, "cpu")
    assert by_trial[0] < by_base[0] / 2  # the two judges disagree, so the test can tell them apart
    assert metrics["fluency_ppl"] == pytest.approx(by_base[0], rel=1e-6)
    assert metrics["fluency_ppl_se"] == pytest.approx(by_base[1], rel=1e-6)


# --- perplexity over sequences of unequal length --------------------------------------------

@pytest.fixture(scope="module")
def confident():
    return _gpt2(64, seed=2, sharpness=30.0)


def _summed_nll(model, seq) -> tuple[float, int]:
    """(summed NLL, predictions) of one sequence, from the model's own mean loss."""
    x = torch.tensor([seq])
    with torch.no_grad():
        loss = float(model(input_ids=x, labels=x).loss)
    return loss * (len(seq) - 1), len(seq) - 1


def test_perplexity_weighs_every_token_the_same_and_its_error_is_the_delta_method(confident):
    rng = random.Random(3)
    seqs = [[rng.randrange(64) for _ in range(length)] for length in (3, 6, 17, 40, 9)]
    pairs = [_summed_nll(confident, s) for s in seqs]
    sums, counts = [s for s, _ in pairs], [t for _, t in pairs]
    pooled = sum(sums) / sum(counts)  # mean NLL per predicted token, all sequences together
    ppl, se = perplexity(confident, seqs, "cpu", batch_size=2)
    assert ppl == pytest.approx(math.exp(pooled), rel=1e-5)
    mean_of_means = sum(s / t for s, t in pairs) / len(pairs)
    assert abs(math.exp(mean_of_means) / ppl - 1) > 0.01  # the other reading would be caught
    # The ratio estimator's delta-method variance, by hand: sum((S_i - R T_i)^2) / (n (n-1) mean(T)^2)
    n, mean_t = len(pairs), sum(counts) / len(counts)
    var = sum((s - pooled * t) ** 2 for s, t in pairs) / (n * (n - 1) * mean_t ** 2)
    assert se == pytest.approx(ppl * math.sqrt(var), rel=1e-5)


# --- size-matched diversity references ------------------------------------------------------

def test_matched_diversity_is_mean_and_spread_at_the_samples_size():
    """Pieces of two kinds, ten distinct tokens each: a set of two pieces of one kind has
    distinct_1 0.5, of both kinds 1.0. So whatever the draws, the mean lies in [0.5, 1] and the
    spread follows from it: with p = (mean - 0.5) / 0.5 the share of mixed sets, the sd of the
    draws is 0.5 sqrt(p (1 - p) d / (d - 1)). The whole text (400 tokens, 20 distinct) would
    score 0.05."""
    from gpt2ft.measure import matched_diversity

    pieces = [list(range(10)) if i % 2 else list(range(100, 110)) for i in range(40)]
    draws = 20
    assets = SimpleNamespace(config=SimpleNamespace(sample=SimpleNamespace(n_samples=2),
                                                    train=SimpleNamespace(seed=0)))
    out = matched_diversity(assets, pieces, draws=draws)
    assert {"distinct_1", "distinct_1_sd", "distinct_2", "repetition_4_sd"} <= set(out)
    mean, sd = out["distinct_1"], out["distinct_1_sd"]
    p = (mean - 0.5) / 0.5
    assert 0 < p < 1, "the draws should mix both kinds of sets"
    assert sd == pytest.approx(0.5 * math.sqrt(p * (1 - p) * draws / (draws - 1)), rel=1e-9)


# --- held-out turn --------------------------------------------------------------------------

def test_equal_heldout_evaluations_are_not_a_turn_upward():
    assert T.heldout_turn_step([(0, 4.0), (10, 3.5), (20, 3.5), (30, 3.4)]) is None
    assert T.heldout_turn_step([(0, 4.0), (10, 3.5), (20, 3.5), (30, 3.6)]) == 30
    assert T.onset_metrics([], [(0, 4.0), (10, 3.5), (20, 3.5)], 0.1).get("heldout_turn_step") is None
