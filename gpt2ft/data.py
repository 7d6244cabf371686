"""The book: read and cleaned to its prose (``gpt2ft.prose``: headings, contents, notes and
licence out), split and cut into training windows.

Split first, tokenize second: the whole book's prose is cut into contiguous segments of whole
paragraphs and every k-th segment is held out, so the held-out part never overlaps the
training part and both cover all four voyages (a single held-out tail would be the
Houyhnhnms only). ``data.max_chars`` then keeps only N characters of the training part, in
``data.slice_pieces`` runs spread over it: a slice limits what the model trains on, never the
held-out text that judges it.
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import logging
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from gpt2ft.config import DataConfig
from gpt2ft.errors import UserError
from gpt2ft.gutenberg import resolve_corpus_path
from gpt2ft.prose import Prose, read

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Book:
    """The cleaned book, split into a training part and a held-out part."""

    source: str
    """Path the text was read from."""
    sha256: str
    """sha256 of the file's bytes (Gutenberg revises its files; record what was used)."""
    body_sha256: str
    """sha256 of the cleaned text that was split (what training and metrics saw)."""
    train_text: str
    """What the model trains on: the training segments, or their ``data.max_chars`` slice."""
    heldout_text: str
    """The held-out segments of the whole book (every ``data.heldout_every``-th)."""
    n_segments: int
    heldout_segments: tuple[int, ...]
    unused_text: str = ""
    """Training segments beyond ``data.max_chars``: the book, neither trained on nor held out."""
    prose: Optional[Prose] = None
    """The cleaning: the prose paragraphs that were split and what was dropped, by kind."""


@dataclass
class TokenData:
    """Token views of a :class:`Book` under one tokenizer."""

    train_windows: torch.Tensor
    """(N, block) training windows; labels are the windows themselves."""
    heldout_windows: torch.Tensor
    """(M, block) held-out windows for ``heldout_loss``: ``data.heldout_windows`` of them, evenly
    spread over the whole book's held-out part."""
    train_ids: list[int]
    """Whitespace-normalised training text, tokenized: the reference for copying metrics."""
    heldout_ids: list[int]
    """Whitespace-normalised held-out text, tokenized: the human reference."""
    block_size: int


def normalise_ws(text: str) -> str:
    """Collapse all whitespace to single spaces so n-grams match across line breaks."""
    return " ".join(text.split())


