"""The one GPU script: ``make gpu-check`` (the checks, its default mode) and ``make bench-gpu`` (``--study``).

**Checks**: the CUDA paths no CPU test reaches, in at most 5 minutes on one H100/H200 (through
``bench/device_check.sh``; docs/gpu.md, the table in docs/performance.md): in-process checks on a 2-layer
model, a short gulliver study with ``--jobs auto`` on random-init GPT-2 124M, the checks of what it recorded,
its export and, while the 200-s budget holds them, a retrain and the compiled paths; each verdict and part's
seconds printed as it ends (a run cut off says where its time went), all in ``gpu_check.json``; exit 1 on a
failed check. **Study** (``--study``): the 30-trial gulliver study with ``--jobs N``, then ``--jobs 1``, in
stores of their own over one warm setup cache: wall time, trials/min, the GPU's busy share, MFU and the
per-trial breakdown (from MLflow) over the trial numbers both ran; ``gpu_study.json`` is rewritten after each
study, so a command cut off at ``--budget`` keeps what finished. ``--cpu-check`` runs either on
experiments/tiny.yaml on the CPU (GPU figures null). JSON goes into ``--out-dir`` ($OUT when set, else bench/)::

    PYTHONUNBUFFERED=1 python3 bench/gpu.py [--cpu-check] [--corpus PATH] [--out-dir DIR]
    PYTHONUNBUFFERED=1 python3 bench/gpu.py --study [--jobs N|auto] [--set train.compile=default]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Optional

_T0 = time.perf_counter()  # the checks' clock and budget start before the imports, as they did inside main
import torch  # noqa: E402

sys.path[:0] = [str(Path(__file__).resolve().parent)]  # benchlib, which puts the repository root there too
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it: the GPU machine has no network
import benchlib as B  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from gpt2ft import compiled, goldfish, train as T  # noqa: E402
from gpt2ft.config import TrainConfig  # noqa: E402
from gpt2ft.coordination import default_storage, load_study  # noqa: E402
from gpt2ft.data import TokenData  # noqa: E402
from gpt2ft.generate import sample  # noqa: E402
from gpt2ft.model import Runtime, resolve_runtime  # noqa: E402
from gpt2ft.sampler import Sampler, bf16_is_native, packs_on, sampling_dtype  # noqa: E402
from gpt2ft.summary import is_derived, summarize as summarize_study, trained  # noqa: E402
from gpt2ft.ui_names import plain  # noqa: E402

ROOT = B.ROOT
GPT2_124M = ["model.name=random-gpt2", "model.n_layer=12", "model.n_embd=768", "model.n_head=12"]
#: The checks' study on the GPU: 6 trials of 1-3 epochs, one of them 3 epochs of a rate that learns
#: (so interior epochs become derived trials), a 20-sample re-measure.
CHECK_SETS = ["study.epochs={low: 1, high: 3}", "sample.final_n_samples=20",
              "study.enqueue=[{lr: 3.0e-4, epochs: 3, batch_size: 8}]"]
#: The same on the tiny model, as small as it goes: a 4,000-character slice (a 2-epoch trial has an
#: interior epoch to derive), 16-token samples.
CPU_CHECK_SETS = ["train.device=cpu", "data.max_chars=4000", "train.max_steps=40", "train.eval_batches=1",
                  "sample.new_tokens=16", "sample.final_n_samples=6",
                  "study.enqueue=[{lr: 2.0e-3, epochs: 2, batch_size: 4}]"]
CPU_STUDY_SETS = ["train.max_steps=3", "train.eval_batches=1", "sample.final_n_samples=4"]
# log_seconds runs in the study's background writer (off the critical path), the rest inside the trial.
TIMES = ("step_seconds", "eval_seconds", "trajectory_seconds", "measure_seconds", "log_seconds", "trial_seconds")
FINISH_MARGIN = 90  # seconds a study keeps after its --timeout for the running trial, the re-measure and the pick
#: Of the time left after the setup, the most the --jobs N study may take. Half: the --jobs 1 study,
#: the slower one, needs at least as long to complete a comparable number of trials.
MANY_SHARE = 0.5
#: The issue's targets for the 30-trial study on one H100/H200.
TARGETS = {"wall_seconds": ("<=", 180.0), "gpu_busy_share": (">=", 0.80), "mfu": (">=", 0.35),
           "outside_steps_share": ("<=", 0.10)}


def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--study", action="store_true", help="the benchmark: --jobs N against --jobs 1")
    ap.add_argument("--cpu-check", action="store_true", help="experiments/tiny.yaml on the CPU (GPU figures null)")
    ap.add_argument("--corpus", help="the book (else $GPT2FT_CORPUS, ../shared/data/gulliver.txt, .carry/data/)")
    ap.add_argument("--n-trials", type=int, help="trials per study (checks 6, --cpu-check 2; --study 30, 3)")
    ap.add_argument("--budget", type=float, help="seconds for everything (checks 200 on CUDA, else 600; --study 560)")
    ap.add_argument("--jobs", default="auto", help="--study: workers of the parallel study, N or auto")
    ap.add_argument("--peak-tflops", type=float, help="the card's bf16 dense peak, if its name is unknown")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--out-dir", help="folder for gpu_check.json / gpu_study.json (default $OUT, else bench/)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary stores (their path is printed)")
    args = ap.parse_args(argv)
    args.budget = args.budget or (560.0 if args.study else None)
    return args


def study_config(args, corpus: Path, cpu_sets: list[str], gpu_sets: list[str]) -> tuple[str, list[str]]:
    """The config file and ``--set`` overrides of a study: tiny.yaml on the CPU, else gulliver.yaml
    on GPT-2 124M, without the style classifier when the other novels are absent (no network there)."""
    if args.cpu_check:
        return str(ROOT / "experiments" / "tiny.yaml"), [*cpu_sets, *args.sets]
    sets = [*GPT2_124M, *gpu_sets, *args.sets]
    if not Path(os.environ.get("GPT2FT_OTHER_CORPORA") or corpus.parent / "other").is_dir():
        sets.append("metrics.style_classifier=false")
    return str(ROOT / "experiments" / "gulliver.yaml"), sets


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def warm_cache(config: str, sets: list[str], corpus: Path, store: Path, limit: float) -> dict[str, Any]:
    """The setup computed once into ``store/cache`` (untimed for the comparison), killed after ``limit`` s."""
    code = ("import json, sys; from gpt2ft.cache import setup; from gpt2ft.config import load_config; "
            "s = setup(load_config(sys.argv[1], sys.argv[4:]), sys.argv[2], sys.argv[3]); "
            "print(json.dumps({'key': s.key, 'hit': s.hit, 'seconds': s.seconds}))")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, config, str(corpus), str(store), *sets], env=env(),
                         capture_output=True, text=True, check=True, timeout=limit).stdout.strip().splitlines()[-1]
    return {**json.loads(out), "wall_seconds": time.perf_counter() - t}


@contextlib.contextmanager
def gpu_utilisation() -> Iterator[list[float]]:
    """``nvidia-smi``'s GPU utilisation (0-100) every 0.5 s in a thread, into the list it yields."""
    util: list[float] = []
    stop = threading.Event()
    query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]

    def loop() -> None:
        while shutil.which("nvidia-smi") and not stop.wait(0.5):
            with contextlib.suppress(subprocess.SubprocessError, ValueError, IndexError, OSError):  # a missed sample
                util.append(float(subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.split()[0]))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield util
    finally:
        stop.set()
        thread.join(timeout=5)


