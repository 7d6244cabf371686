"""Metric functions on literal token lists with exact expected values."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpt2ft import metrics as m
from gpt2ft.ngram_index import NgramIndex

# ------------------------------------------------------------------------ style


def test_top_k_ids_breaks_ties_by_smaller_id():
    # counts: 5 -> 3, 1 -> 2, 3 -> 2, 2 -> 1; the 1-vs-3 tie goes to 1
    assert m.top_k_ids([3, 3, 1, 1, 2, 5, 5, 5], k=2) == frozenset({5, 1})
    assert m.top_k_ids([3, 3, 1, 1, 2, 5, 5, 5], k=3) == frozenset({5, 1, 3})
    assert m.top_k_ids([4, 2, 9], k=2) == frozenset({2, 4})


def test_top_k_ids_edges():
    assert m.top_k_ids([7, 7, 8], k=100) == frozenset({7, 8})
    assert m.top_k_ids([], k=100) == frozenset()
    assert m.top_k_ids([1, 2], k=0) == frozenset()
    assert m.top_k_ids(np.array([2, 2, 1])) == frozenset({1, 2})


def test_top100_ratio():
    assert m.top100_ratio([[1, 2, 3, 4]], frozenset({1, 2})) == 0.5
    # pooled over tokens, not averaged over samples: 1 of 1 and 0 of 3 -> 1/4
    assert m.top100_ratio([[1], [3, 4, 5]], frozenset({1})) == 0.25
    assert m.top100_ratio([[1, 1, 1]], frozenset({1})) == 1.0
    assert m.top100_ratio([[1, 2], []], frozenset()) == 0.0


def test_top100_ratio_empty_is_nan():
    assert math.isnan(m.top100_ratio([], frozenset({1})))
    assert math.isnan(m.top100_ratio([[], []], frozenset({1})))


def test_js_divergence_identical_and_disjoint():
    assert m.js_divergence([1, 2, 2, 3], [1, 2, 2, 3]) == 0.0
    # same distribution, different order and length
    assert m.js_divergence([1, 2, 2, 3], [3, 2, 1, 2, 2, 3, 2, 1]) == pytest.approx(0, abs=1e-12)
    assert m.js_divergence([1, 2], [3, 4]) == 1.0


def test_js_divergence_known_value_and_symmetry():
    # P = (1, 0), Q = (1/2, 1/2), M = (3/4, 1/4): JS = H(M) - (0 + 1) / 2
    h_m = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert m.js_divergence([0], [0, 1]) == pytest.approx(h_m - 0.5)
    assert m.js_divergence([0, 1], [0]) == pytest.approx(h_m - 0.5)


def test_js_divergence_empty_is_nan():
    assert math.isnan(m.js_divergence([], [1]))
    assert math.isnan(m.js_divergence([1], []))


# ---------------------------------------------------------------------- copying

@pytest.fixture
def small():
    return NgramIndex([1, 2, 3, 4, 5], max_n=4)


def test_memorization_pools_ngrams(small):
    # (1,2) yes, (2,3) yes, (3,4) yes, (4,9) no
    assert m.memorization([[1, 2, 3], [3, 4, 9]], small, n=2) == 0.75
    assert m.memorization([[9, 8, 7]], small, n=1) == 0.0
    assert m.memorization([[1, 2, 3, 4, 5]], small, n=5) == 1.0  # n > max_n: still exact


def test_memorization_never_crosses_sample_boundaries(small):
    assert m.memorization([[1, 2], [3, 4]], small, n=2) == 1.0
    assert math.isnan(m.memorization([[2], [3]], small, n=2))  # (2,3) must not be formed


def test_memorization_no_ngrams_is_nan(small):
    assert math.isnan(m.memorization([], small))
    assert math.isnan(m.memorization([[1, 2, 3]], small, n=8))


def test_memorization_empty_index():
    assert m.memorization([[1, 2, 3]], NgramIndex([]), n=2) == 0.0


def test_novelty_curve(small):
    samples = [[1, 2, 3, 9], [4, 5]]
    curve = m.novelty_curve(samples, small, ns=range(1, 6))
    assert list(curve) == [1, 2, 3, 4, 5]
    # n=1: 5 of 6 tokens; n=2: (1,2),(2,3),(4,5) of 4; n=3: (1,2,3) of 2; n=4: 0 of 1
    assert curve[1] == 5 / 6
    assert curve[2] == 3 / 4
    assert curve[3] == 1 / 2
    assert curve[4] == 0.0
    assert math.isnan(curve[5])
    for n in range(1, 6):
        assert curve[n] == m.memorization(samples, small, n) or math.isnan(curve[n])


def test_longest_copy_metric(small):
    assert m.longest_copy([[9, 9], [8, 2, 3, 4, 8], [1, 2, 3]], small) == (3, 1, 1)
    assert m.longest_copy([[9, 9], [7]], small) == (0, -1, -1)
    assert m.longest_copy([], small) == (0, -1, -1)


def test_longest_copy_is_one_span_for_the_metric_and_its_text(small):
    """measure.longest_copy gives the metric and the trial's longest_copy.txt from one lookup."""
    from types import SimpleNamespace

    from gpt2ft.measure import longest_copy

    assets = SimpleNamespace(index=small, tokenizer=SimpleNamespace(decode=lambda ids: " ".join(map(str, ids))))
    assert longest_copy(assets, [[9, 9], [8, 2, 3, 4, 8], [1, 2, 3]]) == (
        3, "Longest copied span: 3 tokens (sample 2, token 1).\n\n2 3 4\n")
    assert longest_copy(assets, [[9, 9], [7]]) == (0, "")


