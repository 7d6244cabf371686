"""Measuring a model or a text against the book: every sample metric, with error bars.

The inputs (the book, the index, the classifier) come prepared from ``gpt2ft.assets``;
nothing here loads or trains anything.

Convention: every sample metric is computed on *whitespace-normalised, re-tokenized* text,
for samples and references alike, so that an n-gram matches across the book's line breaks
and sample tokens are comparable with the book's token counts.
"""
from __future__ import annotations

import contextlib
import math
import random
from typing import TYPE_CHECKING, Optional, Sequence

import torch

from gpt2ft import metrics as M
from gpt2ft.data import encode, normalise_ws
from gpt2ft.fluency import perplexity
from gpt2ft import extraction as X
from gpt2ft import membership as MI
from gpt2ft.generate import sample

if TYPE_CHECKING:  # assets imports this module; the type is only for signatures
    from gpt2ft.assets import Assets

#: Sample metrics, in the order they are printed. ``*_se`` companions are logged beside them.
SAMPLE_METRICS = ("top100_ratio", "memorization", "memorization_4", "memorization_16", "longest_copy",
                  "near_verbatim", "near_verbatim_longest", "style_js", "style_prob", "distinct_1", "distinct_2",
                  "distinct_3", "repetition_4", "fluency_ppl")
#: Metrics of the model itself (teacher-forced passes, ``extraction``), beside the sample metrics.
MODEL_METRICS = tuple(f"{m}{side}" for side in ("", "_heldout") for m in X.METRICS) + MI.METRICS
#: Diversity statistics; a reference text must be measured at the samples' size for them
#: (distinct-n falls as a text grows), see :func:`matched_diversity`.
DIVERSITY = {"distinct_1": lambda s: M.distinct_n(s, 1), "distinct_2": lambda s: M.distinct_n(s, 2),
             "distinct_3": lambda s: M.distinct_n(s, 3), "repetition_4": lambda s: M.repetition_rate(s, 4)}
#: At most this many sequences are judged for fluency: a reference text has hundreds, and each
#: is a forward pass of the base model (seconds on a CPU); 20 give an error bar of a few %.
FLUENCY_PIECES = 20


def renormalise(tokenizer, samples: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[str]]:
    """Decode, collapse whitespace, re-encode: the sample side of the metrics' convention."""
    texts = [normalise_ws(tokenizer.decode(s, skip_special_tokens=True)) for s in samples]
    return [encode(tokenizer, t).tolist() if t else [] for t in texts], texts


def measure_samples(assets: "Assets", samples: Sequence[Sequence[int]], texts: Optional[Sequence[str]] = None,
                    seed: int = 0, fluency: bool = True) -> dict[str, float]:
    """Every sample metric (with bootstrap standard errors) for normalised token sequences;
    ``fluency`` off skips the base model's forward pass (the training text needs none)."""
    cfg = assets.config.metrics
    idx = assets.index
    samples = [list(s) for s in samples]
    out: dict[str, float] = {}
    # The pooled ratios and their bootstraps from one count per sample: M.top100_ratio and
    # M.memorization pool these same counts, and M.bootstrap_ratio_se resamples them.
    top = M.top100_counts(samples, assets.top_ids)
    mem = M.memorization_counts(samples, idx, (cfg.ngram, 4, 16))
    for name, (num, den) in (("top100_ratio", top), ("memorization", mem[cfg.ngram]),
                             ("memorization_4", mem[4]), ("memorization_16", mem[16])):
        out[name] = M.pooled_ratio(num, den)
    out["longest_copy"] = float(longest_copy(assets, samples)[0])
    if texts is None:
        texts = [assets.tokenizer.decode(s) for s in samples]
    out.update(assets.word_index.measure(texts))
    flat = [t for s in samples for t in s]
    out["style_js"] = M.js_divergence(flat, assets.data.heldout_ids)
    if cfg.bootstrap:
        out["top100_ratio_se"] = M.bootstrap_ratio_se(*top, cfg.bootstrap, seed)
        out["memorization_se"] = M.bootstrap_ratio_se(*mem[cfg.ngram], cfg.bootstrap, seed)
    out.update({name: fn(samples) for name, fn in DIVERSITY.items()})
    if fluency:
        out["fluency_ppl"], out["fluency_ppl_se"] = perplexity(
            assets.fluency_judge, chunks_of(samples, FLUENCY_PIECES), assets.runtime.device)
    if assets.classifier is not None and assets.classifier.usable:
        probs = assets.classifier.prob(list(texts))
        out["style_prob"], out["style_prob_se"] = M.mean_se(probs)
    return out


