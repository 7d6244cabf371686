"""Pieces shared by ``bench/run.py`` (CPU, ``make bench``; its sections in ``bench/throughput.py``,
``bench/trials.py``, ``bench/rss.py``) and ``bench/gpu.py`` (GPU).

Nothing here imports gpt2ft or transformers at module level, so the FLOP arithmetic can be
tested in milliseconds.

FLOP convention (PaLM appendix B / nanoGPT ``estimate_mfu``)::

    flops_per_token = 6 * N + 12 * n_layer * n_embd * block

* ``N`` is every parameter counted once, *minus the position embeddings* (nanoGPT's
  ``get_num_params(non_embedding=True)``). The token embedding stays in ``N`` because GPT-2
  ties it to the output layer, whose matmul is real work (with the full 50,257-token
  vocabulary it is most of the work of a small model). Biases and LayerNorm weights are
  counted too, as nanoGPT does (they are under 0.1% of ``N``).
* ``6N`` = 2 FLOPs per multiply-add, forward (x1) plus backward (x2).
* ``12 * n_layer * n_embd * block``: QK^T and AV, 2 x 2 x n_embd x block per layer per
  token forward, x3 for forward + backward, with the full (not causal-halved) block.
* Embedding lookups, softmax, LayerNorm, GELU, the loss and the optimizer are not counted,
  so a "model FLOP utilisation" below 1 also pays for those.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable, Iterable, Optional, Sequence

# bf16 dense (no sparsity) tensor-core peaks from NVIDIA's data sheets, in FLOP/s.
GPU_BF16_PEAK = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),   # SXM5 / "H100 80GB HBM3"
    ("H200", 989e12),   # same chip as H100 SXM
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
)


def gpt2_params(vocab: int, n_layer: int, n_embd: int, n_positions: int = 0) -> int:
    """Parameters of a Hugging Face ``GPT2LMHeadModel`` with a tied output layer.

    Per layer: ln_1 and ln_2 (2d each), c_attn (d x 3d + 3d), attn c_proj (d x d + d),
    mlp c_fc (d x 4d + 4d), mlp c_proj (4d x d + d) = 12 d^2 + 13 d; plus ln_f (2d), the
    token embedding (vocab x d) and, if ``n_positions``, the position embedding.
    """
    d = n_embd
    return vocab * d + n_positions * d + n_layer * (12 * d * d + 13 * d) + 2 * d


def params_without_positions(model) -> int:
    """``N`` of the convention above for a loaded model: unique parameters minus ``wpe``."""
    from gpt2ft.model import n_params  # here, not at the top: the arithmetic above imports in milliseconds

    n = n_params(model)  # parameters() yields a tied tensor once
    wpe = getattr(getattr(model, "transformer", None), "wpe", None)
    if wpe is not None:
        n -= wpe.weight.numel()
    return n


def flops_per_token(n_params: int, n_layer: int, n_embd: int, block: int) -> float:
    """Training FLOPs per token: ``6 N + 12 n_layer n_embd block`` (see module docstring)."""
    return 6.0 * n_params + 12.0 * n_layer * n_embd * block


def mm_flops(n: int) -> float:
    """FLOPs of one ``n x n`` by ``n x n`` matrix product."""
    return 2.0 * n ** 3


def gpu_peak(name: str) -> Optional[float]:
    """bf16 dense peak FLOP/s for a ``torch.cuda.get_device_name`` string, or None."""
    for key, peak in GPU_BF16_PEAK:
        if key.lower() in name.lower():
            return peak
    return None


def median(xs: Iterable[float]) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def rotations(names: Sequence[str], rounds: int) -> list[list[str]]:
    """Interleaved schedule: round r runs ``names`` rotated by r, so no contestant always
    runs first (cold caches) or right after the same neighbour."""
    k = len(names)
    return [[names[(r + i) % k] for i in range(k)] for r in range(rounds)]


class StepClock:
    """Timestamps right after every ``optimizer.step()`` of any torch optimizer.

    A global post-step hook, so ``fit``, ``Trainer`` and a bare loop are timed by the same
    code at the same point without touching them. ``sync`` (e.g. ``torch.cuda.synchronize``)
    is called only after the steps in ``sync_at`` (first and last of the timed window), so
    timing does not serialise the other steps.
    """

    def __init__(self, sync: Optional[Callable[[], None]] = None, sync_at: Iterable[int] = ()):
        self.sync = sync
        self.sync_at = set(sync_at)
        self.stamps: list[float] = []
        self._handle: Any = None

    def _hook(self, optimizer, args, kwargs) -> None:
        n = len(self.stamps) + 1
        if self.sync is not None and n in self.sync_at:
            self.sync()
        self.stamps.append(time.perf_counter())

    def __enter__(self) -> "StepClock":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def window(self, after_step: int, to_step: int) -> float:
        """Seconds from just after step ``after_step`` to just after step ``to_step`` (1-based)."""
        if len(self.stamps) < to_step:
            raise RuntimeError(f"saw {len(self.stamps)} optimizer steps, expected {to_step}; "
                               "is a wrapper stepping twice or not at all?")
        return self.stamps[to_step - 1] - self.stamps[after_step - 1]


def bare_loop(model, windows, order, batch: int, steps: int, lr: float, device: Any = None,
              autocast: Callable[[], Any] = contextlib.nullcontext) -> None:
    """The bare PyTorch loop both benches measure ``fit`` against: forward, backward, fused
    AdamW step, zero_grad, for ``steps`` batches of ``batch`` windows taken in ``order``.

    No gradient clipping, no evaluation, no logging: the floor that any training loop pays.
    ``windows`` may sit on the host or the device; with ``device`` set each batch is copied
    there as ``fit`` does it (``non_blocking``), so the cost of that copy can be isolated.
    """
    # Imported here, not at the top: the FLOP arithmetic above must import in milliseconds.
    import torch

    order = order.to(windows.device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=True)
    for s in range(steps):
        x = windows[order[s * batch:(s + 1) * batch]]
        if device is not None:
            x = x.to(device, non_blocking=True)
        with autocast():
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if v != v:
            return "nan"
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 1e5 or a < 1e-3:
            return f"{v:.3g}"
        if a >= 100:
            return f"{v:,.0f}"
        return f"{v:.3g}" if a < 1 else f"{v:.3f}".rstrip("0").rstrip(".")
    return str(v)


COLUMNS = ("figure", "value", "peer", "peer value", "ratio", "target", "met?")


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text table of result rows with the columns in ``COLUMNS``."""
    keys = ("figure", "value", "peer", "peer_value", "ratio", "target", "met")
    cells = [[fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(COLUMNS)]
    line = "  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for c in cells:
        out.append("  ".join(x.ljust(w) for x, w in zip(c, widths)))
    return "\n".join(out)


def row(figure: str, value: Any, peer: Any = None, peer_value: Any = None, ratio: Any = None,
        target: Optional[str] = None, met: Optional[bool] = None, **extra: Any) -> dict[str, Any]:
    """One result row; ``met`` is None where the figure has no target (information only)."""
    return {"figure": figure, "value": value, "peer": peer, "peer_value": peer_value,
            "ratio": ratio, "target": target, "met": met, **extra}


def at_least(ratio: float, bound: float) -> Optional[bool]:
    return None if ratio != ratio else ratio >= bound


def at_most(ratio: float, bound: float) -> Optional[bool]:
    return None if ratio != ratio else ratio <= bound
