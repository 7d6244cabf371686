"""Style classifier: does a text read like the book, or like other novels?

The classifier is a cheap proxy for "sounds like Gulliver's Travels": TF-IDF features of
~100-word chunks (about the length of one ~100-token generated sample) and a logistic
regression trained on the book's *training* text against chunks of out-of-domain novels.
Its held-out score is measured honestly -- on the book's held-out text (never seen in
training) against held-out tails of the other novels -- and a classifier that cannot
separate those is flagged ``usable = False`` so that nobody picks checkpoints or samples with it.

What it measures is lexical style (vocabulary, common word pairs, spelling, punctuation)
plus, because word-shuffled book chunks are trained as negatives, some local word order.
It is not a fluency or copying measure: verbatim training text scores as high as anything,
so pair it with n-gram overlap against the training text and with perplexity.
"""

from __future__ import annotations

import math
import random
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import FeatureUnion, Pipeline

from gpt2ft.config import DataConfig
from gpt2ft.errors import UserError
from gpt2ft.gutenberg import OTHER_CORPORA_ENV, download
from gpt2ft.prose import read

log = logging.getLogger(__name__)

#: Project Gutenberg IDs of the default out-of-domain novels (name -> ID).
GUTENBERG_OTHER_NOVELS: dict[str, int] = {
    "pride_and_prejudice_pg1342": 1342,
    "wuthering_heights_pg768": 768,
    "tom_sawyer_pg74": 74,
    "o_pioneers_pg24": 24,
    "my_antonia_pg19810": 19810,
    "the_professor_pg1028": 1028,
}

#: A classifier below this balanced held-out accuracy is not fit for picking samples.
DEFAULT_MIN_ACCURACY = 0.8

_WS_RE = re.compile(r"\s+")


def _read_novel(path: Path) -> str:
    """The novel's prose, cleaned as the book is (``gpt2ft.prose``): a classifier that saw
    headings and contents in the other novels only would learn "CHAPTER" as not-the-book.
    A plain ``.txt`` novel without a Gutenberg header is welcome as it is."""
    return read(path)[0].text


def _read_novels(folder: Path) -> dict[str, str]:
    """Read every ``*.txt`` in ``folder`` (sorted, so the order is reproducible); an empty or
    undecodable one is skipped with one warning line naming it."""
    novels = {}
    for path in sorted(folder.glob("*.txt")):
        try:
            novels[path.stem] = _read_novel(path)
        except UserError as exc:  # one bad file must not turn style_prob off for the whole study
            log.warning("skipping reference novel %s: %s", path, exc)
    novels = {name: body for name, body in novels.items() if body}
    if not novels:
        raise UserError(
            f"No non-empty .txt novels in {folder}; put out-of-domain novels there "
            f"or point {OTHER_CORPORA_ENV} at a folder of .txt novels."
        )
    return novels


def _download_novels(cache_dir: Path, timeout: float = 60.0) -> dict[str, str]:
    """The default novels, downloaded once into ``cache_dir`` (the book's cache layout)."""
    hint = f"set {OTHER_CORPORA_ENV} to a folder of .txt novels to work offline"
    return {name: _read_novel(download(gid, cache_dir, timeout, offline_hint=hint))
            for name, gid in GUTENBERG_OTHER_NOVELS.items()}


def load_other_novels(folder: str | Path | None = None, cache_dir: Optional[Path] = None) -> dict[str, str]:
    """Out-of-domain reference novels as ``{name: text}``, Gutenberg header stripped where present.

    ``folder`` (find it with ``gutenberg.other_novels_folder``): every ``*.txt`` in it, named by
    file stem. None: the six default Project Gutenberg novels (``GUTENBERG_OTHER_NOVELS``),
    downloaded into ``cache_dir`` (default ``data.cache_dir``'s default) and named by their
    keys; files already there are reused. Raises ``UserError`` if the folder does not exist or
    holds no usable ``.txt`` file, or if a download fails.
    """
    if folder is None:
        return _download_novels(Path(cache_dir or DataConfig.cache_dir).expanduser())
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UserError(
            f"Reference-novel folder {path} does not exist; point {OTHER_CORPORA_ENV} "
            "(or data.other_corpora) at a folder of .txt novels."
        )
    return _read_novels(path)