def run_study(jobs: str, n_trials: int, config: str, sets: list[str], corpus: Path, store: Path,
              cache: Path, timeout: float, limit: float) -> dict[str, Any]:
    """One ``gpt2ft study`` in its own store (its cache linked to the warm one), timed; killed
    after ``limit`` seconds, when what it finished is read from its store all the same."""
    store.mkdir(parents=True, exist_ok=True)
    (store / "cache").symlink_to(cache, target_is_directory=True)
    cmd = [sys.executable, "-m", "gpt2ft.cli", "study", "--config", config, "--quiet", "--yes", "--jobs", jobs,
           "--n-trials", str(n_trials), "--corpus", str(corpus), "--tracking-uri", f"sqlite:///{store}/mlflow.db",
           "--study-name", "bench", "--timeout", f"{max(timeout, 1):.0f}", *(a for s in sets for a in ("--set", s))]
    print(f"gpu: --jobs {jobs} (killed after {limit:.0f} s): {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
    with gpu_utilisation() as util:
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=limit)
            killed, code, stderr = False, proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as exc:
            killed, code = True, None
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        wall = time.perf_counter() - t
    if code not in (0, None):
        sys.stderr.write(stderr[-6000:])
        raise SystemExit(f"gpu: the --jobs {jobs} study failed (exit {code})")
    workers = {line.split("]")[0] for line in stderr.splitlines() if line.startswith("[w")}
    return {"jobs_arg": jobs, "workers": len(workers) or 1, "wall_seconds": wall, "killed_at_limit": killed,
            "gpu_busy_share": sum(util) / 100 / len(util) if util else None, "gpu_samples": len(util),
            **read_trials(store)}


