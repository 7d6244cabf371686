"""What the goldfish loss's mask costs against a training step (issue 26: at most 2%).

For each shape (gulliver.yaml's GPT-2 124M x 16 windows of 256 tokens, random weights: speed does
not depend on them; ``--demo`` adds demo.yaml's SmolLM2 stand-in x 4 of 128), on the CPU or CUDA:

* ``step_ms``: one training step as ``fit`` takes it (``train._step``: forward, loss, backward,
  clipping, fused AdamW), median of ``--steps``, with the plain loss and with the goldfish labels;
* ``mask_batch_ms``: ``goldfish.labels`` of one batch (what a step would pay if it hashed its own);
* ``mask_fit_ms``: the labels of all the book's training windows (``BOOK_WINDOWS``), which ``fit``
  computes once per trial, and ``index_ms``: the per-step index into them that ``fit`` does pay;
* the ratios of each to a step.

Usage: ``python3 bench/goldfish.py [--demo] [--steps 3]`` (CPU: ~2 min for GPT-2 124M on 2 cores).
JSON goes to ``--out`` (default bench/goldfish.json).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]  # benchlib, which puts the repository root there too
import benchlib as B  # noqa: E402

import torch  # noqa: E402

from gpt2ft import goldfish, train as T  # noqa: E402
from gpt2ft.config import ModelConfig, TrainConfig  # noqa: E402
from gpt2ft.model import load_model, load_tokenizer, resolve_runtime  # noqa: E402

BOOK_WINDOWS = 454  # Gulliver's training windows of 256 tokens (bench/compile.py's figure)


def _timed(fn, device: torch.device, n: int) -> float:
    """Median milliseconds of ``fn()`` over ``n`` calls (CUDA synchronised around each)."""
    return 1e3 * B.timed(fn, n, torch.cuda.synchronize if device.type == "cuda" else None)


def measure(name: str, model_cfg: ModelConfig, batch: int, block: int, steps: int) -> dict:
    tok = load_tokenizer(model_cfg)
    cfg = TrainConfig(lr=1e-5, batch_size=batch, goldfish_k=4)
    runtime = resolve_runtime(cfg)
    model = load_model(model_cfg, tok, block_size=block).to(runtime.device).train()
    opt, sched = T._optimizer_and_schedule(model, cfg, runtime)
    windows = torch.randint(0, len(tok), (BOOK_WINDOWS, block), generator=torch.Generator().manual_seed(0))
    x = windows[:batch].to(runtime.device)
    y = goldfish.labels(x, 4)
    T._step(model, opt, sched, x, cfg, runtime)  # warm-up (allocations, kernels)
    plain = _timed(lambda: T._step(model, opt, sched, x, cfg, runtime), runtime.device, steps)
    fish = _timed(lambda: T._step(model, opt, sched, x, cfg, runtime, y), runtime.device, steps)
    mask_batch = _timed(lambda: goldfish.labels(x, 4), runtime.device, 50)
    targets = goldfish.labels(windows, 4)
    mask_fit = _timed(lambda: goldfish.labels(windows, 4), runtime.device, 5)
    order = torch.randperm(BOOK_WINDOWS)
    index = _timed(lambda: targets[order[:batch]].to(runtime.device), runtime.device, 50)
    per_epoch = -(-BOOK_WINDOWS // batch)
    return {"shape": name, "device": runtime.device.type, "batch": batch, "block": block,
            "step_ms": plain, "step_goldfish_ms": fish, "mask_batch_ms": mask_batch, "mask_fit_ms": mask_fit,
            "index_ms": index, "mask_batch_share": mask_batch / plain,
            "fit_share_per_step": (mask_fit / per_epoch + index) / plain, "goldfish_step_ratio": fish / plain}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--demo", action="store_true", help="also demo.yaml's SmolLM2 x 4 x 128")
    ap.add_argument("--out", help="JSON results (default bench/goldfish.json)")
    args = ap.parse_args(argv)
    rows = [measure("gulliver.yaml: GPT-2 124M (random) x 16 x 256",
                    ModelConfig(name="random-gpt2", n_layer=12, n_embd=768, n_head=12), 16, 256, args.steps)]
    if args.demo:
        rows.append(measure("demo.yaml: SmolLM2-135M x 4 x 128", ModelConfig(name="smollm2"), 4, 128, args.steps))
    for r in rows:
        print(f"{r['shape']} on {r['device']}: step {r['step_ms']:.0f} ms (goldfish {r['step_goldfish_ms']:.0f} ms, "
              f"x{r['goldfish_step_ratio']:.3f}); mask of one batch {r['mask_batch_ms']:.2f} ms "
              f"= {100 * r['mask_batch_share']:.3f}% of a step; fit's once-per-trial mask {r['mask_fit_ms']:.1f} ms "
              f"+ index {r['index_ms']:.3f} ms a step = {100 * r['fit_share_per_step']:.4f}% of a step")
    B.write_json(rows, B.out_path(args.out, "goldfish.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