def split_chunks(text: str, chunk_words: int = 100) -> list[str]:
    """Split ``text`` into consecutive chunks of exactly ``chunk_words`` whitespace words.

    Whitespace is normalised to single spaces (the books are hard-wrapped; samples are
    not) and a trailing chunk shorter than ``chunk_words`` is dropped so that every chunk
    has the length of one generated sample.
    """
    if chunk_words < 1:
        raise UserError(f"chunk_words must be at least 1, got {chunk_words}; use e.g. 100.")
    words = text.split()
    return [
        " ".join(words[i:i + chunk_words])
        for i in range(0, len(words) - chunk_words + 1, chunk_words)
    ]


def _normalise(text: str) -> str:
    # Book chunks and generated samples differ in line wrapping only; make that invisible.
    return _WS_RE.sub(" ", text).strip().lower()


def _build_pipeline(seed: int) -> Pipeline:
    """TF-IDF word 1-2 grams + char 3-grams (within word boundaries), then logistic regression.

    Words catch vocabulary and idiom, and word pairs catch word order; char 3-grams catch
    spelling and punctuation habits (Swift's "shew", "'tis") and still say something about
    word forms the vectoriser never saw, which generated samples are full of.  Longer char
    n-grams added nothing measurable on held-out chunks but doubled the fitting time; the
    max_features caps keep fitting on ~6k chunks to a few seconds on two cores.
    """
    features = FeatureUnion([
        ("word", TfidfVectorizer(
            preprocessor=_normalise, analyzer="word", ngram_range=(1, 2),
            # Keep punctuation as tokens: Swift's semicolon-heavy periods are part of his style.
            token_pattern=r"(?u)\b\w+\b|[^\w\s]", sublinear_tf=True,
            min_df=2, max_features=30000, dtype=np.float32,
        )),
        ("char", TfidfVectorizer(
            preprocessor=_normalise, analyzer="char_wb", ngram_range=(3, 3),
            sublinear_tf=True, min_df=2, max_features=20000, dtype=np.float32,
        )),
    ])
    clf = LogisticRegression(
        C=4.0, class_weight="balanced", max_iter=1000, solver="liblinear", random_state=seed,
    )
    return Pipeline([("features", features), ("clf", clf)])


def _shuffle_words(chunks: list[str], rng: random.Random) -> list[str]:
    """Return each chunk with its words in random order (same words, no syntax)."""
    out = []
    for chunk in chunks:
        words = chunk.split()
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def _split_chunks(book_train_text: str, book_heldout_text: str, other_texts: dict[str, str],
                  chunk_words: int, heldout_fraction: float) -> tuple[list[str], list[str], list[str], list[str]]:
    """Book training / held-out chunks and other novels' training / held-out chunks (each
    novel split by position); a part too short to give one chunk is a UserError."""
    if not 0.0 < heldout_fraction < 1.0:
        raise UserError(f"heldout_fraction must lie strictly between 0 and 1, got {heldout_fraction}.")
    if not other_texts:
        raise UserError(f"No reference novels were given; set {OTHER_CORPORA_ENV} to a folder of .txt novels.")
    pos_train = split_chunks(book_train_text, chunk_words)
    pos_held = split_chunks(book_heldout_text, chunk_words)
    if not pos_train:
        raise UserError(f"The book's training text has fewer than {chunk_words} words; "
                        "check the corpus path and split.")
    if not pos_held:
        raise UserError(f"The book's held-out text has fewer than {chunk_words} words; "
                        "hold out more of the book or lower chunk_words.")
    neg_train: list[str] = []
    neg_held: list[str] = []
    for name in sorted(other_texts):
        words = other_texts[name].split()
        cut = int(round(len(words) * (1.0 - heldout_fraction)))
        neg_train += split_chunks(" ".join(words[:cut]), chunk_words)
        neg_held += split_chunks(" ".join(words[cut:]), chunk_words)
    if not neg_train or not neg_held:
        raise UserError(f"The reference novels are too short to give training and held-out chunks of "
                        f"{chunk_words} words; use full-length novels in {OTHER_CORPORA_ENV}.")
    return pos_train, pos_held, neg_train, neg_held


