"""``make bench``'s trials section: what a trial costs beside its optimizer steps.

``run_trial`` on ``experiments/tiny.yaml`` assets (``prepare`` once) with a real MLflow
``Tracker`` (SQLite in a temporary folder) and plots on: the share of
``TrialResult.seconds["trial_seconds"]`` outside optimizer steps and its parts, model load time
vs per-trial copy time, and memory over 10 trials (``bench/rss.py``). Trial 1 warms up; the
first half of the rest store their MLflow writes and plots inside the trial, the second half
defer them to the study's writer process (``gpt2ft.writer``), which overlaps them with the next
trial: the share outside steps of each, side by side (the long-lived objects frozen out of the
GC in both, as the study does). When the share misses its target (or with ``--profile``) two
more trials run under cProfile: as gpt2ft runs, and with ``gc.freeze()`` after ``prepare``
(``bench/trial_*.prof``). Last, when time is left, why the writes run in a process at all: a
training step beside a GIL-bound thread and beside a busy process.
"""
from __future__ import annotations

import cProfile
import gc
import os
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import benchlib as B
from benchlib import log
from rss import malloc_trim, memory_rows, proc_status, reset_peak_rss

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET_OVERHEAD = 0.15      # <= 15% of a trial's wall time outside optimizer steps


class TrialLoop:
    """The section's trials on one prepared set of assets, logged to a temporary MLflow store."""

    def __init__(self, assets, cfg, folder: str):
        # Imported here, before any trial: their import is no trial's time or memory.
        from gpt2ft import logops
        from gpt2ft.tracking import Tracker
        from gpt2ft.trial import run_trial
        from gpt2ft.writer import BackgroundWriter

        self.run_trial, self.apply_remote = run_trial, logops.apply_remote
        self.assets, self.cfg = assets, cfg
        self.tracker = Tracker(f"sqlite:///{folder}/mlflow.db", "bench")
        self.writer = BackgroundWriter()
        self.hwm_reset = True  # every trial's peak was its own (VmHWM reset before it)

    def one(self, i: int, profiler: Optional[cProfile.Profile] = None, deferred: bool = False) -> dict[str, Any]:
        """Trial ``i``: its seconds, its share outside steps and the process memory after it."""
        self.hwm_reset = reset_peak_rss() and self.hwm_reset
        t0 = time.perf_counter()
        # deferred: as the study runs a trial (its MLflow writes and plots in the background
        # writer, overlapping the next trial); else all of them inside the trial.
        with self.tracker.run(f"bench-trial-{i}", end_on_success=not deferred) as run:
            if profiler is not None:
                profiler.enable()
            res = self.run_trial(self.assets, self.cfg.train, run, progress=False, plots=True, defer_log=deferred)
            if profiler is not None:
                profiler.disable()
        if deferred:
            self.writer.submit_remote(self.apply_remote, self.tracker.uri, run.id,
                                      [*res.log_ops, ("end", "FINISHED")], res.fit.steps, name=f"trial {i}")
        wall = time.perf_counter() - t0
        raw = proc_status()
        malloc_trim()
        live = proc_status()
        s = dict(res.seconds)
        if not deferred:  # trial_seconds ends before the final writes; made inline they are the trial's
            s["trial_seconds"] += s.get("log_seconds", 0.0)
        return {"trial": i, "deferred_log": deferred, **s, "wall_seconds": wall,
                "outside_steps_share": 1.0 - s["step_seconds"] / s["trial_seconds"],
                "steps": res.fit.steps, "rss_after_mib": raw["VmRSS"],
                "rss_after_trim_mib": live["VmRSS"], "peak_rss_mib": raw["VmHWM"]}

    def run(self, args, deadline: float) -> tuple[list[dict[str, Any]], float]:
        """Up to ``args.trials`` trials (at least 3 before ``deadline`` stops them), then the
        writer drained; returns the trials' records and the seconds the drain took."""
        from gpt2ft.assets import freeze_long_lived

        trials: list[dict[str, Any]] = []
        # Trial 1 warms up; then half the trials log inside the trial, half defer it. Both
        # halves with the study's long-lived objects frozen out of the GC, as the study runs.
        first_deferred = 2 + max(args.trials - 1, 1) // 2
        freeze_long_lived()
        for i in range(1, args.trials + 1):
            rec = self.one(i, deferred=i >= first_deferred)
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
        self.writer.close()
        drain_s = time.perf_counter() - t
        gc.unfreeze()
        return trials, drain_s

    def profile(self, first: int) -> dict[str, Any]:
        """Two more trials (numbered from ``first``) under cProfile. Before: as gpt2ft runs. After:
        with the study's long-lived objects frozen out of the cyclic GC (gc.freeze()), so
        free_accelerator()'s gc.collect() walks only the trial's own objects (the largest waste
        the first profile shows on the CPU)."""
        profiles: dict[str, Any] = {}
        for name in ("as_is", "gc_freeze"):
            if name == "gc_freeze":
                gc.freeze()
            log(f"  profiling a trial ({name}) -> bench/trial_{name}.prof")
            prof = cProfile.Profile()
            rec = self.one(first + len(profiles), prof)
            profiles[name] = {**summarise_profile(prof, HERE / f"trial_{name}.prof"), "trial": rec}
        gc.unfreeze()
        return profiles


