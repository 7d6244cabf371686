"""Sampling for the metrics and greedy continuations for the extraction test.

Sampling follows the method: ``do_sample=True``, the EOS token banned through
``bad_words_ids`` and ``min_length == max_length``, so every sequence has exactly
``new_tokens`` new tokens and the ratios are over a fixed number of tokens. All sequences
are drawn in one batched ``generate`` call with the KV cache.

``decode`` chooses how that call decodes, not what it draws: ``dynamic`` (transformers'
growing cache, the default), ``static`` (a preallocated cache) or ``static-compile`` (the
decoding step compiled by ``torch.compile`` over the static cache; CUDA graphs on CUDA). On
the 2-core CPU all three drew the same tokens and neither static one was faster (+3% and -1%
lightly loaded, +23% and +71% loaded), while the compile costs ~2 minutes cold
(docs/measure_speed.md); so ``sample.decode`` is ``dynamic`` by default, and
``bench/measure.py --decode`` measures the others on another machine. A measurement decodes with
one persistent sampling copy of the weights (``gpt2ft.sampler``), so a compiled decode is kept
across trials instead of recompiling for each fresh model.
"""
from __future__ import annotations

import inspect
from typing import Sequence

import torch

from gpt2ft.config import SAMPLE_DECODES
from gpt2ft.model import Runtime, prompt_token_id

#: The ways :func:`sample` can decode (module docstring).
DECODES = SAMPLE_DECODES


def _eos(tokenizer) -> int:
    return int(tokenizer.eos_token_id if tokenizer.eos_token_id is not None else prompt_token_id(tokenizer))


@torch.no_grad()
def sample(model, tokenizer, runtime: Runtime, n: int, new_tokens: int, seed: int,
           top_k: int = 50, temperature: float = 1.0,
           prompt_ids: Sequence[int] | None = None, decode: str = "dynamic") -> list[list[int]]:
    """``n`` sampled sequences of exactly ``new_tokens`` new token ids (the prompt excluded).

    The prompt is the BOS token unless ``prompt_ids`` are given (``gpt2ft generate``); ``decode``
    is one of ``DECODES``."""
    extra = _decode_kwargs(decode, runtime.device)
    was_training = model.training
    model.eval()
    ids = list(prompt_ids) if prompt_ids else [prompt_token_id(tokenizer)]
    prompt = torch.tensor([ids] * n, dtype=torch.long, device=runtime.device)
    eos = _eos(tokenizer)
    # fork_rng keeps sampling reproducible for a seed without disturbing the training RNG.
    devices = [runtime.device.index or 0] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), runtime.autocast():
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
            top_k=top_k, top_p=1.0, temperature=temperature,
            min_length=len(ids) + new_tokens, max_length=len(ids) + new_tokens,
            bad_words_ids=[[eos]], pad_token_id=eos, use_cache=True, **extra)
    model.train(was_training)
    return out[:, len(ids):].tolist()


def _decode_kwargs(decode: str, device: torch.device) -> dict:
    """``generate``'s arguments for a ``decode`` of ``DECODES``."""
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {', '.join(DECODES)}, got {decode!r}")
    if decode == "dynamic":
        return {}
    if decode == "static":
        return {"cache_implementation": "static"}
    from transformers import CompileConfig

    # CUDA graphs where there is CUDA; transformers compiles on CPU only when told to.
    config = CompileConfig(dynamic=False, mode="reduce-overhead" if device.type == "cuda" else "default")
    config._compile_all_devices = True
    return {"cache_implementation": "static", "compile_config": config}


@torch.no_grad()
def greedy(model, runtime: Runtime, prompts: Sequence[Sequence[int]], new_tokens: int,
           eos_token_id: int, batch_size: int = 32) -> list[list[int]]:
    """Greedy continuations of equal-length prompts (the extraction test of Carlini et al.), decoded
    step by step: the definition :func:`greedy_until_wrong` computes in one pass."""
    was_training = model.training
    model.eval()
    outs: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        chunk = torch.tensor([list(p) for p in prompts[i:i + batch_size]], dtype=torch.long,
                             device=runtime.device)
        with runtime.autocast():
            out = model.generate(input_ids=chunk, attention_mask=torch.ones_like(chunk),
                                 do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 pad_token_id=eos_token_id, use_cache=True)
        outs.extend(out[:, chunk.shape[1]:].tolist())
    model.train(was_training)
    return outs


@torch.no_grad()
def greedy_until_wrong(model, runtime: Runtime, prompts: Sequence[Sequence[int]],
                       truths: Sequence[Sequence[int]], batch_size: int = 32) -> list[list[int]]:
    """Each prompt's greedy continuation up to and including its first token that differs from the
    prompt's true continuation (``truths``, all of one length n): all n tokens when greedy decoding
    reproduces the truth, so ``metrics.extractable_rate`` of these is that of :func:`greedy`'s.

    One teacher-forced forward pass over prompt + truth instead of n decoding steps. While greedy
    decoding follows the truth its inputs are the truth's tokens, so its choice at each step is the
    argmax of the logits the pass gives at that position; its first wrong token is the first
    argmax that differs. The pass costs the same whether the model copies or not (0.3 s for
    SmolLM2's 16 prompts of 32 + 32 tokens here, where decoding took 1.6 s), and on a GPU it is one
    launch instead of n. The logits come from one batched pass instead of a growing cache, so they
    differ in their last bits (docs/measure_speed.md); a choice moves only at a near tie."""
    was_training = model.training
    model.eval()
    outs: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        truth = torch.tensor([list(t) for t in truths[i:i + batch_size]], dtype=torch.long, device=runtime.device)
        chunk = torch.tensor([list(p) for p in prompts[i:i + batch_size]], dtype=torch.long, device=runtime.device)
        n = truth.shape[1]
        if n == 0:
            outs.extend([] for _ in range(len(chunk)))
            continue
        # Position t predicts token t + 1: the last n positions of prompt + truth[:-1] predict the truth.
        ids = torch.cat([chunk, truth[:, :-1]], dim=1)
        with runtime.autocast():
            logits = _last_logits(model, ids, n)
        choice = logits.argmax(dim=-1)
        right = (choice == truth).long().cumprod(dim=1).sum(dim=1).tolist()  # tokens reproduced
        for row, k in enumerate(right):
            outs.append(truth[row, :k].tolist() + choice[row, k:k + 1].tolist())
    model.train(was_training)
    return outs


def _last_logits(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    """The logits of the last ``n`` positions: only those through ``logits_to_keep`` (transformers'
    causal LMs), else all of them cut (a model whose forward lacks it)."""
    mask = torch.ones_like(ids)
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        return model(input_ids=ids, attention_mask=mask, logits_to_keep=n).logits
    return model(input_ids=ids, attention_mask=mask).logits[:, -n:]
