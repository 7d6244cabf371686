"""Sampling for the metrics, and greedy decoding (the extraction test's definition).

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
    step by step: the definition ``gpt2ft.extraction.suffix_scores`` computes in one pass."""
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


def _last_logits(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    """The logits of the last ``n`` positions: only those through ``logits_to_keep`` (transformers'
    causal LMs), else all of them cut (a model whose forward lacks it)."""
    mask = torch.ones_like(ids)
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        return model(input_ids=ids, attention_mask=mask, logits_to_keep=n).logits
    return model(input_ids=ids, attention_mask=mask).logits[:, -n:]
