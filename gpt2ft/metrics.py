"""Pure metric functions: style (distribution) versus copying (verbatim overlap).

Every function takes token ids (``Sequence[int]``; lists or numpy arrays) and returns
plain Python numbers. Nothing here imports torch or mlflow or does I/O, so the metrics
can be unit-tested on literal token lists (cf. lm-evaluation-harness
``lm_eval/api/metrics.py``). Rates with an empty denominator are ``float('nan')``, not
0: "no evidence" must not read as "no copying".

METRIC_NAMES
------------
=================  ===========================================================  ========
name               meaning                                                      better
=================  ===========================================================  ========
top100_ratio       share of sampled tokens among the book's 100 most frequent   (style)
                   token ids (``top100_ratio`` with ``top_k_ids(book, 100)``)
memorization       share of sampled 8-grams found verbatim in the training      lower
                   tokens (``memorization(..., n=8)``)
memorization_4     same with n=4 (short phrases: mostly style, some copying)    -
memorization_16    same with n=16 (long spans: copying)                         lower
longest_copy       length in tokens of the longest sampled span found verbatim  lower
                   in training (``longest_copy``)
style_js           Jensen-Shannon divergence, base 2, between sampled and book  lower
                   unigram distributions (``js_divergence``), in [0, 1]
extractable_rate   share of training prefixes whose greedy continuation equals  lower
                   the true continuation exactly (Carlini et al. 2023)
distinct_1         unique sampled tokens over all sampled tokens, pooled        (book)
                   (``distinct_n(..., n=1)``)
distinct_2         same for 2-grams (``distinct_n(..., n=2)``)                  (book)
distinct_3         same for 3-grams (``distinct_n(..., n=3)``)                  (book)
repetition_4       share of sampled 4-grams that recur within their own sample  (book)
                   (``repetition_rate(..., n=4)``)
=================  ===========================================================  ========

``novelty_curve`` gives memorization for n = 1..16; novelty at n is ``1 - value``.

Style and copying cannot see a degenerate model: one that loops on a common phrase can sit
at the book's ``top100_ratio`` while copying nothing. The diversity metrics (distinct-n,
repetition) see it. "(book)" means: closer to the book's own value is better, and both
depend on the amount of text measured (the more text, the lower distinct-n), so a
reference is only comparable at the samples' size: see :func:`matched_reference`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from gpt2ft.ngram_index import NgramIndex

METRIC_NAMES: dict[str, str] = {
    "top100_ratio": "share of sampled tokens among the book's 100 most frequent ids",
    "memorization": "share of sampled 8-grams found verbatim in training",
    "memorization_4": "share of sampled 4-grams found verbatim in training",
    "memorization_16": "share of sampled 16-grams found verbatim in training",
    "longest_copy": "longest sampled span (tokens) found verbatim in training",
    "style_js": "Jensen-Shannon divergence (base 2) of sampled vs. book unigrams",
    "extractable_rate": "share of prefixes whose greedy continuation is exact",
    "distinct_1": "unique sampled tokens over all sampled tokens",
    "distinct_2": "unique sampled 2-grams over all sampled 2-grams",
    "distinct_3": "unique sampled 3-grams over all sampled 3-grams",
    "repetition_4": "share of sampled 4-grams that recur within their own sample",
}

NAN = float("nan")
Samples = Sequence[Sequence[int]]


def _ratio(num: int, den: int) -> float:
    """``num / den`` as a float, or nan when ``den`` is 0 (no evidence either way)."""
    return num / den if den else NAN


def pooled_ratio(num: Sequence[int], den: Sequence[int]) -> float:
    """``sum(num) / sum(den)``: a rate pooled over samples from their per-sample counts
    (:func:`top100_counts`, :func:`memorization_counts`); nan when ``den`` sums to 0."""
    return _ratio(sum(num), sum(den))


# ------------------------------------------------------------------------ style


def top_k_ids(tokens: Sequence[int], k: int = 100) -> frozenset[int]:
    """The ``k`` most frequent token ids of ``tokens`` (fewer if fewer distinct ids).

    Ties in frequency go to the smaller id, so the set is deterministic.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    arr = np.asarray(tokens, dtype=np.int64).ravel()
    if arr.size == 0 or k == 0:
        return frozenset()
    ids, counts = np.unique(arr, return_counts=True)  # ids ascending
    order = np.lexsort((ids, -counts))  # primary: count descending; then id ascending
    return frozenset(int(i) for i in ids[order[:k]])


