"""Perplexity under a causal LM: exact against the model's own loss, independent of batching,
and, with the real pretrained stand-in, lower for the book than for its words shuffled."""
from __future__ import annotations

import math
import random

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2ft import fluency
from gpt2ft.fluency import perplexity, sequence_nll


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    conf = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=64)
    return GPT2LMHeadModel(conf).eval()


@pytest.fixture(scope="module")
def seqs():
    rng = random.Random(0)
    return [[rng.randrange(64) for _ in range(20)] for _ in range(7)]


def model_loss(model, seq) -> float:
    x = torch.tensor([seq])
    with torch.no_grad():
        return float(model(input_ids=x, labels=x).loss)


def test_single_sequence_equals_exp_of_model_loss(tiny, seqs):
    ppl, se = perplexity(tiny, [seqs[0]], "cpu")
    assert ppl == pytest.approx(math.exp(model_loss(tiny, seqs[0])), rel=1e-5)
    assert math.isfinite(ppl) and ppl > 1
    assert math.isnan(se)  # one sequence: no spread to estimate


def test_pooled_over_tokens_and_finite(tiny, seqs):
    ppl, se = perplexity(tiny, seqs, "cpu")
    # equal lengths: the pooled mean NLL is the mean of the per-sequence losses
    mean_loss = sum(model_loss(tiny, s) for s in seqs) / len(seqs)
    assert ppl == pytest.approx(math.exp(mean_loss), rel=1e-5)
    assert ppl > 1 and 0 < se < ppl


def test_batching_does_not_change_the_answer(tiny, seqs):
    mixed = seqs[:3] + [seqs[3][:9], seqs[4][:2]] + seqs[5:]  # padding inside a batch
    one = perplexity(tiny, mixed, "cpu", batch_size=1)
    for b in (2, 3, 16):
        assert perplexity(tiny, mixed, "cpu", batch_size=b) == pytest.approx(one, rel=1e-5)


def test_padding_is_not_scored(tiny, seqs):
    short = seqs[0][:9]
    (s_alone, t_alone), = sequence_nll(tiny, [short], "cpu")
    (s_padded, t_padded), _ = sequence_nll(tiny, [short, seqs[1]], "cpu")
    assert t_alone == t_padded == 8  # 9 tokens, 8 predictions
    assert s_padded == pytest.approx(s_alone, rel=1e-5)
    assert s_alone / t_alone == pytest.approx(model_loss(tiny, short), rel=1e-5)


def test_too_short_is_nan_and_mode_restored(tiny):
    assert all(math.isnan(x) for x in perplexity(tiny, [[5], []], "cpu"))
    assert all(math.isnan(x) for x in perplexity(tiny, [], "cpu"))
    tiny.train()
    perplexity(tiny, [[1, 2, 3]], "cpu")
    assert tiny.training
    tiny.eval()


def test_metric_names_documented():
    assert list(fluency.METRIC_NAMES) == ["fluency_ppl", "fluency_ppl_se", "book_fluency_ppl",
                                          "other_fluency_ppl"]
    for name in fluency.METRIC_NAMES:
        assert name in fluency.__doc__


@pytest.mark.slow
def test_book_is_more_fluent_than_its_words_shuffled(book, smollm2):
    """The pretrained stand-in finds Swift's sentences far likelier than the same words in a
    random order: perplexity measures word order, not just word choice."""
    from gpt2ft.config import DataConfig
    from gpt2ft.data import load_book, normalise_ws

    tok, model = smollm2
    words = normalise_ws(load_book(DataConfig(), str(book)).heldout_text).split(" ")
    # Four ~100-token pieces of held-out text, 75 words each, spread through the book.
    texts = [" ".join(words[k * len(words) // 4:k * len(words) // 4 + 75]) for k in range(4)]
    rng = random.Random(0)
    shuffled = [" ".join(rng.sample(t.split(" "), len(t.split(" ")))) for t in texts]

    def pieces(ts):
        return [tok(t, add_special_tokens=False)["input_ids"][:100] for t in ts]

    ppl, se = perplexity(model, pieces(texts), "cpu", batch_size=4)
    ppl_shuffled, _ = perplexity(model, pieces(shuffled), "cpu", batch_size=4)
    assert 1 < ppl < ppl_shuffled
    assert ppl + 3 * se < ppl_shuffled
