"""The training function: plain PyTorch, AdamW, the loss with ``labels=input_ids`` (one function,
``compiled.causal_lm_loss``, for training, evaluation and the cost estimate); with
``train.goldfish_k`` the training loss leaves out the goldfish targets (``gpt2ft.goldfish``),
evaluation never does.

``fit`` knows nothing of MLflow or Optuna: it reports through the ``on_metrics`` callback
and returns its history. It stops early on its own rule only (held-out loss rising for
``early_stop_patience`` evaluations in a row), never on a study's say-so.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup

from gpt2ft import goldfish
from gpt2ft.compiled import causal_lm_loss, forward_backward
from gpt2ft.config import TrainConfig
from gpt2ft.data import TokenData
from gpt2ft.errors import UserError
from gpt2ft.model import Runtime

OnMetrics = Callable[[dict[str, float], int], None]
#: Called at a trajectory point with (step, epoch); a true return stops training there.
OnPoint = Callable[[int, float], Optional[bool]]


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
    """Wall time inside forward/backward/optimizer steps (the useful part of a trial); on CUDA
    the time the device spent on them, not the time it took to queue them (:class:`CudaStepTimer`)."""
    eval_seconds: float = 0.0
    stopped_early: bool = False
    stopped_for_copying: bool = False
    """Training ended at a trajectory point whose caller said stop (``study.stop_after``)."""
    steps_per_epoch: int = 0

    @property
    def best_heldout(self) -> tuple[int, float]:
        return min(self.heldout_curve, key=lambda sl: sl[1]) if self.heldout_curve else (0, math.nan)


class StepTimer:
    """The summed wall time of spans of training steps, each from ``start()`` to ``stop()``, on
    the host's clock: right where work is done when ``stop()`` returns (the CPU).

    ``drain()`` is called before work that is timed on the host clock (evaluation, a trajectory
    point), so that work is not billed for steps still queued on the device; a no-op here."""

    def __init__(self) -> None:
        self._seconds = 0.0
        self._t = 0.0

    def start(self) -> None:
        self._t = time.perf_counter()

    def stop(self) -> None:
        self._seconds += time.perf_counter() - self._t

    def drain(self) -> None:
        pass

    @property
    def seconds(self) -> float:
        """The spans stopped so far, summed."""
        return self._seconds


class CudaStepTimer(StepTimer):
    """On CUDA, ``stop()`` returns once the step's kernels are queued, not run: the host clock
    would bill them to whoever waits next (the loss read, evaluation, a trajectory point). So a
    span is a pair of CUDA events recorded on the stream (no sync), and the events are read in
    ``seconds``, which waits for the last one: ``fit`` reads it just after the sync its log
    interval's loss read makes anyway, so timing adds no sync to a step."""

    def __init__(self) -> None:
        super().__init__()
        self._open = None
        self._spans: list[tuple] = []

    def start(self) -> None:
        self._open = torch.cuda.Event(enable_timing=True)
        self._open.record()

    def stop(self) -> None:
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._spans.append((self._open, end))

    def drain(self) -> None:
        """Wait for the queued steps (the wait the next timed work would make anyway)."""
        torch.cuda.synchronize()
        self._collect()

    @property
    def seconds(self) -> float:
        if self._spans:
            self._spans[-1][1].synchronize()  # one stream: its earlier events are done too
            self._collect()
        return self._seconds

    def _collect(self) -> None:
        self._seconds += sum(s.elapsed_time(e) for s, e in self._spans) / 1e3  # elapsed_time is in ms
        self._spans.clear()


def step_timer(device: torch.device) -> StepTimer:
    """The step timer for ``device``: CUDA events on CUDA, the host clock elsewhere."""
    return CudaStepTimer() if device.type == "cuda" else StepTimer()


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
            loss = causal_lm_loss(model, x)
        total += float(loss) * x.shape[0]
        count += x.shape[0]
    model.train(was_training)
    return total / max(count, 1)


def make_optimizer(model, cfg: TrainConfig, runtime: Runtime) -> torch.optim.Optimizer:
    # The fused kernel is one launch per step instead of several per parameter on CUDA, and
    # one pass over memory instead of a loop over parameters on the CPU (bench/run.py: ~5x
    # faster step, ~10% of a small model's training step; Trainer's default is fused too).
    fused = runtime.device.type in ("cuda", "cpu")
    # The trainable parameters only: all of them in full fine-tuning (the same list, in the same
    # order, as model.parameters()), the adapters' under LoRA, whose frozen base holds no state.
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def seconds_per_step(model, cfg: TrainConfig, windows: torch.Tensor, runtime: Runtime) -> float:
    """Wall time of one optimizer step at ``cfg.batch_size`` (for a study's cost estimate)."""
    model.to(runtime.device).train()
    opt = make_optimizer(model, cfg, runtime)
    x = windows[: cfg.batch_size].to(runtime.device)
    timer = step_timer(runtime.device)
    timer.start()
    # Eager (compile "off"): a compile would swamp the one step this times.
    forward_backward(model, x, "off", True, runtime.autocast)
    opt.step()
    timer.stop()
    return timer.seconds


