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
5. ``jobs_auto``: on CUDA, ``--jobs auto`` started several workers and each trained on the GPU:
   every trial records the pid, device and peak memory of the process that ran it
   (``gpt2ft.model.peak_memory``, in its ``worker`` user attribute), read here; ``nvidia-smi``'s
   list of compute processes is not asked, since inside the device's sandbox it may list none;
6. ``derived_trials``: the study told Optuna the interior epochs of its trials;
7. ``export``: ``gpt2ft export`` of the pick (of the least-bad candidate by name when nothing is
   eligible) loads in ``transformers.pipeline`` on the device and generates;
8. ``goldfish_labels``: the goldfish loss's labels made on the device equal the CPU's, and ``fit``
   trains on them there;
9. while the budget holds each one's estimated cost (else recorded as skipped, ``ok`` null):
   ``retrain``, the export again with the study's checkpoints deleted, so it retrains the pick on
   the device; on CUDA only, ``train_compile`` (``fit`` with ``train.compile=default``, no fallback
   to eager) and ``decode_compiled`` (sampling with ``sample.decode=static-compile``).

Writes ``gpu_check.json`` into ``--out-dir`` (default ``bench/``) with ``device``,
``trials_per_minute``, ``gpu_busy_share``, ``mfu``, ``measure_share``, ``pick``, every check's
verdict and ``parts`` (the seconds of each part, also printed as each ends, so a run cut off at its
limit still says where its time went); exits 1 when a check fails. On the GPU machine it runs
inside ``bench/device_check.sh`` (docs/gpu.md), whose whole command must end within 5 minutes
with 60 s to spare: hence the 200 s default ``--budget`` on CUDA. ``--cpu-check`` runs the same script on the tiny
model on the CPU (2 trials; the GPU figures are null) so CI keeps it alive.

Usage, from the repository root::

    PYTHONUNBUFFERED=1 python3 bench/gpu_check.py [--corpus PATH] [--out-dir DIR]
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--cpu-check", action="store_true", help="the tiny model on the CPU (GPU figures null)")
    ap.add_argument("--corpus", help="the book (else $GPT2FT_CORPUS, ../shared/data/gulliver.txt, .carry/data/)")
    ap.add_argument("--n-trials", type=int, help="trials of the study (default 6; --cpu-check 2)")
    ap.add_argument("--budget", type=float, help="seconds for the whole check (default 200; --cpu-check 600, "
                    "for a busy CPU)")
    ap.add_argument("--out-dir", default=str(HERE), help="folder for gpu_check.json (default bench/)")
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


_T0 = time.perf_counter()


def part(results: dict[str, Any], name: str, t: float) -> None:
    """Record and print one part's seconds (since ``t``) and the total so far."""
    results.setdefault("parts", {})[name] = round(time.perf_counter() - t, 2)
    print(f"gpu_check: [{time.perf_counter() - _T0:5.0f} s] {name}: {results['parts'][name]:.1f} s",
          file=sys.stderr, flush=True)


def goldfish_fit(device) -> str:
    """The goldfish labels computed on the device equal the CPU's (int64 hash arithmetic), and
    ``fit`` trains on them there."""
    import torch

    from gpt2ft import goldfish
    from gpt2ft.config import TrainConfig
    from gpt2ft.data import TokenData
    from gpt2ft.model import resolve_runtime
    from gpt2ft.train import fit

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50257, (8, 64), generator=g)
    here, there = goldfish.labels(ids, 4), goldfish.labels(ids.to(device), 4)
    assert there.device.type == device.type and torch.equal(here, there.cpu()), "the device's labels differ"
    share = (here == goldfish.IGNORE_INDEX).float().mean().item()
    assert 0.15 < share < 0.35, f"{share:.2f} of the targets dropped for k = 4"
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, max_steps=None, log_every=2, device=device.type,
                      goldfish_k=4)
    data = TokenData(torch.randint(0, 512, (16, 16), generator=g), torch.randint(0, 512, (8, 16), generator=g),
                     [], [], 16)
    res = fit(cfg, _small_model(device), data, None, resolve_runtime(cfg), progress=False)
    loss = res.history[-1]["train_loss"]
    assert res.steps == 4 and loss == loss, f"{res.steps} steps, train_loss {loss}"
    return f"labels equal the CPU's ({share:.2f} dropped); fit ran {res.steps} steps, train_loss {loss:.3f}"


