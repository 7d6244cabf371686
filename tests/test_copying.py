"""The copying measures of issue 33: extraction under the study's sampler, membership inference,
near-verbatim word n-grams, and the judges built on them."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gpt2ft import extraction as X
from gpt2ft import judges as J
from gpt2ft import membership as MI
from gpt2ft import pick as P
from gpt2ft.model import Runtime

CPU = Runtime(torch.device("cpu"), None)


class Successor(torch.nn.Module):
    """A causal LM over ``vocab`` tokens whose next token is ``(prev + 1) % vocab`` with probability
    ``p_true``, the rest spread evenly: the truth of a counting sequence is known exactly."""

    def __init__(self, vocab: int, p_true: float) -> None:
        super().__init__()
        self.vocab, self.p_true = vocab, p_true

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
        nxt = (input_ids + 1) % self.vocab
        rest = (1 - self.p_true) / (self.vocab - 1)
        logits = torch.full((*input_ids.shape, self.vocab), math.log(rest) if rest > 0 else -1e9)
        logits.scatter_(-1, nxt.unsqueeze(-1), math.log(self.p_true))
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def counting(rows: int, length: int, vocab: int) -> torch.Tensor:
    return torch.stack([(torch.arange(length) + 3 * r) % vocab for r in range(rows)])


def test_a_model_sure_of_the_suffix_extracts_it_with_probability_one():
    rows = counting(3, 64, 50)
    scores = X.suffix_scores(Successor(50, 1.0), CPU, rows, 32, 10, 1.0, [])
    got = X.summarise(scores, 100, 0.5)
    assert scores["exact"].all() and got["extraction_prob"] == pytest.approx(1.0)
    assert got["discoverable_rate"] == 1.0 and got["extractable_rate"] == 1.0


def test_a_half_sure_model_gives_the_suffix_32_log10_half():
    # Two tokens: the true one at 0.5, the other at 0.5 (top-k 2 keeps both, nothing is renormalised).
    rows = counting(2, 64, 2)
    scores = X.suffix_scores(Successor(2, 0.5), CPU, rows, 32, 2, 1.0, [])
    assert scores["log10p"] == pytest.approx([32 * math.log10(0.5)] * 2)
    # 0.5^32 is far below what 100 draws find with probability 0.5: not discoverable.
    assert X.summarise(scores, 100, 0.5)["discoverable_rate"] == 0.0
    assert X.discoverable(np.array([math.log10(0.01)]), 100, 0.5).tolist() == [True]  # 1 - 0.99^100 = 0.63


def test_top_k_gives_a_suffix_token_outside_the_k_best_probability_zero():
    # The true token is the least likely of 10: with top_k 3 the sampler can never draw it.
    class Unlikely(Successor):
        def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
            out = super().forward(input_ids, attention_mask, logits_to_keep)
            return SimpleNamespace(logits=-out.logits)
    rows = counting(2, 16, 10)
    scores = X.suffix_scores(Unlikely(10, 0.9), CPU, rows, 8, 3, 1.0, [])
    assert np.isneginf(scores["log10p"]).all() and not scores["exact"].any()
    got = X.summarise(scores, 100, 0.5)
    assert got["extraction_prob"] == 0.0 and got["extraction_log10p"] == X.LOG10P_FLOOR
    # Without top-k the same suffix has a (tiny) probability.
    assert np.isfinite(X.suffix_scores(Unlikely(10, 0.9), CPU, rows, 8, 0, 1.0, [])["log10p"]).all()


def test_the_warped_log_probability_is_the_masked_softmax_ties_and_bans_included():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 40, generator=gen).round(decimals=0)  # rounded: many ties at the k-th
    targets = torch.randint(0, 40, (3, 5), generator=gen)
    for top_k, temp, banned in ((5, 1.0, []), (7, 0.7, [3, 39]), (0, 1.3, [1])):
        s = logits.clone()
        s[..., banned] = -math.inf
        s = s / temp
        if top_k:
            s = s.masked_fill(s < torch.topk(s, top_k).values[..., -1:], -math.inf)
        want = torch.log_softmax(s, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        got = X.warped_target_log_probs(torch.log_softmax(logits, -1), targets, top_k, temp, banned)
        assert torch.equal(torch.isinf(got), torch.isinf(want))
        assert torch.allclose(got[torch.isfinite(want)], want[torch.isfinite(want)], atol=1e-5)


def test_the_warped_probability_is_how_often_generate_draws_the_suffix():
    """extraction_prob agrees with the sampler itself: over many draws of generate.sample (top-k,
    temperature, EOS banned) the share that reproduce a two-token suffix matches it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2ft.generate import sample

    torch.manual_seed(0)
    vocab, eos = 12, 11
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=16, n_layer=1, n_embd=8, n_head=2,
                                       bos_token_id=eos, eos_token_id=eos)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(4.0)
    tok = SimpleNamespace(eos_token_id=eos)
    prefix, draws, top_k, temp = [3, 5, 7], 4000, 5, 0.8
    got = sample(model, tok, CPU, draws, 2, seed=1, top_k=top_k, temperature=temp, prompt_ids=prefix)
    suffix = max(set(map(tuple, got)), key=got.count)  # the likeliest pair, for a tight check
    freq = got.count(list(suffix)) / draws
    scores = X.suffix_scores(model, CPU, torch.tensor([prefix + list(suffix)]), 3, top_k, temp,
                             X.banned_ids(model, tok))
    p = 10 ** scores["log10p"][0]
    assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / draws) + 1e-3
    assert all(eos not in s for s in got)


