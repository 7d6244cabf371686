"""A training step per variant against the plain one (``make bench-step``; ``bench-goldfish``, ``bench-lora``
and ``bench-compile`` are its three questions; docs/performance.md says what each figure means).

Each variant steps ``gpt2ft.train._step`` as ``fit`` does, on random windows (speed depends on neither the
weights nor the tokens), in a process of its own per batch size and round, the rounds interleaved so that a
busy machine slows each alike: ``plain``; ``goldfish`` (k = 4; and the mask's own cost); ``lora<r>`` (rank r on
every linear layer, alpha 2r); ``compile-default`` and ``compile-reduce-overhead`` (CUDA only): the compile's
cost, its reuse by a second fresh copy, the break-even and the saving over the gulliver study. Per variant:
the step, the peak memory above the loaded model, the trainable parameters, what a point's checkpoint keeps.

    python3 bench/step.py --variant plain,goldfish --shape gulliver   # ~2 min for 124M on 2 CPU cores
    python3 bench/step.py --variant plain,lora8,lora64                # the demo's shape, ~4 min here

JSON goes to ``--out``, else ``$OUT/step.json`` when ``$OUT`` is set, else bench/step.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path[:0] = [str(Path(__file__).resolve().parent)]  # benchlib, which puts the repository root there too
import benchlib as B  # noqa: E402

#: name: (model fields, batch, block)
SHAPES = {"demo": ({"name": "smollm2"}, 4, 128),
          "gulliver": ({"name": "random-gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12}, 16, 256),
          "tiny": ({"name": "random-gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2}, 4, 32)}
BOOK_WINDOWS = 454  # Gulliver's training windows of 256 tokens (experiments/gulliver.yaml)
STUDY_TRIALS = 30
STUDY_EPOCHS = (1, 10)  # experiments/gulliver.yaml study.epochs


def _status_mib(field: str) -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def child(variant: str, args) -> dict[str, Any]:
    """One variant's figures at ``args.batch``, in this process."""
    import torch
    from torch._dynamo.utils import counters

    from gpt2ft import goldfish, lora, train as T
    from gpt2ft.config import ModelConfig, TrainConfig
    from gpt2ft.model import load_model, load_tokenizer, resolve_runtime, save_model

    fields, _, block = SHAPES[args.shape]
    batch, rank = int(args.batch), int(variant[4:]) if variant.startswith("lora") else 0
    cfg = TrainConfig(lr=1e-4, batch_size=batch, method="lora" if rank else "full", lora_r=rank or 8,
                      compile=variant[8:] if variant.startswith("compile-") else "off")
    runtime, tok = resolve_runtime(cfg), load_tokenizer(ModelConfig(**fields))
    torch.manual_seed(0)
    base, cuda = load_model(ModelConfig(**fields), tok, block_size=block), runtime.device.type == "cuda"
    sync, graphs = (torch.cuda.synchronize if cuda else lambda: None), lambda: counters["stats"]["unique_graphs"]
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, len(tok), (max(BOOK_WINDOWS, (args.first + args.steps) * batch), block), generator=g)
    targets = goldfish.labels(windows, 4) if variant == "goldfish" else None

    def fresh():
        model = lora.adapt(copy.deepcopy(base), cfg).to(runtime.device).train()
        return (model, *T._optimizer_and_schedule(model, cfg, runtime))

    def run(state, start: int, steps: int) -> float:
        """Seconds of ``steps`` steps from batch ``start``, the device synchronised at both ends."""
        sync()
        t = time.perf_counter()
        for s in range(start, start + steps):
            x, y = T._batch(windows, targets, torch.arange(s * batch, (s + 1) * batch), runtime.device)
            loss = T._step(*state, x, cfg, runtime, y)
        float(loss.detach())  # the step is done when its loss is readable
        sync()
        return time.perf_counter() - t

    state = fresh()
    mem0 = torch.cuda.memory_allocated() / 2**20 if cuda else _status_mib("VmRSS")
    # the peak from here: loading (a GGUF file most) peaks higher; clear_refs 5 resets the peak RSS to the RSS
    torch.cuda.reset_peak_memory_stats() if cuda else Path("/proc/self/clear_refs").write_text("5")
    out: dict[str, Any] = {"variant": variant, "batch": batch, "device": runtime.device.type,
                           "first_s": run(state, 0, args.first)}
    out["step_s"] = run(state, args.first, args.steps) / args.steps
    out["peak_mib"] = (torch.cuda.max_memory_allocated() / 2**20 if cuda else _status_mib("VmHWM")) - mem0
    trained = sum(p.numel() for p in state[0].parameters() if p.requires_grad)
    with tempfile.TemporaryDirectory() as d:
        state[0].save_pretrained(d) if rank else save_model(state[0], tok, d)  # a LoRA point keeps its adapter
        out.update(trainable=trained, state_mib=16 * trained / 2**20, checkpoint_mib=sum(
            f.stat().st_size for f in Path(d).rglob("*") if f.is_file() and "token" not in f.name) / 2**20)
    if variant == "plain" or cfg.compile != "off":  # the compile's baseline and its reuse
        del state
        before = graphs()
        out.update(second_s=run(fresh(), 0, args.first), new_graphs_second=graphs() - before)
    if variant == "goldfish":
        x, ms = windows[:batch].to(runtime.device), lambda fn, n: 1e3 * B.timed(fn, n, sync)
        order = torch.randperm(BOOK_WINDOWS)
        out.update(mask_batch_ms=ms(lambda: goldfish.labels(x, 4), 50),
                   mask_fit_ms=ms(lambda: goldfish.labels(windows[:BOOK_WINDOWS], 4), 5),
                   index_ms=ms(lambda: targets[order[:batch]].to(runtime.device), 50))
    return out