def top100_counts(samples: Samples, top_ids: frozenset[int]) -> tuple[list[int], list[int]]:
    """Per sample: ``(tokens whose id is in top_ids, tokens)``, the two counts of
    :func:`top100_ratio` (and of its bootstrap, :func:`bootstrap_ratio_se`)."""
    inside = [sum(1 for t in s if int(t) in top_ids) for s in samples]
    return inside, [len(s) for s in samples]


def top100_ratio(samples: Samples, top_ids: frozenset[int]) -> float:
    """Share of all sampled tokens (pooled over samples) whose id is in ``top_ids``.

    nan when there are no sampled tokens.
    """
    return pooled_ratio(*top100_counts(samples, top_ids))


def _unigram(tokens: Sequence[int]) -> dict[int, float]:
    """Relative frequency of each id in ``tokens``."""
    ids, counts = np.unique(np.asarray(tokens, dtype=np.int64).ravel(), return_counts=True)
    total = counts.sum()
    return {int(i): c / total for i, c in zip(ids, counts)}


def _entropy_bits(p: Iterable[float]) -> float:
    """Shannon entropy in bits of the probabilities ``p`` (zeros ignored)."""
    arr = np.fromiter(p, dtype=np.float64)
    arr = arr[arr > 0]
    return float(-(arr * np.log2(arr)).sum())


def js_divergence(a_tokens: Sequence[int], b_tokens: Sequence[int]) -> float:
    """Jensen-Shannon divergence (base 2) between the unigram distributions of two token
    streams: 0 for the same distribution, 1 for disjoint supports. nan if either is empty.
    """
    if len(a_tokens) == 0 or len(b_tokens) == 0:
        return NAN
    p, q = _unigram(a_tokens), _unigram(b_tokens)
    support = p.keys() | q.keys()
    m = (0.5 * (p.get(t, 0.0) + q.get(t, 0.0)) for t in support)
    # JS = H(M) - (H(P) + H(Q)) / 2; clamp float noise so callers can rely on [0, 1].
    js = _entropy_bits(m) - 0.5 * (_entropy_bits(p.values()) + _entropy_bits(q.values()))
    return min(1.0, max(0.0, js))


# ---------------------------------------------------------------------- copying


def memorization_counts(samples: Samples, index: NgramIndex,
                        ns: Iterable[int]) -> dict[int, tuple[list[int], list[int]]]:
    """``{n: (found, total)}``: per sample, how many of its n-grams occur in training and how
    many it has, for every n in ``ns`` (one hashing pass per sample); the counts of
    :func:`memorization` and of its bootstrap (:func:`bootstrap_ratio_se`)."""
    wanted = list(ns)
    per_sample = [index.hits_by_n(s, wanted) for s in samples]
    return {n: ([h[n][0] for h in per_sample], [h[n][1] for h in per_sample]) for n in wanted}


def memorization(samples: Samples, index: NgramIndex, n: int = 8) -> float:
    """Share of all sampled n-grams found verbatim in the index's training tokens.

    n-grams are pooled over samples and never cross a sample boundary; repeats count
    every time. nan when no sample has n tokens.
    """
    return pooled_ratio(*memorization_counts(samples, index, [n])[n])


def novelty_curve(samples: Samples, index: NgramIndex,
                  ns: Iterable[int] = range(1, 17)) -> dict[int, float]:
    """``{n: memorization(samples, index, n)}`` for each n in ``ns`` (one hashing pass per
    sample). Novelty at n is ``1 - value``; values are non-increasing in n.
    """
    return {n: pooled_ratio(f, t) for n, (f, t) in memorization_counts(samples, index, ns).items()}


