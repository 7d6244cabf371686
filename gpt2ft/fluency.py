"""Fluency: how probable a text is under a causal language model (perplexity).

A model's samples can match the book's common-word share (style) and copy nothing
(memorization) and still be word salad; perplexity under a fixed judge model (the
pretrained base model, not the fine-tuned one) tells fluent text from salad.

METRIC_NAMES
------------
=================  ===========================================================  ========
name               meaning                                                      better
=================  ===========================================================  ========
fluency_ppl        perplexity of the samples under the judge model              (book)
fluency_ppl_se     its standard error (delta method over sequences)             -
book_fluency_ppl   the same for held-out book pieces of the samples' length     -
other_fluency_ppl  the same for pieces of other novels                          -
=================  ===========================================================  ========

Blind spot: perplexity rewards predictability, and nothing is more predictable than a
loop. Text that repeats one phrase scores a LOW perplexity, lower than the book's, once
the judge has seen the phrase twice in its context. So lower is not simply better: read
``fluency_ppl`` against ``book_fluency_ppl``, and always beside the diversity metrics
(``distinct_2``, ``repetition_4`` in :mod:`gpt2ft.metrics`), which catch exactly the text
that perplexity flatters. Perplexity catches what they miss: varied but meaningless text.

Unlike :mod:`gpt2ft.metrics` this module needs torch (it runs a model); it does no
tracking and no I/O.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

METRIC_NAMES: dict[str, str] = {
    "fluency_ppl": "perplexity of the samples under the judge model",
    "fluency_ppl_se": "standard error of fluency_ppl (delta method over sequences)",
    "book_fluency_ppl": "perplexity of held-out book pieces of the samples' length",
    "other_fluency_ppl": "perplexity of pieces of other novels of the samples' length",
}


@torch.no_grad()
def sequence_nll(model, sequences: Sequence[Sequence[int]], device: torch.device | str,
                 batch_size: int = 16) -> list[tuple[float, int]]:
    """``(summed NLL in nats, number of predicted tokens)`` of each sequence, in order.

    Each token after the first is predicted from the ones before it (what ``labels=input_ids``
    scores), so a sequence of L tokens contributes L - 1 predictions; shorter ones are padded
    on the right with ``attention_mask`` 0 and their padding is never scored. One no-grad
    forward pass per batch; the model is put in eval mode and its mode restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    out: list[tuple[float, int]] = []
    try:
        for i in range(0, len(sequences), batch_size):
            out.extend(_batch_nll(model, sequences[i:i + batch_size], device))
    finally:
        model.train(was_training)
    return out


def _batch_nll(model, batch: Sequence[Sequence[int]], device) -> list[tuple[float, int]]:
    width = max((len(s) for s in batch), default=0)
    if width < 2:
        return [(0.0, 0) for _ in batch]  # nothing to predict: no forward pass at all
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, s in enumerate(batch):
        ids[row, :len(s)] = torch.as_tensor([int(t) for t in s], dtype=torch.long)
        mask[row, :len(s)] = 1
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits
    # The same shift as the model's own loss: position t predicts token t + 1. In fp32 even
    # under autocast, since a mean of bf16 log-probabilities loses the digits we compare. Over
    # (positions, vocabulary) rows as the model's own loss flattens them: half the time of the
    # (batch, vocabulary, positions) layout here (0.13 s against 0.27 s for 10 x 100 SmolLM2 tokens).
    v = logits.shape[-1]
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, v).float(), ids[:, 1:].reshape(-1),
                          reduction="none").view(len(batch), width - 1)
    scored = mask[:, 1:].to(nll.dtype)
    sums = (nll * scored).sum(dim=1).tolist()
    counts = scored.sum(dim=1).long().tolist()
    return list(zip(sums, counts))


def perplexity(model, sequences: Sequence[Sequence[int]], device: torch.device | str,
               batch_size: int = 16) -> tuple[float, float]:
    """``(perplexity, standard error)`` of token-id ``sequences`` under a causal LM.

    Perplexity is ``exp`` of the mean NLL per predicted token over all sequences pooled
    (every token weighs the same, as in the model's own loss), so for one sequence it equals
    ``exp(model(input_ids, labels=input_ids).loss)``; batching does not change it.

    The standard error treats sequences as the independent units (the tokens inside one are
    not): the pooled mean NLL is a ratio estimator ``R = sum(S_i) / sum(T_i)`` of summed NLLs
    ``S_i`` over token counts ``T_i``, whose delta-method variance is
    ``sum((S_i - R T_i)^2) / (n (n - 1) mean(T)^2)``; with equal lengths this is the usual
    standard error of the per-sequence mean NLLs. It goes through ``exp`` by the delta method
    again: ``se(ppl) = ppl * se(R)``. Deterministic (no resampling).

    ``(nan, nan)`` when no sequence has two tokens; the standard error is nan with fewer
    than two scored sequences.
    """
    pairs = [(s, t) for s, t in sequence_nll(model, sequences, device, batch_size) if t > 0]
    tokens = sum(t for _, t in pairs)
    if not tokens:
        return math.nan, math.nan
    mean_nll = sum(s for s, _ in pairs) / tokens
    ppl = math.exp(mean_nll)
    n = len(pairs)
    if n < 2:
        return ppl, math.nan
    mean_t = tokens / n
    resid = sum((s - mean_nll * t) ** 2 for s, t in pairs)
    se_nll = math.sqrt(resid / (n * (n - 1))) / mean_t
    return ppl, ppl * se_nll