def test_extractable_rate():
    conts = [[1, 2], [3, 4], [5]]
    truths = [[1, 2], [3, 5], [5]]
    assert m.extractable_rate(conts, truths) == 2 / 3
    assert m.extractable_rate([[1, 2]], [[1, 2, 3]]) == 0.0  # a prefix is not a match
    assert m.extractable_rate([np.array([4, 5])], [[4, 5]]) == 1.0
    assert math.isnan(m.extractable_rate([], []))
    with pytest.raises(ValueError):
        m.extractable_rate([[1]], [[1], [2]])


# ------------------------------------------------------------ planted passage

VOCAB = 50257
NOVEL_FROM = 50000  # training ids are < NOVEL_FROM, so filler tokens never occur in training
PLANT_LEN, PLANT_SAMPLE, PLANT_POS, TRAIN_POS = 40, 3, 30, 70_000


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    train = rng.integers(0, NOVEL_FROM, 145_000)
    samples = [rng.integers(NOVEL_FROM, VOCAB, 100) for _ in range(10)]
    span = train[TRAIN_POS:TRAIN_POS + PLANT_LEN]
    samples[PLANT_SAMPLE][PLANT_POS:PLANT_POS + PLANT_LEN] = span
    return NgramIndex(train), [s.tolist() for s in samples]


def test_planted_passage_is_found_exactly(planted):
    index, samples = planted
    assert m.longest_copy(samples, index) == (PLANT_LEN, PLANT_SAMPLE, PLANT_POS)


def test_planted_passage_memorization(planted):
    index, samples = planted
    # 10 samples x 100 tokens; only the planted 40 tokens are in training
    assert m.memorization(samples, index, n=1) == 40 / 1000
    assert m.memorization(samples, index, n=8) == (40 - 8 + 1) / (10 * (100 - 8 + 1))
    assert m.memorization(samples, index, n=32) == (40 - 32 + 1) / (10 * (100 - 32 + 1))
    curve = m.novelty_curve(samples, index)
    assert curve[16] == (40 - 16 + 1) / (10 * (100 - 16 + 1))
    mask = index.hit_mask(samples[PLANT_SAMPLE], 16)
    assert np.flatnonzero(mask).tolist() == list(range(PLANT_POS, PLANT_POS + 40 - 16 + 1))


# ------------------------------------------------------------------ uncertainty


def test_per_sequence(small):
    assert m.per_sequence(m.memorization, [[1, 2, 3], [9, 9], [2]], index=small, n=2) == [
        1.0, 0.0, pytest.approx(float("nan"), nan_ok=True)]
    assert m.per_sequence(m.top100_ratio, [[1, 2], [1]], top_ids=frozenset({1})) == [0.5, 1.0]


