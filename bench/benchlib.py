"""What every bench shares: the FLOP arithmetic, timing (``timed``, ``StepClock``, the bare loop),
the results file (``out_path``, ``write_json``) and printing (``log``, ``fmt``, ``columns``, ``table``).

Nothing here imports torch, transformers or more of gpt2ft than ``fsutil`` at module level, so the
arithmetic is tested in milliseconds. FLOP convention (PaLM appendix B / nanoGPT ``estimate_mfu``)::

    flops_per_token = 6 * N + 12 * n_layer * n_embd * block

``N`` is every parameter counted once *minus the position embeddings*; the token embedding stays,
since GPT-2 ties it to the output layer, whose matmul is real work (most of a small model's). ``6N``
is forward (x1) plus backward (x2) at 2 FLOPs per multiply-add; the second term is QK^T and AV over
the full block. Embeddings, softmax, LayerNorm, GELU, the loss and the optimizer are not counted,
so a model FLOP utilisation below 1 also pays for those.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):  # a bench runs as a script, with only bench/ on sys.path
    if _p not in sys.path:
        sys.path.insert(0, _p)
# Written beside the path and renamed over it: a command killed at its time limit keeps what it wrote
# last, never half a file. (gpt2ft.fsutil imports only the standard library.)
from gpt2ft.fsutil import write_json_atomic as write_json  # noqa: E402,F401

# bf16 dense (no sparsity) tensor-core peaks from NVIDIA's data sheets, in FLOP/s.
GPU_BF16_PEAK = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
                 ("GH200", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12))


def gpt2_params(vocab: int, n_layer: int, n_embd: int, n_positions: int = 0) -> int:
    """Parameters of a Hugging Face ``GPT2LMHeadModel`` with a tied output layer: per layer
    ln_1, ln_2 (2d each), c_attn (3d^2 + 3d), attn c_proj (d^2 + d), c_fc (4d^2 + 4d), mlp c_proj
    (4d^2 + d) = 12 d^2 + 13 d; plus ln_f (2d), the token embedding and any position embedding."""
    d = n_embd
    return vocab * d + n_positions * d + n_layer * (12 * d * d + 13 * d) + 2 * d


def params_without_positions(model) -> int:
    """``N`` of the convention above for a loaded model: unique parameters minus ``wpe``."""
    from gpt2ft.model import n_params

    wpe = getattr(getattr(model, "transformer", None), "wpe", None)
    return n_params(model) - (wpe.weight.numel() if wpe is not None else 0)


def flops_per_token(n_params: int, n_layer: int, n_embd: int, block: int) -> float:
    """Training FLOPs per token: ``6 N + 12 n_layer n_embd block``."""
    return 6.0 * n_params + 12.0 * n_layer * n_embd * block


def mm_flops(n: int) -> float:
    """FLOPs of one ``n x n`` by ``n x n`` matrix product."""
    return 2.0 * n ** 3


def mm_flops_now(n: int = 2048) -> float:
    """Dense fp32 ``torch.mm`` FLOP/s now, after one untimed product: how much of the CPU this process
    gets (100-120 GFLOP/s on the project's idle 2-core machines, two threads)."""
    import torch

    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    torch.mm(a, b, out=c)
    return mm_flops(n) / timed(lambda: torch.mm(a, b, out=c), 3)


def gpu_peak(name: str) -> Optional[float]:
    """bf16 dense peak FLOP/s for a ``torch.cuda.get_device_name`` string, or None."""
    return next((peak for key, peak in GPU_BF16_PEAK if key.lower() in name.lower()), None)


def median(xs: Iterable[float]) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def timed(fn: Callable[[], Any], repeats: int, sync: Optional[Callable[[], None]] = None) -> float:
    """Median seconds of ``repeats`` calls of ``fn``; ``sync`` (e.g. ``torch.cuda.synchronize``)
    around each, so an asynchronous device is timed to the end of its work."""
    sync, out = sync or (lambda: None), []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return median(out)


def rotations(names: Sequence[str], rounds: int) -> list[list[str]]:
    """Interleaved schedule: round r runs ``names`` rotated by r, so no contestant always
    runs first (cold caches) or right after the same neighbour."""
    k = len(names)
    return [[names[(r + i) % k] for i in range(k)] for r in range(rounds)]


class StepClock:
    """Timestamps right after every ``optimizer.step()`` of any torch optimizer.

    A global post-step hook, so ``fit``, ``Trainer`` and a bare loop are timed by the same code at
    the same point without touching them. ``sync`` is called only after the steps in ``sync_at``
    (first and last of the timed window), so timing does not serialise the other steps.
    """

    def __init__(self, sync: Optional[Callable[[], None]] = None, sync_at: Iterable[int] = ()):
        self.sync, self.sync_at = sync, set(sync_at)
        self.stamps: list[float] = []
        self._handle: Any = None

    def _hook(self, optimizer, args, kwargs) -> None:
        if self.sync is not None and len(self.stamps) + 1 in self.sync_at:
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


def bare_loop(model, windows, order, batch: int, steps: int, lr: float) -> None:
    """The floor any training loop pays, which ``fit`` is measured against: forward, backward,
    fused AdamW step, zero_grad, for ``steps`` batches of ``batch`` windows taken in ``order``;
    no clipping, evaluation or logging."""
    import torch

    order = order.to(windows.device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=True)
    for s in range(steps):
        x = windows[order[s * batch:(s + 1) * batch]]
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def corpus_path(explicit: Optional[str]) -> Path:
    """The book: ``explicit``, ``$GPT2FT_CORPUS``, ``../shared/data/gulliver.txt`` or, on the GPU
    machine, which ``../shared`` does not reach, ``.carry/data/`` (``make device-pack``)."""
    for cand in (explicit, os.environ.get("GPT2FT_CORPUS"), ROOT.parent / "shared" / "data" / "gulliver.txt",
                 ROOT / ".carry" / "data" / "gulliver.txt"):
        if cand and Path(cand).is_file():
            return Path(cand).resolve()
    sys.exit("bench: the book is not found; pass --corpus PATH or set GPT2FT_CORPUS to "
             "Gulliver's Travels (Gutenberg pg829.txt).")


def out_path(explicit: Optional[str], name: str, folder: Optional[str] = None) -> Path:
    """Where a bench's JSON goes: ``explicit``, else ``folder/name``, else ``$OUT/name`` on a device
    call, else ``bench/name``."""
    folder = folder or os.environ.get("OUT")
    return Path(explicit) if explicit else Path(folder) / name if folder else HERE / name


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fmt(v: Any) -> str:
    if v is None or isinstance(v, bool):
        return "-" if v is None else "yes" if v else "NO"
    if not isinstance(v, float) or v != v:
        return str(v)
    a = abs(v)
    if a == 0 or a >= 1e5 or a < 1e-3:
        return "0" if a == 0 else f"{v:.3g}"
    return f"{v:,.0f}" if a >= 100 else f"{v:.3g}" if a < 1 else f"{v:.3f}".rstrip("0").rstrip(".")


def columns(head: Sequence[str], rows: Iterable[Sequence[Any]], right: bool = False) -> str:
    """A plain-text table: the header, a rule, the rows, each cell through ``fmt``."""
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]

    def line(cs):
        return "  ".join((c.rjust(w) if right and i else c.ljust(w)) for i, (c, w) in enumerate(zip(cs, widths)))

    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, cells)])


COLUMNS = ("figure", "value", "peer", "peer value", "ratio", "target", "met?")


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of ``row`` under ``COLUMNS``."""
    keys = ("figure", "value", "peer", "peer_value", "ratio", "target", "met")
    return columns(COLUMNS, ([r.get(k) for k in keys] for r in rows))


def row(figure: str, value: Any, peer: Any = None, peer_value: Any = None, ratio: Any = None,
        target: Optional[str] = None, met: Optional[bool] = None, **extra: Any) -> dict[str, Any]:
    """One result row; ``met`` is None where the figure has no target (information only)."""
    return {"figure": figure, "value": value, "peer": peer, "peer_value": peer_value,
            "ratio": ratio, "target": target, "met": met, **extra}


def at_least(ratio: float, bound: float) -> Optional[bool]:
    return None if ratio != ratio else ratio >= bound


def at_most(ratio: float, bound: float) -> Optional[bool]:
    return None if ratio != ratio else ratio <= bound