class _LossLog:
    """The training loss of the current log interval, summed on the device and read once per
    interval (reading it forces a device sync), so a NaN is caught within ``log_every`` steps;
    the step timer is read just after that sync, where reading it costs no wait of its own."""

    def __init__(self, cfg: TrainConfig, res: FitResult, report: OnMetrics, bar, device: torch.device,
                 timer: StepTimer):
        self.cfg, self.res, self.report, self.bar, self.timer = cfg, res, report, bar, timer
        self.running = torch.zeros((), device=device)
        self.count = 0
        self.epoch_sum, self.epoch_n = 0.0, 0

    def add(self, loss: torch.Tensor) -> None:
        self.running += loss.detach()
        self.count += 1

    def flush(self, step: int) -> None:
        """Check and report the interval's mean loss (one device sync)."""
        if not self.count:
            return
        mean = float(self.running) / self.count
        if not math.isfinite(mean):
            self.bar.close()
            raise NonFiniteLoss(f"train_loss became {mean} at step {step} (lr={self.cfg.lr}).")
        self.res.step_seconds = self.timer.seconds
        self.res.train_curve.append((step, mean))
        self.epoch_sum += mean * self.count
        self.epoch_n += self.count
        self.report({"train_loss": mean}, step)
        self.bar.set_postfix(loss=f"{mean:.3f}")
        self.running.zero_()
        self.count = 0

    def epoch_mean(self) -> float:
        mean = self.epoch_sum / max(self.epoch_n, 1)
        self.epoch_sum, self.epoch_n = 0.0, 0
        return mean


def _optimizer_and_schedule(model, cfg: TrainConfig, runtime: Runtime):
    """AdamW and its schedule: transformers' linear warm-up over ``warmup_steps``, then constant
    (``Trainer``'s ``constant_with_warmup``: step k at ``(k - 1) / warmup_steps`` of the rate, so
    the first step is at 0 and the full rate from step ``warmup_steps + 1``)."""
    opt = make_optimizer(model, cfg, runtime)
    return opt, get_constant_schedule_with_warmup(opt, cfg.warmup_steps)


def _heldout(model, data: TokenData, cfg: TrainConfig, runtime: Runtime, res: FitResult,
             report: OnMetrics, step: int) -> float:
    """Evaluate held-out loss at ``step``, record and report it."""
    t = time.perf_counter()
    loss = evaluate(model, data.heldout_windows, cfg.batch_size, runtime, cfg.eval_batches)
    res.eval_seconds += time.perf_counter() - t
    res.heldout_curve.append((step, loss))
    report({"heldout_loss": loss, "heldout_perplexity": math.exp(min(loss, 50.0))}, step)
    return loss


