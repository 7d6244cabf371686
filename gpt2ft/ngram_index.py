"""Exact-match n-gram index over one training token stream.

Built once per study from the training token ids (~145k for the book) and then asked,
many times, "does this n-gram occur verbatim in training?" and "what is the longest
span of this sample that occurs verbatim in training?".

Design
------
* Every token is first mapped through ``_mix64`` (the SplitMix64 finaliser, a bijection
  on uint64), so 1-gram keys are exact.
* The key of an n-gram window is built by chaining from the (n-1)-gram key of the same
  start: ``key_n[i] = mix64(key_{n-1}[i] * K + x[i + n - 1])``. Extending by one token
  per step costs O(len) vector work, and a query for all n in 1..max_n costs one pass.
  For each n in 1..max_n the distinct keys are kept as a sorted uint64 array and looked
  up with ``np.searchsorted``.
* For n = max_n the (key, position) pairs are also kept, sorted by key, so the training
  positions of any max_n-gram can be listed; spans longer than max_n (``contains``,
  ``hits`` with n > max_n, ``longest_copy``) are then verified token by token against
  the raw training array. Those answers are exact.

Hash collisions
---------------
For n <= max_n an answer can only be wrong by a false positive (two different n-grams
with the same 64-bit key; equal n-grams always get equal keys, so there are no false
negatives). Keys behave like random 64-bit values, so one lookup against the ~1.5e5
distinct keys of one n is a false positive with probability about 1.5e5 / 2**64, i.e.
~1e-14; a whole study (millions of lookups) is wrong somewhere with probability ~1e-8.
1-grams are exact (the mix is a bijection); answers involving spans longer than max_n
are exact (direct comparison).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

_U64 = np.uint64
# Chain multiplier: an odd 64-bit constant (golden ratio), so multiplication mod 2**64
# is a bijection and no information of the prefix key is thrown away.
_K = _U64(0x9E3779B97F4A7C15)
# Offset added before mixing a token, so token id 0 does not map to key 0.
_TOKEN_OFFSET = _U64(0x632BE59BD9B4E019)
# Rows x columns gathered at once when verifying long spans: bounds temporary memory
# (~8 MB of int64) even if a max_n-gram occurs thousands of times in training.
_GATHER_CELLS = 1 << 20


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (returns a new array; a bijection)."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _as_token_array(tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    """Return the tokens as a 1-D int64 array (a view when already int64)."""
    arr = np.asarray(tokens, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of token ids, got shape {arr.shape}")
    return arr


def _iter_keys(arr: np.ndarray, n_max: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(n, keys)`` for n = 1..n_max; ``keys[i]`` is the key of ``arr[i:i+n]``.

    Stops early once the sequence is shorter than n (no windows left).
    """
    with np.errstate(over="ignore"):  # uint64 wraparound is intended
        x = _mix64(arr.astype(_U64) + _TOKEN_OFFSET)
        keys = x
        for n in range(1, n_max + 1):
            if n > 1:
                keys = _mix64(keys[:-1] * _K + x[n - 1:])
            if keys.size == 0:
                return
            yield n, keys


