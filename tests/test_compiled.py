"""``train.compile``: one compile per batch shape, reused by fresh model copies; the same
losses as eager; eager again, with one logged cause, when the compile fails; an out-of-memory
inside a compiled step is not a compile failure.

The tests compile with dynamo + AOTAutograd (the ``aot_eager`` backend), which traces the
forward and the backward exactly as inductor would receive them but skips inductor's code
generation (about 50 s here, cold). ``make bench-compile`` runs the real backend."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2ft import compiled
from gpt2ft.config import TrainConfig
from gpt2ft.data import TokenData
from gpt2ft.model import resolve_runtime
from gpt2ft.train import fit

BLOCK = 16


@pytest.fixture
def counter(monkeypatch):
    """Counts dynamo's compiled graphs; a fresh compile cache before and after."""
    count = CompileCounterWithBackend("aot_eager")
    compiled.reset()
    monkeypatch.setattr(compiled, "BACKEND", count)
    yield count
    compiled.reset()


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    # No dropout: compiled code draws its dropout masks from other random streams than eager.
    conf = GPT2Config(vocab_size=128, n_positions=BLOCK, n_layer=2, n_embd=32, n_head=2,
                      bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(conf).train()


def data(n_train: int = 22) -> TokenData:
    g = torch.Generator().manual_seed(1)
    return TokenData(torch.randint(0, 128, (n_train, BLOCK), generator=g),
                     torch.randint(0, 128, (4, BLOCK), generator=g), [], [], BLOCK)


def train(model, mode: str, batch: int = 4, steps: int = 6):
    cfg = TrainConfig(lr=1e-3, epochs=2, batch_size=batch, max_steps=steps, log_every=1,
                      eval_batches=1, device="cpu", precision="fp32", compile=mode)
    return fit(cfg, model, data(), None, resolve_runtime(cfg), progress=False)


def test_loss_matches_eager_transformers_loss(base):
    """The one loss of training and evaluation is the model's own ``labels=input_ids`` loss, to the bit."""
    x = torch.randint(0, 128, (3, BLOCK))
    assert torch.equal(compiled.causal_lm_loss(base, x), base(input_ids=x, labels=x).loss)


@pytest.mark.slow
def test_fresh_copies_reuse_one_compile(base, counter):
    # 22 windows at batch 4: 5 full batches and a short one of 2 per epoch; the short one runs eager.
    eager = train(copy.deepcopy(base), "off", steps=8)
    first = train(copy.deepcopy(base), "default", steps=8)
    assert counter.frame_count == 1
    second = train(copy.deepcopy(base), "default", steps=8)
    assert counter.frame_count == 1, "a fresh model copy recompiled"
    for a, b, c in zip(eager.train_curve, first.train_curve, second.train_curve):
        assert a[0] == b[0] == c[0]
        assert b[1] == pytest.approx(a[1], rel=1e-4) and c[1] == pytest.approx(a[1], rel=1e-4)
    assert first.heldout_curve[-1][1] == pytest.approx(eager.heldout_curve[-1][1], rel=1e-4)
    train(copy.deepcopy(base), "default", batch=2, steps=2)
    assert counter.frame_count == 2  # a new batch shape is a new graph, once


def broken(*args, **kwargs):
    raise RuntimeError("no C++ compiler found")


def no_compiler(*args, **kwargs):
    from torch._inductor.exc import InvalidCxxCompiler

    raise InvalidCxxCompiler()  # "No working C++ compiler found in ...", as inductor raises it


def backward_fails():
    """A backend whose forward compiles and whose backward (compiled at its first call) fails."""
    from torch._dynamo.backends.common import aot_autograd

    return aot_autograd(fw_compiler=lambda gm, inputs: gm.forward, bw_compiler=no_compiler)


@pytest.mark.parametrize("where, cause", [
    ("torch.compile", "RuntimeError: no C++ compiler found"),  # torch.compile itself refuses
    ("forward", "BackendCompilerFailed: backend='broken' raised: <- RuntimeError: no C++ compiler found"),
    ("backward", "InvalidCxxCompiler: No working C++ compiler found")], ids=["torch.compile", "forward", "backward"])
def test_compile_failure_falls_back_to_eager_and_logs_its_cause_once(base, monkeypatch, caplog, where, cause):
    compiled.reset()
    if where == "torch.compile":
        monkeypatch.setattr(torch, "compile", broken)
    else:
        monkeypatch.setattr(compiled, "BACKEND", broken if where == "forward" else backward_fails())
    with caplog.at_level(logging.WARNING, logger="gpt2ft.compiled"):
        res = train(copy.deepcopy(base), "default", steps=4)
    assert compiled._BROKEN == {"default"}
    compiled.reset()
    ours = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(ours) == 1 and cause in ours[0], ours
    assert res.steps == 4
    # the failed step ran again eagerly on clean gradients: the same losses as eager throughout
    assert res.train_curve == train(copy.deepcopy(base), "off", steps=4).train_curve


def oom_when_run(gm, inputs):
    """A backend whose compiled graph runs out of memory, as a CUDA step does."""
    def run(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    return run


def oom_when_compiling(gm, inputs):
    raise torch.OutOfMemoryError("CUDA out of memory (while autotuning)")


@pytest.mark.parametrize("backend", [oom_when_run, oom_when_compiling])
def test_out_of_memory_in_a_compiled_step_propagates_and_keeps_compile_on(base, monkeypatch, caplog, backend):
    """An out-of-memory is the step's, not the compiler's: eager would hit it too. It must reach
    the trial (which fails) and leave compile on for the next trial, with no fallback logged."""
    compiled.reset()
    monkeypatch.setattr(compiled, "BACKEND", backend)
    with caplog.at_level(logging.WARNING, logger="gpt2ft.compiled"), pytest.raises(torch.OutOfMemoryError):
        train(copy.deepcopy(base), "default", steps=2)
    assert compiled._BROKEN == set()
    assert not [r for r in caplog.records if "torch.compile" in r.getMessage()]
    compiled.reset()
