"""The training loss compiled once per process, ``torch.compile`` mode and batch shape.

A study trains a fresh copy of the base model in every trial, and ``torch.compile(model)``
compiles each copy anew (15-40 s on a GPU), which a trial of a few hundred steps never earns
back. Here the compiled function takes the model as an argument: dynamo traces its parameters
as graph inputs, so a second copy of the same architecture passes the guards and reuses the
graph (tests/test_compiled.py asserts no new graph appears). Only full batches are compiled;
the one short batch at an epoch's end runs eager, so a trial costs one compile, not two.

A compile that fails (no C++ compiler, an unsupported op) warns once and leaves the process
on eager steps: a study must not die of an optimisation.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from transformers.loss.loss_utils import ForCausalLMLoss

_COMPILED: dict[tuple, Callable] = {}
_BROKEN: set[str] = set()  # modes whose compile failed in this process
BACKEND = "inductor"  # torch.compile's default; the tests swap in a cheaper one


def causal_lm_loss(model, x: torch.Tensor) -> torch.Tensor:
    """``model(input_ids=x, labels=x).loss``, computed as transformers computes it.

    The loss is taken from the logits with transformers' own ``ForCausalLMLoss`` because GPT-2's
    ``loss_function`` property logs a warning on every call (its class name maps to no loss
    type), which breaks dynamo's graph in two."""
    logits = model(input_ids=x).logits
    return ForCausalLMLoss(logits, x, vocab_size=logits.shape[-1])


def compiled_loss(mode: str, shape: tuple[int, ...], device: torch.device) -> Callable:
    """The compiled ``causal_lm_loss`` for this mode, batch shape and device, made once."""
    key = (mode, BACKEND, tuple(shape), device.type)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(causal_lm_loss, mode=None if mode == "default" else mode,
                                       dynamic=False, backend=BACKEND)
    return _COMPILED[key]


def forward_backward(model, x: torch.Tensor, mode: str, full_batch: bool,
                     autocast: Callable[[], Any]) -> torch.Tensor:
    """Forward, loss (inside ``autocast()``) and backward of a training step on batch ``x``;
    returns the loss. Compiled when ``mode`` is not ``off`` and ``x`` is a full batch, else eager.

    AOTAutograd compiles the backward at its first call, so a failure can come from either
    half; gradients are empty before a step (``fit`` zeroes them after each), so on a failure
    they are cleared and the step runs again eagerly."""
    if mode != "off" and full_batch and mode not in _BROKEN:
        if mode == "reduce-overhead" and x.device.type == "cuda":
            # CUDA graphs reuse their output memory: mark each step so the last loss is not
            # overwritten while the logger still holds it.
            torch.compiler.cudagraph_mark_step_begin()
        try:
            with autocast():
                loss = compiled_loss(mode, tuple(x.shape), x.device)(model, x)
            loss.backward()
            return loss
        except Exception as exc:  # any backend failure: warn once, train on eagerly
            _BROKEN.add(mode)
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            warnings.warn(f"torch.compile (mode {mode}) failed, training runs eager from here: "
                          f"{exc.__class__.__name__}: {first_line}", RuntimeWarning, stacklevel=2)
            model.zero_grad(set_to_none=True)
    with autocast():
        loss = model(input_ids=x, labels=x).loss
    loss.backward()
    return loss


def reset() -> None:
    """Forget the compiled functions and failures (tests, benchmarks)."""
    _COMPILED.clear()
    _BROKEN.clear()
    torch._dynamo.reset()