def _lookup(sorted_keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Boolean mask: which entries of ``query`` occur in the sorted array ``sorted_keys``."""
    if sorted_keys.size == 0 or query.size == 0:
        return np.zeros(query.shape, dtype=bool)
    idx = np.searchsorted(sorted_keys, query)
    np.minimum(idx, sorted_keys.size - 1, out=idx)
    return sorted_keys[idx] == query


class NgramIndex:
    """Exact-match lookups of n-grams (and longest verbatim spans) in training tokens.

    Attributes:
        max_n: largest n with a hashed table; longer spans are verified directly.
        n_tokens: number of training tokens indexed.
    """

    def __init__(self, tokens: Sequence[int] | np.ndarray, max_n: int = 16) -> None:
        """Index ``tokens`` (ids >= 0, a list or numpy array) for n = 1..max_n.

        Costs O(max_n * N log N) time and ~(max_n + 2) * 8 * N bytes for N tokens.
        """
        if max_n < 1:
            raise ValueError(f"max_n must be >= 1, got {max_n}")
        # Own copy: the caller may mutate its list/array after building the index.
        self._train = np.array(_as_token_array(tokens), dtype=np.int64)
        self.max_n = int(max_n)
        self.n_tokens = int(self._train.size)
        self._keys: dict[int, np.ndarray] = {n: np.empty(0, _U64) for n in range(1, max_n + 1)}
        self._top_keys = np.empty(0, _U64)  # max_n keys, sorted, duplicates kept
        self._top_pos = np.empty(0, np.int64)  # training start of each _top_keys entry
        for n, keys in _iter_keys(self._train, self.max_n):
            if n == self.max_n:
                order = np.argsort(keys, kind="stable")  # stable: positions ascending per key
                self._top_keys = keys[order]
                self._top_pos = order.astype(np.int64)
                self._keys[n] = np.unique(self._top_keys)
            else:
                self._keys[n] = np.unique(keys)

    def __repr__(self) -> str:
        return f"NgramIndex(n_tokens={self.n_tokens}, max_n={self.max_n})"

    # ------------------------------------------------------------------ lookups

    def contains(self, ngram: Sequence[int]) -> bool:
        """True iff ``ngram`` (any length >= 1) occurs contiguously in the training tokens.

        Exact for length 1 and length > max_n; hash-based (see module docstring) otherwise.
        """
        arr = _as_token_array(ngram)
        if arr.size == 0:
            raise ValueError("contains() needs a non-empty n-gram")
        return bool(self.hit_mask(arr, arr.size)[0])

    def hits(self, seq: Sequence[int], n: int) -> tuple[int, int]:
        """Return ``(found, total)``: how many of the n-grams of ``seq`` occur in training.

        ``total = max(0, len(seq) - n + 1)``; every window counts, repeats included.
        """
        mask = self.hit_mask(seq, n)
        return int(mask.sum()), int(mask.size)

    def hits_by_n(self, seq: Sequence[int], ns: Sequence[int]) -> dict[int, tuple[int, int]]:
        """``{n: self.hits(seq, n)}`` for every n in ``ns``, sharing one hashing pass."""
        arr = _as_token_array(seq)
        wanted = sorted(set(int(n) for n in ns))
        if wanted and wanted[0] < 1:
            raise ValueError(f"n must be >= 1, got {wanted[0]}")
        out: dict[int, tuple[int, int]] = {}
        short = [n for n in wanted if n <= self.max_n]
        if short:
            for n, keys in _iter_keys(arr, short[-1]):
                if n in short:
                    found = _lookup(self._keys[n], keys)
                    out[n] = (int(found.sum()), int(found.size))
        for n in wanted:
            if n > self.max_n:
                out[n] = self.hits(arr, n)
            elif n not in out:  # sequence shorter than n: no windows
                out[n] = (0, 0)
        return out

    def hit_mask(self, seq: Sequence[int], n: int) -> np.ndarray:
        """Bool array of length ``max(0, len(seq) - n + 1)``: ``mask[i]`` iff
        ``seq[i:i+n]`` occurs in training. Used to highlight copied spans.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        arr = _as_token_array(seq)
        total = max(0, arr.size - n + 1)
        if total == 0:
            return np.zeros(0, dtype=bool)
        keys = self._keys_at(arr, min(n, self.max_n))
        found = _lookup(self._keys[min(n, self.max_n)], keys)
        if n <= self.max_n:
            return found
        # n > max_n: a window can only occur where its leading max_n-gram occurs;
        # verify those few candidates directly against the training tokens.
        mask = np.zeros(total, dtype=bool)
        for i in np.flatnonzero(found[:total]):
            mask[i] = self._longest_at(arr, int(i), keys[i], limit=n) >= n
        return mask

    @staticmethod
    def _keys_at(arr: np.ndarray, n: int) -> np.ndarray:
        """Keys of all n-windows of ``arr`` (``len(arr) >= n``)."""
        for m, keys in _iter_keys(arr, n):
            if m == n:
                return keys
        raise ValueError(f"sequence of {arr.size} tokens has no {n}-gram")

    # ------------------------------------------------------------- longest copy

    def longest_copy(self, seq: Sequence[int]) -> tuple[int, int]:
        """Return ``(length, start)`` of the longest span of ``seq`` found verbatim in training.

        ``length`` is exact for spans longer than max_n (checked token by token against
        the training array); ``(0, -1)`` when no token of ``seq`` occurs in training.
        Ties go to the earliest start.
        """
        arr = _as_token_array(seq)
        if arr.size == 0 or self.n_tokens == 0:
            return 0, -1
        # reach[i] = largest n <= max_n such that seq[i:i+n] is in training. An n-gram in
        # training implies its (n-1)-prefix is too, so one pass that keeps the starts still
        # "alive" at each n yields it.
        reach = np.zeros(arr.size, dtype=np.int64)
        alive = np.ones(arr.size, dtype=bool)
        keys = np.empty(0, _U64)
        for n, keys in _iter_keys(arr, self.max_n):
            alive = alive[: keys.size] & _lookup(self._keys[n], keys)
            if not alive.any():
                break
            reach[: alive.size] += alive
        # If any start reached max_n, the loop ran to n = max_n and `keys` are max_n keys.
        # Starts that reach max_n may go further: measure them exactly. Scanning left to
        # right, a start i can beat the best so far only if len(seq) - i exceeds it.
        best = 0
        for i in np.flatnonzero(reach == self.max_n):
            i = int(i)
            if arr.size - i <= best:
                break
            length = self._longest_at(arr, i, keys[i])
            reach[i] = length  # may drop below max_n only on a hash collision
            best = max(best, length)
        start = int(np.argmax(reach))  # argmax returns the first maximum: earliest start
        length = int(reach[start])
        return (length, start) if length > 0 else (0, -1)

    def _positions(self, key: np.uint64) -> np.ndarray:
        """Training start positions (ascending) of the max_n-grams whose key is ``key``."""
        lo = int(np.searchsorted(self._top_keys, key, side="left"))
        hi = int(np.searchsorted(self._top_keys, key, side="right"))
        return self._top_pos[lo:hi]

    def _longest_at(self, arr: np.ndarray, i: int, key: np.uint64,
                    limit: int | None = None) -> int:
        """Exact length of the longest prefix of ``arr[i:]`` that occurs in training, capped
        at ``limit``; returns < max_n when the max_n-gram at ``i`` is absent. ``key`` is
        the key of ``arr[i:i+max_n]``.

        Candidate training positions come from the max_n key table and are then compared
        token by token, so collisions cannot inflate the result.
        """
        width = arr.size - i if limit is None else min(limit, arr.size - i)
        if width < self.max_n:
            return 0  # callers only ask at starts with a full max_n window
        positions = self._positions(key)
        target = arr[i: i + width]
        cols = np.arange(width, dtype=np.int64)
        max_rows = max(1, _GATHER_CELLS // width)
        # Chunks grow geometrically from a few rows: the usual max_n-gram occurs once, and a
        # very common one (a repeated phrase) usually matches fully in an early row, which
        # ends the scan; doubling keeps the worst case within 2x of one big gather.
        rows, c, best = 4, 0, 0
        while c < positions.size:
            idx = positions[c: c + rows, None] + cols  # (rows, width)
            c += rows
            rows = min(2 * rows, max_rows)
            in_range = idx < self.n_tokens
            np.minimum(idx, self.n_tokens - 1, out=idx)
            eq = (self._train[idx] == target) & in_range
            # Length of the leading run of matches per row: first False, or width if none.
            lengths = np.where(eq.all(axis=1), width, eq.argmin(axis=1))
            best = max(best, int(lengths.max()))
            if best == width:  # cannot do better than the whole remaining window
                break
        return best