def compiled_fit(device) -> str:
    """``train.compile=default``: ``fit`` on the device through the compiled step, no fallback to eager."""
    import torch

    from gpt2ft import compiled
    from gpt2ft.config import TrainConfig
    from gpt2ft.data import TokenData
    from gpt2ft.model import resolve_runtime
    from gpt2ft.train import fit

    compiled.reset()
    g = torch.Generator().manual_seed(0)
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, max_steps=None, log_every=2, device=device.type,
                      compile="default")
    data = TokenData(torch.randint(0, 512, (16, 16), generator=g), torch.randint(0, 512, (8, 16), generator=g),
                     [], [], 16)
    t = time.perf_counter()
    res = fit(cfg, _small_model(device), data, None, resolve_runtime(cfg), progress=False)
    assert not compiled._BROKEN, f"torch.compile fell back to eager ({sorted(compiled._BROKEN)})"
    assert res.steps == 4, f"{res.steps} steps"
    return f"{res.steps} compiled steps in {time.perf_counter() - t:.1f} s (the compile included)"


def compiled_decode(device) -> str:
    """``sample.decode=static-compile``: sampling through transformers' compiled static-cache decode."""
    from gpt2ft.generate import sample
    from gpt2ft.model import Runtime

    class Tok:  # sample() reads only the BOS/EOS ids
        bos_token_id = eos_token_id = 0

    ids = sample(_small_model(device), Tok(), Runtime(device, None), 2, 8, seed=0, decode="static-compile")
    assert len(ids) == 2 and all(len(row) == 8 for row in ids), f"sampled {ids}"
    return f"2 x 8 tokens sampled through the compiled decode: {ids[0]}"


def check(results: dict[str, Any], name: str, fn: Callable[[], str]) -> None:
    """Run one check into ``results['checks']``: ok and what it saw, or the failure; timed."""
    t = time.perf_counter()
    try:
        results["checks"][name] = {"ok": True, "detail": fn()}
    except Exception as exc:  # every failure is reported, the other checks still run
        results["checks"][name] = {"ok": False, "detail": f"{exc.__class__.__name__}: {exc}"}
    print(f"gpu_check: {name}: {'ok' if results['checks'][name]['ok'] else 'FAILED'} -- "
          f"{results['checks'][name]['detail']}", file=sys.stderr, flush=True)
    part(results, name, t)


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
            "workers": res["workers"], "trial_workers": trial_workers(done),
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