@dataclass
class StyleClassifier:
    """A fitted book-vs-other-novels classifier; build it with :meth:`fit`.

    Attributes:
        heldout_accuracy: balanced accuracy on held-out chunks (book held-out text vs the
            last ``heldout_fraction`` of each other novel); neither was trained on.
        usable: ``heldout_accuracy >= min_accuracy``; if False, do not use :meth:`prob` to
            pick or rank anything.
        min_accuracy: the threshold ``usable`` was decided with.
        heldout_shuffled_prob: mean :meth:`prob` of the book's held-out chunks with their
            words shuffled -- how much credit word salad in the book's vocabulary gets
            (low when ``shuffled_negatives`` was on, near the real chunks' score when off).
        shuffled_negatives: whether word-shuffled book chunks were trained as negatives.
        n_train: number of training chunks as ``{"book": n, "other": m, "shuffled": k}``.
        n_heldout: number of held-out chunks as ``{"book": n, "other": m}``.
        chunk_words: words per chunk used for training and evaluation.
    """

    pipeline: Pipeline = field(repr=False)
    heldout_accuracy: float
    usable: bool
    min_accuracy: float
    heldout_shuffled_prob: float
    shuffled_negatives: bool
    n_train: dict[str, int]
    n_heldout: dict[str, int]
    chunk_words: int

    @classmethod
    def fit(
        cls,
        book_train_text: str,
        book_heldout_text: str,
        other_texts: dict[str, str],
        seed: int = 0,
        chunk_words: int = 100,
        heldout_fraction: float = 0.2,
        min_accuracy: float = DEFAULT_MIN_ACCURACY,
        shuffled_negatives: bool = True,
    ) -> "StyleClassifier":
        """Train on book training chunks (positive) vs other-novel chunks (negative).

        Each other novel is split by position: its first ``1 - heldout_fraction`` of words
        trains, its last ``heldout_fraction`` is held out, so no held-out chunk overlaps a
        training chunk.  ``book_heldout_text`` must be disjoint from ``book_train_text``
        (the caller's split guarantees this).  Classes are balanced with class weights.

        With ``shuffled_negatives`` (the default) every book training chunk is also added
        as a negative with its words shuffled.  Without them a bag of words cannot tell
        the book from word salad in the book's vocabulary (measured: salad scores 0.94,
        the same as real held-out chunks), and a fine-tuned model that has learnt the
        vocabulary but not the prose would look perfect.  ``heldout_accuracy`` is still
        book vs other novels only, so ``usable`` means the same with or without them.

        Deterministic for a given ``seed``.  Raises ``UserError`` if any part is too short
        to yield a chunk of ``chunk_words`` words.
        """
        pos_train, pos_held, neg_train, neg_held = _split_chunks(
            book_train_text, book_heldout_text, other_texts, chunk_words, heldout_fraction)
        rng = random.Random(seed)
        shuffled = _shuffle_words(pos_train, rng) if shuffled_negatives else []
        # Shuffle the order too so the solver sees no ordering artefacts; the seed makes
        # the whole fit repeatable.
        pairs = [(x, 1) for x in pos_train] + [(x, 0) for x in neg_train + shuffled]
        rng.shuffle(pairs)
        x_train, y_train = [x for x, _ in pairs], [y for _, y in pairs]

        pipeline = _build_pipeline(seed)
        pipeline.fit(x_train, y_train)

        x_held = pos_held + neg_held
        y_held = [1] * len(pos_held) + [0] * len(neg_held)
        # Balanced accuracy: the book has far fewer held-out chunks than the other novels,
        # so plain accuracy would reward calling everything "other".
        acc = float(balanced_accuracy_score(y_held, pipeline.predict(x_held)))
        clf = cls(
            pipeline=pipeline,
            heldout_accuracy=acc,
            usable=acc >= min_accuracy,
            min_accuracy=min_accuracy,
            heldout_shuffled_prob=math.nan,
            shuffled_negatives=shuffled_negatives,
            n_train={"book": len(pos_train), "other": len(neg_train), "shuffled": len(shuffled)},
            n_heldout={"book": len(pos_held), "other": len(neg_held)},
            chunk_words=chunk_words,
        )
        clf.heldout_shuffled_prob = clf.style_prob(_shuffle_words(pos_held, rng))
        return clf

    def prob(self, texts: Sequence[str]) -> list[float]:
        """Return, for each text, the probability in [0, 1] that it is the book's style.

        Texts are scored as given (no chunking); they should be about ``chunk_words`` long
        for the probabilities to be comparable with the held-out accuracy.  An empty
        sequence gives an empty list.
        """
        if isinstance(texts, str):
            # A bare string is a Sequence[str] of characters: almost surely a caller bug.
            raise TypeError("prob() takes a sequence of texts, not a single string")
        texts = list(texts)
        if not texts:
            return []
        classes = list(self.pipeline.classes_)
        proba = self.pipeline.predict_proba(texts)[:, classes.index(1)]
        return [float(p) for p in proba]

    def style_prob(self, texts: Sequence[str]) -> float:
        """Return the mean of :meth:`prob` over ``texts``, or ``nan`` if there are none."""
        probs = self.prob(texts)
        return float(np.mean(probs)) if probs else math.nan