def bench_trials(args, corpus: Path, results: dict[str, Any], deadline: float) -> list[dict[str, Any]]:
    from gpt2ft.assets import compute_references, prepare
    from gpt2ft.config import load_config

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
    profiles: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        loop = TrialLoop(assets, cfg, tmp)
        trials, drain_s = loop.run(args, deadline)
        later = [r for r in trials[1:] if not r["deferred_log"]] or trials[:1]  # inline, after the warm-up
        share = B.median(r["outside_steps_share"] for r in later)
        mean = sum(r["wall_seconds"] for r in trials) / len(trials)
        if (args.profile or share > TARGET_OVERHEAD) and time.perf_counter() + 2.5 * mean <= deadline:
            profiles = loop.profile(len(trials) + 1)
        elif args.profile or share > TARGET_OVERHEAD:
            log("  no time left in --budget to profile a trial")

    keys = ("copy_seconds", "step_seconds", "eval_seconds", "measure_seconds", "log_seconds", "trial_seconds")
    med = {k: B.median(r[k] for r in later) for k in keys}
    med["fit_other_seconds"] = med["trial_seconds"] - sum(med[k] for k in keys[:-1])
    results["trials"] = {"config": "experiments/tiny.yaml", "overrides": overrides,
                         "prepare_seconds": prepare_s, "references_seconds": references_s,
                         "asset_timings": dict(assets.timings), "trials": trials,
                         "medians_from_trial_2": med, "first_trial": trials[0], "profiles": profiles}
    rows, wall_share = _share_rows(later, share, med)
    deferred = [r for r in trials if r["deferred_log"]]
    if deferred:
        rows += _deferred_rows(deferred, later, wall_share, med, loop.writer, drain_s, results)
    rows += _cost_rows(args, med, assets.timings.get("model_load_seconds", float("nan")), results)
    rows += _profile_rows(profiles)
    rows += memory_rows(trials, loop.hwm_reset, results)
    if time.perf_counter() + 60 <= deadline:
        rows += gil_rows(results)
    return rows


def _share_rows(later: list[dict[str, Any]], share: float,
                med: dict[str, float]) -> tuple[list[dict[str, Any]], float]:
    """The share of an inline trial outside optimizer steps and its parts; also returns the
    share of its wall time (run start and end, gc included)."""
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
    return rows, wall_share


def _deferred_rows(deferred: list[dict[str, Any]], later: list[dict[str, Any]], wall_share: float,
                   med: dict[str, float], writer, drain_s: float, results: dict[str, Any]) -> list[dict[str, Any]]:
    """The study's way: each trial's writes run in the background writer during the next trial.
    Wall per trial is the critical path (what a study of many trials pays)."""
    wall = B.median(r["wall_seconds"] for r in later)
    d_wall = B.median(r["wall_seconds"] for r in deferred)
    d_share = B.median(1 - r["step_seconds"] / r["wall_seconds"] for r in deferred)
    d_steps = B.median(r["step_seconds"] for r in deferred)
    rows = [B.row("deferred writes: wall share outside steps", d_share, "inline writes", wall_share,
                  d_share / wall_share, f"<= {TARGET_OVERHEAD}", B.at_most(d_share, TARGET_OVERHEAD))]
    rows.append(B.row("  deferred writes: trial wall, s", d_wall, "inline writes, s", wall, d_wall / wall, "< 1"))
    rows.append(B.row("  deferred writes: optimizer steps, s (slowed by the writer?)", d_steps, "inline, s",
                      med["step_seconds"], d_steps / med["step_seconds"], "info"))
    rows.append(B.row("  writer busy per trial, s", writer.busy_seconds / len(deferred),
                      "submit blocked per trial, s", writer.blocked_seconds / len(deferred),
                      writer.blocked_seconds / max(writer.busy_seconds, 1e-9), "info"))
    rows.append(B.row("  drain after the last trial, s", drain_s, "trial wall, s", d_wall,
                      drain_s / d_wall, "info"))
    results["trials"]["deferred"] = {"trials": [r["trial"] for r in deferred], "wall_share": d_share,
                                     "wall_seconds": d_wall, "writer_busy_seconds": writer.busy_seconds,
                                     "writer_blocked_seconds": writer.blocked_seconds, "drain_seconds": drain_s}
    return rows


def _cost_rows(args, med: dict[str, float], load_s: float, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Fixed cost per trial vs steps: how many steps would bring the share down to the target;
    and loading the model once against copying it per trial."""
    per_step = med["step_seconds"] / args.trial_steps
    fixed = med["trial_seconds"] - med["step_seconds"]
    needed = fixed * (1 - TARGET_OVERHEAD) / TARGET_OVERHEAD / per_step
    results["trials"]["max_steps_for_target"] = needed
    return [B.row(f"  max_steps for <= {TARGET_OVERHEAD} (fixed cost / step time)", needed,
                  "train.max_steps", float(args.trial_steps), needed / args.trial_steps, "info"),
            B.row("model load (prepare) vs per-trial copy, s", load_s, "copy, s", med["copy_seconds"],
                  load_s / med["copy_seconds"], "info (> 1: copying pays)")]


def _profile_rows(profiles: dict[str, Any]) -> list[dict[str, Any]]:
    """The two profiled trials side by side: gc.collect's time and the share outside steps."""
    if len(profiles) != 2:
        return []
    a, b = profiles["as_is"], profiles["gc_freeze"]
    wa = 1 - a["trial"]["step_seconds"] / a["trial"]["wall_seconds"]
    wb = 1 - b["trial"]["step_seconds"] / b["trial"]["wall_seconds"]
    return [B.row("profiled trial: gc.collect, s (as is vs gc.freeze)", a["gc_collect_s"],
                  "after gc.freeze()", b["gc_collect_s"],
                  a["gc_collect_s"] / max(b["gc_collect_s"], 1e-6), "info"),
            B.row("profiled trial: wall share outside steps (as is vs gc.freeze)", wa,
                  "after gc.freeze()", wb, wa / wb, "info")]


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
