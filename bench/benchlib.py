"""What every bench shares: the FLOP arithmetic, timing (``timed``, ``StepClock``, the bare loop),
the results file (``out_path``, ``write_json``) and printing (``log``, ``fmt``, ``columns``, ``table``).

Nothing here imports gpt2ft or transformers at module level, so the arithmetic is tested in
milliseconds. FLOP convention (PaLM appendix B / nanoGPT ``estimate_mfu``)::

    flops_per_token = 6 * N + 12 * n_layer * n_embd * block

``N`` is every parameter counted once *minus the position embeddings*; the token embedding stays,
since GPT-2 ties it to the output layer, whose matmul is real work (most of a small model's). ``6N``
is forward (x1) plus backward (x2) at 2 FLOPs per multiply-add; the second term is QK^T and AV over
the full block. Embeddings, softmax, LayerNorm, GELU, the loss and the optimizer are not counted,
so a model FLOP utilisation below 1 also pays for those.
"""
from __future__ import annotations

import contextlib
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


def gpu_peak(name: str) -> Optional[float]:
    """bf16 dense peak FLOP/s for a ``torch.cuda.get_device_name`` string, or None."""
    return next((peak for key, peak in GPU_BF16_PEAK if key.lower() in name.lower()), None)


def median(xs: Iterable[float]) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def timed(fn: Callable[[], Any], repeats: int, sync: Optional[Callable[[], None]] = None) -> float:
    """Median seconds of ``repeats`` calls of ``fn``; ``sync`` (e.g. ``torch.cuda.synchronize``)
    around each, so an asynchronous device is timed to the end of its work."""
    out = []
    for _ in range(repeats):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
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


def bare_loop(model, windows, order, batch: int, steps: int, lr: float, device: Any = None,
              autocast: Callable[[], Any] = contextlib.nullcontext) -> None:
    """The floor any training loop pays, which ``fit`` is measured against: forward, backward,
    fused AdamW step, zero_grad, for ``steps`` batches of ``batch`` windows taken in ``order``;
    no clipping, evaluation or logging. With ``device`` each batch is copied there as ``fit`` does."""
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


def corpus_path(explicit: Optional[str]) -> Path:
    """The book: ``explicit``, ``$GPT2FT_CORPUS``, ``../shared/data/gulliver.txt`` or, on the GPU
    machine, which ``../shared`` does not reach, ``.carry/data/`` (``make device-pack``)."""
    for cand in (explicit, os.environ.get("GPT2FT_CORPUS"), ROOT.parent / "shared" / "data" / "gulliver.txt",
                 ROOT / ".carry" / "data" / "gulliver.txt"):
        if cand and Path(cand).is_file():
            return Path(cand).resolve()
    sys.exit("bench: the book is not found; pass --corpus PATH or set GPT2FT_CORPUS to "
             "Gulliver's Travels (Gutenberg pg829.txt).")


def out_path(explicit: Optional[str], name: str) -> Path:
    """Where a bench's JSON goes: ``explicit``, else ``$OUT/name`` on a device call, else ``bench/name``."""
    if explicit:
        return Path(explicit)
    return Path(os.environ["OUT"]) / name if os.environ.get("OUT") else HERE / name


def write_json(results: Any, path: Path) -> None:
    """Written beside ``path`` and renamed over it: a command killed at its time limit keeps what
    it wrote last, never half a file."""
    from gpt2ft.fsutil import write_json_atomic

    write_json_atomic(results, path)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        a = abs(v)
        if v != v or a == 0:
            return "nan" if v != v else "0"
        if a >= 1e5 or a < 1e-3:
            return f"{v:.3g}"
        if a >= 100:
            return f"{v:,.0f}"
        return f"{v:.3g}" if a < 1 else f"{v:.3f}".rstrip("0").rstrip(".")
    return str(v)


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