def read_trials(store: Path) -> dict[str, Any]:
    """The trial runs' timings and tokens, and the study's parameter count and GPU, from its MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    trials = []
    for r in runs:
        if r.data.tags.get("gpt2ft.kind") == "trial" and r.info.status == "FINISHED":
            m = plain(r.data.metrics)
            trials.append({"number": int(r.data.tags["optuna.trial"]), **{k: m.get(k) for k in TIMES},
                           "tokens": m.get("tokens_per_second", 0.0) * m.get("step_seconds", 0.0),
                           "batch_size": int(float(r.data.params.get("trial.batch_size", "0")))})
    # no parent run when the study was killed before it made one
    tags = next((r.data.tags for r in runs if r.data.tags.get("gpt2ft.kind") == "study"), {})
    return {"n_params": int(tags.get("n_params", 0)), "gpu": tags.get("gpu"),
            "trials": sorted(trials, key=lambda row: row["number"])}


def summarize(res: dict[str, Any], peak: Optional[float], common: set[int]) -> dict[str, Any]:
    """The figures of one study: throughput, busy shares, MFU, mean per-trial times over ``common``."""
    trials, wall = res["trials"], res["wall_seconds"]
    tokens = sum(t["tokens"] for t in trials)
    out = {"workers": res["workers"], "wall_seconds": wall, "killed_at_limit": res.get("killed_at_limit", False),
           "trials_complete": len(trials), "trials_per_minute": 60 * len(trials) / wall,
           "gpu_busy_share": res["gpu_busy_share"], "step_share": sum(t["step_seconds"] or 0 for t in trials) / wall,
           "tokens_trained": tokens, "tokens_per_second": tokens / wall,
           "mfu": 6 * res["n_params"] * tokens / wall / peak if peak else None}
    same = [t for t in trials if t["number"] in common]
    for k in TIMES:
        out[f"mean_{k}"] = sum(t[k] or 0 for t in same) / len(same) if same else None
    # A trial's critical path outside optimizer steps (its writes run in the background writer).
    shares = [1 - t["step_seconds"] / t["trial_seconds"] for t in same if t["step_seconds"] and t["trial_seconds"]]
    out["outside_steps_share"] = sum(shares) / len(shares) if shares else None
    return out


def verdicts(figures: dict[str, Any]) -> str:
    """One line per target: the figure, the target, met or not (or not measured)."""
    lines = []
    for key, (op, goal) in TARGETS.items():
        value = figures.get(key)
        met = None if value is None else (value <= goal if op == "<=" else value >= goal)
        lines.append(f"{key:<22}{B.fmt(value):>12}  target {op} {goal:<8}"
                     f"{'not measured' if met is None else ('met' if met else 'MISSED')}")
    return "\n".join(lines)


def add_studies(results: dict[str, Any], studies: dict[str, dict[str, Any]], peak: Optional[float]) -> None:
    """Each finished study's figures and raw data into ``results`` under ``jobs_<workers>``
    (``serial``/``parallel`` when both had one worker), the means over the trial numbers all ran."""
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
    """``--jobs N`` then ``--jobs 1``, each within its share of ``--budget``; the JSON rewritten after each."""
    cache, path = root / "shared" / "cache", B.out_path(None, "gpu_study.json", args.out_dir)
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
        B.write_json(results, path)
    return studies


def study_main(args) -> int:
    """``--study``: the two studies side by side, the ratio N / 1 of each figure, the targets."""
    t0 = time.perf_counter()
    corpus = B.corpus_path(args.corpus)
    config, sets = study_config(args, corpus, CPU_STUDY_SETS, [])
    n_trials = args.n_trials or (3 if args.cpu_check else 30)
    jobs = "2" if args.cpu_check and args.jobs == "auto" else args.jobs
    path = B.out_path(None, "gpu_study.json", args.out_dir)
    results: dict[str, Any] = {"cpu_check": args.cpu_check, "config": config, "sets": sets, "n_trials": n_trials,
                               "corpus": str(corpus), "budget_seconds": args.budget}
    root = Path(tempfile.mkdtemp(prefix="gpu_study."))
    try:
        results["setup"] = warm = warm_cache(config, sets, corpus, root / "shared", args.budget)
        B.write_json(results, path)
        print(f"gpu: setup computed once in {warm['seconds']:.1f} s (cache {warm['key']})", file=sys.stderr)
        run_both(args, jobs, n_trials, config, sets, corpus, root, results, t0)
    finally:
        print(f"gpu: stores kept in {root}", file=sys.stderr) if args.keep else shutil.rmtree(root, True)
    one, many = (results[results["studies"][k]] for k in ("serial", "parallel"))
    n = many["workers"]
    rows = ("workers", "wall_seconds", "trials_complete", "trials_per_minute", "gpu_busy_share", "step_share",
            "tokens_per_second", "mfu", *(f"mean_{k}" for k in TIMES), "outside_steps_share")
    ratio = (lambda a, b: b / a if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else None)
    print(B.columns(("figure", "--jobs 1", f"--jobs {n}", "ratio"),
                    ((k, one.get(k), many.get(k), ratio(one.get(k), many.get(k))) for k in rows), right=True))
    what = "a CPU check: the targets are for 30 trials of GPT-2 124M on one GPU" if args.cpu_check else "the issue's"
    print(f"\ntargets (--jobs {n}, {n_trials} trials; {what}):\n" + verdicts(many))
    print(f"\nmeans over the {len(results['common_trials'])} trial numbers both ran; JSON: {path} "
          f"({time.perf_counter() - t0:.0f} s in all)")
    return 0


def _small_model(device, vocab: int = 512):
    """A 2-layer GPT-2 for the in-process checks: the same code paths as 124M, in milliseconds."""
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=64, n_layer=2, n_embd=64, n_head=2,
                                      bos_token_id=0, eos_token_id=0)).to(device)


def _fit(device, windows: int, cfg: Optional[dict[str, Any]] = None, **fit_kwargs) -> Any:
    """``fit`` of the small model on the device on ``windows`` random 16-token windows, 1 epoch unless ``cfg`` says."""
    tc = TrainConfig(batch_size=4, lr=1e-3, max_steps=None, log_every=2, device=device.type,
                     **{"epochs": 1, **(cfg or {})})
    g = torch.Generator().manual_seed(0)
    data = TokenData(torch.randint(0, 512, (windows, 16), generator=g), torch.randint(0, 512, (8, 16), generator=g),
                     [], [], 16)
    return T.fit(tc, _small_model(device), data, None, resolve_runtime(tc), progress=False, **fit_kwargs)


def sampler_refresh(device) -> str:
    """The bf16 sampling copy: made once, refreshed in place across two trials' models, holding each
    one's weights in bf16, the fp32 weights untouched, on the device and decoding there."""
    native = bf16_is_native(device)
    if device.type == "cuda":
        assert native, f"{torch.cuda.get_device_name()} does not multiply bf16 natively: sampling stays fp32"
    dtype = sampling_dtype("auto", device) or torch.bfloat16  # a CPU without bf16: forced, for the path
    sampler, copies = Sampler(dtype, packed=packs_on(device, dtype)), []
    for seed in (0, 1):  # two trials, two fresh models of one architecture
        torch.manual_seed(seed)
        model = _small_model(device)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        used = sampler.weights_of(model)
        mine, theirs = model.state_dict(), used.state_dict()
        assert all(torch.equal(mine[k].to(dtype), theirs[k]) for k in mine if mine[k].is_floating_point()), \
            f"trial {seed}: the sampling copy does not hold the trained weights"
        assert all(torch.equal(before[k], mine[k]) for k in mine), "the trained weights changed"
        assert next(used.parameters()).device.type == device.type, "the sampling copy is not on the device"
        with torch.inference_mode():
            logits = used(torch.zeros((2, 8), dtype=torch.long, device=device)).logits
        assert logits.dtype == dtype and torch.isfinite(logits).all(), f"decoding gave {logits.dtype} / non-finite"
        copies.append(used)
    assert copies[0] is copies[1], "a second trial made a second sampling copy instead of refreshing the first"
    return f"one {dtype} copy refreshed in place across two trials (native bf16: {native})"