def test_mean_se():
    mean, se = m.mean_se([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert se == pytest.approx(1 / math.sqrt(3))
    assert m.mean_se([4.0, float("nan")])[0] == 4.0
    assert math.isnan(m.mean_se([4.0])[1])
    assert all(math.isnan(x) for x in m.mean_se([]))


def ratio_of_ones(samples):
    return m.top100_ratio(samples, frozenset({1}))


def test_bootstrap_se_zero_for_identical_sequences():
    assert m.bootstrap_se([[1, 2, 3]] * 10, ratio_of_ones) == 0.0


def test_bootstrap_se_positive_and_deterministic():
    samples = [[1, 1], [2, 2], [1, 2], [1, 1, 1, 2], [3]]
    se = m.bootstrap_se(samples, ratio_of_ones, n_boot=100, seed=1)
    assert se > 0
    assert m.bootstrap_se(samples, ratio_of_ones, n_boot=100, seed=1) == se
    assert m.bootstrap_se(samples, ratio_of_ones, n_boot=100, seed=2) != se


def test_bootstrap_se_too_few_samples_is_nan():
    assert math.isnan(m.bootstrap_se([[1, 2]], ratio_of_ones))
    assert math.isnan(m.bootstrap_se([], ratio_of_ones))


def _loop_bootstrap_se(samples, stat_fn, n_boot, seed):
    """bootstrap_se as it was written before it was vectorised: one resample per loop turn."""
    n = len(samples)
    if n < 2 or n_boot < 2:
        return math.nan
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        pick = rng.integers(0, n, size=n)
        stats.append(float(stat_fn([samples[i] for i in pick])))
    arr = np.asarray([s for s in stats if math.isfinite(s)], dtype=np.float64)
    if arr.size < 2:
        return math.nan
    if np.all(arr == arr[0]):
        return 0.0
    return float(arr.std(ddof=1))


def _random_samples(rng, n, vocab=30, longest=40):
    # Lengths from 0: a resample of only short samples has no n-gram, a nan replicate.
    return [list(rng.integers(0, vocab, size=int(rng.integers(0, longest)))) for _ in range(n)]


@pytest.mark.parametrize("n,n_boot,seed", [(2, 2, 0), (3, 50, 1), (10, 200, 0), (11, 200, 7), (50, 37, 3)])
def test_vectorised_bootstrap_equals_the_loop_bit_for_bit(n, n_boot, seed):
    rng = np.random.default_rng(100 + n)
    train = rng.integers(0, 30, size=3000)
    index = NgramIndex(train, max_n=16)
    samples = _random_samples(rng, n)
    samples[0] = list(train[100:150])  # some copying, so memorization is not all zeros
    top = frozenset(range(10))
    for stat, counts in ((lambda s: m.top100_ratio(s, top), m.top100_counts(samples, top)),
                         (lambda s: m.memorization(s, index, 8), m.memorization_counts(samples, index, [8])[8]),
                         (lambda s: m.memorization(s, index, 16), m.memorization_counts(samples, index, [16])[16])):
        want = _loop_bootstrap_se(samples, stat, n_boot, seed)
        for got in (m.bootstrap_ratio_se(*counts, n_boot, seed), m.bootstrap_se(samples, stat, n_boot, seed)):
            assert got == want or (math.isnan(got) and math.isnan(want))  # equal, not close


def test_vectorised_bootstrap_edges():
    assert m.bootstrap_ratio_se([3] * 10, [5] * 10) == 0.0  # every replicate 0.6
    assert math.isnan(m.bootstrap_ratio_se([1], [2]))  # one sequence
    assert math.isnan(m.bootstrap_ratio_se([0, 0], [0, 0]))  # every replicate nan
    assert math.isnan(m.bootstrap_ratio_se([1, 2], [2, 2], n_boot=1))
    with pytest.raises(ValueError):
        m.bootstrap_ratio_se([1, 2], [3])


def test_counts_pool_to_the_metrics():
    small = NgramIndex([1, 2, 3, 4, 5], max_n=3)
    samples = [[1, 2, 3], [3, 4, 9], [7]]
    assert m.memorization_counts(samples, small, [2, 5]) == {2: ([2, 1, 0], [2, 2, 0]), 5: ([0, 0, 0], [0, 0, 0])}
    assert m.pooled_ratio(*m.memorization_counts(samples, small, [2])[2]) == m.memorization(samples, small, 2) == 0.75
    assert m.top100_counts([[1, 2, 1], [], [3]], frozenset({1, 3})) == ([2, 0, 1], [3, 0, 1])
    assert math.isnan(m.pooled_ratio([0, 0], [0, 0]))


def test_metric_names_documented():
    assert list(m.METRIC_NAMES) == ["top100_ratio", "memorization", "memorization_4",
                                    "memorization_16", "longest_copy", "style_js",
                                    "extractable_rate", "distinct_1", "distinct_2",
                                    "distinct_3", "repetition_4"]
    for name in m.METRIC_NAMES:
        assert name in m.__doc__


def test_metrics_and_pick_import_neither_torch_nor_mlflow_nor_optuna():
    code = ("import sys, gpt2ft.metrics, gpt2ft.ngram_index, gpt2ft.pick; "
            "bad = {'torch', 'mlflow', 'optuna'} & set(sys.modules); assert not bad, bad")
    # The child gets the repo root on its path, however pytest found the package.
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)


# -------------------------------------------------------------------- diversity


def test_distinct_n_literal():
    # 1-grams: 1,2,1,3 -> {1,2,3} of 4; 2-grams: (1,2),(2,1),(1,3) all unique; 3-grams 2 of 2
    assert m.distinct_n([[1, 2, 1, 3]], 1) == 3 / 4
    assert m.distinct_n([[1, 2, 1, 3]], 2) == 1.0
    assert m.distinct_n([[1, 2, 1, 3]], 3) == 1.0
    # a phrase said four times: 2-grams (1,2),(2,1) x3, (1,2) x4 -> 2 unique of 7
    assert m.distinct_n([[1, 2] * 4], 2) == 2 / 7
    assert m.distinct_n([[5, 5, 5, 5]], 1) == 1 / 4


def test_distinct_n_pools_samples_without_crossing_boundaries():
    # the same 2-gram in two samples: unique once, counted twice -> 1/2
    assert m.distinct_n([[1, 2], [1, 2]], 2) == 1 / 2
    # (2,3) must not be formed across the boundary: 2-grams (1,2),(3,4) -> 2 of 2
    assert m.distinct_n([[1, 2], [3, 4]], 2) == 1.0
    assert m.distinct_n([[1, 2, 3], [7]], 2) == 1.0  # a short sample adds no 2-gram


def test_distinct_n_no_ngrams_is_nan_and_bad_n_raises():
    assert math.isnan(m.distinct_n([], 1))
    assert math.isnan(m.distinct_n([[1, 2]], 3))
    with pytest.raises(ValueError):
        m.distinct_n([[1, 2]], 0)


def test_repetition_rate_literal():
    # the brief's example: 5 4-grams, (1,2,3,4) twice -> 2/5
    assert m.repetition_rate([[1, 2, 3, 4, 1, 2, 3, 4]]) == 2 / 5
    assert m.repetition_rate([[1, 2, 3, 4, 5, 6]]) == 0.0
    # a loop: all 5 4-grams of [7]*8 are (7,7,7,7) -> 5/5
    assert m.repetition_rate([[7] * 8]) == 1.0
    assert m.repetition_rate([[1, 2, 1, 2, 1]], n=2) == 1.0  # (1,2) x2, (2,1) x2
    assert m.repetition_rate([[1, 2, 1, 3]], n=1) == 2 / 4  # the two 1s repeat


def test_repetition_rate_is_within_sample_and_pooled():
    # identical samples repeat each other, not themselves
    assert m.repetition_rate([[1, 2, 3, 4], [1, 2, 3, 4]]) == 0.0
    # pooled: 2 repeated of 5 in the first, 0 of 3 in the second -> 2/8
    assert m.repetition_rate([[1, 2, 3, 4, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10]]) == 2 / 8
    assert math.isnan(m.repetition_rate([[1, 2, 3]]))
    assert math.isnan(m.repetition_rate([]))


def test_degenerate_text_scores_low_distinct_and_high_repetition():
    loop = [[3, 1, 4, 1, 5] * 20]  # 100 tokens, one 5-token phrase over and over
    fresh = [list(range(100))]
    assert m.distinct_n(fresh, 1) == m.distinct_n(fresh, 2) == 1.0
    assert m.repetition_rate(fresh) == 0.0
    assert m.distinct_n(loop, 2) == 5 / 99  # 5 distinct 2-grams in 99
    assert m.repetition_rate(loop) == 1.0


def test_matched_reference_equal_pieces_have_zero_spread():
    pieces = [[1, 2, 3, 4]] * 6
    mean, std = m.matched_reference(pieces, 3, lambda s: m.distinct_n(s, 1), draws=5)
    assert (mean, std) == (1 / 3, 0.0)  # 4 unique of 12, whichever 3 are drawn


def test_matched_reference_is_deterministic_for_a_seed():
    pieces = [[i, i + 1, i % 3] for i in range(10)]

    def stat(s):
        return m.distinct_n(s, 1)

    first = m.matched_reference(pieces, 4, stat, draws=10, seed=3)
    assert first == m.matched_reference(pieces, 4, stat, draws=10, seed=3)
    assert first != m.matched_reference(pieces, 4, stat, draws=10, seed=4)
    assert first[1] > 0
    # every draw is a subset of distinct pieces (no replacement): 4 of 4 pieces is the whole
    mean, std = m.matched_reference(pieces[:4], 4, stat, draws=3)
    assert (mean, std) == (stat(pieces[:4]), 0.0)


def test_matched_reference_edges():
    def stat(s):
        return m.distinct_n(s, 1)

    assert all(math.isnan(x) for x in m.matched_reference([[1]], 2, stat))  # too few pieces
    mean, std = m.matched_reference([[1, 1], [2]], 1, stat, draws=1)
    assert mean in (0.5, 1.0) and math.isnan(std)
    with pytest.raises(ValueError):
        m.matched_reference([[1]], 0, stat)
