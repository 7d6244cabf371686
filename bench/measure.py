"""What one measurement costs, by part (issue 19: a measurement must cost less than an epoch).

A measurement is ``gpt2ft.measure.measure_model``: sampling, the sample metrics (n-gram look-ups,
style divergence, bootstrap, diversity, the base model's fluency, the style classifier, near-verbatim
words) and the teacher-forced passes (extraction, membership). The experiment's assets are built once
(``assets.prepare``), then the base model is measured ``--runs`` times with each part timed around the
functions ``measure_model`` calls (patched for the run only, so the code timed is the code a trial
runs). A part called inside another (the memorization inside the bootstrap) counts for the outer one;
``other`` is what no part covers. Per part: median seconds, median share, calls per measurement. The
metric values of every run must agree: a fixed seed gives one answer. ``--decode`` also times the
sampling alone in each decoding variant (``generate.DECODES``), interleaved, and says whether each
draws the same tokens. Timings on a shared machine are noisy: compare shares, and versions interleaved.

    python3 bench/measure.py                          # demo.yaml (SmolLM2), 3 runs
    python3 bench/measure.py --threads 1 --runs 5 --assets-cache /tmp/demo-assets.pkl
    python3 bench/measure.py --decode dynamic,static --decode-rounds 3
    python3 bench/measure.py --profile                # also a cProfile of one run: bench/measure.prof

JSON goes to ``--out`` (default bench/measure.json).
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib
import json
import math
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

sys.path[:0] = [str(Path(__file__).resolve().parent)]  # benchlib, which puts the repository root there too
import benchlib as B  # noqa: E402

HERE = B.HERE

#: (module, attribute, part): the functions ``measure_model`` reaches, looked up at call time
#: through these module attributes. Attributes a version of the code lacks are skipped.
PARTS = (
    ("gpt2ft.measure", "sample", "sampling"),
    ("gpt2ft.measure", "greedy", "extraction"),
    ("gpt2ft.measure", "greedy_until_wrong", "extraction"),
    ("gpt2ft.extraction", "suffix_scores", "extraction"),
    ("gpt2ft.membership", "window_scores", "membership"),
    ("gpt2ft.words", "WordIndex.measure", "near-verbatim"),
    ("gpt2ft.metrics", "top100_ratio", "top100_ratio"),
    ("gpt2ft.metrics", "top100_counts", "top100_ratio"),
    ("gpt2ft.metrics", "memorization", "memorization 4/8/16"),
    ("gpt2ft.metrics", "memorization_counts", "memorization 4/8/16"),
    ("gpt2ft.measure", "longest_copy", "longest_copy"),
    ("gpt2ft.metrics", "longest_copy", "longest_copy"),
    ("gpt2ft.metrics", "js_divergence", "style_js"),
    ("gpt2ft.metrics", "bootstrap_se", "bootstrap"),
    ("gpt2ft.metrics", "bootstrap_ratio_se", "bootstrap"),
    ("gpt2ft.metrics", "distinct_n", "distinct-n, repetition"),
    ("gpt2ft.metrics", "repetition_rate", "distinct-n, repetition"),
    ("gpt2ft.measure", "perplexity", "fluency"),
    ("gpt2ft.style", "StyleClassifier.prob", "classifier"),
)
ORDER = ("sampling", "extraction", "membership", "near-verbatim", "fluency", "classifier", "bootstrap",
         "top100_ratio", "memorization 4/8/16", "longest_copy", "style_js", "distinct-n, repetition", "other")


class Sections:
    """Seconds and calls per part while active; a part entered inside another counts for the outer."""

    def __init__(self, parts: Sequence[tuple[str, str, str]] = PARTS):
        self.parts = parts
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._depth = 0

    def _wrap(self, fn: Callable, part: str) -> Callable:
        def timed(*args, **kwargs):
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - t
                self.calls[part] = self.calls.get(part, 0) + 1
                self._depth -= 1
        return timed

    @contextlib.contextmanager
    def active(self) -> Iterator["Sections"]:
        saved = []
        try:
            for module, attr, part in self.parts:
                owner: Any = importlib.import_module(module)
                *path, name = attr.split(".")
                for p in path:
                    owner = getattr(owner, p)
                if hasattr(owner, name):
                    saved.append((owner, name, getattr(owner, name)))
                    setattr(owner, name, self._wrap(getattr(owner, name), part))
            yield self
        finally:
            for owner, name, fn in reversed(saved):
                setattr(owner, name, fn)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="experiments/demo.yaml", help="experiment (default demo.yaml: SmolLM2)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--runs", type=int, default=3, help="timed measurements (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed measurements first (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed of every measurement (default 0)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default torch's)")
    ap.add_argument("--assets-cache", help="pickle of the prepared assets: read when it holds this config, "
                                           "else written (saves the ~1 min setup between runs)")
    ap.add_argument("--decode", help="comma-separated decoding variants to time the sampling in, interleaved "
                                     "(generate.DECODES, e.g. dynamic,static,static-compile)")
    ap.add_argument("--decode-rounds", type=int, default=3, help="rounds of --decode (default 3)")
    ap.add_argument("--profile", action="store_true", help="cProfile one more measurement into bench/measure.prof")
    ap.add_argument("--out", default=str(HERE / "measure.json"), help="JSON results (default bench/measure.json)")
    return ap


def load_assets(config, cache: Optional[str]):
    """The prepared assets, from ``cache`` when it holds the same config."""
    from gpt2ft.assets import prepare

    if cache and Path(cache).exists():
        with open(cache, "rb") as f:
            assets = pickle.load(f)
        if assets.config == config:
            return assets, 0.0
    t = time.perf_counter()
    assets = prepare(config)
    seconds = time.perf_counter() - t
    if cache:
        with open(cache, "wb") as f:
            pickle.dump(assets, f)
    return assets, seconds


def one_run(assets, seed: int) -> tuple[float, dict[str, float], dict[str, int], dict[str, float]]:
    """One timed measurement of the base model: (seconds, seconds by part, calls by part, metrics)."""
    from gpt2ft.measure import measure_model

    sec = Sections()
    with sec.active():
        t = time.perf_counter()
        metrics, _, _ = measure_model(assets, assets.base_model, assets.config.sample.n_samples, seed)
        total = time.perf_counter() - t
    parts = dict(sec.seconds)
    parts["other"] = max(0.0, total - sum(parts.values()))
    return total, parts, dict(sec.calls), metrics


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal metric dicts, nan equal to nan."""
    return a.keys() == b.keys() and all(x == b[k] or (math.isnan(x) and math.isnan(b[k])) for k, x in a.items())