def longest_copy(samples: Samples, index: NgramIndex) -> tuple[int, int, int]:
    """``(length, sample_index, start)`` of the longest span of any sample that occurs
    verbatim in training; ``(0, -1, -1)`` if none. Ties: earliest sample, then start.
    """
    best = (0, -1, -1)
    for k, s in enumerate(samples):
        if len(s) <= best[0]:
            continue  # too short to beat the current best: skip the lookups
        length, start = index.longest_copy(s)
        if length > best[0]:
            best = (length, k, start)
    return best


def extractable_rate(continuations: Samples, truths: Samples) -> float:
    """Share of ``continuations`` equal, token for token, to the true continuation at the
    same position in ``truths`` (extractable memorization, Carlini et al. 2023).

    nan when there are none. Raises ValueError if the two lists differ in length.
    """
    if len(continuations) != len(truths):
        raise ValueError(
            f"{len(continuations)} continuations but {len(truths)} true continuations")
    exact = sum(1 for c, t in zip(continuations, truths)
                if len(c) == len(t) and all(int(a) == int(b) for a, b in zip(c, t)))
    return _ratio(exact, len(truths))


def verbatim_rate(pieces: Samples, text: Sequence[int]) -> float:
    """Share of ``pieces`` found verbatim (as one contiguous run) somewhere in ``text``.

    The chance reference of :func:`extractable_rate`: a held-out piece of the book that also
    occurs whole in the training text (a repeated heading, a formula) would be "extracted" by a
    model that never memorized anything, so the extraction bound allows for it. nan when there
    are no pieces; pieces of any lengths.
    """
    if not pieces:
        return math.nan
    seen: dict[int, set[tuple[int, ...]]] = {}
    hits = 0
    for p in pieces:
        n = len(p)
        if n not in seen:
            seen[n] = {tuple(text[i:i + n]) for i in range(len(text) - n + 1)} if n else set()
        hits += tuple(int(t) for t in p) in seen[n]
    return _ratio(hits, len(pieces))


# -------------------------------------------------------------------- diversity


def _ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """The n-grams of one sequence, in order (none when it is shorter than ``n``)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ids = [int(t) for t in tokens]
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


def distinct_n(samples: Samples, n: int) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams over all n-grams, pooled over samples.

    n-grams never cross a sample boundary; an n-gram that occurs in two samples counts
    once among the unique ones and twice among all. 1.0 when no n-gram repeats anywhere;
    near 0 for text that loops. Falls as the amount of text grows, so compare only
    measurements of equal size. nan when no sample has ``n`` tokens.
    """
    seen: set[tuple[int, ...]] = set()
    total = 0
    for s in samples:
        grams = _ngrams(s, n)
        total += len(grams)
        seen.update(grams)
    return _ratio(len(seen), total)


def repetition_rate(samples: Samples, n: int = 4) -> float:
    """Within-sample repetition: the share of n-gram occurrences whose n-gram occurs more
    than once in the same sample, pooled over samples.

    Every occurrence of a repeated n-gram counts (both copies of a doubled phrase), so
    ``[1, 2, 3, 4, 1, 2, 3, 4]`` scores 2/5 at n=4: five 4-grams, of which (1, 2, 3, 4)
    occurs twice. Repeats *across* samples do not count: two samples that open alike are
    not a loop. 0.0 when no sample repeats an n-gram; nan when no sample has ``n`` tokens.
    """
    repeated = total = 0
    for s in samples:
        counts = Counter(_ngrams(s, n))
        total += sum(counts.values())
        repeated += sum(c for c in counts.values() if c > 1)
    return _ratio(repeated, total)


