"""Study-wide assets and the measurement of a model or a text against the book.

Everything that does not depend on a trial's hyperparameters is built here once per study:
the book and its tokens, the pretrained weights (kept on the CPU, copied per trial), the
n-gram index of the training text, the book's top-100 token set, the style classifier and
the reference values (held-out book, other novels, training text, base model).

Convention: every sample metric is computed on *whitespace-normalised, re-tokenized* text,
for samples and references alike, so that an n-gram matches across the book's line breaks
and sample tokens are comparable with the book's token counts.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from gpt2ft import metrics as M
from gpt2ft.config import Config
from gpt2ft.data import Book, TokenData, encode, load_book, normalise_ws, tokenize_book
from gpt2ft.errors import UserError
from gpt2ft.generate import greedy, sample
from gpt2ft.gutenberg import other_novels_folder
from gpt2ft.model import Runtime, load_model, load_tokenizer, resolve_runtime, seed_everything
from gpt2ft.ngram_index import NgramIndex

log = logging.getLogger(__name__)

#: Sample metrics, in the order they are printed. ``*_se`` companions are logged beside them.
SAMPLE_METRICS = ("top100_ratio", "memorization", "memorization_4", "memorization_16",
                  "longest_copy", "style_js", "style_prob")
#: Reference sources: prefix -> what it is.
REFERENCE_SOURCES = {"book": "held-out book text (the human reference)",
                     "other": "other novels (out of domain)",
                     "train": "training text itself (the copying ceiling)",
                     "base": "the pretrained model before fine-tuning"}
CHUNK_TOKENS = 100  # reference texts are cut like samples: sequences of 100 tokens


@dataclass
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
    classifier: Any = None
    other_ids: list[list[int]] = field(default_factory=list)
    references: dict[str, float] = field(default_factory=dict)
    reference_samples: dict[str, list[list[int]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def fresh_model(self):
        """A trial's own copy of the pretrained weights (a copy costs far less than a load)."""
        return copy.deepcopy(self.base_model)


def prepare(config: Config, corpus: Optional[str] = None, classifier: bool = True) -> Assets:
    """Load and index everything a study needs; every user error surfaces here, before any
    run is created."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    runtime = resolve_runtime(config.train)
    book = load_book(config.data, corpus)
    tokenizer = load_tokenizer(config.model, config.data.cache_dir)
    data = tokenize_book(book, tokenizer, config.data.block_size)
    timings["data_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    seed_everything(config.train.seed)
    model = load_model(config.model, tokenizer, config.data.block_size)
    model.eval()
    timings["model_load_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    index = NgramIndex(data.train_ids, max_n=16)
    top_ids = M.top_k_ids(data.train_ids, config.metrics.top_k)
    timings["index_seconds"] = time.perf_counter() - t
    assets = Assets(config, book, tokenizer, data, model, runtime, index, top_ids, timings=timings)
    if classifier and config.metrics.style_classifier:
        _fit_classifier(assets)
    return assets


def _fit_classifier(assets: Assets) -> None:
    from gpt2ft.style import StyleClassifier, load_other_novels

    t = time.perf_counter()
    folder = other_novels_folder(assets.config.data.other_corpora, assets.book.source)
    try:
        others = load_other_novels(folder, Path(assets.config.data.cache_dir))
    except UserError as exc:
        # style_prob is one metric among several; the study still means something without it.
        log.warning("style_prob is off: %s", exc)
        return
    clf = StyleClassifier.fit(assets.book.train_text, assets.book.heldout_text, others,
                              seed=assets.config.train.seed)
    assets.classifier = clf
    # Out-of-domain reference sequences: up to 20 chunks from each novel.
    for text in others.values():
        ids = encode(assets.tokenizer, normalise_ws(text[:60_000])).tolist()
        assets.other_ids.extend(_chunks(ids, CHUNK_TOKENS, 20))
    assets.timings["classifier_seconds"] = time.perf_counter() - t


def _chunks(ids: Sequence[int], size: int, limit: Optional[int] = None) -> list[list[int]]:
    """Consecutive ``size``-token pieces of ``ids``, evenly spread when ``limit`` caps them."""
    pieces = [list(ids[i:i + size]) for i in range(0, len(ids) - size + 1, size)]
    if limit is not None and len(pieces) > limit:
        step = len(pieces) / limit
        pieces = [pieces[int(i * step)] for i in range(limit)]
    return pieces


def renormalise(tokenizer, samples: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[str]]:
    """Decode, collapse whitespace, re-encode: the sample side of the metrics' convention."""
    texts = [normalise_ws(tokenizer.decode(s, skip_special_tokens=True)) for s in samples]
    return [encode(tokenizer, t).tolist() if t else [] for t in texts], texts


