"""What a study prepares once and every trial shares: the book and its tokens, the pretrained
weights (on the run's device, copied per trial), the n-gram index of the training text, the book's
top-100 token set, the style classifier, and the reference values every trial is compared with.

Measuring a model or a text is ``gpt2ft.measure``'s job; this module only builds the inputs.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import gc
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


from gpt2ft import lora
from gpt2ft import membership as MI
from gpt2ft import metrics as M
from gpt2ft import pick as P
from gpt2ft.config import Config, TrainConfig
from gpt2ft.data import Book, TokenData, encode, load_book, normalise_ws, tokenize_book
from gpt2ft.errors import UserError
from gpt2ft.gutenberg import other_novels_folder
from gpt2ft.judges import Bounds, heldout_bound, reference_bound
from gpt2ft.measure import (chunks, matched_diversity, matched_js, measure_model, measure_samples, prompt_rows,
                            prompt_scores)
from gpt2ft.model import Runtime, base_model, describe, load_tokenizer, n_params, resolve_runtime
from gpt2ft.ngram_index import NgramIndex
from gpt2ft.sampler import Sampler, packs_on, sampling_dtype
from gpt2ft.style import StyleClassifier, load_other_novels
from gpt2ft.train import evaluate
from gpt2ft.words import WordIndex

log = logging.getLogger(__name__)

#: Reference sources: prefix -> what it is.
REFERENCE_SOURCES = {"book": "held-out book text (the human reference)",
                     "other": "other novels (out of domain)",
                     "train": "training text itself (the copying ceiling)",
                     "base": "the pretrained model before fine-tuning"}
CHUNK_TOKENS = 100  # reference texts are cut like samples: sequences of 100 tokens


@dataclass(frozen=True)
class References:
    """Every sample metric on the reference sources (``book_*``, ``other_*``, ``train_*``,
    ``base_*``) and the token sequences they were measured on."""

    values: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[list[int]]] = field(default_factory=dict)
    seconds: float = 0.0
    losses: dict[str, Any] = field(default_factory=dict)
    """``base``: the base model's suffix loss on each extraction prompt (``measure.prompt_scores``)."""


@dataclass(frozen=True)
class Assets:
    """What a study builds once and every trial shares (read-only for trials)."""

    config: Config
    book: Book
    tokenizer: Any
    data: TokenData
    base_model: Any
    runtime: Runtime
    index: NgramIndex
    top_ids: frozenset[int]
    classifier: Optional[StyleClassifier] = None
    other_ids: list[list[int]] = field(default_factory=list)
    references: References = field(default_factory=References)
    timings: dict[str, float] = field(default_factory=dict)

    @functools.cached_property
    def sampler(self) -> Sampler:
        """The weights measurements decode with (one per process; not part of the setup cache)."""
        dtype = sampling_dtype(self.config.sample.precision, self.runtime.device)
        return Sampler(dtype, packed=packs_on(self.runtime.device, dtype))

    @functools.cached_property
    def fluency_judge(self):
        """The base model in the sampling precision, made once: the fixed judge of fluency. In bf16
        it scored 20 held-out pieces of the book 58.28 against fp32's 58.27, in half the time."""
        return Sampler(self.sampler.dtype).weights_of(self.base_model)

    @functools.cached_property
    def word_index(self) -> WordIndex:
        """The training text's word n-grams, for the near-verbatim measure (built in well under a second)."""
        return WordIndex(self.tokenizer.decode(self.data.train_ids))

    def __getstate__(self) -> dict:
        # The decoding copies are per process (gpt2ft.cache pickles the assets).
        return {k: v for k, v in self.__dict__.items() if k not in ("sampler", "fluency_judge")}

    def fresh_model(self, train: Optional[TrainConfig] = None):
        """A trial's own copy of the pretrained weights (a copy costs far less than a load), with
        ``train``'s adapters on it under ``train.method: lora`` (``gpt2ft.lora.adapt``)."""
        model = copy.deepcopy(self.base_model)
        return lora.adapt(model, train) if train is not None else model

    def with_references(self, refs: References) -> "Assets":
        return dataclasses.replace(self, references=refs)