def study_steps(batch: int, n_batches: int) -> tuple[float, float]:
    """Steps of a mean trial at ``batch`` and of a 30-trial study's share of that batch size."""
    trial = math.ceil(BOOK_WINDOWS / batch) * statistics.mean(STUDY_EPOCHS)
    return trial, trial * STUDY_TRIALS / n_batches


def derive(m: dict[str, Any], eager: dict[str, Any], batch: int, n_batches: int) -> dict[str, Any]:
    """Compile cost, reuse cost, break-even and the study's saving of one measurement. The
    baseline of both costs is eager's first steps on a second copy (warm process, cold copy)."""
    compile_s = m["first_s"] - eager["second_s"]
    reuse_s = m["second_s"] - eager["second_s"]
    gain = eager["step_s"] - m["step_s"]
    trial, study = study_steps(batch, n_batches)
    return {**m, "compile_s": compile_s, "reuse_s": reuse_s, "gain_s": gain,
            "break_even_steps": compile_s / gain if gain > 0 else math.inf, "trial_steps": trial, "study_steps": study,
            "trial_saving_s": trial * gain - compile_s, "study_saving_s": study * gain - compile_s}


def combine(runs: list[dict[str, Any]], plain: Optional[dict[str, Any]], n_batches: int) -> dict[str, Any]:
    """One variant's rounds: medians of the times, the largest peak; ratios to ``plain``, the
    mask's shares of a step, the compile's cost and saving."""
    r = {**runs[0], "rounds": len(runs), "peak_mib": max(x["peak_mib"] for x in runs),
         **{k: B.median(x[k] for x in runs) for k in runs[0] if k.endswith(("_s", "_ms"))},
         "all_step_s": [x["step_s"] for x in runs]}
    r.update({k.split("_")[0] + "_ratio": r[k] / (plain or r)[k] for k in ("step_s", "peak_mib", "checkpoint_mib")})
    if "mask_batch_ms" in r:
        per_epoch = -(-BOOK_WINDOWS // r["batch"])
        r.update(mask_batch_share=r["mask_batch_ms"] / 1e3 / r["step_s"],
                 fit_share_per_step=(r["mask_fit_ms"] / per_epoch + r["index_ms"]) / 1e3 / r["step_s"])
    if r["variant"].startswith("compile-"):
        r = derive(r, plain, r["batch"], n_batches)
    return r


STEP_COLUMNS = ("batch", "variant", "step_s", "step_ratio", "peak_mib", "peak_ratio", "trainable", "state_mib",
                "checkpoint_mib", "checkpoint_ratio")
COMPILE_COLUMNS = ("batch", "variant", "compile_s", "reuse_s", "new_graphs_second", "break_even_steps", "trial_steps",
                   "trial_saving_s", "study_steps", "study_saving_s")


def report(rows: list[dict[str, Any]]) -> str:
    """The step table, the goldfish mask's shares, the compile table."""
    text = [B.columns(cols, ([r.get(k) for k in cols] for r in these), right=True)
            for cols, these in ((STEP_COLUMNS, rows), (COMPILE_COLUMNS, [r for r in rows if "compile_s" in r]))
            if these]
    text[1:1] = [f"goldfish at batch {r['batch']}: the mask of one batch {r['mask_batch_ms']:.2f} ms, "
                 f"{100 * r['mask_batch_share']:.4f}% of a step; fit's, once a trial, {r['mask_fit_ms']:.1f} ms "
                 f"+ {r['index_ms']:.3f} ms of index a step, {100 * r['fit_share_per_step']:.4f}% of a step"
                 for r in rows if "mask_batch_ms" in r]
    return "\n\n".join(text)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="plain,goldfish,lora8,lora64",
                    help="comma-separated of plain, goldfish, lora<r>, compile-default, compile-reduce-overhead")
    ap.add_argument("--shape", choices=sorted(SHAPES), help="model and batch (default demo; see above)")
    ap.add_argument("--batch", help="comma-separated batch sizes (default the shape's)")
    ap.add_argument("--first", type=int, default=1, help="steps before the timed window (a compile's; default 1)")
    ap.add_argument("--steps", type=int, default=3, help="steps of the timed window (default 3)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default torch's; 1 beside busy neighbours)")
    ap.add_argument("--warm-cache", action="store_true", help="keep inductor's on-disk cache")
    ap.add_argument("--out", help="JSON results (default $OUT/step.json, else bench/step.json)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        with tempfile.TemporaryDirectory(prefix="gpt2ft-step-bench-", ignore_cleanup_errors=True) as cache:
            if not args.warm_cache:  # before torch: inductor and triton read these on import
                os.environ.update(TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"))
            if args.threads:  # torch's intra-op threads, read on import
                os.environ["OMP_NUM_THREADS"] = str(args.threads)
            print(json.dumps(child(args.child, args)))
        return 0
    import torch

    t0, load0, cuda = time.perf_counter(), os.getloadavg(), torch.cuda.is_available()
    variants = args.variant.split(",")
    compiles = any(v.startswith("compile-") for v in variants)
    if not cuda and "compile-reduce-overhead" in variants:
        B.log("compile-reduce-overhead left out: CUDA graphs need CUDA")
        variants.remove("compile-reduce-overhead")
    bad = [v for v in variants if not (v in ("plain", "goldfish", "compile-default", "compile-reduce-overhead")
                                       or v.startswith("lora") and v[4:].isdigit())]
    if bad or "plain" not in variants:
        sys.exit(f"step.py: --variant must include plain, and name plain, goldfish, lora<r> or compile-<mode>: {bad}")
    shape = args.shape or (("gulliver" if cuda else "tiny") if compiles else "demo")
    batches = (args.batch or (("4,8,16,32" if cuda else "2,4,8") if compiles else str(SHAPES[shape][1]))).split(",")
    base = [sys.executable, __file__, "--shape", shape, "--first", str(args.first), "--steps", str(args.steps),
            *(["--threads", str(args.threads)] if args.threads else []), *(["--warm-cache"] if args.warm_cache else [])]
    rows = []
    for b in batches:
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for order in B.rotations(variants, args.rounds):
            for v in order:
                done = subprocess.run([*base, "--child", v, "--batch", b], capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"step.py: {v} at batch {b} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
                runs[v].append(json.loads(done.stdout.strip().splitlines()[-1]))
                B.log(f"batch {b} {v}: step {runs[v][-1]['step_s'] * 1e3:.1f} ms, "
                      f"first {args.first} {runs[v][-1]['first_s']:.2f} s")
        plain = combine(runs["plain"], None, len(batches))
        rows += [plain, *(combine(runs[v], plain, len(batches)) for v in variants if v != "plain")]
    device = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"{device}, shape {shape}, torch {torch.__version__}\n\n{report(rows)}")
    out = {"device": device, "shape": shape, "torch": torch.__version__,
           "load_average_start": load0, "load_average_end": os.getloadavg(), "args": vars(args), "rows": rows,
           "seconds": time.perf_counter() - t0}
    path = B.out_path(args.out, "step.json")
    B.write_json(out, path)
    print(f"\nresults in {path} ({out['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
