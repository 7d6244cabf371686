"""NgramIndex on literal token lists with hand-checked answers, plus a brute-force cross-check."""

import numpy as np
import pytest

from gpt2ft.ngram_index import NgramIndex


def naive_ngrams(tokens, n):
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def naive_longest(train, seq):
    """(length, start) by brute force: O(len(seq)^2) substring tests."""
    text = "," + ",".join(map(str, train)) + ","
    best = (0, -1)
    for i in range(len(seq)):
        for j in range(i + best[0] + 1, len(seq) + 1):
            if "," + ",".join(map(str, seq[i:j])) + "," in text:
                best = (j - i, i)
            else:
                break
    return best


TRAIN = [1, 2, 3, 4, 5, 1, 2, 3, 9]


@pytest.fixture
def idx():
    return NgramIndex(TRAIN, max_n=3)


def test_attributes(idx):
    assert idx.max_n == 3
    assert idx.n_tokens == 9


@pytest.mark.parametrize("ngram, expected", [
    ([1], True), ([9], True), ([7], False),
    ([1, 2, 3], True), ([2, 3, 9], True), ([3, 9, 1], False), ([5, 1], True),
    # longer than max_n: verified directly against the training tokens
    ([3, 4, 5, 1], True), ([1, 2, 3, 4, 5, 1, 2, 3, 9], True), ([1, 2, 3, 9, 9], False),
    ([5, 1, 2, 3, 4], False),
])
def test_contains(idx, ngram, expected):
    assert idx.contains(ngram) is expected


def test_contains_rejects_empty(idx):
    with pytest.raises(ValueError):
        idx.contains([])


def test_hits_counts_every_window(idx):
    # windows (1,2) yes, (2,3) yes, (3,7) no
    assert idx.hits([1, 2, 3, 7], 2) == (2, 3)
    # repeated windows count each time
    assert idx.hits([1, 2, 1, 2], 2) == (2, 3)
    assert idx.hits([1, 2, 3, 4], 4) == (1, 1)


def test_hits_sequence_shorter_than_n(idx):
    assert idx.hits([1, 2], 3) == (0, 0)
    assert idx.hits([], 1) == (0, 0)
    assert idx.hits([1, 2], 5) == (0, 0)


def test_hit_mask(idx):
    assert idx.hit_mask([7, 1, 2, 3, 9, 9], 2).tolist() == [False, True, True, True, False]
    assert idx.hit_mask([4, 5, 1, 2, 3, 7], 5).tolist() == [True, False]
    assert idx.hit_mask([1], 2).dtype == bool
    assert idx.hit_mask([1], 2).size == 0


def test_hits_by_n_matches_hits(idx):
    seq = [2, 3, 4, 5, 1, 2, 3, 9, 9]
    got = idx.hits_by_n(seq, [1, 2, 3, 4, 6, 20])
    assert got == {n: idx.hits(seq, n) for n in [1, 2, 3, 4, 6, 20]}
    assert got[6] == (3, 4)
    assert got[20] == (0, 0)


def test_bad_n(idx):
    with pytest.raises(ValueError):
        idx.hits([1, 2], 0)
    with pytest.raises(ValueError):
        NgramIndex(TRAIN, max_n=0)


def test_longest_copy_beyond_max_n(idx):
    # 2,3,4,5,1,2 is TRAIN[1:7]: 6 tokens, twice max_n
    assert idx.longest_copy([7, 2, 3, 4, 5, 1, 2, 8]) == (6, 1)


def test_longest_copy_windows_present_but_span_not_contiguous():
    # Every 3-gram of 1,2,3,4,5 occurs, but never the whole span: the answer is 4, not 5.
    index = NgramIndex([1, 2, 3, 4, 0, 2, 3, 4, 5], max_n=3)
    assert index.hits([1, 2, 3, 4, 5], 3) == (3, 3)
    assert index.longest_copy([1, 2, 3, 4, 5]) == (4, 0)  # tie with (4, 1): earliest


def test_longest_copy_short_spans_and_none(idx):
    assert idx.longest_copy([9, 9, 5, 1, 7]) == (2, 2)
    assert idx.longest_copy([7, 8, 4]) == (1, 2)
    assert idx.longest_copy([7, 8]) == (0, -1)
    assert idx.longest_copy([]) == (0, -1)


def test_repeated_tokens():
    index = NgramIndex([5] * 10, max_n=3)
    assert index.hits([5] * 20, 4) == (17, 17)
    assert index.hits([5] * 20, 10) == (11, 11)
    assert index.hits([5] * 20, 11) == (0, 10)
    assert index.longest_copy([6] + [5] * 20) == (10, 1)


def test_empty_index():
    index = NgramIndex([])
    assert index.n_tokens == 0
    assert not index.contains([1])
    assert not index.contains(list(range(40)))
    assert index.hits([1, 2], 1) == (0, 2)
    assert index.longest_copy([1, 2, 3]) == (0, -1)


def test_index_shorter_than_max_n():
    index = NgramIndex([1, 2, 3], max_n=16)
    assert index.contains([1, 2, 3])
    assert not index.contains([1, 2, 3, 1])
    assert index.longest_copy([0, 1, 2, 3, 4]) == (3, 1)


def test_accepts_numpy_and_copies_input():
    train = list(TRAIN)
    index = NgramIndex(np.array(train, dtype=np.int32), max_n=3)
    assert index.contains(np.array([3, 4, 5, 1]))
    train_list = list(TRAIN)
    index2 = NgramIndex(train_list, max_n=3)
    train_list[:] = [0] * len(train_list)
    assert index2.contains([1, 2, 3, 4])


def test_matches_brute_force_on_small_vocab():
    # A 4-letter vocabulary makes many repeats, long partial matches and near-misses.
    rng = np.random.default_rng(7)
    train = rng.integers(0, 4, 400).tolist()
    index = NgramIndex(train, max_n=4)
    for _ in range(30):
        seq = rng.integers(0, 4, int(rng.integers(0, 40))).tolist()
        for n in (1, 2, 4, 5, 9):
            grams = naive_ngrams(train, n)
            mask = [tuple(seq[i:i + n]) in grams for i in range(len(seq) - n + 1)]
            assert index.hit_mask(seq, n).tolist() == mask
        assert index.longest_copy(seq) == naive_longest(train, seq)


def test_long_copies_from_the_training_stream():
    rng = np.random.default_rng(3)
    train = rng.integers(0, 50, 2000).tolist()
    index = NgramIndex(train, max_n=16)
    for start, length in [(0, 50), (1000, 17), (1950, 50), (500, 16)]:
        # neighbours 50 and 51 never occur in training, so the span cannot extend
        seq = [50] + train[start:start + length] + [51]
        assert index.longest_copy(seq) == (length, 1)
        assert index.contains(train[start:start + length])
