"""``make bench``'s throughput section: training tokens/s of ``gpt2ft.train.fit`` vs Hugging Face
``Trainer`` vs a bare PyTorch loop (forward, backward, AdamW step, zero_grad).

Same random-init GPT-2 (6 layers x 384, 6 heads, full 50,257-token vocabulary, built by gpt2ft's
``load_model``), same copy of the weights, same book windows (``load_book`` + ``tokenize_book``),
same batch, block, learning rate, optimizer (fused AdamW) and number of steps; ``fit`` and
``Trainer`` clip gradients at 1.0, the bare loop does not. Rounds are interleaved (the order
rotates each round) and medians over rounds are reported. The steady state is timed by one global
optimizer post-step hook (``benchlib.StepClock``) from just after step ``--warmup`` to just after
the last step, identically for all three; the whole call (setup, warm-up steps and, for ``fit``,
its step-0 and final evaluation of one batch each) is reported too, and ``fit``'s evaluation cost
on its own. Model FLOP utilisation = FLOPs/token (``benchlib.flops_per_token``) x tokens/s divided
by dense fp32 ``torch.mm`` FLOP/s (2048^2, same thread count) measured between rounds.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import inspect
import io
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import benchlib as B
from benchlib import log

# Targets from the benchmark's brief.
TARGET_VS_TRAINER = 1.0     # fit tokens/s >= 1.0 x Trainer's
TARGET_VS_BARE = 0.95       # fit tokens/s within 5% of the bare loop


def measure_mm(n: int = 2048, repeats: int = 3) -> list[float]:
    """FLOP/s of ``repeats`` dense fp32 ``n x n`` matrix products (one untimed first)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        out.append(B.mm_flops(n) / (time.perf_counter() - t))
    return out


class Contest:
    """The shared setup of the throughput comparison and its three contestants."""

    def __init__(self, args, corpus: Path):
        import torch
        from gpt2ft.config import DataConfig, ModelConfig, TrainConfig
        from gpt2ft.data import load_book, tokenize_book
        from gpt2ft.model import load_model, load_tokenizer, resolve_runtime

        self.torch = torch
        self.args = args
        self.batch, self.block, self.lr = args.batch, args.block, args.lr
        self.warmup, self.steps = args.warmup, args.warmup + args.steps
        self.log_every = 10
        mcfg = ModelConfig(name="random-gpt2", n_layer=6, n_embd=384, n_head=6)
        self.tokenizer = load_tokenizer(mcfg)
        self.data = tokenize_book(load_book(DataConfig(), str(corpus)), self.tokenizer, self.block)
        torch.manual_seed(0)
        self.base = load_model(mcfg, self.tokenizer, self.block)
        self.runtime = resolve_runtime(TrainConfig(device="cpu", precision="fp32"))
        self.n_params = B.params_without_positions(self.base)
        c = self.base.config
        # The FLOP convention's parameter count, by formula and by the real model.
        assert self.n_params == B.gpt2_params(c.vocab_size, c.n_layer, c.n_embd), self.n_params
        self.flops_per_token = B.flops_per_token(self.n_params, c.n_layer, c.n_embd, self.block)
        self.train_cfg = TrainConfig(lr=self.lr, epochs=1, batch_size=self.batch, max_steps=self.steps,
                                     log_every=self.log_every, eval_every=0, eval_batches=1,
                                     warmup_steps=0, grad_clip=1.0, device="cpu", precision="fp32", seed=0)
        self.trainer_error: Optional[str] = None
        try:
            import accelerate  # noqa: F401  (Trainer needs it; import it now, not inside a timing)
            from transformers import Trainer, TrainingArguments  # noqa: F401
            from transformers.utils import logging as hf_logging
            hf_logging.set_verbosity_error()
        except ImportError as exc:
            self.trainer_error = f"Trainer unavailable ({exc}); pip install accelerate"

    def model(self):
        m = copy.deepcopy(self.base)
        m.train()
        return m

    def _order(self):
        torch = self.torch
        n = self.data.train_windows.shape[0]
        return torch.randperm(n, generator=torch.Generator().manual_seed(0))  # as fit's epoch 1

    def bare(self, model) -> dict[str, Any]:
        """Forward, backward, AdamW step, zero_grad; the same optimizer as fit (fused AdamW)."""
        B.bare_loop(model, self.data.train_windows, self._order(), self.batch, self.steps, self.lr)
        return {}

    def fit(self, model) -> dict[str, Any]:
        from gpt2ft.train import fit

        kwargs: dict[str, Any] = {"progress": False}
        if "batch_eval" in inspect.signature(fit).parameters:  # older fit(): eval batch as train's
            kwargs["batch_eval"] = self.batch
        res = fit(self.train_cfg, model, self.data, None, self.runtime, **kwargs)
        assert res.steps == self.steps, res.steps
        return {"eval_seconds": res.eval_seconds, "evals": len(res.heldout_curve),
                "step_seconds": res.step_seconds}

    def trainer(self, model) -> dict[str, Any]:
        import torch
        from transformers import Trainer, TrainingArguments

        w = self.data.train_windows

        class Windows(torch.utils.data.Dataset):
            def __len__(self):
                return w.shape[0]

            def __getitem__(self, i):
                return {"input_ids": w[i], "labels": w[i]}

        with tempfile.TemporaryDirectory() as tmp:
            targs = TrainingArguments(
                output_dir=tmp, per_device_train_batch_size=self.batch, max_steps=self.steps,
                learning_rate=self.lr, lr_scheduler_type="constant", warmup_steps=0,
                weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch_fused",
                report_to="none", save_strategy="no", eval_strategy="no",
                logging_strategy="steps", logging_steps=self.log_every, disable_tqdm=True,
                dataloader_num_workers=0, dataloader_pin_memory=False, use_cpu=True, seed=0)
            t = time.perf_counter()
            trainer = Trainer(model=model, args=targs, train_dataset=Windows())
            init_s = time.perf_counter() - t
            with contextlib.redirect_stdout(io.StringIO()):  # its PrinterCallback's log lines
                out = trainer.train()
            assert out.global_step == self.steps, out.global_step
            del trainer
        return {"init_seconds": init_s}

    def run_one(self, name: str) -> dict[str, Any]:
        """One contestant on a fresh copy of the weights; timings from the step clock."""
        fn = getattr(self, name)
        model = self.model()
        gc.collect()
        clock = B.StepClock()
        with clock:
            t = time.perf_counter()
            extra = fn(model)
            call_s = time.perf_counter() - t
        del model
        gc.collect()
        tokens_step = self.batch * self.block
        window = clock.window(self.warmup, self.steps)
        steps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
        return {"call_seconds": call_s, "window_seconds": window,
                "tokens_per_second": tokens_step * (self.steps - self.warmup) / window,
                "call_tokens_per_second": tokens_step * self.steps / call_s,
                "step_seconds_median": B.median(steps[self.warmup - 1:]),
                "window_step_seconds": steps[self.warmup - 1:],
                "optimizer_steps": len(clock.stamps), **extra}