def step_timer(device) -> str:
    """The device's step timer (CUDA events on CUDA) around 5 of ``fit``'s steps: above 0, within the wall."""
    cfg = TrainConfig(lr=1e-3, batch_size=4, device=device.type)
    runtime, model = resolve_runtime(cfg), _small_model(device)
    opt, sched = T._optimizer_and_schedule(model, cfg, runtime)
    x = torch.randint(0, 512, (4, 32), device=device)
    timer = T.step_timer(device)
    assert isinstance(timer, T.CudaStepTimer) == (device.type == "cuda"), f"{type(timer).__name__} on {device}"
    t = time.perf_counter()
    for _ in range(5):
        timer.start()
        T._step(model, opt, sched, x, cfg, runtime)
        timer.stop()
    measured = timer.seconds  # waits for the last step's end event
    wall = time.perf_counter() - t
    assert 0 < measured <= wall * 1.05, f"the timer read {measured:.4f} s of {wall:.4f} s wall"
    return f"{type(timer).__name__}: {measured:.4f} s of {wall:.4f} s wall for 5 steps"


def copying_stop(device) -> str:
    """``fit`` on the device, its caller saying stop at the second point: it stops there."""
    seen: list[int] = []
    res = _fit(device, 24, cfg={"epochs": 3}, point_every=4,
               on_point=lambda step, epoch: seen.append(step) or len(seen) == 2)
    assert res.stopped_for_copying and res.steps == seen[1] == 8, f"stopped at {res.steps} (points {seen})"
    return f"stopped at step {res.steps}, the second point"