def trial_workers(done) -> dict[str, dict[str, Any]]:
    """Each process that ran a COMPLETE trial, by pid: its device and its largest recorded peak memory."""
    out: dict[str, dict[str, Any]] = {}
    for t in done:
        w = t.user_attrs.get("worker") or {}
        if "pid" not in w:
            continue
        seen = out.setdefault(str(w["pid"]), {"device": w.get("device"), "device_name": w.get("device_name"),
                                              "trials": 0, "peak_memory_bytes": None})
        seen["trials"] += 1
        if w.get("peak_memory_bytes") is not None:
            seen["peak_memory_bytes"] = max(seen["peak_memory_bytes"] or 0, w["peak_memory_bytes"])
    return out


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
        t = time.perf_counter()
        results["setup"] = G.warm_cache(config, sets, corpus, root / "shared", args.budget)
        part(results, "setup (book, index, references)", t)
        left = args.budget - (time.perf_counter() - t0) - 60  # the export and its pipeline after it
        t = time.perf_counter()
        res = G.run_study("auto", n, config, sets, corpus, root / "study", root / "shared" / "cache",
                          left - G.FINISH_MARGIN / 3, left)
        part(results, f"study ({n} trials, --jobs auto)", t)
        peak = B.gpu_peak(res.get("gpu") or "") if device.type == "cuda" else None
        figures = study_figures(root / "study", res, peak)
        results["study"] = figures
        results.update({k: figures[k] for k in ("trials_per_minute", "gpu_busy_share", "mfu", "measure_share",
                                                "pick")})
        _study_verdicts(results, figures, n, device, root / "study")
        extras(args, results, device, root / "study", t0)
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
    todo = [("retrain", 60, (lambda: retrain_export(store, pick, device)) if pick else None)]
    if device.type == "cuda":  # Inductor on this 2-core CPU takes minutes: not a CPU check
        todo += [("train_compile", 45, lambda: compiled_fit(device)),
                 ("decode_compiled", 45, lambda: compiled_decode(device))]
    for name, cost, fn in todo:
        left = args.budget - (time.perf_counter() - t0)
        if fn is None or left < cost:
            why = "no pick to retrain" if fn is None else f"{left:.0f} s of the budget left, it needs ~{cost} s"
            results["checks"][name] = {"ok": None, "detail": f"skipped: {why}"}
            print(f"gpu_check: {name}: skipped -- {why}", file=sys.stderr, flush=True)
        else:
            check(results, name, fn)


def retrain_export(store: Path, pick: dict[str, Any], device) -> str:
    """The export again with the study's checkpoints gone: it retrains the pick on the device."""
    import shutil

    from gpt2ft.coordination import default_storage, load_study

    root = load_study(default_storage(store), "bench").user_attrs.get("checkpoint_root")
    assert root, "the study recorded no checkpoint_root"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(store / "export", ignore_errors=True)
    detail = export_loads(store, pick, device)
    assert "retrained: True" in detail, f"no retrain: {detail}"
    return detail


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    device = torch.device("cpu" if args.cpu_check or not torch.cuda.is_available() else "cuda")
    args.budget = args.budget or (200.0 if device.type == "cuda" else 600.0)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    results: dict[str, Any] = {"device": name, "cpu_check": args.cpu_check, "trials_per_minute": None,
                               "gpu_busy_share": None, "mfu": None, "measure_share": None, "pick": None,
                               "checks": {}}
    if device.type != "cuda" and not args.cpu_check:
        print("gpu_check: no CUDA GPU here; running the CPU check (--cpu-check)", file=sys.stderr)
        results["cpu_check"] = True
        args.cpu_check = True
    for check_name, fn in (("sampler_refresh", sampler_refresh), ("step_timer", step_timer),
                           ("copying_stop", copying_stop), ("goldfish_labels", goldfish_fit)):
        check(results, check_name, lambda fn=fn: fn(device))
    try:
        run_study_checks(args, results, device, t0)
    except (Exception, SystemExit) as exc:
        results["checks"]["study"] = {"ok": False, "detail": f"{exc.__class__.__name__}: {exc}"}
    results["seconds"] = time.perf_counter() - t0
    failed = [k for k, v in results["checks"].items() if v["ok"] is False]
    skipped = [k for k, v in results["checks"].items() if v["ok"] is None]
    out = Path(args.out_dir) / "gpu_check.json"
    G.write_results(results, out)
    print(json.dumps({k: results[k] for k in ("device", "trials_per_minute", "gpu_busy_share", "mfu",
                                              "measure_share", "pick", "seconds")}, indent=1, default=str))
    print(f"gpu_check: {len(results['checks']) - len(failed) - len(skipped)} of {len(results['checks'])} checks "
          "passed" + (f"; FAILED: {', '.join(failed)}" if failed else "")
          + (f"; skipped for time: {', '.join(skipped)}" if skipped else "") + f" ({results['seconds']:.0f} s; {out})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