def breakdown(runs: list[tuple[float, dict[str, float], dict[str, int], dict[str, float]]]) -> dict[str, Any]:
    """Median seconds and share of each part over ``runs``."""
    names = [n for n in ORDER if any(n in r[1] for r in runs)]
    names += sorted({n for r in runs for n in r[1]} - set(names))
    parts = {}
    for n in names:
        parts[n] = {"seconds": B.median(r[1].get(n, 0.0) for r in runs),
                    "share": B.median(r[1].get(n, 0.0) / r[0] for r in runs),
                    "calls": max(r[2].get(n, 0) for r in runs)}
    return {"seconds": B.median(r[0] for r in runs), "all_seconds": [r[0] for r in runs], "parts": parts}


def print_breakdown(b: dict[str, Any]) -> None:
    rows = [(name, p["seconds"], f"{p['share']:.1%}", p["calls"] or "") for name, p in b["parts"].items()]
    print(B.columns(("part", "seconds", "share", "calls"), [*rows, ("measurement", b["seconds"], "100%", "")],
                    right=True))
    print("runs: " + ", ".join(f"{s:.1f}" for s in b["all_seconds"]) + " s")


def decode_rounds(assets, variants: list[str], rounds: int, seed: int) -> dict[str, Any]:
    """Sampling alone in each decoding variant, interleaved; the first call of each is its warm-up
    (a compile, if any) and is reported apart."""
    from gpt2ft import generate as G

    sc = assets.config.sample
    first: dict[str, float] = {}
    times: dict[str, list[float]] = {v: [] for v in variants}
    ids: dict[str, list[list[int]]] = {}
    for r, order in enumerate(B.rotations(variants, rounds + 1)):
        for v in order:
            t = time.perf_counter()
            got = G.sample(assets.base_model, assets.tokenizer, assets.runtime, sc.n_samples, sc.new_tokens, seed,
                           sc.top_k, sc.temperature, decode=v)
            elapsed = time.perf_counter() - t
            if r:
                times[v].append(elapsed)
            else:
                first[v] = elapsed
            ids.setdefault(v, got)
            print(f"round {r} {v:<16} {elapsed:7.2f} s", flush=True)
    return {"seconds": {v: B.median(ts) for v, ts in times.items()}, "all_seconds": times, "first_seconds": first,
            "same_tokens_as": {v: {w: ids[v] == ids[w] for w in variants} for v in variants}}


def mm_gflops(size: int = 2048) -> float:
    """fp32 ``torch.mm`` GFLOP/s now: how much of the CPU this process gets, against the idle
    machine's (100-120 on the project's idle 2-core machines, two threads)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    return B.mm_flops(size) / B.timed(lambda: torch.mm(a, b), 3) / 1e9


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    import torch

    from gpt2ft.config import load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    load0, gflops0 = os.getloadavg(), mm_gflops()
    config = load_config(args.config, args.set)
    assets, setup = load_assets(config, args.assets_cache)
    print(f"{config.model.name}: {config.sample.n_samples} x {config.sample.new_tokens} tokens, "
          f"at most {config.metrics.extraction_prompts} + {config.metrics.extraction_prompts} extraction prompts, "
          f"{torch.get_num_threads()} threads, load average {load0[0]:.1f}, mm {gflops0:.0f} GFLOP/s; "
          f"setup {setup:.0f} s", flush=True)
    for _ in range(args.warmup):
        one_run(assets, args.seed)
    runs = []
    for i in range(args.runs):
        runs.append(one_run(assets, args.seed))
        print(f"run {i + 1}: {runs[-1][0]:.1f} s", flush=True)
    agree = all(same(runs[0][3], r[3]) for r in runs)
    result = {"config": args.config, "overrides": args.set, "model": config.model.name,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "load_average_start": load0,
              "mm_gflops_start": gflops0,
              **breakdown(runs), "runs_agree": agree, "metrics": runs[0][3]}
    print_breakdown(result)
    if not agree:
        print("WARNING: the runs' metric values differ for one seed")
    if args.decode:
        result["decode"] = decode_rounds(assets, args.decode.split(","), args.decode_rounds, args.seed)
        print(json.dumps({k: result["decode"][k] for k in ("seconds", "same_tokens_as")}, indent=1))
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(one_run, assets, args.seed)
        prof.dump_stats(str(HERE / "measure.prof"))
    result["load_average_end"], result["mm_gflops_end"] = os.getloadavg(), mm_gflops()
    B.write_json(result, Path(args.out))
    print(f"results in {args.out}; at the end load average {result['load_average_end'][0]:.1f}, "
          f"mm {result['mm_gflops_end']:.0f} GFLOP/s")
    return result


if __name__ == "__main__":
    main()