def goldfish_fit(device) -> str:
    """The goldfish labels made on the device equal the CPU's (int64 hash arithmetic); ``fit`` trains on them."""
    ids = torch.randint(0, 50257, (8, 64), generator=torch.Generator().manual_seed(0))
    here, there = goldfish.labels(ids, 4), goldfish.labels(ids.to(device), 4)
    assert there.device.type == device.type and torch.equal(here, there.cpu()), "the device's labels differ"
    share = (here == goldfish.IGNORE_INDEX).float().mean().item()
    assert 0.15 < share < 0.35, f"{share:.2f} of the targets dropped for k = 4"
    res = _fit(device, 16, cfg={"goldfish_k": 4})
    loss = res.history[-1]["train_loss"]
    assert res.steps == 4 and loss == loss, f"{res.steps} steps, train_loss {loss}"
    return f"labels equal the CPU's ({share:.2f} dropped); fit ran {res.steps} steps, train_loss {loss:.3f}"


def compiled_fit(device) -> str:
    """``train.compile=default``: ``fit`` on the device through the compiled step, no fallback to eager."""
    compiled.reset()
    t = time.perf_counter()
    res = _fit(device, 16, cfg={"compile": "default"})
    assert not compiled._BROKEN, f"torch.compile fell back to eager ({sorted(compiled._BROKEN)})"
    assert res.steps == 4, f"{res.steps} steps"
    return f"{res.steps} compiled steps in {time.perf_counter() - t:.1f} s (the compile included)"