def test_prompts_are_every_suffix_offset_of_every_window_spread_to_the_cap():
    windows = torch.arange(4 * 128).reshape(4, 128)
    rows = X.prompts(windows, 32, 32, 256)
    assert rows.shape == (12, 64)  # offsets 0, 32, 64 in each of 4 windows
    assert rows[1, 0].item() == 32 and rows[3, 0].item() == 128
    assert X.prompts(windows, 32, 32, 0).shape[0] == 0
    capped = X.prompts(windows, 32, 32, 5)
    assert capped.shape == (5, 64) and capped[0, 0].item() == 0 and capped[-1, 0].item() > 256
    assert X.prompts(windows[:, :40], 32, 32, 256).shape[0] == 0


def test_mia_auc_is_one_when_training_windows_all_score_higher_and_a_half_when_alike():
    assert MI.auc([2.0, 3.0, 4.0], [0.0, 1.0]) == 1.0
    assert MI.auc([1.0, 1.0], [1.0, 1.0, 1.0]) == 0.5
    rng = np.random.default_rng(0)
    same = rng.normal(size=4000)
    assert MI.auc(same[:2000], same[2000:]) == pytest.approx(0.5, abs=0.03)
    assert math.isnan(MI.auc([], [1.0]))


def test_the_base_model_against_itself_scores_a_half_by_construction():
    loss = np.array([3.1, 2.9, 4.0, 3.5, 3.3, 3.0])
    base = MI.membership(loss, -loss, loss.copy(), 3, 50, 0)
    assert base["mia_auc"] == 0.5
    # A model that lowered its training windows' loss (the first three) tells them apart.
    trained = MI.membership(loss - np.array([1.0, 1.0, 1.0, 0, 0, 0]), -loss, loss, 3, 50, 0)
    assert trained["mia_auc"] == 1.0 and trained["mia_auc_se"] >= 0


def test_the_extraction_pass_gives_each_prompt_its_suffix_loss_and_a_min_k_score():
    rows = counting(3, 16, 10)
    clean = X.suffix_scores(Successor(10, 0.9), CPU, rows, 8, 0, 1.0, [])
    assert clean["loss"] == pytest.approx([-math.log(0.9)] * 3)
    noisy = rows.clone()
    noisy[0, 12] = 0  # one surprising suffix token: a higher loss and a lower Min-K%++ score
    got = X.suffix_scores(Successor(10, 0.9), CPU, noisy, 8, 0, 1.0, [])
    assert got["loss"][0] > clean["loss"][0] and got["minkpp"][0] < clean["minkpp"][0]
    assert got["loss"][1:] == pytest.approx(clean["loss"][1:])