def measure_samples(assets: Assets, samples: Sequence[Sequence[int]], texts: Optional[Sequence[str]] = None,
                    seed: int = 0) -> dict[str, float]:
    """Every sample metric (with bootstrap standard errors) for normalised token sequences."""
    cfg = assets.config.metrics
    idx = assets.index
    samples = [list(s) for s in samples]
    out: dict[str, float] = {}

    def top(s):
        return M.top100_ratio(s, assets.top_ids)

    def mem(s):
        return M.memorization(s, idx, cfg.ngram)

    out["top100_ratio"] = top(samples)
    out["memorization"] = mem(samples)
    out["memorization_4"] = M.memorization(samples, idx, 4)
    out["memorization_16"] = M.memorization(samples, idx, 16)
    out["longest_copy"] = float(M.longest_copy(samples, idx)[0])
    flat = [t for s in samples for t in s]
    out["style_js"] = M.js_divergence(flat, assets.data.heldout_ids)
    if cfg.bootstrap:
        out["top100_ratio_se"] = M.bootstrap_se(samples, top, cfg.bootstrap, seed)
        out["memorization_se"] = M.bootstrap_se(samples, mem, cfg.bootstrap, seed)
    if assets.classifier is not None:
        if texts is None:
            texts = [assets.tokenizer.decode(s) for s in samples]
        probs = assets.classifier.prob(list(texts))
        out["style_prob"], out["style_prob_se"] = M.mean_se(probs)
    return out


def matched_js(assets: Assets, seqs: Sequence[Sequence[int]], leave_out: bool, draws: int = 20) -> float:
    """``style_js`` of a reference text at the size of one measurement (``n_samples`` pieces).

    JS divergence between a small sample and a large text is biased upward by the sample's
    size alone (most of a 50k vocabulary is unseen in 1,000 tokens), so a reference is only
    comparable when drawn at the samples' size: the mean over ``draws`` random subsets. For
    the held-out book itself each subset is compared with the rest of the held-out text, not
    with a distribution that contains it.
    """
    import random

    n = assets.config.sample.n_samples
    if len(seqs) < n + (1 if leave_out else 0):
        return math.nan
    rng = random.Random(assets.config.train.seed)
    values = []
    for _ in range(draws):
        pick = set(rng.sample(range(len(seqs)), n))
        sample = [t for i in pick for t in seqs[i]]
        if leave_out:
            rest = [t for i, s in enumerate(seqs) if i not in pick for t in s]
        else:
            rest = assets.data.heldout_ids
        values.append(M.js_divergence(sample, rest))
    return sum(values) / len(values)


def extraction(assets: Assets, model) -> dict[str, float]:
    """``extractable_rate``: greedy continuations of training prefixes that reproduce the true
    continuation exactly; ``extractable_rate_heldout``: the same from held-out prefixes."""
    cfg = assets.config.metrics
    if cfg.extraction_prompts == 0:
        return {}
    k, n = cfg.extraction_prompts, cfg.extraction_tokens
    eos = assets.tokenizer.eos_token_id
    out = {}
    # Prompts come from the raw token streams the model was trained on, not the normalised ones.
    for name, stream in (("extractable_rate", assets.data.train_windows),
                         ("extractable_rate_heldout", assets.data.heldout_windows)):
        ids = stream.flatten().tolist()
        pieces = _chunks(ids, 2 * n, k)
        if not pieces:
            continue
        conts = greedy(model, assets.runtime, [p[:n] for p in pieces], n, eos)
        out[name] = M.extractable_rate(conts, [p[n:] for p in pieces])
    return out


def measure_model(assets: Assets, model, n_samples: int,
                  seed: int) -> tuple[dict[str, float], list[str], list[list[int]]]:
    """Sample from ``model`` as the method does and measure; returns (metrics, texts, ids)."""
    sc = assets.config.sample
    raw = sample(model, assets.tokenizer, assets.runtime, n_samples, sc.new_tokens, seed,
                 sc.top_k, sc.temperature)
    ids, texts = renormalise(assets.tokenizer, raw)
    out = measure_samples(assets, ids, texts, seed)
    out.update(extraction(assets, model))
    return out, texts, ids


def compute_references(assets: Assets, with_base: bool = True) -> dict[str, float]:
    """book_*, other_*, train_* and base_* values of every sample metric."""
    d = assets.data
    refs: dict[str, float] = {}
    sources = {"book": _chunks(d.heldout_ids, CHUNK_TOKENS),
               "train": _chunks(d.train_ids, CHUNK_TOKENS, 200)}
    if assets.other_ids:
        sources["other"] = assets.other_ids
    for prefix, seqs in sources.items():
        assets.reference_samples[prefix] = seqs
        for k, v in measure_samples(assets, seqs, seed=assets.config.train.seed).items():
            refs[f"{prefix}_{k}"] = v
        refs[f"{prefix}_style_js"] = matched_js(assets, seqs, leave_out=prefix == "book")
    if with_base:
        t = time.perf_counter()
        model = assets.base_model.to(assets.runtime.device)
        base, _, ids = measure_model(assets, model, assets.config.sample.n_samples, assets.config.train.seed)
        from gpt2ft.train import evaluate

        tc = assets.config.train
        base["heldout_loss"] = evaluate(model, d.heldout_windows, tc.batch_size, assets.runtime, tc.eval_batches)
        assets.base_model = model.to("cpu")
        assets.reference_samples["base"] = ids
        refs.update({f"base_{k}": v for k, v in base.items()})
        assets.timings["base_measure_seconds"] = time.perf_counter() - t
    if assets.classifier is not None:
        refs["style_classifier_accuracy"] = assets.classifier.heldout_accuracy
    assets.references = refs
    return refs


def freeze_long_lived() -> None:
    """Move the study's long-lived objects (tokenizer, index, base model, ~700k objects) out of
    the garbage collector's view, so the collection after every trial does not walk them again."""
    import gc

    gc.collect()
    gc.freeze()


def free_accelerator() -> None:
    """Return cached accelerator memory between trials."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