def longest_copy(assets: "Assets", samples: Sequence[Sequence[int]]) -> tuple[int, str]:
    """The ``longest_copy`` metric of ``samples`` (normalised token sequences): the most tokens any
    of them shares verbatim with the training text, and that span as text for a person to read
    ("" when nothing is copied). The one place the span is found, for the metric and the trial's
    ``longest_copy.txt`` alike."""
    length, which, start = M.longest_copy(samples, assets.index)
    if length <= 0:
        return length, ""
    span = samples[which][start:start + length]
    return length, (f"Longest copied span: {length} tokens (sample {which + 1}, token {start}).\n\n"
                    f"{assets.tokenizer.decode(span)}\n")


def matched_js(assets: "Assets", seqs: Sequence[Sequence[int]], leave_out: bool, draws: int = 20) -> float:
    """``style_js`` of a reference text at the size of one measurement (``n_samples`` pieces).

    JS divergence between a small sample and a large text is biased upward by the sample's
    size alone (most of a 50k vocabulary is unseen in 1,000 tokens), so a reference is only
    comparable when drawn at the samples' size: the mean over ``draws`` random subsets. For
    the held-out book itself each subset is compared with the rest of the held-out text, not
    with a distribution that contains it.
    """
    n = assets.config.sample.n_samples
    if len(seqs) < n + (1 if leave_out else 0):
        return math.nan
    rng = random.Random(assets.config.train.seed)
    values = []
    for _ in range(draws):
        pick = set(rng.sample(range(len(seqs)), n))
        drawn = [t for i in pick for t in seqs[i]]
        if leave_out:
            rest = [t for i, s in enumerate(seqs) if i not in pick for t in s]
        else:
            rest = assets.data.heldout_ids
        values.append(M.js_divergence(drawn, rest))
    return sum(values) / len(values)


def chunks_of(seqs: Sequence[Sequence[int]], limit: int) -> list[Sequence[int]]:
    """At most ``limit`` of ``seqs``, evenly spread."""
    if len(seqs) <= limit:
        return list(seqs)
    step = len(seqs) / limit
    return [seqs[int(i * step)] for i in range(limit)]


def matched_diversity(assets: "Assets", seqs: Sequence[Sequence[int]], draws: int = 20) -> dict[str, float]:
    """Diversity of a reference text at the samples' size: mean and spread (``*_sd``) over
    ``draws`` random sets of ``n_samples`` pieces, so it compares with one trial's samples."""
    out: dict[str, float] = {}
    for name, fn in DIVERSITY.items():
        out[name], out[f"{name}_sd"] = M.matched_reference(seqs, assets.config.sample.n_samples, fn, draws,
                                                           assets.config.train.seed)
    return out


def chunks(ids: Sequence[int], size: int, limit: Optional[int] = None) -> list[list[int]]:
    """Consecutive ``size``-token pieces of ``ids``, evenly spread when ``limit`` caps them."""
    pieces = [list(ids[i:i + size]) for i in range(0, len(ids) - size + 1, size)]
    return chunks_of(pieces, limit) if limit is not None else pieces


