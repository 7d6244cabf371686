"""Extraction: does a prefix of the text make the model reproduce the suffix that follows it?

Every training window is cut into prompts: a ``prefix``-token prefix and the ``suffix`` tokens
after it, at every ``suffix``-token offset the window allows (32 + 32 in a 128-token window: offsets
0, 32 and 64), evenly spread to at most ``cap`` prompts over the book. One teacher-forced pass over
prefix + suffix gives, for each prompt and from the same logits:

* **greedy exact match** (Carlini et al. 2021/2023): every argmax equals the true token;
* the probability that **one draw of the study's own sampler** reproduces the suffix (Hayes et al.
  2024, "Measuring memorization in language models via probabilistic extraction"): the product of
  the warped probabilities of the suffix's tokens, warped exactly as ``gpt2ft.generate.sample``'s
  ``generate`` call warps them (EOS banned, temperature, top-k keeping ties, softmax). A token outside
  the top k has probability 0 under the sampler, so such a suffix can never be drawn.

From the per-prompt probabilities ``p``: ``extraction_prob`` (mean ``p``), the (n, q)-discoverable
rate (share of prompts that at least one of n draws reproduces with probability >= q, i.e.
``1 - (1 - p)^n >= q``) and the median log10 ``p``. The same on held-out windows is the reference:
a suffix of unseen text that the model "extracts" is one it can predict, not one it copied. It has
at most as many prompts as the training side, so both sides' rates move in the same steps.

The same pass gives each prompt's suffix loss and Min-K%++ score, from which ``gpt2ft.membership``
tells training prompts from held-out ones: membership costs no pass of its own.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from gpt2ft.generate import _eos, _last_logits
from gpt2ft.model import Runtime

#: log10 p reported for a suffix the sampler cannot draw at all (a token outside its top k): MLflow
#: cannot store -inf (it becomes -1.8e308), and no suffix the sampler can draw comes near it.
LOG10P_FLOOR = -999.0
#: The metrics of one side (training prompts; ``_heldout`` after each name for held-out ones).
METRICS = ("extractable_rate", "extraction_prob", "discoverable_rate", "extraction_log10p")
#: Prompts per teacher-forced batch: each keeps suffix x vocabulary float log-probabilities (40 x 32 x 50k:
#: 260 MB, twice over for Min-K%++); on the 2-core CPU 40 prompts a batch took 1.0 s where 16 took 1.2 s.
BATCH = 40


def spread(total: int, cap: int) -> list[int]:
    """At most ``cap`` of ``range(total)``, evenly spread."""
    if total <= cap:
        return list(range(total))
    return [int(i * total / cap) for i in range(cap)]


def prompts(windows: torch.Tensor, prefix: int, suffix: int, cap: int) -> torch.Tensor:
    """``(K, prefix + suffix)`` prompt rows: every ``suffix``-token offset of every window where a
    prefix and its suffix fit, in book order, evenly spread to at most ``cap`` rows."""
    span = prefix + suffix
    if windows.ndim != 2 or windows.shape[1] < span or windows.shape[0] == 0 or cap <= 0:
        return torch.empty((0, span), dtype=torch.long)
    rows = windows.unfold(1, span, suffix).reshape(-1, span)
    return rows[spread(rows.shape[0], cap)]


def banned_ids(model, tokenizer) -> list[int]:
    """The tokens ``sample`` can never draw: its ``bad_words_ids`` EOS and, through
    ``min_length == max_length``, every EOS token of the model's generation config."""
    ids = {_eos(tokenizer)}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(int(e) for e in ([] if eos is None else eos if isinstance(eos, (list, tuple)) else [eos]))
    return sorted(ids)


def warped_target_log_probs(logp: torch.Tensor, targets: torch.Tensor, top_k: int, temperature: float,
                            banned: Sequence[int]) -> torch.Tensor:
    """Log-probability of each target token under the study's sampler, from the model's own
    log-probabilities ``logp`` (a log-softmax in float32), as transformers' processors compute it in
    ``generate``: banned tokens to -inf, then temperature, then top-k (every token below the k-th
    largest score removed, so ties at the k-th are kept), then a softmax.

    A softmax does not change under a shift, so the log-probabilities stand for the logits; only the
    kept tokens enter it, so it is taken over the top-k values (ties of the k-th beyond them counted
    only where there are any) instead of masking the whole vocabulary: the same numbers, in a
    fraction of the passes over a 50k vocabulary."""
    vocab = logp.shape[-1]
    ban = torch.tensor(sorted({b for b in banned if b < vocab}), dtype=torch.long, device=logp.device)
    target = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    out_of_reach = torch.isin(targets, ban)
    if top_k and top_k < vocab - ban.numel():
        vals, idx = torch.topk(logp, top_k + ban.numel() + 1, dim=-1)
        vals = vals.masked_fill(torch.isin(idx, ban), -math.inf).sort(dim=-1, descending=True).values
        kept, kth, after = vals[..., :top_k], vals[..., top_k - 1], vals[..., top_k]
        extra = torch.zeros_like(kth)
        if bool((after == kth).any()):  # a tie at the k-th beyond the k returned: the sampler keeps it too
            # Common in bf16, whose logits take few distinct values; counted without copying logp.
            at_kth = kth.unsqueeze(-1)
            ties = (logp == at_kth).sum(-1) - (logp[..., ban] == at_kth).sum(-1) - (kept == at_kth).sum(-1)
            extra = ties.float()
        norm = torch.logaddexp(torch.logsumexp(kept / temperature, dim=-1), kth / temperature + torch.log(extra))
        out_of_reach |= target < kth
    else:
        allowed = logp.clone() if ban.numel() else logp
        allowed[..., ban] = -math.inf
        norm = torch.logsumexp(allowed / temperature, dim=-1)
    return torch.where(out_of_reach, torch.full_like(target, -math.inf), target / temperature - norm)