def optimizer_microbench(contest: Contest, repeats: int = 5) -> dict[str, float]:
    """Seconds per AdamW step on the benchmark model's parameters: the default (for-loop on
    the CPU) vs fused, interleaved; plus clip_grad_norm_ (fit and Trainer clip, bare does not)."""
    torch = contest.torch
    model = contest.model()
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opts = {"default": torch.optim.AdamW(model.parameters(), lr=1e-6),
            "fused": torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)}
    times: dict[str, list[float]] = {"default": [], "fused": [], "clip": []}
    for _ in range(repeats + 1):  # the first round allocates the optimizer state
        for name, opt in opts.items():
            t = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t)
        t = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
        times["clip"].append(time.perf_counter() - t)
    del opts, model
    gc.collect()
    return {k: B.median(v[1:]) for k, v in times.items()}


def _rounds(contest: Contest, names: list[str], args, deadline: float,
            mm: list[float]) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Interleaved rounds of every contestant (the order rotating), at least 2 and as many of
    ``args.rounds`` as fit before ``deadline``; a ``torch.mm`` measurement added to ``mm`` after
    each. Returns each contestant's runs and the number of rounds run."""
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    rounds_run = 0
    t_rounds = time.perf_counter()
    for r, order in enumerate(B.rotations(names, args.rounds)):
        per_round = (time.perf_counter() - t_rounds) / max(rounds_run, 1)
        if rounds_run >= 2 and time.perf_counter() + per_round > deadline:
            log(f"  stopping after {rounds_run} rounds to stay within --budget")
            break
        rounds_run += 1
        for name in order:
            res = contest.run_one(name)
            runs[name].append(res)
            log(f"  round {r + 1}/{args.rounds} {name:<7} {res['tokens_per_second']:8.1f} tok/s steady, "
                f"{res['call_tokens_per_second']:8.1f} tok/s whole call ({res['call_seconds']:.1f} s)")
        mm.extend(measure_mm())
    return runs, rounds_run


def bench_throughput(args, corpus: Path, results: dict[str, Any], deadline: float) -> list[dict[str, Any]]:
    import torch

    from gpt2ft.model import n_params

    log(f"throughput: setting up (batch {args.batch} x block {args.block}, "
        f"{args.warmup}+{args.steps} steps, {args.rounds} rounds, {torch.get_num_threads()} threads)")
    contest = Contest(args, corpus)
    names = ["bare", "fit"] + ([] if contest.trainer_error else ["trainer"])
    mm: list[float] = measure_mm()
    opt = optimizer_microbench(contest)
    log(f"  AdamW step: default {opt['default']:.3f} s, fused {opt['fused']:.3f} s; "
        f"clip {opt['clip']:.3f} s; torch.mm {B.median(mm) / 1e9:.1f} GFLOP/s")
    runs, rounds_run = _rounds(contest, names, args, deadline, mm)
    med = {n: {k: B.median(x[k] for x in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))}
           for n, rs in runs.items()}
    mm_flops = B.median(mm)
    results["throughput"] = {
        "model": {"n_layer": 6, "n_embd": 384, "n_head": 6, "vocab": len(contest.tokenizer),
                  "n_params_without_positions": contest.n_params,
                  "n_params_total": n_params(contest.base),
                  "flops_per_token": contest.flops_per_token},
        "batch": args.batch, "block": args.block, "warmup_steps": args.warmup,
        "timed_steps": args.steps, "rounds": rounds_run, "lr": args.lr,
        "torch_threads": torch.get_num_threads(), "train_windows": int(contest.data.train_windows.shape[0]),
        "mm_flops_per_second": mm, "mm_flops_median": mm_flops,
        "optimizer_step_seconds": opt, "runs": runs, "medians": med,
        "trainer_error": contest.trainer_error,
    }
    # Robust to a busy machine's spikes: the median of every timed step, pooled over rounds.
    tokens_step = args.batch * args.block
    for n, rs in runs.items():
        med[n]["pooled_step_tokens_per_second"] = tokens_step / B.median(
            d for r in rs for d in r["window_step_seconds"])
    return _speed_rows(med, contest.trainer_error) + _cost_rows(args, med, opt, names, contest.flops_per_token,
                                                                mm_flops)


