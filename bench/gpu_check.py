"""``make gpu-check``: the CUDA paths no CPU test reaches, in one command of at most 5 minutes on
one H100/H200.

1. ``sampler_refresh``: the bf16 sampling copy (``gpt2ft.sampler``) is made once and refreshed in
   place across two trials' models, holds each one's weights cast to bf16, leaves the fp32 weights
   as they are, lives on the device and decodes there; on CUDA, ``sample.precision=auto`` resolves
   to native bf16 (an H100/H200 must);
2. ``step_timer``: the step timer of the device (CUDA events on CUDA) times training steps: more
   than 0, no more than the wall time around them;
3. ``copying_stop``: ``fit`` ends at the point whose caller says stop, on the device, and the study's
   trials each recorded whether they stopped for copying;
4. ``study``: a short ``experiments/gulliver.yaml`` study (6 trials of 1-3 epochs, random-init
   GPT-2 124M: pretrained weights do not travel to the GPU machine, ../shared/NOTES.md) with
   ``--jobs auto``: every trial COMPLETE, the pick made;
5. ``jobs_auto``: on CUDA, ``--jobs auto`` started several workers and each used the GPU (one
   process per worker in ``nvidia-smi``'s compute apps);
6. ``derived_trials``: the study told Optuna the interior epochs of its trials;
7. ``export``: ``gpt2ft export`` of the pick (of the least-bad candidate by name when nothing is
   eligible) loads in ``transformers.pipeline`` on the device and generates.

Writes ``bench/gpu_check.json`` (``--out``; also ``$OUT/gpu_check.json`` when ``$OUT`` is set) with
``device``, ``trials_per_minute``, ``gpu_busy_share``, ``mfu``, ``measure_share``, ``pick`` and
every check's verdict; exits 1 when a check fails. ``--cpu-check`` runs the same script on the tiny
model on the CPU (2 trials; the GPU figures are null) so CI keeps it alive.

Usage, from the repository root::

    PYTHONUNBUFFERED=1 python3 bench/gpu_check.py [--corpus PATH] [--out FILE]
    python3 bench/gpu_check.py --cpu-check
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import benchlib as B  # noqa: E402
import gpu_study as G  # noqa: E402

#: The short gulliver study on the GPU: 6 trials of 1-3 epochs, one of them 3 epochs of a rate
#: that learns (so interior epochs become derived trials), a 20-sample re-measure.
GPU_SETS = [*G.GPT2_124M, "study.epochs={low: 1, high: 3}", "sample.final_n_samples=20",
            "study.enqueue=[{lr: 3.0e-4, epochs: 3, batch_size: 8}]"]
#: The same on the tiny model, as small as it goes: a 4,000-character slice (an epoch of a few
#: steps, so a 2-epoch trial has an interior epoch to derive), 16-token samples.
CPU_SETS = ["train.device=cpu", "data.max_chars=4000", "train.max_steps=40", "train.eval_batches=1",
            "sample.new_tokens=16", "sample.final_n_samples=6",
            "study.enqueue=[{lr: 2.0e-3, epochs: 2, batch_size: 4}]"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-check", action="store_true", help="the tiny model on the CPU (GPU figures null)")
    ap.add_argument("--corpus", help="the book (else $GPT2FT_CORPUS, else ../shared/data/gulliver.txt)")
    ap.add_argument("--n-trials", type=int, help="trials of the study (default 6; --cpu-check 2)")
    ap.add_argument("--budget", type=float, help="seconds for the whole check (default 290; --cpu-check 600, "
                    "for a busy CPU)")
    ap.add_argument("--out", default=str(HERE / "gpu_check.json"), help="JSON results (bench/gpu_check.json)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary store (its path is printed)")
    return ap


def _small_model(device, vocab: int = 512):
    """A 2-layer GPT-2 for the in-process checks: the same code paths as 124M, in milliseconds."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=64, n_layer=2, n_embd=64, n_head=2,
                                      bos_token_id=0, eos_token_id=0)).to(device)


def sampler_refresh(device) -> str:
    """Raises AssertionError with what is wrong; returns what it saw."""
    import torch

    from gpt2ft.sampler import Sampler, bf16_is_native, packs_on, sampling_dtype

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
    import torch

    from gpt2ft.train import CudaStepTimer, step_timer as make

    model = _small_model(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 512, (4, 32), device=device)
    timer = make(device)
    assert isinstance(timer, CudaStepTimer) == (device.type == "cuda"), f"{type(timer).__name__} on {device}"
    t = time.perf_counter()
    for _ in range(5):
        timer.start()
        model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        timer.stop()
    measured = timer.seconds  # waits for the last step's end event
    wall = time.perf_counter() - t
    assert 0 < measured <= wall * 1.05, f"the timer read {measured:.4f} s of {wall:.4f} s wall"
    return f"{type(timer).__name__}: {measured:.4f} s of {wall:.4f} s wall for 5 steps"