@torch.no_grad()
def suffix_scores(model, runtime: Runtime, rows: torch.Tensor, prefix: int, top_k: int, temperature: float,
                  banned: Sequence[int], batch: int = BATCH, minkpp: bool = True) -> dict[str, np.ndarray]:
    """Per prompt row, from one teacher-forced pass over prefix + suffix instead of n decoding steps:
    ``exact`` (greedy decoding reproduces the suffix), ``log10p`` (log10 of the probability that one
    sampler draw does), ``loss`` (the suffix's mean loss in nats, unwarped) and, when ``minkpp``, its
    Min-K%++ score (``gpt2ft.membership``; 0.36 s of the demo's 2 s pass on the 2-core CPU).

    While greedy decoding follows the truth its inputs are the truth's tokens, so its choice at each
    step is the argmax of the logits the pass gives at that position, and it reproduces the suffix
    exactly when every argmax is the true token; the sampler's probability of the suffix is the
    product of the same logits' warped probabilities. The pass costs the same whether the model
    copies or not (0.3 s for SmolLM2's 16 prompts of 32 + 32 tokens here, where decoding took 1.6 s),
    and on a GPU it is one launch instead of n. Its logits come from one batched pass instead of a
    growing cache, so they differ in their last bits (docs/measure_speed.md): a greedy choice moves
    only at a near tie."""
    from gpt2ft.membership import min_k_plus_plus

    out: dict[str, list] = {"exact": [], "log10p": [], "loss": [], "minkpp": []}
    was_training = model.training
    model.eval()
    n = rows.shape[1] - prefix
    for i in range(0, rows.shape[0], batch):
        chunk = rows[i:i + batch].to(runtime.device)
        truth = chunk[:, prefix:]
        with runtime.autocast():
            logits = _last_logits(model, chunk[:, :-1], n)
        logp = torch.log_softmax(logits.float(), dim=-1)
        out["exact"].append((logp.argmax(dim=-1) == truth).all(dim=1).cpu())
        lp = warped_target_log_probs(logp, truth, top_k, temperature, banned)
        out["log10p"].append((lp.double().sum(dim=1) / math.log(10)).cpu())
        token = logp.gather(-1, truth.unsqueeze(-1)).squeeze(-1)
        out["loss"].append((-token.mean(dim=1)).double().cpu())
        if minkpp:
            out["minkpp"].append(min_k_plus_plus(logp, token).double().cpu())
    model.train(was_training)
    if not out["exact"]:
        return {"exact": np.zeros(0, dtype=bool), **{k: np.zeros(0) for k in ("log10p", "loss")}}
    return {k: torch.cat(v).numpy() for k, v in out.items() if v}


def discoverable(log10p: np.ndarray, n: int, q: float) -> np.ndarray:
    """Per prompt: does at least one of ``n`` independent draws reproduce the suffix with
    probability >= ``q``? ``1 - (1 - p)^n``, computed through log1p so a tiny p is not lost."""
    p = np.power(10.0, np.asarray(log10p, dtype=np.float64))
    with np.errstate(divide="ignore"):
        hit = -np.expm1(n * np.log1p(-np.minimum(p, 1.0)))
    return hit >= q


def summarise(scores: dict[str, np.ndarray], n: int, q: float, side: str = "") -> dict[str, float]:
    """The extraction metrics of one side's :func:`suffix_scores` (``side`` ``""`` for training
    prompts, ``_heldout``)."""
    exact, log10p = scores["exact"], scores["log10p"]
    if len(exact) == 0:
        return {}
    floored = np.maximum(np.nan_to_num(log10p, nan=LOG10P_FLOOR, neginf=LOG10P_FLOOR), LOG10P_FLOOR)
    return {f"extractable_rate{side}": float(np.mean(exact)),
            f"extraction_prob{side}": float(np.mean(np.power(10.0, floored))),
            f"discoverable_rate{side}": float(np.mean(discoverable(log10p, n, q))),
            f"extraction_log10p{side}": float(np.median(floored))}