def compiled_decode(device) -> str:
    """``sample.decode=static-compile``: sampling through transformers' compiled static-cache decode."""
    tok = SimpleNamespace(bos_token_id=0, eos_token_id=0)  # sample() reads only the BOS/EOS ids
    ids = sample(_small_model(device), tok, Runtime(device, None), 2, 8, seed=0, decode="static-compile")
    assert len(ids) == 2 and all(len(row) == 8 for row in ids), f"sampled {ids}"
    return f"2 x 8 tokens sampled through the compiled decode: {ids[0]}"


def part(results: dict[str, Any], name: str, t: float) -> None:
    """Record and print one part's seconds (since ``t``) and the total so far."""
    results.setdefault("parts", {})[name] = round(time.perf_counter() - t, 2)
    print(f"gpu_check: [{time.perf_counter() - _T0:5.0f} s] {name}: {results['parts'][name]:.1f} s",
          file=sys.stderr, flush=True)


def check(results: dict[str, Any], name: str, fn: Callable[[], str], skip: Optional[str] = None) -> None:
    """Run one check into ``results['checks']``: ok and what it saw, or the failure, timed; or, with
    ``skip`` (why), recorded as skipped (``ok`` null), not failed."""
    t, got = time.perf_counter(), results["checks"]
    try:
        got[name] = {"ok": None, "detail": f"skipped: {skip}"} if skip else {"ok": True, "detail": fn()}
    except Exception as exc:  # every failure is reported, the other checks still run
        got[name] = {"ok": False, "detail": f"{exc.__class__.__name__}: {exc}"}
    print(f"gpu_check: {name}: {({True: 'ok', False: 'FAILED'}).get(got[name]['ok'], 'skipped')} -- "
          f"{got[name]['detail']}", file=sys.stderr, flush=True)
    if not skip:
        part(results, name, t)


def study_figures(store: Path, res: dict[str, Any], peak: Optional[float]) -> dict[str, Any]:
    """The study's Optuna record (trials, derived trials, stops, measure share, the pick) and throughput figures."""
    study = load_study(default_storage(store), "bench")
    mine = trained(study.get_trials(deepcopy=False))
    done = [t for t in mine if t.state.name == "COMPLETE"]
    seconds = [t.user_attrs.get("seconds", {}) for t in done]
    busy = sum(s.get("trial_seconds", 0.0) for s in seconds)
    measuring = sum(s.get("measure_seconds", 0.0) + s.get("trajectory_seconds", 0.0) for s in seconds)
    summary = summarize_study(study)
    pick, metrics = summary.pick, [t.user_attrs.get("metrics", {}) for t in done]
    return {"trials": len(mine), "trials_complete": len(done), "wall_seconds": res["wall_seconds"],
            "workers": res["workers"], "trial_workers": trial_workers(done),
            "trials_per_minute": 60 * len(done) / res["wall_seconds"], "gpu_busy_share": res["gpu_busy_share"],
            "mfu": summarize(res, peak, {t.number for t in done})["mfu"],
            "measure_share": measuring / busy if busy else None,
            "derived_trials": sum(is_derived(t) for t in study.get_trials(deepcopy=False)),
            "stop_recorded": sum("stopped_for_copying" in m for m in metrics),
            "stopped_for_copying": [t.number for t, m in zip(done, metrics) if m.get("stopped_for_copying") == 1.0],
            "pick": None if pick is None else {
                "trial": pick.number, "step": pick.step, "eligible": bool(pick.eligible),
                "confidence": p if (p := summary.p_closer_by_top100) == p else None, "reason": pick.reason}}


def trial_workers(done) -> dict[str, dict[str, Any]]:
    """Each process that ran a COMPLETE trial, by pid: its device and its largest recorded peak memory."""
    out: dict[str, dict[str, Any]] = {}
    for w in (t.user_attrs.get("worker") or {} for t in done):
        if "pid" not in w:
            continue
        seen = out.setdefault(str(w["pid"]), {"device": w.get("device"), "device_name": w.get("device_name"),
                                              "trials": 0, "peak_memory_bytes": None})
        seen["trials"] += 1
        if w.get("peak_memory_bytes") is not None:
            seen["peak_memory_bytes"] = max(seen["peak_memory_bytes"] or 0, w["peak_memory_bytes"])
    return out