def copying_stop(device) -> str:
    """``fit`` on the device, its caller saying stop at the second point: it stops there."""
    import torch

    from gpt2ft.config import TrainConfig
    from gpt2ft.data import TokenData
    from gpt2ft.model import resolve_runtime
    from gpt2ft.train import fit

    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-3, max_steps=None, log_every=2, device=device.type)
    g = torch.Generator().manual_seed(0)
    data = TokenData(torch.randint(0, 512, (24, 16), generator=g), torch.randint(0, 512, (8, 16), generator=g),
                     [], [], 16)
    seen: list[int] = []
    res = fit(cfg, _small_model(device), data, None, resolve_runtime(cfg), progress=False,
              on_point=lambda step, epoch: seen.append(step) or len(seen) == 2, point_every=4)
    assert res.stopped_for_copying and res.steps == seen[1] == 8, f"stopped at {res.steps} (points {seen})"
    return f"stopped at step {res.steps}, the second point"


def check(results: dict[str, Any], name: str, fn: Callable[[], str]) -> None:
    """Run one check into ``results['checks']``: ok and what it saw, or the failure."""
    try:
        results["checks"][name] = {"ok": True, "detail": fn()}
    except Exception as exc:  # every failure is reported, the other checks still run
        results["checks"][name] = {"ok": False, "detail": f"{exc.__class__.__name__}: {exc}"}
    print(f"gpu_check: {name}: {'ok' if results['checks'][name]['ok'] else 'FAILED'} -- "
          f"{results['checks'][name]['detail']}", file=sys.stderr, flush=True)


def study_figures(store: Path, res: dict[str, Any], peak: Optional[float]) -> dict[str, Any]:
    """What the study's Optuna record and MLflow store say: trials, derived trials, stops, the
    measure share, the pick, and ``gpu_study``'s throughput figures (trials/min, busy share, MFU)."""
    from gpt2ft.coordination import default_storage, load_study
    from gpt2ft.summary import is_derived, summarize, trained

    study = load_study(default_storage(store), "bench")
    mine = trained(study.get_trials(deepcopy=False))
    done = [t for t in mine if t.state.name == "COMPLETE"]
    seconds = [t.user_attrs.get("seconds", {}) for t in done]
    busy = sum(s.get("trial_seconds", 0.0) for s in seconds)
    measuring = sum(s.get("measure_seconds", 0.0) + s.get("trajectory_seconds", 0.0) for s in seconds)
    summary = summarize(study)
    pick = summary.pick
    figures = G.summarize(res, peak, {t.number for t in done})
    return {"trials": len(mine), "trials_complete": len(done), "wall_seconds": res["wall_seconds"],
            "workers": res["workers"], "gpu_processes": len(res["peak_mib_by_pid"]),
            "trials_per_minute": 60 * len(done) / res["wall_seconds"], "gpu_busy_share": res["gpu_busy_share"],
            "mfu": figures["mfu"], "measure_share": measuring / busy if busy else None,
            "derived_trials": sum(is_derived(t) for t in study.get_trials(deepcopy=False)),
            "stop_recorded": sum("stopped_for_copying" in t.user_attrs.get("metrics", {}) for t in done),
            "stopped_for_copying": [t.number for t in done
                                    if t.user_attrs.get("metrics", {}).get("stopped_for_copying") == 1.0],
            "pick": None if pick is None else {
                "trial": pick.number, "step": pick.step, "eligible": bool(pick.eligible),
                "confidence": p if (p := summary.p_closer_by_top100) == p else None,
                "reason": pick.reason}}