def prompt_rows(assets: "Assets") -> tuple[torch.Tensor, int]:
    """The extraction prompts, training ones first, and how many of them are training ones: at most
    ``metrics.extraction_prompts`` per side, the held-out side no larger than the training side.
    Cut from the raw token streams the model was trained on, not the normalised ones."""
    cfg = assets.config.metrics
    train = X.prompts(assets.data.train_windows, cfg.extraction_prefix, cfg.extraction_tokens, cfg.extraction_prompts)
    held = X.prompts(assets.data.heldout_windows, cfg.extraction_prefix, cfg.extraction_tokens,
                     min(cfg.extraction_prompts, train.shape[0]))
    return torch.cat([train, held]), train.shape[0]


def prompt_scores(assets: "Assets", model) -> tuple[dict, int]:
    """:func:`gpt2ft.extraction.suffix_scores` of every prompt of :func:`prompt_rows`, under the
    study's sampler, and the number of training prompts."""
    rows, n_train = prompt_rows(assets)
    sc = assets.config.sample
    cfg = assets.config.metrics
    scores = X.suffix_scores(model, assets.runtime, rows, cfg.extraction_prefix, sc.top_k, sc.temperature,
                             X.banned_ids(model, assets.tokenizer), minkpp=cfg.min_k_plus_plus)
    return scores, n_train


def extraction(assets: "Assets", model) -> dict[str, float]:
    """What the model knows of its training text, from one teacher-forced pass over the prompts (no
    sampling): greedy and sampled extraction on training and held-out prompts (``gpt2ft.extraction``)
    and membership inference against the base model (``gpt2ft.membership``)."""
    cfg = assets.config.metrics
    if cfg.extraction_prompts == 0:
        return {}
    scores, n = prompt_scores(assets, model)
    out: dict[str, float] = {}
    for side, part in (("", slice(0, n)), ("_heldout", slice(n, None))):
        out.update(X.summarise({k: v[part] for k, v in scores.items()}, cfg.discoverable_n, cfg.discoverable_p, side))
    out.update(MI.membership(scores["loss"], scores.get("minkpp"), assets.references.losses.get("base"), n,
                             cfg.bootstrap, assets.config.train.seed))
    return out


def measure_model(assets: "Assets", model, n_samples: int,
                  seed: int) -> tuple[dict[str, float], list[str], list[list[int]]]:
    """Sample from ``model`` as the method does and measure; returns (metrics, texts, ids)."""
    sc = assets.config.sample
    # The weights in the sampling precision (gpt2ft.sampler), for decoding: ten rows a step, where
    # bf16 halves the bytes each step streams.
    decoder = assets.sampler.weights_of(model)
    # A sampling copy (and the judge beside it) is never trained, so it decodes in inference mode,
    # which skips autograd's bookkeeping (10 x 100 samples took 5.1 s against no_grad's 5.3 s,
    # the same tokens); the training model itself keeps no_grad, so no inference tensor can reach
    # a later backward pass.
    with torch.inference_mode() if decoder is not model else contextlib.nullcontext():
        raw = sample(decoder, assets.tokenizer, assets.runtime, n_samples, sc.new_tokens, seed,
                     sc.top_k, sc.temperature, decode=sc.decode)
        ids, texts = renormalise(assets.tokenizer, raw)
        out = measure_samples(assets, ids, texts, seed)
    # The teacher-forced pass runs on the model itself (fp32 on a CPU, bf16 autocast on CUDA): its
    # thousands of rows a product are compute-bound, and this project's CPU (AVX-512 bf16, no AMX)
    # multiplies 2,520 x 576 by 576 x 1,536 in 21 ms in fp32 and 30 ms in bf16. On the demo the
    # measurement took 23 s with the bf16 copy's pass and 17 s with this one (docs/measure_speed.md).
    # The sampler's warp is applied to the model's own logits, not to their bf16 rounding.
    out.update(extraction(assets, model))
    return out, texts, ids