def _step(model, opt, sched, x: torch.Tensor, cfg: TrainConfig, runtime: Runtime,
          labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One optimizer step on batch ``x`` (``labels``: the goldfish loss's); returns the (device)
    loss. The forward and loss are compiled per ``cfg.compile`` (gpt2ft/compiled.py); evaluation
    and sampling stay eager."""
    loss = forward_backward(model, x, cfg.compile, x.shape[0] == cfg.batch_size, runtime.autocast, labels)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss


def _batch(windows: torch.Tensor, targets: Optional[torch.Tensor], rows: torch.Tensor,
           device: torch.device) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The windows ``rows`` on ``device``, and their goldfish labels (None without goldfish)."""
    x = windows[rows].to(device, non_blocking=True)
    return x, None if targets is None else targets[rows].to(device, non_blocking=True)


def _interior(step: int, cfg: TrainConfig, point_every: int, heldout: Callable[[int], float],
              point: Callable[[int], bool]) -> bool:
    """At a step inside an epoch: held-out loss every ``cfg.eval_every`` steps and at each point (a
    point is judged by its held-out loss too), then the point; true to stop there. An epoch's last
    step is evaluated once, by ``fit``, with its point: a second evaluation at one step would compare
    the loss with itself and reset the early stop's count (eval_every dividing an epoch turned early
    stopping off)."""
    at_point = bool(point_every) and step % point_every == 0
    if at_point or (cfg.eval_every and step % cfg.eval_every == 0):
        heldout(step)
    return at_point and point(step)


def _end_epoch(res: FitResult, cfg: TrainConfig, loss_h: float, train_loss: float, epoch: int, step: int,
               t_epoch: float, rising: int) -> int:
    """Record the epoch (its held-out loss was just evaluated, after the one before it) and decide
    the early stop: returns how many evaluations in a row have risen."""
    previous = res.heldout_curve[-2][1]
    res.history.append({"epoch": epoch, "step": step, "train_loss": train_loss, "heldout_loss": loss_h,
                        "seconds": time.perf_counter() - t_epoch})
    rising = rising + 1 if loss_h > previous else 0
    res.stopped_early = bool(cfg.early_stop_patience and rising >= cfg.early_stop_patience)
    return rising


def _length(cfg: TrainConfig, n: int) -> tuple[int, int]:
    """Steps per epoch over ``n`` windows, and the run's total steps (``max_steps`` caps it)."""
    per_epoch = math.ceil(n / cfg.batch_size)
    total = per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, per_epoch * cfg.epochs)
    if total == 0:
        raise UserError("training would run no step; check train.max_steps and the corpus size.")
    return per_epoch, total


@contextlib.contextmanager
def _doing(bar, what: str):
    """The progress bar says what the loop does between steps while it does it."""
    bar.set_postfix_str(what)
    try:
        yield
    finally:
        bar.set_postfix_str("", refresh=False)


def fit(cfg: TrainConfig, model, data: TokenData, on_metrics: Optional[OnMetrics],
        runtime: Runtime, progress: bool = True, on_point: Optional[OnPoint] = None,
        point_every: int = 0) -> FitResult:
    """Fine-tune ``model`` in place on ``data.train_windows``; evaluate on the held-out windows
    at step 0, after each epoch, every ``cfg.eval_every`` steps and at every point.

    ``on_point(step, epoch)`` is called at the trajectory's interior points: after every epoch
    (``point_every`` 0) or every ``point_every`` steps, never at the last step (the caller
    measures the end), always after a held-out evaluation at that step (``epoch`` fractional); a
    true return stops training there (``stopped_for_copying``). The evaluation drains the device
    first, so a point is never billed for queued steps and needs no sync of its own."""
    report = on_metrics or (lambda metrics, step: None)
    model.to(runtime.device).train()
    opt, sched = _optimizer_and_schedule(model, cfg, runtime)
    n = data.train_windows.shape[0]
    per_epoch, total = _length(cfg, n)
    gen, res = torch.Generator().manual_seed(cfg.seed), FitResult(steps_per_epoch=per_epoch)
    # The goldfish loss's labels, once for the fixed windows: a step then pays an index, not a hash.
    targets = goldfish.labels(data.train_windows, cfg.goldfish_k, cfg.goldfish_h) if cfg.goldfish_k else None
    timer = step_timer(runtime.device)

    def heldout(step: int) -> float:
        timer.drain()
        with _doing(bar, "held-out loss"):
            return _heldout(model, data, cfg, runtime, res, report, step)

    def point(step: int) -> bool:
        with _doing(bar, "measuring"):  # a measurement takes as long as several steps: say so on the bar
            res.stopped_for_copying = bool(on_point and on_point(step, step / per_epoch))
        return res.stopped_for_copying

    bar = tqdm(total=total, desc="train", unit="step", disable=not progress or None, leave=False)
    rising, step, _ = 0, 0, heldout(0)
    losses = _LossLog(cfg, res, report, bar, runtime.device, timer)
    for epoch in range(1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        stop = min(n, (total - step) * cfg.batch_size)
        for i in range(0, stop, cfg.batch_size):
            timer.start()
            x, y = _batch(data.train_windows, targets, order[i:i + cfg.batch_size], runtime.device)
            losses.add(_step(model, opt, sched, x, cfg, runtime, y))
            step += 1
            res.tokens += x.numel()
            timer.stop()
            if losses.count == cfg.log_every or step == total:
                losses.flush(step)
            bar.update(1)
            if step < total and i + cfg.batch_size < stop and _interior(step, cfg, point_every, heldout, point):
                break
        losses.flush(step)  # a partial interval, so the epoch mean covers every step
        if res.stopped_for_copying:
            break
        rising = _end_epoch(res, cfg, heldout(step), losses.epoch_mean(), epoch, step, t_epoch, rising)
        report({"epoch": float(epoch)}, step)
        if res.stopped_early or step >= total or ((not point_every or step % point_every == 0) and point(step)):
            break
    bar.close()
    res.steps, res.step_seconds = step, timer.seconds
    return res