def split_segments(paras: Sequence[str], segment_chars: int, every: int) -> tuple[list[list[str]], list[int]]:
    """Group paragraphs into ~segment_chars segments and choose every k-th one as held out."""
    segments: list[list[str]] = [[]]
    size = 0
    for p in paras:
        segments[-1].append(p)
        size += len(p)
        if size >= segment_chars:
            segments.append([])
            size = 0
    if not segments[-1]:
        segments.pop()
    # Offset by k//2 so the first held-out segment is not the book's opening page.
    held = [i for i in range(len(segments)) if i % every == every // 2]
    return segments, held


def load_book(cfg: DataConfig, explicit_path: Optional[str] = None) -> Book:
    """Find, read, clean (``gpt2ft.prose``) and split the book. Raises UserError on any unusable input."""
    path = resolve_corpus_path(cfg, explicit_path)
    prose, digest = read(path)
    if not prose.marked:
        log.warning("%s has no Project Gutenberg START/END lines: taken whole as the book (%s characters of "
                    "prose after the same cleaning)", path, f"{prose.prose_chars:,}")
    paras = list(prose.paragraphs)
    segments, held = split_segments(paras, cfg.segment_chars, cfg.heldout_every)
    if len(segments) < 2 or not held:
        # Name the cause where cleaning took most of the file (a rule that misjudged it), not length.
        most = max(prose.by_kind.items(), key=lambda kv: kv[1], default=("", 0))
        cause = (f" (cleaning dropped {prose.dropped_chars:,} of its characters, most as {most[0]}, and kept "
                 f"{prose.prose_chars:,} in {len(paras)} paragraph(s): see `gpt2ft book --corpus {path}`)"
                 if prose.dropped_chars > prose.prose_chars else "")
        raise UserError(f"{path} is too short{cause}: the book's prose must give at least {cfg.heldout_every} "
                        f"segments of {cfg.segment_chars} characters; use the whole book.")
    held_set = set(held)
    train, unused = _cut([p for i, s in enumerate(segments) if i not in held_set for p in s], cfg.max_chars,
                         cfg.slice_pieces)
    heldout = "\n\n".join("\n\n".join(s) for i, s in enumerate(segments) if i in held_set)
    return Book(source=str(path), sha256=digest,
                body_sha256=hashlib.sha256(prose.text.encode("utf-8")).hexdigest(),
                train_text="\n\n".join(train), heldout_text=heldout, n_segments=len(segments),
                heldout_segments=tuple(held), unused_text="\n\n".join(unused), prose=prose)


def _cut(paras: list[str], max_chars: Optional[int], pieces: int = 1) -> tuple[list[str], list[str]]:
    """About ``max_chars`` characters of paragraphs in ``pieces`` runs, the i-th centred in the
    i-th of ``pieces`` equal parts of ``paras``; and the rest, in order.

    Centred, not at each part's start: with one piece that would be the book's opening again,
    whose preface or frame is the book's least typical page. A run takes its next paragraph while
    that brings the total nearer ``(i + 1) * max_chars / pieces`` (one at least, unless earlier
    runs' long paragraphs already passed that), so long paragraphs never add up to a slice far
    over ``max_chars``; runs never overlap. A paragraph longer than the run's share that spans its
    centre is the run's first (else a book of a few long paragraphs takes its slice from the edges
    of its parts), and a first paragraph longer than the run's share is cut at a sentence end near
    that share, its tail left to the rest (else chapter-sized paragraphs give slices far over
    ``max_chars``, from half the places)."""
    total = sum(len(p) for p in paras)
    if max_chars is None or total <= max_chars:
        return paras, []
    starts = list(itertools.accumulate((len(p) for p in paras), initial=0))
    size = max_chars / pieces
    taken: dict[int, int] = {}  # paragraph index -> characters of it kept
    got = 0
    for i in range(pieces):
        target = (i + 1) * size
        centre = (i + 0.5) * total / pieces
        j, span = bisect.bisect_left(starts, centre - size / 2), bisect.bisect_right(starts, centre) - 1
        if span < j and len(paras[span]) > size:  # not a run of what follows the long one at its centre
            j = span
        first = True
        while j < len(paras) and got < target and (first or got + len(paras[j]) / 2 <= target):
            if j not in taken:
                n = len(paras[j])
                taken[j] = _sentence_end(paras[j], int(target - got)) if first and n > size else n
                got += taken[j]
                first = False
            j += 1
    kept = [p[:taken[j]] for j, p in enumerate(paras) if j in taken]
    rest = [p[taken.get(j, 0):].lstrip() for j, p in enumerate(paras) if taken.get(j, 0) < len(p)]
    return kept, rest


def _sentence_end(text: str, n: int) -> int:
    """Where to cut ``text`` near ``n`` characters: after the last sentence end at or before
    ``n``, else the first after it, else nowhere (the whole of it)."""
    ends = [m.end() for m in re.finditer(r"[.!?…][\"'”’)]*(?=\s)", text)]
    before = [e for e in ends if e <= n]
    return before[-1] if before else next(iter(ends), len(text))


def encode(tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text`` as a 1-D tensor (the method's ``tokenizer(...)["input_ids"][0]``).

    Special tokens are not added: GPT-2 adds none anyway, and a BOS in the middle of the
    book (SmolLM2's tokenizer adds one) would be a token the book never contains.
    """
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]


def windows(ids: torch.Tensor, block: int) -> torch.Tensor:
    """Cut a 1-D id tensor into (N, block) non-overlapping windows; the ragged tail is dropped."""
    n = ids.numel() // block
    return ids[: n * block].view(n, block).clone()


def spread(windows_: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` rows of ``windows_`` evenly spread from first to last (all of them when fewer): a
    fixed sample, the same for every trial, that covers the whole held-out book."""
    total = windows_.shape[0]
    if total <= n:
        return windows_
    return windows_[[int(i * total / n) for i in range(n)]].clone()


def tokenize_book(book: Book, tokenizer, block_size: int, heldout_windows: int = 32) -> TokenData:
    """Training windows, ``heldout_windows`` held-out windows spread over the book, and the
    whitespace-normalised id lists the metrics use."""
    # Long texts exceed the tokenizer's model_max_length; that warning is about feeding the
    # model, not about tokenizing, so silence it by lifting the limit for this call.
    old = getattr(tokenizer, "model_max_length", None)
    tokenizer.model_max_length = 10**12
    try:
        train_w = windows(encode(tokenizer, book.train_text), block_size)
        held_w = spread(windows(encode(tokenizer, book.heldout_text), block_size), heldout_windows)
        train_ids = encode(tokenizer, normalise_ws(book.train_text)).tolist()
        heldout_ids = encode(tokenizer, normalise_ws(book.heldout_text)).tolist()
    finally:
        if old is not None:
            tokenizer.model_max_length = old
    if train_w.shape[0] < 2 or held_w.shape[0] < 1:
        raise UserError(f"{book.source} is too short: it gives {train_w.shape[0]} training and "
                        f"{held_w.shape[0]} held-out windows of {block_size} tokens (need >= 2 and >= 1); "
                        "use a longer text or a smaller data.block_size.")
    return TokenData(train_w, held_w, train_ids, heldout_ids, block_size)
