"""What one measurement costs, by part (issue 19: a measurement must cost less than an epoch).

The experiment's assets are built once, then the base model is measured (``gpt2ft.measure.measure_model``)
``--runs`` times, each part timed around the functions it calls (patched for the run only, so the code
timed is a trial's); a part called inside another (the memorization inside the bootstrap) counts for the
outer one, ``other`` is what no part covers. Per part: median seconds and share, calls per measurement; the
metric values of every run must agree (one seed, one answer). ``--decode`` also times the sampling alone
in each decoding variant (``generate.DECODES``), interleaved, and says whether they draw the same tokens.

    python3 bench/measure.py                          # demo.yaml (SmolLM2), 3 runs
    python3 bench/measure.py --threads 1 --runs 5 --assets-cache /tmp/demo-cache
    python3 bench/measure.py --decode dynamic,static --decode-rounds 3

JSON goes to ``--out`` (default bench/measure.json).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent)]  # benchlib, which puts the repository root there too
import benchlib as B  # noqa: E402

from gpt2ft import generate as G  # noqa: E402
from gpt2ft.assets import prepare  # noqa: E402
from gpt2ft.cache import setup  # noqa: E402
from gpt2ft.config import load_config  # noqa: E402
from gpt2ft.measure import measure_model  # noqa: E402

#: part: the functions of ``measure_model``'s reach timed as it ("module:attribute"), looked up at
#: call time through these module attributes; those a version of the code lacks are skipped.
PARTS = {"sampling": ("measure:sample",),
         "extraction": ("measure:greedy", "measure:greedy_until_wrong", "extraction:suffix_scores"),
         "membership": ("membership:window_scores",), "near-verbatim": ("words:WordIndex.measure",),
         "fluency": ("measure:perplexity",), "classifier": ("style:StyleClassifier.prob",),
         "bootstrap": ("metrics:bootstrap_se", "metrics:bootstrap_ratio_se"),
         "top100_ratio": ("metrics:top100_ratio", "metrics:top100_counts"),
         "memorization 4/8/16": ("metrics:memorization", "metrics:memorization_counts"),
         "longest_copy": ("measure:longest_copy", "metrics:longest_copy"), "style_js": ("metrics:js_divergence",),
         "distinct-n, repetition": ("metrics:distinct_n", "metrics:repetition_rate")}
ORDER = (*PARTS, "other")


class Sections:
    """Seconds and calls per part while active; a part entered inside another counts for the outer."""

    def __init__(self, parts: dict[str, Sequence[str]] = PARTS):
        self.parts, self.seconds, self.calls, self._depth = parts, {}, {}, 0

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
            for part, module, attr in ((p, *f.split(":")) for p, fs in self.parts.items() for f in fs):
                owner: Any = importlib.import_module(f"gpt2ft.{module}")
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
    ap.add_argument("--assets-cache", help="a folder for the study's setup cache (saves the ~1 min setup between "
                                           "runs; the assets then carry the references)")
    ap.add_argument("--decode", help="comma-separated decoding variants to time the sampling in, interleaved "
                                     "(generate.DECODES, e.g. dynamic,static,static-compile)")
    ap.add_argument("--decode-rounds", type=int, default=3, help="rounds of --decode (default 3)")
    ap.add_argument("--out", default=str(B.HERE / "measure.json"), help="JSON results (default bench/measure.json)")
    return ap


def load_assets(config, store: Optional[str]):
    """The prepared assets and their seconds; with ``store``, from the study's setup cache there
    (``gpt2ft.cache``: computed and kept on a miss, with the references a study's assets carry)."""
    t = time.perf_counter()
    assets = setup(config, None, Path(store)).assets if store else prepare(config)
    return assets, time.perf_counter() - t


def one_run(assets, seed: int) -> tuple[float, dict[str, float], dict[str, int], dict[str, float]]:
    """One timed measurement of the base model: (seconds, seconds by part, calls by part, metrics)."""
    sec = Sections()
    with sec.active():
        t = time.perf_counter()
        metrics, _, _ = measure_model(assets, assets.base_model, assets.config.sample.n_samples, seed)
        total = time.perf_counter() - t
    parts = dict(sec.seconds)
    parts["other"] = max(0.0, total - sum(parts.values()))
    return total, parts, dict(sec.calls), metrics


def breakdown(runs: list[tuple[float, dict[str, float], dict[str, int], dict[str, float]]]) -> dict[str, Any]:
    """Median seconds and share of each part over ``runs``."""
    names = [n for n in ORDER if any(n in r[1] for r in runs)]
    names += sorted({n for r in runs for n in r[1]} - set(names))
    parts = {n: {"seconds": B.median(r[1].get(n, 0.0) for r in runs),
                 "share": B.median(r[1].get(n, 0.0) / r[0] for r in runs), "calls": max(r[2].get(n, 0) for r in runs)}
             for n in names}
    return {"seconds": B.median(r[0] for r in runs), "all_seconds": [r[0] for r in runs], "parts": parts}


def decode_rounds(assets, variants: list[str], rounds: int, seed: int) -> dict[str, Any]:
    """Sampling alone in each decoding variant, interleaved; the first call of each is its warm-up
    (a compile, if any) and is reported apart."""
    sc = assets.config.sample
    times: dict[str, list[float]] = {v: [] for v in variants}
    ids: dict[str, list[list[int]]] = {}
    for r, order in enumerate(B.rotations(variants, rounds + 1)):
        for v in order:
            t = time.perf_counter()
            ids.setdefault(v, G.sample(assets.base_model, assets.tokenizer, assets.runtime, sc.n_samples,
                                       sc.new_tokens, seed, sc.top_k, sc.temperature, decode=v))
            times[v].append(time.perf_counter() - t)
            print(f"round {r} {v:<16} {times[v][-1]:7.2f} s", flush=True)
    rest = {v: ts[1:] for v, ts in times.items()}
    return {"seconds": {v: B.median(ts) for v, ts in rest.items()}, "all_seconds": rest,
            "first_seconds": {v: ts[0] for v, ts in times.items()},
            "same_tokens_as": {v: {w: ids[v] == ids[w] for w in variants} for v in variants}}


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load0, gflops0 = os.getloadavg(), B.mm_flops_now() / 1e9
    config = load_config(args.config, args.set)
    assets, setup_s = load_assets(config, args.assets_cache)
    print(f"{config.model.name}: {config.sample.n_samples} x {config.sample.new_tokens} tokens, "
          f"at most {config.metrics.extraction_prompts} + {config.metrics.extraction_prompts} extraction prompts, "
          f"{torch.get_num_threads()} threads, load average {load0[0]:.1f}, mm {gflops0:.0f} GFLOP/s; "
          f"setup {setup_s:.0f} s", flush=True)
    for _ in range(args.warmup):
        one_run(assets, args.seed)
    runs = []
    for i in range(args.runs):
        runs.append(one_run(assets, args.seed))
        print(f"run {i + 1}: {runs[-1][0]:.1f} s", flush=True)
    agree = len({json.dumps(r[3], sort_keys=True) for r in runs}) == 1  # JSON's NaN equals NaN
    result = {"config": args.config, "overrides": args.set, "model": config.model.name,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "load_average_start": load0,
              "mm_gflops_start": gflops0, **breakdown(runs), "runs_agree": agree, "metrics": runs[0][3]}
    rows = [(name, p["seconds"], f"{p['share']:.1%}", p["calls"] or "") for name, p in result["parts"].items()]
    print(B.columns(("part", "seconds", "share", "calls"), [*rows, ("measurement", result["seconds"], "100%", "")],
                    right=True) + "\nruns: " + ", ".join(f"{s:.1f}" for s in result["all_seconds"]) + " s")
    if not agree:
        print("WARNING: the runs' metric values differ for one seed")
    if args.decode:
        result["decode"] = decode_rounds(assets, args.decode.split(","), args.decode_rounds, args.seed)
        print(json.dumps({k: result["decode"][k] for k in ("seconds", "same_tokens_as")}, indent=1))
    result["load_average_end"], result["mm_gflops_end"] = os.getloadavg(), B.mm_flops_now() / 1e9
    B.write_json(result, Path(args.out))
    print(f"results in {args.out}; at the end load average {result['load_average_end'][0]:.1f}, "
          f"mm {result['mm_gflops_end']:.0f} GFLOP/s")
    return result


if __name__ == "__main__":
    main()