def export_loads(store: Path, pick: dict[str, Any], device) -> str:
    """``gpt2ft export`` of the pick (by name when nothing is eligible), loaded in ``pipeline()``
    on the device, generating."""
    from transformers import pipeline

    out = store / "export"
    cmd = [sys.executable, "-m", "gpt2ft.cli", "export", "--out", str(out), "--quiet", "--study-name", "bench",
           "--tracking-uri", f"sqlite:///{store}/mlflow.db", "--no-register"]
    if not pick["eligible"]:
        cmd += ["--trial", str(pick["trial"]), "--step", str(pick["step"])]
    done = subprocess.run(cmd, env=G.env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"export exited {done.returncode}: {done.stderr[-600:]}"
    meta = json.loads((out / "metrics.json").read_text())
    generate = pipeline("text-generation", model=str(out), device=device)
    text = generate("The", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("The") and len(text) > 3, f"the pipeline generated {text!r}"
    return f"trial {meta['trial']} at step {meta['step']} (retrained: {meta['retrained']}) generated {text!r}"


def run_study_checks(args, results: dict[str, Any], device, t0: float) -> None:
    """The short study with --jobs auto, then its checks and figures."""
    corpus = G.corpus_path(args)
    if args.cpu_check:
        config, sets = str(ROOT / "experiments" / "tiny.yaml"), CPU_SETS
    else:  # gpu_study's shape of the gulliver study (GPT-2 124M; no style classifier without the novels)
        config, sets = G.study_args(SimpleArgs(False, GPU_SETS[len(G.GPT2_124M):]), corpus)
    n = args.n_trials or (2 if args.cpu_check else 6)
    results.update(config=config, sets=sets, n_trials=n)
    root = Path(tempfile.mkdtemp(prefix="gpu_check."))
    try:
        results["setup"] = G.warm_cache(config, sets, corpus, root / "shared", args.budget)
        left = args.budget - (time.perf_counter() - t0) - 60  # the export and its pipeline after it
        res = G.run_study("auto", n, config, sets, corpus, root / "study", root / "shared" / "cache",
                          left - G.FINISH_MARGIN / 3, left)
        peak = B.gpu_peak(res.get("gpu") or "") if device.type == "cuda" else None
        figures = study_figures(root / "study", res, peak)
        results["study"] = figures
        results.update({k: figures[k] for k in ("trials_per_minute", "gpu_busy_share", "mfu", "measure_share",
                                                "pick")})
        _study_verdicts(results, figures, n, device, root / "study")
    finally:
        if args.keep:
            print(f"gpu_check: store kept in {root}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(root, ignore_errors=True)


class SimpleArgs:
    """``gpu_study.study_args``'s arguments: the GPU study and the overrides it adds to its own."""

    def __init__(self, cpu_check: bool, sets: list[str]):
        self.cpu_check, self.sets = cpu_check, sets


def _study_verdicts(results: dict[str, Any], f: dict[str, Any], n: int, device, store: Path) -> None:
    def study() -> str:
        assert f["trials_complete"] == n, f"{f['trials_complete']} of {n} trials COMPLETE"
        assert f["pick"] is not None, "no pick"
        return f"{n} trials in {f['wall_seconds']:.0f} s; pick {f['pick']}"

    def jobs_auto() -> str:
        if device.type == "cuda":
            assert f["workers"] >= 2, f"--jobs auto started {f['workers']} worker on the GPU"
            assert f["gpu_processes"] >= f["workers"], f"{f['gpu_processes']} GPU processes for {f['workers']} workers"
        return f"{f['workers']} workers, {f['gpu_processes']} processes on the GPU"

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


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    device = torch.device("cpu" if args.cpu_check or not torch.cuda.is_available() else "cuda")
    args.budget = args.budget or (290.0 if device.type == "cuda" else 600.0)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    results: dict[str, Any] = {"device": name, "cpu_check": args.cpu_check, "trials_per_minute": None,
                               "gpu_busy_share": None, "mfu": None, "measure_share": None, "pick": None,
                               "checks": {}}
    if device.type != "cuda" and not args.cpu_check:
        print("gpu_check: no CUDA GPU here; running the CPU check (--cpu-check)", file=sys.stderr)
        results["cpu_check"] = True
        args.cpu_check = True
    for check_name, fn in (("sampler_refresh", sampler_refresh), ("step_timer", step_timer),
                           ("copying_stop", copying_stop)):
        check(results, check_name, lambda fn=fn: fn(device))
    try:
        run_study_checks(args, results, device, t0)
    except (Exception, SystemExit) as exc:
        results["checks"]["study"] = {"ok": False, "detail": f"{exc.__class__.__name__}: {exc}"}
    results["seconds"] = time.perf_counter() - t0
    failed = [k for k, v in results["checks"].items() if not v["ok"]]
    for path in filter(None, [args.out, os.environ.get("OUT") and str(Path(os.environ["OUT"]) / "gpu_check.json")]):
        G.write_results(results, Path(path))
    print(json.dumps({k: results[k] for k in ("device", "trials_per_minute", "gpu_busy_share", "mfu",
                                              "measure_share", "pick", "seconds")}, indent=1, default=str))
    print(f"gpu_check: {len(results['checks']) - len(failed)} of {len(results['checks'])} checks passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else "") + f" ({results['seconds']:.0f} s; {args.out})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