def matched_reference(pieces: Samples, n_pieces: int, stat_fn: Callable[[Samples], float],
                      draws: int = 20, seed: int = 0) -> tuple[float, float]:
    """``(mean, std)`` of ``stat_fn`` over ``draws`` random subsets of ``n_pieces`` pieces.

    A reference text at the samples' size: give it pieces cut like samples (e.g. 100
    tokens of held-out book each) and ``n_pieces`` = the number of samples. Subsets are
    drawn without replacement with ``np.random.default_rng(seed)``, so the answer is
    deterministic for a seed. ``std`` is the spread of the statistic between draws (ddof=1),
    exactly 0.0 when every draw gives the same value. Non-finite draws are ignored; mean is
    nan with no finite draw or fewer than ``n_pieces`` pieces, std is nan with fewer than 2.
    """
    if n_pieces < 1:
        raise ValueError(f"n_pieces must be >= 1, got {n_pieces}")
    if len(pieces) < n_pieces or draws < 1:
        return NAN, NAN
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        chosen = rng.choice(len(pieces), size=n_pieces, replace=False)
        values.append(float(stat_fn([pieces[int(i)] for i in sorted(chosen)])))
    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return NAN, NAN
    if arr.size < 2:
        return float(arr[0]), NAN
    if np.all(arr == arr[0]):
        # The value itself, not a mean that summing rounds, and no ~1e-17 std from it either.
        return float(arr[0]), 0.0
    return float(arr.mean()), float(arr.std(ddof=1))


# ------------------------------------------------------------------ uncertainty


def per_sequence(metric_fn: Callable[..., float], samples: Samples, **kw: Any) -> list[float]:
    """``metric_fn([s], **kw)`` for each sample ``s``: a metric per sequence (for plots and
    for spotting the few samples that carry a pooled metric).
    """
    return [float(metric_fn([s], **kw)) for s in samples]


def mean_se(values: Iterable[float]) -> tuple[float, float]:
    """``(mean, standard error of the mean)`` of the finite ``values`` (nan ignored).

    mean is nan with no finite value; se is nan with fewer than two.
    """
    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return NAN, NAN
    mean = float(arr.mean())
    if arr.size < 2:
        return mean, NAN
    return mean, float(arr.std(ddof=1) / math.sqrt(arr.size))


def bootstrap_picks(n: int, n_boot: int, seed: int) -> np.ndarray:
    """The ``(n_boot, n)`` sequence indices the bootstrap resamples, drawn with replacement
    row by row from ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, n, size=n) for _ in range(n_boot)])


def _replicate_sd(stats: Iterable[float]) -> float:
    """The bootstrap's answer from its replicate statistics (see :func:`bootstrap_se`)."""
    arr = np.asarray([s for s in stats if math.isfinite(s)], dtype=np.float64)
    if arr.size < 2:
        return NAN
    if np.all(arr == arr[0]):
        return 0.0  # np.std can return ~1e-17 here from the rounding of the mean
    return float(arr.std(ddof=1))


def bootstrap_se(samples: Samples, stat_fn: Callable[[Samples], float],
                 n_boot: int = 200, seed: int = 0) -> float:
    """Bootstrap standard error of ``stat_fn(samples)``.

    Resamples whole sequences with replacement (sequences are the independent units; the
    tokens inside one are not), ``n_boot`` times (:func:`bootstrap_picks`), so the result
    is deterministic for a seed. Returns the sample standard deviation (ddof=1) of the
    finite replicate statistics; exactly 0.0 when they are all equal. nan with fewer than
    2 samples or fewer than 2 finite replicates.
    """
    n = len(samples)
    if n < 2 or n_boot < 2:
        return NAN
    return _replicate_sd(float(stat_fn([samples[i] for i in pick])) for pick in bootstrap_picks(n, n_boot, seed))


def bootstrap_ratio_se(num: Sequence[int], den: Sequence[int], n_boot: int = 200, seed: int = 0) -> float:
    """:func:`bootstrap_se` of a pooled ratio ``sum(num) / sum(den)`` (nan when the sum of
    ``den`` is 0) from the per-sequence counts, all replicates at once.

    The same resamples and the same float operations as ``bootstrap_se`` with a
    ``stat_fn`` that pools the counts (``top100_ratio``, ``memorization``): integer sums,
    then one correctly rounded division each, so the answer is bit for bit the same.
    """
    n = len(num)
    if len(den) != n:
        raise ValueError(f"{n} numerators but {len(den)} denominators")
    if n < 2 or n_boot < 2:
        return NAN
    picks = bootstrap_picks(n, n_boot, seed)
    sums = np.asarray(num, dtype=np.int64)[picks].sum(axis=1)
    totals = np.asarray(den, dtype=np.int64)[picks].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = np.where(totals > 0, sums / np.maximum(totals, 1), np.nan)
    return _replicate_sd(stats)
