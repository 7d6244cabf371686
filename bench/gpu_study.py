"""A whole ``gpt2ft study`` on one GPU with ``--jobs 1`` and with ``--jobs N``, side by side.

The gulliver study's shape (experiments/gulliver.yaml: batch sizes 4-32 x 256 tokens, 1-10
epochs, 30 trials) on a randomly initialised GPT-2 124M (the pretrained weights do not travel
to an offline GPU machine; speed does not depend on them), the real book. Both studies get
their own temporary store; the setup (book, index, classifier, references, base weights) is
computed once, untimed, and both stores read it from the same cache, so the comparison is of
the trials. Reported for each, as JSON and a table with ratios N / 1:

* wall time of the command, trials COMPLETE, trials per minute;
* the share of wall time the GPU was busy (``nvidia-smi`` utilisation sampled every 0.5 s)
  and the step share (sum of the trials' ``step_seconds`` / wall: above 1 with N workers);
* aggregate MFU: 6 x parameters x tokens trained / wall / the card's bf16 dense peak
  (989 TFLOP/s for H100 SXM and H200);
* per trial (from MLflow): ``step_seconds``, ``eval_seconds``, ``measure_seconds``,
  ``log_seconds``, ``trial_seconds``, and their means;
* the peak GPU memory of each worker process (``nvidia-smi --query-compute-apps``).

One 10-minute device command must hold both studies and the setup: ``--budget`` (560 s) is
shared out after the setup, ``--jobs N`` first with at most :data:`MANY_SHARE` of what is left,
then ``--jobs 1`` with the rest. Each study gets ``--timeout`` (no new trial after it) and is
killed :data:`FINISH_MARGIN` seconds later if still running; when one stops early the table
says how many trials it ran, and the per-trial means compare the same trial numbers (the
sampler is seeded by trial number, so trial k draws the same parameters in both). The JSON is
rewritten (atomically) after the setup and after each study, so a command cut off at its
time limit keeps what finished.

Usage, from the repository root on a CUDA machine::

    PYTHONUNBUFFERED=1 python3 bench/gpu_study.py [--jobs N|auto] [--corpus PATH] [--out FILE]
        [--set train.compile=reduce-overhead] [--set sample.every_steps=0] ...
    python3 bench/gpu_study.py --cpu-check   # anywhere: tiny.yaml, 3 trials, --jobs 2 vs 1, CPU

JSON goes to ``--out``, else ``$OUT/gpu_study.json`` when ``$OUT`` is set, else
``bench/gpu_study.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import benchlib as B  # noqa: E402
from gpt2ft.fsutil import write_json_atomic  # noqa: E402
from gpt2ft.ui_names import plain  # noqa: E402

GPT2_124M = ["model.name=random-gpt2", "model.n_layer=12", "model.n_embd=768", "model.n_head=12"]
CPU_CHECK = ["train.max_steps=3", "train.eval_batches=1", "sample.final_n_samples=4"]
# log_seconds runs in the study's background writer (off the critical path), the rest inside the trial.
TIMES = ("step_seconds", "eval_seconds", "trajectory_seconds", "measure_seconds", "log_seconds", "trial_seconds")
FINISH_MARGIN = 90  # seconds a study keeps after its --timeout for the running trial, the re-measure and the pick
#: Of the time left after the setup, the most the --jobs N study may take. Half: the --jobs 1
#: study, the slower one, needs at least as long to complete a comparable number of trials,
#: and a --jobs N study that meets its target (180 s) leaves it more.
MANY_SHARE = 0.5


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="auto", help="workers of the parallel study: N or auto (default auto)")
    ap.add_argument("--n-trials", type=int, help="trials per study (default 30; --cpu-check 3)")
    ap.add_argument("--budget", type=float, default=560, help="seconds for both studies together (default 560)")
    ap.add_argument("--corpus", help="the book (else $GPT2FT_CORPUS, ../shared/data/gulliver.txt, .carry/data/)")
    ap.add_argument("--peak-tflops", type=float, help="the card's bf16 dense peak, if its name is unknown")
    ap.add_argument("--out", help="JSON results (default $OUT/gpu_study.json, else bench/gpu_study.json)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="another config override for both studies (repeatable), e.g. train.compile=reduce-overhead")
    ap.add_argument("--keep", action="store_true", help="keep the temporary stores (their path is printed)")
    ap.add_argument("--cpu-check", action="store_true",
                    help="no GPU: experiments/tiny.yaml, 3 short trials, --jobs 2 against 1 on the CPU "
                         "(checks the script, measures nothing of the GPU)")
    return ap


def corpus_path(args) -> Path:
    # .carry/data: where make device-pack puts the book for the GPU machine, which ../shared does not reach
    for cand in (args.corpus, os.environ.get("GPT2FT_CORPUS"), ROOT.parent / "shared" / "data" / "gulliver.txt",
                 ROOT / ".carry" / "data" / "gulliver.txt"):
        if cand and Path(cand).is_file():
            return Path(cand).resolve()
    sys.exit("gpu_study: the book is needed: --corpus PATH or GPT2FT_CORPUS")


def study_args(args, corpus: Path) -> tuple[str, list[str]]:
    """The config file and ``--set`` overrides of the benchmarked study."""
    if args.cpu_check:
        return str(ROOT / "experiments" / "tiny.yaml"), [*CPU_CHECK, *args.sets]
    sets = [*GPT2_124M, *args.sets]
    others = os.environ.get("GPT2FT_OTHER_CORPORA") or corpus.parent / "other"
    if not Path(others).is_dir():  # no network on the GPU machine: no download attempt
        sets.append("metrics.style_classifier=false")
    return str(ROOT / "experiments" / "gulliver.yaml"), sets


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def warm_cache(config: str, sets: list[str], corpus: Path, store: Path, limit: float) -> dict[str, Any]:
    """Compute the setup once into ``store/cache`` (untimed for the comparison; killed after
    ``limit`` seconds)."""
    code = ("import json, sys; from gpt2ft.cache import setup; from gpt2ft.config import load_config; "
            "s = setup(load_config(sys.argv[1], sys.argv[4:]), sys.argv[2], sys.argv[3]); "
            "print(json.dumps({'key': s.key, 'hit': s.hit, 'seconds': s.seconds}))")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, config, str(corpus), str(store), *sets], env=env(),
                         capture_output=True, text=True, check=True, timeout=limit).stdout.strip().splitlines()[-1]
    return {**json.loads(out), "wall_seconds": time.perf_counter() - t}


class GpuSampler:
    """nvidia-smi every 0.5 s in a thread: GPU utilisation and each process's memory."""

    def __init__(self):
        self.util: list[float] = []
        self.peak_mib: dict[int, float] = {}
        self.available = shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "GpuSampler":
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.available:
            self._thread.join(timeout=5)

    def _query(self, what: str) -> list[list[str]]:
        out = subprocess.run(["nvidia-smi", f"--query-{what}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                rows = self._query("gpu=utilization.gpu")
                self.util.append(float(rows[0][0]))
                for pid, mib in self._query("compute-apps=pid,used_memory"):
                    self.peak_mib[int(pid)] = max(self.peak_mib.get(int(pid), 0.0), float(mib))
            except (subprocess.SubprocessError, ValueError, IndexError, OSError):
                continue  # one missed sample changes nothing

    def busy_share(self) -> Optional[float]:
        return sum(self.util) / 100 / len(self.util) if self.util else None


def run_study(jobs: str, n_trials: int, config: str, sets: list[str], corpus: Path, store: Path,
              cache: Path, timeout: Optional[float], limit: float) -> dict[str, Any]:
    """One ``gpt2ft study`` in its own store (its cache linked to the warm one), timed."""
    store.mkdir(parents=True, exist_ok=True)
    (store / "cache").symlink_to(cache, target_is_directory=True)
    cmd = [sys.executable, "-m", "gpt2ft.cli", "study", "--config", config, "--quiet", "--yes", "--jobs", jobs,
           "--n-trials", str(n_trials), "--corpus", str(corpus), "--tracking-uri", f"sqlite:///{store}/mlflow.db",
           "--study-name", "bench"]
    for item in sets:
        cmd += ["--set", item]
    if timeout is not None:
        cmd += ["--timeout", f"{max(timeout, 1):.0f}"]
    print(f"gpu_study: --jobs {jobs} (killed after {limit:.0f} s): {' '.join(cmd[3:])}", file=sys.stderr,
          flush=True)
    with GpuSampler() as gpu:
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=limit)
            killed, code, stderr = False, proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as exc:  # what it finished is in its store: report that
            killed, code = True, None
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        wall = time.perf_counter() - t
    if code not in (0, None):
        sys.stderr.write(stderr[-6000:])
        raise SystemExit(f"gpu_study: the --jobs {jobs} study failed (exit {code})")
    workers = sorted({int(line.split("]")[0][2:]) for line in stderr.splitlines() if line.startswith("[w")})
    return {"jobs_arg": jobs, "workers": len(workers) or 1, "wall_seconds": wall, "killed_at_limit": killed,
            "gpu_busy_share": gpu.busy_share(), "gpu_samples": len(gpu.util), "peak_mib_by_pid": gpu.peak_mib,
            **read_trials(store)}


def read_trials(store: Path) -> dict[str, Any]:
    """The trial runs' timings and tokens from the study's MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    # None when the study was killed before its parent run was made
    parent = next((r for r in runs if r.data.tags.get("gpt2ft.kind") == "study"), None)
    trials = []
    for r in runs:
        if r.data.tags.get("gpt2ft.kind") != "trial" or r.info.status != "FINISHED":
            continue
        m = plain(r.data.metrics)
        row = {"number": int(r.data.tags["optuna.trial"]), **{k: m.get(k) for k in TIMES},
               "tokens": m.get("tokens_per_second", 0.0) * m.get("step_seconds", 0.0),
               "batch_size": int(float(r.data.params.get("trial.batch_size", "0"))),
               "epochs": int(float(r.data.params.get("trial.epochs", "0")))}
        trials.append(row)
    trials.sort(key=lambda row: row["number"])
    tags, metrics = (parent.data.tags, plain(parent.data.metrics)) if parent is not None else ({}, {})
    return {"n_params": int(tags.get("n_params", 0)), "gpu": tags.get("gpu"),
            "setup_seconds": metrics.get("setup_seconds"), "setup_cache_hit": metrics.get("setup_cache_hit"),
            "trials": trials}


def summarize(res: dict[str, Any], peak: Optional[float], common: set[int]) -> dict[str, Any]:
    """The figures of one study: throughput, busy shares, MFU, mean per-trial times."""
    trials, wall = res["trials"], res["wall_seconds"]
    tokens = sum(t["tokens"] for t in trials)
    out = {"workers": res["workers"], "wall_seconds": wall, "killed_at_limit": res.get("killed_at_limit", False),
           "trials_complete": len(trials),
           "trials_per_minute": 60 * len(trials) / wall, "gpu_busy_share": res["gpu_busy_share"],
           "step_share": sum(t["step_seconds"] or 0 for t in trials) / wall, "tokens_trained": tokens,
           "tokens_per_second": tokens / wall,
           "mfu": 6 * res["n_params"] * tokens / wall / peak if peak else None,
           "peak_gpu_mib_per_worker": max(res["peak_mib_by_pid"].values()) if res["peak_mib_by_pid"] else None}
    same = [t for t in trials if t["number"] in common]
    for k in TIMES:
        out[f"mean_{k}"] = sum(t[k] or 0 for t in same) / len(same) if same else None
    # A trial's critical path outside optimizer steps (its writes run in the background writer).
    shares = [1 - t["step_seconds"] / t["trial_seconds"] for t in same if t["step_seconds"] and t["trial_seconds"]]
    out["outside_steps_share"] = sum(shares) / len(shares) if shares else None
    return out


#: The issue's targets for the 30-trial study on one H100/H200.
TARGETS = {"wall_seconds": ("<=", 180.0), "gpu_busy_share": (">=", 0.80), "mfu": (">=", 0.35),
           "outside_steps_share": ("<=", 0.10)}


def verdicts(figures: dict[str, Any]) -> str:
    """One line per target: the figure, the target, met or not (or not measured)."""
    lines = []
    for key, (op, goal) in TARGETS.items():
        value = figures.get(key)
        met = None if value is None else (value <= goal if op == "<=" else value >= goal)
        lines.append(f"{key:<22}{B.fmt(value):>12}  target {op} {goal:<8}"
                     f"{'not measured' if met is None else ('met' if met else 'MISSED')}")
    return "\n".join(lines)


ROWS = ("workers", "wall_seconds", "trials_complete", "trials_per_minute", "gpu_busy_share", "step_share",
        "tokens_per_second", "mfu", "peak_gpu_mib_per_worker", *(f"mean_{k}" for k in TIMES), "outside_steps_share")


def table(one: dict[str, Any], many: dict[str, Any], n: int) -> str:
    """The two studies side by side, with the ratio N / 1 of each figure."""
    lines = [f"{'figure':<26}{'--jobs 1':>14}{f'--jobs {n}':>14}{'ratio':>10}"]
    for k in ROWS:
        a, b = one.get(k), many.get(k)
        ratio = b / a if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else None
        lines.append(f"{k:<26}{B.fmt(a):>14}{B.fmt(b):>14}{B.fmt(ratio):>10}")
    return "\n".join(lines)


def out_path(args) -> Path:
    if args.out:
        return Path(args.out)
    return Path(os.environ["OUT"]) / "gpu_study.json" if os.environ.get("OUT") else HERE / "gpu_study.json"


def write_results(results: dict[str, Any], path: Path) -> None:
    """The results so far, written beside ``path`` and renamed over it: a command killed at its
    time limit keeps every study that finished, and never a half-written file."""
    write_json_atomic(results, path)


def add_studies(results: dict[str, Any], studies: dict[str, dict[str, Any]], peak: Optional[float]) -> None:
    """Put each finished study's figures (and raw data) into ``results``, under ``jobs_<workers>``
    (``serial``/``parallel`` when both had one worker), the per-trial means over the trial numbers
    they all ran."""
    for key in results.pop("studies", {}).values():  # written under other names before
        results.pop(key, None)
    common = set.intersection(*({t["number"] for t in res["trials"]} for res in studies.values()))
    results["common_trials"] = sorted(common)
    workers = [res["workers"] for res in studies.values()]
    results["studies"] = {name: f"jobs_{res['workers']}" if len(set(workers)) == len(workers) else name
                          for name, res in studies.items()}
    for name, res in studies.items():
        results[results["studies"][name]] = {**summarize(res, peak, common), "raw": res}


def run_both(args, jobs: str, n_trials: int, config: str, sets: list[str], corpus: Path, root: Path,
             results: dict[str, Any], t0: float) -> dict[str, dict[str, Any]]:
    """``--jobs N`` then ``--jobs 1``, each within its share of ``--budget`` (see the module's
    docstring); the JSON is rewritten after each."""
    cache, path = root / "shared" / "cache", out_path(args)
    left = lambda: args.budget - (time.perf_counter() - t0)  # noqa: E731
    studies: dict[str, dict[str, Any]] = {}
    for name, n_jobs, limit in (("parallel", jobs, left() * MANY_SHARE), ("serial", "1", None)):
        limit = max(limit if limit is not None else left(), FINISH_MARGIN / 3)
        studies[name] = run_study(n_jobs, n_trials, config, sets, corpus, root / name, cache,
                                  limit - FINISH_MARGIN, limit)
        many = studies["parallel"]
        results.update(gpu=many.get("gpu"), n_params=many["n_params"],
                       peak_flops=args.peak_tflops * 1e12 if args.peak_tflops else B.gpu_peak(many.get("gpu") or ""))
        add_studies(results, studies, results["peak_flops"])
        write_results(results, path)
    return studies


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    corpus = corpus_path(args)
    config, sets = study_args(args, corpus)
    n_trials = args.n_trials or (3 if args.cpu_check else 30)
    jobs = "2" if args.cpu_check and args.jobs == "auto" else args.jobs
    path = out_path(args)
    results: dict[str, Any] = {"cpu_check": args.cpu_check, "config": config, "sets": sets, "n_trials": n_trials,
                               "corpus": str(corpus), "budget_seconds": args.budget}
    root = Path(tempfile.mkdtemp(prefix="gpu_study."))
    try:
        results["setup"] = warm = warm_cache(config, sets, corpus, root / "shared", args.budget)
        write_results(results, path)
        print(f"gpu_study: setup computed once in {warm['seconds']:.1f} s (cache {warm['key']})", file=sys.stderr)
        studies = run_both(args, jobs, n_trials, config, sets, corpus, root, results, t0)
    finally:
        if args.keep:
            print(f"gpu_study: stores kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    one_key, many_key = results["studies"]["serial"], results["studies"]["parallel"]
    n = studies["parallel"]["workers"]
    print(table(results[one_key], results[many_key], n))
    what = "a CPU check: the targets are for 30 trials of GPT-2 124M on one GPU" if args.cpu_check else "the issue's"
    print(f"\ntargets (--jobs {n}, {n_trials} trials; {what}):\n" + verdicts(results[many_key]))
    print(f"\nmeans over the {len(results['common_trials'])} trial numbers both ran; JSON: {path} "
          f"({time.perf_counter() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
