"""What ``train.compile`` costs and what it earns, per batch size of the search space (``make bench-compile``).

For each batch size and mode (eager, ``default``, on CUDA also ``reduce-overhead``), on a random-init
GPT-2 (speed depends neither on the weights nor on the tokens, so random windows stand in for the
book), through ``gpt2ft.train._step`` as ``fit`` calls it: ``compile_s``, the first fresh copy's first
``--first`` steps minus a fresh eager copy's in the same warm process (what a worker pays once per
batch size); ``reuse_s``, the same for a second fresh copy (about 0 when the compiled step is reused;
``new_graphs_second`` counts the graphs dynamo compiled for it); ``step_ms``, the steady step (median
of ``--rounds`` windows, the modes interleaved); ``break_even`` steps; and against the gulliver study
(``BOOK_WINDOWS`` windows, 1-10 epochs, 30 trials over the batch sizes) the steps of a mean trial and
of the study at that batch size, and the seconds a worker saves over the study. Inductor's on-disk
cache would hide the compile from a second run, so it writes to a fresh one unless ``--warm-cache``.

    python3 bench/compile.py            # CUDA: GPT-2 124M x 256, batches 4,8,16,32
    python3 bench/compile.py --cpu      # the CPU (automatic without CUDA): tiny.yaml's 2 x 64 x 32, batches 2,4,8

JSON goes to ``--out``, else ``$OUT/compile.json`` when ``$OUT`` is set, else bench/compile.json.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path[:0] = [str(Path(__file__).resolve().parent)]  # benchlib, which puts the repository root there too
import benchlib as B  # noqa: E402

ROOT = B.ROOT

GPT2_124M = ["model.name=random-gpt2", "model.n_layer=12", "model.n_embd=768", "model.n_head=12",
             "data.block_size=256"]
BOOK_WINDOWS = 454  # Gulliver's training windows of 256 tokens (experiments/gulliver.yaml)
STUDY_TRIALS = 30
STUDY_EPOCHS = (1, 10)  # experiments/gulliver.yaml study.epochs


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="measure on the CPU (default without CUDA)")
    ap.add_argument("--config", help="experiment whose model and block size to use "
                                     "(default: tiny.yaml on CPU, GPT-2 124M x 256 on CUDA)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--batches", help="comma-separated batch sizes (CUDA 4,8,16,32; CPU 2,4,8)")
    ap.add_argument("--modes", help="comma-separated of eager,default,reduce-overhead "
                                    "(CUDA: all three; CPU: eager,default)")
    ap.add_argument("--first", type=int, default=2, help="steps that carry the compile (default 2)")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed window (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="timed windows per measurement (default 3)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default torch's; 1 beside a busy "
                                                "neighbour on few cores, where threads oversubscribe)")
    ap.add_argument("--warm-cache", action="store_true", help="keep inductor's on-disk cache")
    ap.add_argument("--out", help="JSON results (default $OUT/compile.json, else bench/compile.json)")
    return ap


def setup(args) -> dict[str, Any]:
    """Device, config, batch sizes and modes, resolved from the arguments."""
    import torch
    from gpt2ft.config import load_config

    cuda = torch.cuda.is_available() and not args.cpu
    path = args.config or (None if cuda else str(ROOT / "experiments" / "tiny.yaml"))
    overrides = ([] if args.config or not cuda else GPT2_124M) + list(args.set)
    cfg = load_config(path, overrides)
    if cfg.model.name != "random-gpt2":
        sys.exit("compile.py: measures a random-gpt2 model only; pass --set model.name=random-gpt2.")
    batches = [int(b) for b in (args.batches or ("4,8,16,32" if cuda else "2,4,8")).split(",")]
    modes = (args.modes or ("eager,default,reduce-overhead" if cuda else "eager,default")).split(",")
    bad = sorted(set(modes) - {"eager", "default", "reduce-overhead"})
    if bad or "eager" not in modes:
        sys.exit(f"compile.py: modes must include eager and be among eager,default,reduce-overhead, got {modes}.")
    return {"cuda": cuda, "cfg": cfg, "batches": batches, "modes": modes}


def build_model(cfg):
    """The random GPT-2 of ``cfg.model`` with GPT-2's vocabulary and SDPA attention."""
    from transformers import AutoModelForCausalLM, GPT2Config

    m, vocab = cfg.model, 50257
    conf = GPT2Config(vocab_size=vocab, n_positions=max(cfg.data.block_size, 128), n_layer=m.n_layer,
                      n_embd=m.n_embd, n_head=m.n_head, bos_token_id=vocab - 1, eos_token_id=vocab - 1)
    return AutoModelForCausalLM.from_config(conf, attn_implementation="sdpa")


def graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class Stepper:
    """Fresh copies of one base model, stepped through ``gpt2ft.train._step``."""

    def __init__(self, plan: dict[str, Any], args):
        import torch
        from gpt2ft.model import resolve_runtime

        self.torch, self.args, self.cuda = torch, args, plan["cuda"]
        self.cfg = plan["cfg"]
        device = "cuda" if self.cuda else "cpu"
        self.train_cfg = self.cfg.train.__class__(
            lr=1e-4, device=device, precision="bf16" if self.cuda else "fp32", grad_clip=1.0)
        self.runtime = resolve_runtime(self.train_cfg)
        torch.manual_seed(0)
        self.base = build_model(self.cfg)
        n = (args.first + args.steps * args.rounds) * max(plan["batches"])
        self.windows = torch.randint(0, 50257, (n, self.cfg.data.block_size),
                                     generator=torch.Generator().manual_seed(0))

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def fresh(self, mode: str, batch: int):
        """A fresh copy on the device, its optimizer and schedule, and the step's config."""
        from gpt2ft.train import _optimizer_and_schedule

        tc = dataclasses.replace(self.train_cfg, batch_size=batch,
                                 compile="off" if mode == "eager" else mode)
        model = copy.deepcopy(self.base).to(self.runtime.device).train()
        opt, sched = _optimizer_and_schedule(model, tc, self.runtime)
        return model, opt, sched, tc

    def run(self, state, start: int, steps: int) -> float:
        """Seconds for ``steps`` steps from window ``start`` (device synced at both ends)."""
        from gpt2ft.train import _step

        model, opt, sched, tc = state
        self.sync()
        t = time.perf_counter()
        for s in range(steps):
            i = (start + s) * tc.batch_size
            x = self.windows[i:i + tc.batch_size].to(self.runtime.device, non_blocking=True)
            loss = _step(model, opt, sched, x, tc, self.runtime)
        float(loss.detach())  # the step is done when its loss is readable
        self.sync()
        return time.perf_counter() - t

    def measure(self, batch: int, modes: list[str]) -> dict[str, dict[str, Any]]:
        """Per mode: the first steps of a first and a second fresh copy, then steady seconds
        per step, the modes' windows interleaved (rotating order) so that a neighbour's load
        on the machine falls on all of them alike."""
        a = self.args
        states, out = {}, {}
        for mode in modes:  # eager first: the compiles must not warm anything for it
            states[mode], before = self.fresh(mode, batch), graphs()
            out[mode] = {"first_s": self.run(states[mode], 0, a.first), "new_graphs_first": graphs() - before}
        for mode in modes:
            second, before = self.fresh(mode, batch), graphs()
            out[mode]["second_s"] = self.run(second, 0, a.first)
            out[mode]["new_graphs_second"] = graphs() - before  # 0 when the second copy reused the graph
            del second
        steady: dict[str, list[float]] = {m: [] for m in modes}
        for r, order in enumerate(B.rotations(modes, a.rounds)):
            for mode in order:
                steady[mode].append(self.run(states[mode], a.first + r * a.steps, a.steps) / a.steps)
        for mode in modes:
            out[mode].update(step_s=statistics.median(steady[mode]), steady_s=steady[mode])
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
            "break_even_steps": compile_s / gain if gain > 0 else math.inf,
            "trial_steps": trial, "study_steps": study,
            "trial_saving_s": trial * gain - compile_s, "study_saving_s": study * gain - compile_s}


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    head = ("batch", "mode", "step ms", "vs eager", "compile s", "2nd copy s", "break-even", "trial steps",
            "trial save s", "study steps", "study save s")
    rows = []
    for b, per in results.items():
        for mode, r in per.items():
            c = mode != "eager"
            rows.append((b, mode, r["step_s"] * 1e3, r["step_s"] / per["eager"]["step_s"],
                         *(r[k] if c else None for k in ("compile_s", "reuse_s", "break_even_steps")),
                         r.get("trial_steps", 0.0), r["trial_saving_s"] if c else None, r.get("study_steps", 0.0),
                         r["study_saving_s"] if c else None))
    return B.columns(head, rows)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if not args.warm_cache:  # before torch: inductor and triton read these on import
        cache = tempfile.mkdtemp(prefix="gpt2ft-compile-bench-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        os.environ["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
    import torch

    t0, load0 = time.perf_counter(), os.getloadavg()
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = setup(args)
    st = Stepper(plan, args)
    name = torch.cuda.get_device_name() if plan["cuda"] else f"CPU ({os.cpu_count()} cores)"
    m = plan["cfg"].model
    print(f"{name}: random GPT-2 {m.n_layer} x {m.n_embd}, block {plan['cfg'].data.block_size}, "
          f"{st.runtime.precision}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cold cache: {not args.warm_cache}", flush=True)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for b in plan["batches"]:
        per = st.measure(b, plan["modes"])
        for mode, r in per.items():
            if mode != "eager":
                per[mode] = derive(r, per["eager"], b, len(plan["batches"]))
            print(f"batch {b:>3} {mode:<15} first {r['first_s']:.2f} s, second copy {r['second_s']:.2f} s, "
                  f"step {r['step_s'] * 1e3:.1f} ms, new graphs {r['new_graphs_first']} then {r['new_graphs_second']}",
                  flush=True)
        per["eager"].update(zip(("trial_steps", "study_steps"), study_steps(b, len(plan["batches"]))))
        results[str(b)] = per
    print()
    print(table(results))
    out = {"device": name, "load_average_start": load0, "load_average_end": os.getloadavg(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "model": vars(m),
           "block": plan["cfg"].data.block_size, "precision": st.runtime.precision,
           "cold_cache": not args.warm_cache, "args": vars(args), "results": results,
           "seconds": time.perf_counter() - t0}
    path = B.out_path(args.out, "compile.json")
    B.write_json(out, path)
    print(f"results in {path} ({out['seconds']:.0f} s)")
    if not args.warm_cache:
        shutil.rmtree(os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)
    return out


if __name__ == "__main__":
    main()
