"""What a LoRA step costs against a full fine-tuning step on demo.yaml's shape (issue 36 item 5).

SmolLM2-135M (the demo's stand-in) x 4 windows of 128 tokens, on the CPU or CUDA, each method in a
process of its own (full fine-tuning; LoRA at ranks 8 and 64 on every linear layer, alpha 2r, as
``train.method: lora`` trains them), the rounds interleaved so that a busy machine slows each alike:

* ``step_ms``: one training step as ``fit`` takes it (``train._step``: forward, loss, backward,
  clipping, fused AdamW), median of ``--steps`` after a warm-up step;
* ``peak_mib``: the training steps' peak memory above the loaded model (CPU: the peak RSS, reset
  through /proc/self/clear_refs after loading, since loading the GGUF file peaks higher; CUDA: the
  peak allocated), so activations, gradients and AdamW's state;
* ``trainable`` and ``state_mib``: the trained parameters, and their fp32 weights + gradients +
  AdamW's two moments;
* ``checkpoint_mib``: what a point's checkpoint keeps on disk (the model, or the adapter alone).

Usage: ``python3 bench/lora.py [--steps 3] [--rounds 2]`` (~4 min on 2 CPU cores); JSON to ``--out``
(default bench/lora.json).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]  # benchlib, which puts the repository root there too
import benchlib as B  # noqa: E402

RANKS = ("0", "8", "64")  # study.lora_r's values: 0 = full fine-tuning


def _status_mib(field: str) -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def child(rank: int, steps: int) -> dict:
    """One method's figures, in this process."""
    import torch

    from gpt2ft import lora, train as T
    from gpt2ft.config import ModelConfig, TrainConfig
    from gpt2ft.model import load_model, load_tokenizer, resolve_runtime, save_model

    cfg = TrainConfig(lr=1e-4, batch_size=4, method="lora" if rank else "full", lora_r=rank or 8)
    runtime = resolve_runtime(cfg)
    tok = load_tokenizer(ModelConfig(name="smollm2"))
    model = lora.adapt(load_model(ModelConfig(name="smollm2"), tok, block_size=128), cfg).to(runtime.device).train()
    opt, sched = T._optimizer_and_schedule(model, cfg, runtime)
    x = torch.randint(0, len(tok), (4, 128), generator=torch.Generator().manual_seed(0)).to(runtime.device)
    cuda = runtime.device.type == "cuda"
    base = torch.cuda.memory_allocated() / 2**20 if cuda else _status_mib("VmRSS")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from the current RSS
    step = lambda: T._step(model, opt, sched, x, cfg, runtime)  # noqa: E731
    step()  # warm-up: allocations, AdamW's state
    ms = 1e3 * B.timed(step, steps, torch.cuda.synchronize if cuda else None)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda else _status_mib("VmHWM")) - base
    trained = [p.numel() for p in model.parameters() if p.requires_grad]
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d) if rank else save_model(model, tok, d)  # a LoRA point keeps its adapter
        disk = sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file() and "token" not in f.name)
    return {"lora_r": rank, "device": runtime.device.type, "step_ms": ms, "peak_mib": peak,
            "trainable": sum(trained), "state_mib": 16 * sum(trained) / 2**20, "checkpoint_mib": disk / 2**20}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", help="default: bench/lora.json ($OUT/lora.json on a device call)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.steps)))
        return 0
    runs: dict[str, list[dict]] = {r: [] for r in RANKS}
    for order in B.rotations(RANKS, args.rounds):
        for r in order:
            out = subprocess.run([sys.executable, __file__, "--child", r, "--steps", str(args.steps)],
                                 check=True, capture_output=True, text=True).stdout
            runs[r].append(json.loads(out.strip().splitlines()[-1]))
            B.log(f"lora_r {r}: step {runs[r][-1]['step_ms']:.0f} ms")
    rows = [dict(runs[r][0], step_ms=B.median(x["step_ms"] for x in runs[r]),
                 peak_mib=max(x["peak_mib"] for x in runs[r])) for r in RANKS]
    for row in rows:
        for k in ("step_ms", "peak_mib", "checkpoint_mib"):
            row[k.split("_")[0] + "_ratio"] = row[k] / rows[0][k]
    print(B.columns(("lora_r", "step ms", "x full", "peak MiB", "x full", "trainable", "weights+grads+AdamW MiB",
                     "checkpoint MiB", "x full"),
                    ([r["lora_r"], r["step_ms"], r["step_ratio"], r["peak_mib"], r["peak_ratio"], r["trainable"],
                      r["state_mib"], r["checkpoint_mib"], r["checkpoint_ratio"]] for r in rows), right=True))
    B.write_json(rows, B.out_path(args.out, "lora.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