def export_loads(store: Path, pick: dict[str, Any], device) -> str:
    """``gpt2ft export`` of the pick (by name when none is eligible) loaded in ``pipeline()`` on the device."""
    from transformers import pipeline

    out = store / "export"
    cmd = [sys.executable, "-m", "gpt2ft.cli", "export", "--out", str(out), "--quiet", "--study-name", "bench",
           "--tracking-uri", f"sqlite:///{store}/mlflow.db", "--no-register"]
    if not pick["eligible"]:
        cmd += ["--trial", str(pick["trial"]), "--step", str(pick["step"])]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"export exited {done.returncode}: {done.stderr[-600:]}"
    meta = json.loads((out / "metrics.json").read_text())
    generate = pipeline("text-generation", model=str(out), device=device)
    text = generate("The", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("The") and len(text) > 3, f"the pipeline generated {text!r}"
    return f"trial {meta['trial']} at step {meta['step']} (retrained: {meta['retrained']}) generated {text!r}"


def retrain_export(store: Path, pick: dict[str, Any], device) -> str:
    """The export again with the study's checkpoints gone: it retrains the pick on the device."""
    root = load_study(default_storage(store), "bench").user_attrs.get("checkpoint_root")
    assert root, "the study recorded no checkpoint_root"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(store / "export", ignore_errors=True)
    detail = export_loads(store, pick, device)
    assert "retrained: True" in detail, f"no retrain: {detail}"
    return detail


def run_study_checks(args, results: dict[str, Any], device, t0: float) -> None:
    """The short study with --jobs auto, then its checks and figures."""
    corpus = B.corpus_path(args.corpus)
    config, sets = study_config(args, corpus, CPU_CHECK_SETS, CHECK_SETS)
    n = args.n_trials or (2 if args.cpu_check else 6)
    results.update(config=config, sets=sets, n_trials=n)
    root = Path(tempfile.mkdtemp(prefix="gpu_check."))
    try:
        t = time.perf_counter()
        results["setup"] = warm_cache(config, sets, corpus, root / "shared", args.budget)
        part(results, "setup (book, index, references)", t)
        left = args.budget - (time.perf_counter() - t0) - 60  # the export and its pipeline after it
        t = time.perf_counter()
        res = run_study("auto", n, config, sets, corpus, root / "study", root / "shared" / "cache",
                        left - FINISH_MARGIN / 3, left)
        part(results, f"study ({n} trials, --jobs auto)", t)
        peak = B.gpu_peak(res.get("gpu") or "") if device.type == "cuda" else None
        results["study"] = figures = study_figures(root / "study", res, peak)
        results.update({k: figures[k] for k in ("trials_per_minute", "gpu_busy_share", "mfu", "measure_share", "pick")})
        _study_verdicts(results, figures, n, device, root / "study")
        extras(args, results, device, root / "study", t0)
    finally:
        print(f"gpu_check: store kept in {root}", file=sys.stderr) if args.keep else shutil.rmtree(root, True)


def _study_verdicts(results: dict[str, Any], f: dict[str, Any], n: int, device, store: Path) -> None:
    def study() -> str:
        # --timeout stops starting trials to keep the budget: what started must COMPLETE, 3 at least
        assert f["trials_complete"] == f["trials"] >= min(n, 3), \
            f"{f['trials_complete']} of {f['trials']} trials COMPLETE (of {n} asked, {min(n, 3)} at least)"
        assert f["pick"] is not None, "no pick"
        return f"{f['trials']} of {n} trials in {f['wall_seconds']:.0f} s; pick {f['pick']}"

    def jobs_auto() -> str:
        seen = f["trial_workers"]
        assert sum(w["trials"] for w in seen.values()) == f["trials_complete"], \
            f"{f['trials_complete']} trials COMPLETE, {sum(w['trials'] for w in seen.values())} recorded their worker"
        off = {pid: w["device"] for pid, w in seen.items() if w["device"] != device.type}
        assert not off, f"workers trained off the {device.type}: {off}"
        if device.type == "cuda":
            assert f["workers"] >= 2, f"--jobs auto started {f['workers']} worker on the GPU"
            assert len(seen) >= 2, f"the trials ran in {len(seen)} process(es) of {f['workers']} workers"
            assert all((w["peak_memory_bytes"] or 0) > 0 for w in seen.values()), f"a worker's peak is 0: {seen}"
        peaks = ", ".join(B.fmt((w["peak_memory_bytes"] or 0) / 2 ** 20) + " MiB" for w in seen.values())
        return f"{f['workers']} workers; trials ran in {len(seen)} processes on {device.type}, peaks {peaks}"

    def derived() -> str:
        assert f["derived_trials"] > 0, "no derived trial was told"
        return f"{f['derived_trials']} derived trials"

    def stops() -> str:
        assert f["stop_recorded"] == f["trials_complete"], "a trial did not record whether it stopped for copying"
        return f"recorded by every trial; stopped for copying: {f['stopped_for_copying'] or 'none'}"

    for name, fn in (("study", study), ("jobs_auto", jobs_auto), ("derived_trials", derived),
                     ("copying_stop_recorded", stops)):
        check(results, name, fn)
    if f["pick"] is not None:
        check(results, "export", lambda: export_loads(store, f["pick"], device))


def extras(args, results: dict[str, Any], device, store: Path, t0: float) -> None:
    """The CUDA paths beyond the study, each only while the budget holds its estimated cost: one
    that does not fit is recorded as skipped (``ok`` null), not failed."""
    pick = results.get("pick")
    todo = [("retrain", 60, lambda: retrain_export(store, pick, device))]
    if device.type == "cuda":  # Inductor on this 2-core CPU takes minutes: not a CPU check
        todo += [("train_compile", 45, lambda: compiled_fit(device)),
                 ("decode_compiled", 45, lambda: compiled_decode(device))]
    for name, cost, fn in todo:
        left = args.budget - (time.perf_counter() - t0)
        check(results, name, fn, "no pick to retrain" if pick is None and name == "retrain" else
              f"{left:.0f} s of the budget left, it needs ~{cost} s" if left < cost else None)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse(argv)
    if args.study:
        return study_main(args)
    t0 = _T0
    device = torch.device("cpu" if args.cpu_check or not torch.cuda.is_available() else "cuda")
    args.budget = args.budget or (200.0 if device.type == "cuda" else 600.0)
    if device.type != "cuda" and not args.cpu_check:
        print("gpu_check: no CUDA GPU here; running the CPU check (--cpu-check)", file=sys.stderr)
        args.cpu_check = True
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                               "cpu_check": args.cpu_check, "trials_per_minute": None, "gpu_busy_share": None,
                               "mfu": None, "measure_share": None, "pick": None, "checks": {}}
    for name, fn in (("sampler_refresh", sampler_refresh), ("step_timer", step_timer),
                     ("copying_stop", copying_stop), ("goldfish_labels", goldfish_fit)):
        check(results, name, lambda fn=fn: fn(device))
    try:
        run_study_checks(args, results, device, t0)
    except (Exception, SystemExit) as exc:
        results["checks"]["study"] = {"ok": False, "detail": f"{exc.__class__.__name__}: {exc}"}
    results["seconds"] = time.perf_counter() - t0
    failed = [k for k, v in results["checks"].items() if v["ok"] is False]
    skipped = [k for k, v in results["checks"].items() if v["ok"] is None]
    out = B.out_path(None, "gpu_check.json", args.out_dir)
    B.write_json(results, out)
    print(json.dumps({k: results[k] for k in ("device", "trials_per_minute", "gpu_busy_share", "mfu",
                                              "measure_share", "pick", "seconds")}, indent=1, default=str))
    print(f"gpu_check: {len(results['checks']) - len(failed) - len(skipped)} of {len(results['checks'])} checks "
          "passed" + (f"; FAILED: {', '.join(failed)}" if failed else "")
          + (f"; skipped for time: {', '.join(skipped)}" if skipped else "") + f" ({results['seconds']:.0f} s; {out})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
