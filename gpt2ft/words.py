"""Near-verbatim copying: the training text's word n-grams, with case, punctuation and spacing gone.

Exact n-grams of model tokens miss a copy whose case or punctuation changed ("The King, my master"
against "the king my master": other tokens, the same words); Ippolito et al. (INLG 2023) show such
near-verbatim copies defeat every verbatim check. Here a text is its lower-cased words (runs of
letters and digits, ``\\w+``), each word an integer id, and the same exact-match index as the
token metrics (:class:`gpt2ft.ngram_index.NgramIndex`) answers which word n-grams of a sample
occur in the training text and the longest such run.
"""
from __future__ import annotations

import re
from typing import Sequence

from gpt2ft.ngram_index import NgramIndex

_WORD = re.compile(r"\w+")
#: n of ``near_verbatim``: word 8-grams, as the headline ``memorization`` counts token 8-grams.
N = 8


def words(text: str) -> list[str]:
    """The lower-cased words of ``text``; punctuation, case and spacing are not part of a copy."""
    return _WORD.findall(text.lower())


class WordIndex:
    """The training text's word n-grams, for ``near_verbatim`` and ``near_verbatim_longest``."""

    def __init__(self, text: str) -> None:
        self.vocab: dict[str, int] = {}
        ids = [self.vocab.setdefault(w, len(self.vocab)) for w in words(text)]
        self.index = NgramIndex(ids, max_n=16)

    def encode(self, text: str) -> list[int]:
        # A word the training text lacks gets an id it never uses, so no n-gram with it matches.
        unseen = len(self.vocab)
        return [self.vocab.get(w, unseen) for w in words(text)]

    def measure(self, texts: Sequence[str], n: int = N) -> dict[str, float]:
        """``near_verbatim``: the share of the texts' word n-grams (pooled, never across two texts)
        found in the training text; ``near_verbatim_longest``: the longest run of words any text
        shares with it. NaN share when no text has n words."""
        seqs = [self.encode(t) for t in texts]
        found = total = 0
        for s in seqs:
            f, t = self.index.hits(s, n)
            found, total = found + f, total + t
        longest = max((self.index.longest_copy(s)[0] for s in seqs if s), default=0)
        return {"near_verbatim": found / total if total else float("nan"),
                "near_verbatim_longest": float(longest)}