def _speed_rows(med: dict[str, dict[str, float]], trainer_error: Optional[str]) -> list[dict[str, Any]]:
    """fit's tokens/s against each peer: steady state, pooled median step, whole call."""
    f, b = med["fit"], med["bare"]
    rows = [
        B.row("train tok/s steady: fit vs bare loop", f["tokens_per_second"], "bare loop",
              b["tokens_per_second"], f["tokens_per_second"] / b["tokens_per_second"],
              f">= {TARGET_VS_BARE}", B.at_least(f["tokens_per_second"] / b["tokens_per_second"], TARGET_VS_BARE)),
    ]
    if "trainer" in med:
        t = med["trainer"]
        ratio = f["tokens_per_second"] / t["tokens_per_second"]
        rows.append(B.row("train tok/s steady: fit vs HF Trainer", f["tokens_per_second"], "HF Trainer",
                          t["tokens_per_second"], ratio, f">= {TARGET_VS_TRAINER}",
                          B.at_least(ratio, TARGET_VS_TRAINER)))
    else:
        rows.append(B.row("train tok/s steady: fit vs HF Trainer", f["tokens_per_second"], "HF Trainer",
                          None, None, f">= {TARGET_VS_TRAINER}", None, note=trainer_error))
    for peer, label in (("bare", "bare loop"), ("trainer", "HF Trainer")):
        if peer in med:
            ratio = f["pooled_step_tokens_per_second"] / med[peer]["pooled_step_tokens_per_second"]
            rows.append(B.row(f"train tok/s median step (pooled): fit vs {label}",
                              f["pooled_step_tokens_per_second"], label,
                              med[peer]["pooled_step_tokens_per_second"], ratio, "info"))
    # Whole calls: setup, warm-up and, for fit, its step-0 and final evaluation (1 batch each).
    rows.append(B.row("train tok/s whole call: fit vs bare", f["call_tokens_per_second"], "bare loop",
                      b["call_tokens_per_second"], f["call_tokens_per_second"] / b["call_tokens_per_second"],
                      "info"))
    if "trainer" in med:
        t = med["trainer"]
        rows.append(B.row("train tok/s whole call: fit vs Trainer.train()", f["call_tokens_per_second"],
                          "HF Trainer", t["call_tokens_per_second"],
                          f["call_tokens_per_second"] / t["call_tokens_per_second"], "info"))
    return rows


def _cost_rows(args, med: dict[str, dict[str, float]], opt: dict[str, float], names: list[str], fpt: float,
               mm_flops: float) -> list[dict[str, Any]]:
    """Where fit's time goes beside its steps (evaluation, AdamW, clipping) and each contestant's MFU."""
    f = med["fit"]
    rows = [B.row(f"fit eval cost: {int(f['evals'])} evals x 1 batch, s", f["eval_seconds"],
                  "fit whole call, s", f["call_seconds"], f["eval_seconds"] / f["call_seconds"], "info")]
    eval_tokens = f["evals"] * args.batch * args.block
    rows.append(B.row("fit eval tok/s vs fit train tok/s (steady)", eval_tokens / f["eval_seconds"],
                      "fit train", f["tokens_per_second"],
                      eval_tokens / f["eval_seconds"] / f["tokens_per_second"], "info"))
    rows.append(B.row("AdamW step, s: fused (fit, Trainer) vs default", opt["fused"], "default AdamW",
                      opt["default"], opt["default"] / opt["fused"], "info"))
    rows.append(B.row("clip_grad_norm_, s (fit and Trainer; not bare) vs step", opt["clip"], "fit step",
                      f["step_seconds_median"], opt["clip"] / f["step_seconds_median"], "info"))
    for name in names:
        label = {"bare": "bare loop", "fit": "fit", "trainer": "HF Trainer"}[name]
        achieved = fpt * med[name]["tokens_per_second"]
        rows.append(B.row(f"CPU MFU ({label}): model FLOP/s vs fp32 mm", achieved, "torch.mm 2048^2 fp32",
                          mm_flops, achieved / mm_flops, "info"))
    return rows
