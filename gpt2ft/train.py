"""The training function: plain PyTorch, AdamW, loss from the model via ``labels=input_ids``.

``fit`` knows nothing of MLflow or Optuna: it reports through the ``on_metrics`` callback
and returns its history. It stops early on its own rule only (held-out loss rising for
``early_stop_patience`` evaluations in a row), never on a study's say-so.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from gpt2ft.config import TrainConfig
from gpt2ft.data import TokenData
from gpt2ft.errors import UserError
from gpt2ft.model import Runtime

OnMetrics = Callable[[dict[str, float], int], None]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite (learning rate too high, bad precision)."""


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    """One row per finished epoch: epoch, step, train_loss (epoch mean), heldout_loss, seconds."""
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    heldout_curve: list[tuple[int, float]] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0
    step_seconds: float = 0.0
    """Wall time inside forward/backward/optimizer steps (the useful part of a trial)."""
    eval_seconds: float = 0.0
    stopped_early: bool = False
    steps_per_epoch: int = 0

    @property
    def best_heldout(self) -> tuple[int, float]:
        return min(self.heldout_curve, key=lambda sl: sl[1]) if self.heldout_curve else (0, math.nan)


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, batch_size: int, runtime: Runtime,
             max_batches: Optional[int] = None) -> float:
    """Mean per-token loss over ``windows`` (no grad, eval mode restored afterwards)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for b, i in enumerate(range(0, windows.shape[0], batch_size)):
        if max_batches is not None and b >= max_batches:
            break
        x = windows[i:i + batch_size].to(runtime.device, non_blocking=True)
        with runtime.autocast():
            loss = model(input_ids=x, labels=x).loss
        total += float(loss) * x.shape[0]
        count += x.shape[0]
    model.train(was_training)
    return total / max(count, 1)


def make_optimizer(model, cfg: TrainConfig, runtime: Runtime) -> torch.optim.Optimizer:
    # The fused kernel is one launch per step instead of several per parameter on CUDA, and
    # one pass over memory instead of a loop over parameters on the CPU (bench/run.py: ~5x
    # faster step, ~10% of a small model's training step; Trainer's default is fused too).
    fused = runtime.device.type in ("cuda", "cpu")
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                             fused=fused)


def seconds_per_step(model, cfg: TrainConfig, windows: torch.Tensor, runtime: Runtime) -> float:
    """Wall time of one optimizer step at ``cfg.batch_size`` (for a study's cost estimate)."""
    model.to(runtime.device).train()
    opt = make_optimizer(model, cfg, runtime)
    x = windows[: cfg.batch_size].to(runtime.device)
    t = time.perf_counter()
    with runtime.autocast():
        loss = model(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def fit(cfg: TrainConfig, model, data: TokenData, on_metrics: Optional[OnMetrics],
        runtime: Runtime, progress: bool = True) -> FitResult:
    """Fine-tune ``model`` in place on ``data.train_windows``; evaluate on the held-out windows
    at step 0, after each epoch and every ``cfg.eval_every`` steps."""
    report = on_metrics or (lambda metrics, step: None)
    model.to(runtime.device)
    model.train()
    opt = make_optimizer(model, cfg, runtime)
    warm = cfg.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    n = data.train_windows.shape[0]
    per_epoch = math.ceil(n / cfg.batch_size)
    total = per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, per_epoch * cfg.epochs)
    gen = torch.Generator().manual_seed(cfg.seed)
    res = FitResult(steps_per_epoch=per_epoch)

    def heldout(step: int) -> float:
        t = time.perf_counter()
        loss = evaluate(model, data.heldout_windows, cfg.batch_size, runtime, cfg.eval_batches)
        res.eval_seconds += time.perf_counter() - t
        res.heldout_curve.append((step, loss))
        report({"heldout_loss": loss, "heldout_perplexity": math.exp(min(loss, 50.0))}, step)
        return loss

    heldout(0)
    rising = 0
    step = 0
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress or None, leave=False)
    running = torch.zeros((), device=runtime.device)
    since_log = 0
    epoch_sum, epoch_n = 0.0, 0

    def flush() -> None:
        """Read the summed loss of the last interval (one device sync), check it, report it."""
        nonlocal since_log, epoch_sum, epoch_n
        mean = float(running) / since_log
        if not math.isfinite(mean):
            bar.close()
            raise NonFiniteLoss(f"train_loss became {mean} at step {step} (lr={cfg.lr}).")
        res.train_curve.append((step, mean))
        epoch_sum += mean * since_log
        epoch_n += since_log
        report({"train_loss": mean}, step)
        bar.set_postfix(loss=f"{mean:.3f}")
        running.zero_()
        since_log = 0

    for epoch in range(1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        epoch_sum, epoch_n = 0.0, 0
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            if step >= total:
                break
            t = time.perf_counter()
            x = data.train_windows[order[i:i + cfg.batch_size]].to(runtime.device, non_blocking=True)
            with runtime.autocast():
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            running += loss.detach()
            since_log += 1
            step += 1
            res.tokens += x.numel()
            res.step_seconds += time.perf_counter() - t
            # Reading the loss forces a device sync, so it is read once per log interval;
            # a NaN is therefore caught within log_every steps, not after the trial.
            if since_log == cfg.log_every or step == total:
                flush()
            bar.update(1)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                heldout(step)
        if since_log:  # a partial interval, so the epoch mean covers every step
            flush()
        previous = res.heldout_curve[-1][1]
        loss_h = heldout(step)
        res.history.append({"epoch": epoch, "step": step, "train_loss": epoch_sum / max(epoch_n, 1),
                            "heldout_loss": loss_h, "seconds": time.perf_counter() - t_epoch})
        report({"epoch": float(epoch)}, step)
        rising = rising + 1 if loss_h > previous else 0
        if cfg.early_stop_patience and rising >= cfg.early_stop_patience:
            res.stopped_early = True
            break
        if step >= total:
            break
    bar.close()
    res.steps = step
    if step == 0:
        raise UserError("training ran no step; check train.max_steps and the corpus size.")
    return res
