"""The training loss compiled once per process, ``torch.compile`` mode and batch shape.

A study trains a fresh copy of the base model in every trial, and ``torch.compile(model)``
compiles each copy anew (15-40 s on a GPU), which a trial of a few hundred steps never earns
back. Here the compiled function takes the model as an argument: dynamo traces its parameters
as graph inputs, so a second copy of the same architecture passes the guards and reuses the
graph (tests/test_compiled.py asserts no new graph appears). Only full batches are compiled;
the one short batch at an epoch's end runs eager, so a trial costs one compile, not two.

A compile that fails (no C++ compiler, an unsupported op) is logged once, with its cause, and
leaves the process on eager steps for that mode: a study must not die of an optimisation. Only
the compiler's own errors do that: an out-of-memory or another device error inside a compiled
step is the step's (eager would hit it too), so it propagates and compile stays on.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Optional

import torch
from transformers.loss.loss_utils import ForCausalLMLoss

_COMPILED: dict[tuple, Callable] = {}
_BROKEN: set[str] = set()  # modes whose compile failed in this process
BACKEND = "inductor"  # torch.compile's default; the tests swap in a cheaper one
#: inductor's errors that are not TorchDynamoExceptions (dynamo wraps most failures in
#: BackendCompilerFailed/InductorError, but a backward compiled at its first call raises them
#: bare). Looked up by name: the set moves between torch versions (2.11 on the GPU machine).
INDUCTOR_ERRORS = ("CppCompileError", "InvalidCxxCompiler", "OperatorIssue", "SubgraphLoweringException",
                   "CppWrapperCodegenError")

log = logging.getLogger(__name__)


def causal_lm_loss(model, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The mean next-token loss of batch ``x``: ``model(input_ids=x, labels=x).loss``, computed
    as transformers computes it (the same function on the same logits, so the same numbers).
    ``labels`` (training with the goldfish loss, ``gpt2ft.goldfish``) is ``x`` with dropped
    targets set to the ignore index, which the same function leaves out of the mean.

    The one form of the loss: the compiled and the eager training step, held-out evaluation and
    the study's cost estimate all call it. The loss is taken from the logits with transformers'
    own ``ForCausalLMLoss`` because GPT-2's ``loss_function`` property logs a warning on every
    call (its class name maps to no loss type), which breaks dynamo's graph in two."""
    logits = model(input_ids=x).logits
    return ForCausalLMLoss(logits, x if labels is None else labels, vocab_size=logits.shape[-1])


def compiled_loss(mode: str, shape: tuple[int, ...], device: torch.device) -> Callable:
    """The compiled ``causal_lm_loss`` for this mode, batch shape and device, made once."""
    key = (mode, BACKEND, tuple(shape), device.type)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(causal_lm_loss, mode=None if mode == "default" else mode,
                                       dynamic=False, backend=BACKEND)
    return _COMPILED[key]


def forward_backward(model, x: torch.Tensor, mode: str, full_batch: bool,
                     autocast: Callable[[], Any], labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Forward, loss (inside ``autocast()``) and backward of a training step on batch ``x``
    (``labels``: the goldfish loss's, else ``x``); returns the loss. Compiled when ``mode`` is not
    ``off`` and ``x`` is a full batch, else eager."""
    if mode != "off" and full_batch and mode not in _BROKEN:
        loss = _compiled_step(model, x, mode, autocast, labels)
        if loss is not None:
            return loss
    with autocast():
        loss = causal_lm_loss(model, x, labels)
    loss.backward()
    return loss


def _compiled_step(model, x: torch.Tensor, mode: str, autocast: Callable[[], Any],
                   labels: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The compiled step's loss, or None when the compile failed (the step then runs eagerly).

    AOTAutograd compiles the backward at its first call, so a failure can come from either
    half; gradients are empty before a step (``fit`` zeroes them after each), so on a failure
    they are cleared and the step runs again eagerly."""
    try:
        fn = compiled_loss(mode, tuple(x.shape), x.device)
    except Exception as exc:  # torch.compile itself refused (unsupported Python, a bad backend): nothing ran
        _fall_back(mode, exc)
        return None
    if mode == "reduce-overhead" and x.device.type == "cuda":
        # CUDA graphs reuse their output memory: mark each step so the last loss is not
        # overwritten while the logger still holds it.
        torch.compiler.cudagraph_mark_step_begin()
    try:
        with autocast():
            loss = fn(model, x) if labels is None else fn(model, x, labels)
        loss.backward()
        return loss
    except Exception as exc:
        device = next((e for e in _chain(exc) if _is_device_error(e)), None)
        if device is exc or not _is_compile_error(exc):
            raise
        if device is not None:  # out of memory while compiling (autotuning): still the device's
            raise device from exc
        _fall_back(mode, exc)
        model.zero_grad(set_to_none=True)
        return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps (dynamo's ``inner_exception``, causes, contexts)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = getattr(exc, "inner_exception", None) or exc.__cause__ or exc.__context__


def _is_device_error(exc: BaseException) -> bool:
    accelerator = getattr(torch, "AcceleratorError", torch.OutOfMemoryError)  # CUDA errors, torch >= 2.8
    return isinstance(exc, (torch.OutOfMemoryError, accelerator, MemoryError))


def _is_compile_error(exc: BaseException) -> bool:
    from torch._inductor import exc as inductor  # here: a 2 s import, needed only on a failure

    own = tuple(getattr(inductor, name) for name in INDUCTOR_ERRORS if hasattr(inductor, name))
    return isinstance(exc, (torch._dynamo.exc.TorchDynamoException, *own))


def _fall_back(mode: str, exc: BaseException) -> None:
    """Turn ``mode`` off for this process and say why, once (the cause's class and message)."""
    _BROKEN.add(mode)
    causes = " <- ".join(f"{e.__class__.__name__}: {next(iter(str(e).strip().splitlines()), '')}"
                         for e in _chain(exc))
    log.warning("torch.compile (mode %s) failed, training runs eager from here: %s", mode, causes)


def reset() -> None:
    """Forget the compiled functions and failures (tests, benchmarks)."""
    _COMPILED.clear()
    _BROKEN.clear()
    torch._dynamo.reset()