def test_a_copy_with_case_and_punctuation_changed_is_near_verbatim_but_not_an_exact_8gram():
    from gpt2ft.config import ModelConfig
    from gpt2ft.data import encode
    from gpt2ft.model import load_tokenizer
    from gpt2ft.ngram_index import NgramIndex
    from gpt2ft.words import WordIndex

    train = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age "
             "of foolishness, and my master the King of Lilliput was pleased.")
    copied = "IT WAS THE BEST OF TIMES -- IT WAS THE WORST OF TIMES; IT WAS THE AGE OF WISDOM!"
    fresh = "A ship sailed from Bristol in the spring with a crew of forty men and one surgeon."
    tok = load_tokenizer(ModelConfig(name="random-gpt2"))
    tokens = NgramIndex(encode(tok, train).tolist())
    assert tokens.hits(encode(tok, copied).tolist(), 8)[0] == 0  # exact token 8-grams miss it
    words = WordIndex(train)
    got = words.measure([copied])
    assert got["near_verbatim"] == 1.0 and got["near_verbatim_longest"] == 18
    assert words.measure([fresh])["near_verbatim"] == 0.0


def rows_with(**copying) -> P.TrialRow:
    return P.TrialRow(0, -0.01, 0.0, step=4, extraction=0.0, heldout_loss=3.0,
                      copying=P.copying_of({"near_verbatim": 0.0, "discoverable_rate": 0.0, "mia_auc": 0.5,
                                            **copying}))


@pytest.mark.parametrize("metric,value,judge", [("near_verbatim", 0.2, "near-verbatim"),
                                                ("discoverable_rate", 0.3, "sampled extraction"),
                                                ("mia_auc", 0.9, "membership")])
def test_each_new_bound_comes_from_its_references_and_excludes_a_candidate_over_it(metric, value, judge):
    from gpt2ft.assets import study_bounds
    from gpt2ft.config import Config, StudyConfig

    refs = {"book_memorization": 0.01, "base_memorization": 0.0, "book_near_verbatim": 0.02,
            "base_near_verbatim": 0.01, "book_extractable_rate": 0.0, "base_discoverable_rate": 0.04,
            "base_heldout_loss": 4.0}
    config = Config(study=StudyConfig(judges=list(J.JUDGES)))
    b = study_bounds(config, refs).only(config.study.judges)
    assert b.near_verbatim == pytest.approx(3 * 0.02) and b.discoverable == pytest.approx(3 * 0.04)
    assert b.membership == pytest.approx(0.6)
    row = rows_with(**{metric: value})
    why = P.ineligible_reason(row, b)
    assert why.startswith(metric) and [j for j, _ in P._failures(row, b)] == [judge]
    assert P.pick([row, P.TrialRow(1, -0.5, 0.0, step=4, copying=rows_with().copying)], bounds=b).number == 1
    # Switched off, the judge no longer objects.
    off = b.only([j for j in J.JUDGES if j != judge])
    assert P.ineligible_reason(row, off) == ""
    # What a study records, read back with the judges it used.
    from gpt2ft.summary import recorded_bounds
    assert recorded_bounds({**b.as_attrs(), "judges": list(config.study.judges)}) == b
    # A default study measures all three and judges by none (docs/pick.md: on seven novels they
    # excluded no point the default judges kept); their bounds are still recorded.
    default = recorded_bounds({**b.as_attrs(), "judges": list(StudyConfig().judges)})
    assert default.membership == default.near_verbatim == default.discoverable == math.inf
    assert P.ineligible_reason(row, default) == "" and b.as_attrs()[J.BOUND_ATTRS[judge]] < math.inf


def test_recorded_bounds_round_trip_and_an_older_study_has_the_new_judges_off():
    b = J.Bounds(0.02, 0.05, 4.1, discoverable=0.06, near_verbatim=0.03, membership=0.6)
    assert J.Bounds.from_attrs(b.as_attrs()) == b
    old = J.Bounds.from_attrs({"memorization_bound": 0.02, "extraction_bound": 0.05, "heldout_bound": 4.1})
    assert math.isinf(old.near_verbatim) and math.isinf(old.membership) and old.extraction == 0.05


def test_an_unknown_judge_is_refused():
    from gpt2ft.config import StudyConfig
    from gpt2ft.errors import ConfigError

    with pytest.raises(ConfigError, match="study.judges"):
        StudyConfig(judges=["memorisation"])