def prepare(config: Config, corpus: Optional[str] = None, classifier: bool = True) -> Assets:
    """Load and index everything a study needs; every user error surfaces here, before any
    run is created."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    runtime = resolve_runtime(config.train)
    book = load_book(config.data, corpus)
    tokenizer = load_tokenizer(config.model, config.data.cache_dir)
    data = tokenize_book(book, tokenizer, config.data.block_size, config.data.heldout_windows)
    timings["data_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    # On the run's device for good: trials copy it there, and it is the fixed judge of every
    # sample's fluency (gpt2ft.fluency) between trials.
    model = base_model(config, tokenizer).to(runtime.device).eval()
    timings["model_load_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    index = NgramIndex(data.train_ids, max_n=16)
    top_ids = book_top_ids(book, tokenizer, data, config.metrics.top_k)
    timings["index_seconds"] = time.perf_counter() - t
    clf, other_ids = None, []
    if classifier and config.metrics.style_classifier:
        t = time.perf_counter()
        clf, other_ids = _fit_classifier(config, book, tokenizer)
        timings["classifier_seconds"] = time.perf_counter() - t
    return Assets(config, book, tokenizer, data, model, runtime, index, top_ids, clf, other_ids,
                  timings=timings)


def _fit_classifier(config: Config, book: Book, tokenizer) -> tuple[Optional[StyleClassifier], list[list[int]]]:
    """The style classifier (None when it cannot be trusted) and the other novels' reference
    sequences, up to 20 chunks of each."""
    try:
        folder = other_novels_folder(config.data.other_corpora, book.source)
        others = load_other_novels(folder, Path(config.data.cache_dir))
    except UserError as exc:
        # style_prob is one metric among several; the study still means something without it.
        log.warning("style_prob is off: %s", exc)
        return None, []
    other_ids = []
    for text in others.values():
        ids = encode(tokenizer, normalise_ws(text[:60_000])).tolist()
        other_ids.extend(chunks(ids, CHUNK_TOKENS, 20))
    # The whole book outside its held-out segments, not the training slice: a judge of style must
    # not shrink with data.max_chars (on 6,400 characters it could not tell Swift from others).
    clf = StyleClassifier.fit(book.train_text + "\n\n" + book.unused_text, book.heldout_text, others,
                              seed=config.train.seed)
    if not clf.usable:
        # A classifier that cannot tell held-out Swift from other novels would report noise
        # as style; its accuracy is still reported, its probabilities are not used.
        log.warning("style_prob is off: the style classifier's held-out accuracy %.3f is below %.2f",
                    clf.heldout_accuracy, clf.min_accuracy)
    return clf, other_ids


def compute_references(assets: Assets, with_base: bool = True) -> References:
    """book_*, other_*, train_* and base_* values of every sample metric, and their sequences."""
    t0 = time.perf_counter()
    d = assets.data
    values: dict[str, float] = {}
    samples: dict[str, list[list[int]]] = {"book": chunks(d.heldout_ids, CHUNK_TOKENS),
                                           "train": chunks(d.train_ids, CHUNK_TOKENS, 200)}
    if assets.other_ids:
        samples["other"] = assets.other_ids
    for prefix, seqs in samples.items():
        for k, v in measure_samples(assets, seqs, seed=assets.config.train.seed, fluency=prefix != "train").items():
            values[f"{prefix}_{k}"] = v
        values[f"{prefix}_style_js"] = matched_js(assets, seqs, leave_out=prefix == "book")
        values.update({f"{prefix}_{k}": v for k, v in matched_diversity(assets, seqs).items()})
    losses: dict[str, Any] = {}
    if with_base:
        model = assets.base_model
        base, _, ids = measure_model(assets, model, assets.config.sample.n_samples, assets.config.train.seed)
        cfg = assets.config.metrics
        if cfg.extraction_prompts:
            scores, n = prompt_scores(assets, model)  # as measure_model scores: the model itself
            losses["base"] = scores["loss"]
            # The same losses on both sides of the calibration: every score is exactly 0, so the base
            # model's mia_auc is 0.5 by construction (two passes can differ in their last bits).
            base.update(MI.membership(scores["loss"], scores.get("minkpp"), scores["loss"], n, cfg.bootstrap,
                                      assets.config.train.seed))
        tc = assets.config.train
        base["heldout_loss"] = evaluate(model, d.heldout_windows, tc.batch_size, assets.runtime, tc.eval_batches)
        samples["base"] = ids
        values.update({f"base_{k}": v for k, v in base.items()})
    values["book_extractable_rate"] = book_extraction_rate(assets)
    values["heldout_windows"] = float(d.heldout_windows.shape[0])
    if assets.classifier is not None:
        values["style_classifier_accuracy"] = assets.classifier.heldout_accuracy
    return References(values, samples, time.perf_counter() - t0, losses)


def book_top_ids(book: Book, tokenizer, data: TokenData, k: int) -> frozenset[int]:
    """The book's ``k`` most frequent tokens, over the whole book (training slice, held-out part and
    the rest): a property of the book, the same whatever slice a study trains on."""
    rest = encode(tokenizer, normalise_ws(book.unused_text)).tolist() if book.unused_text else []
    return M.top_k_ids(data.train_ids + data.heldout_ids + rest, k)


def book_extraction_rate(assets: Assets) -> float:
    """``book_extractable_rate``: the share of held-out prompts (prefix and suffix, cut as
    ``measure.extraction`` cuts them) that occur whole in the training text, i.e. what a model would
    "extract" from held-out prompts by knowing the training text alone."""
    cfg = assets.config.metrics
    if cfg.extraction_prompts == 0:
        return math.nan
    rows, n_train = prompt_rows(assets)
    return M.verbatim_rate(rows[n_train:].tolist(), assets.data.train_windows.flatten().tolist())


def study_bounds(config: Config, refs: dict[str, float]) -> Bounds:
    """Every copying judge's bound from the references and the study's factors, floors and margins
    (``gpt2ft.judges``, docs/pick.md), whether ``study.judges`` uses it or not (the pick applies
    ``Bounds.only(study.judges)``; the study records all, so a table can say when each would fail)."""
    s = config.study

    def extraction(name: str) -> float:
        # The book's chance rate counts for both: a held-out prompt found whole in the training text
        # is reproduced by greedy decoding and by the sampler alike.
        return reference_bound(refs.get("book_extractable_rate", math.nan), refs.get(f"base_{name}", math.nan),
                               s.extraction_factor, s.extraction_floor)
    bounds = Bounds(memorization_bound(config, refs), extraction("extractable_rate"),
                    heldout_bound(refs.get("base_heldout_loss", math.nan), s.heldout_margin),
                    discoverable=extraction("discoverable_rate"),
                    near_verbatim=reference_bound(refs.get("book_near_verbatim", math.nan),
                                                  refs.get("base_near_verbatim", math.nan),
                                                  s.memorization_factor, s.memorization_floor),
                    membership=0.5 + s.mia_margin)
    return bounds


def memorization_bound(config: Config, refs: dict[str, float]) -> float:
    """The pick's copying bound from the references (``pick.memorization_bound`` with the
    study's factor and floor): what a trial may copy and still count as not copying."""
    return P.memorization_bound(refs.get("book_memorization", math.nan), refs.get("base_memorization", math.nan),
                                config.study.memorization_factor, config.study.memorization_floor)


def freeze_long_lived() -> None:
    """Move the study's long-lived objects (tokenizer, index, base model, ~700k objects) out of
    the garbage collector's view, so the collection after every trial does not walk them again."""
    gc.collect()
    gc.freeze()


def run_tags(assets: Assets) -> dict[str, Any]:
    """Tags every run of these assets carries: device, precision, versions, corpus, size."""
    return {**describe(assets.config, assets.runtime), "corpus_sha256": assets.book.sha256,
            "corpus_body_sha256": assets.book.body_sha256, "corpus_source": assets.book.source,
            "n_params": n_params(assets.base_model)}
