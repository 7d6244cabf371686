"""One trial: a fresh copy of the pretrained model, fine-tuned, measured and logged.

Shared by ``gpt2ft train`` (one trial) and the study (one per Optuna trial). The tracker's
run is passed in; this module never imports mlflow or optuna.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from gpt2ft import logops, lora, report
from gpt2ft import trajectory as T
from gpt2ft import judges as J
from gpt2ft.assets import Assets, study_bounds
from gpt2ft.config import Config, TrainConfig
from gpt2ft.measure import longest_copy, measure_model
from gpt2ft.model import free_accelerator, peak_memory, reset_peak_memory, seed_everything
from gpt2ft.train import FitResult, fit
from gpt2ft.trial_writes import write_now

#: Held-out evaluations in a row with a rising loss that count as "clearly turned upward",
#: when ``study.early_stop`` is on and ``train.early_stop_patience`` does not say otherwise.
EARLY_STOP_PATIENCE = 2


@dataclass
class TrialResult:
    metrics: dict[str, float]
    fit: FitResult
    texts: list[str]
    ids: list[list[int]]
    seconds: dict[str, float] = field(default_factory=dict)
    model: Any = None
    trajectory: list[dict[str, float]] = field(default_factory=list)
    """Measurements along training: the base model (step 0), interior points, the end."""
    log_ops: Optional[list] = None
    """The trial's final MLflow writes (``gpt2ft.logops``): made by ``run_trial`` itself, or with
    ``defer_log`` left to the caller (``trial_writes.TrialWrites.store``)."""
    worker: dict[str, Any] = field(default_factory=dict)
    """The process that ran it: pid, device and peak memory (``model.peak_memory``)."""

    def record(self) -> dict[str, Any]:
        """What a study stores durably for the trial (Optuna user attributes, JSON): enough to
        redo its MLflow writes (``from_record``) if the process dies before they are stored."""
        f = self.fit
        return {"metrics": {k: float(v) for k, v in self.metrics.items()}, "history": f.history,
                "stopped_early": f.stopped_early, "stopped_for_copying": f.stopped_for_copying,
                "sample_texts": self.texts, "sample_ids": self.ids,
                "seconds": {k: float(v) for k, v in self.seconds.items() if k != "log_seconds"},
                "trajectory": self.trajectory, "worker": self.worker,
                "fit_curves": {"train_curve": f.train_curve, "heldout_curve": f.heldout_curve,
                               "steps": f.steps, "steps_per_epoch": f.steps_per_epoch}}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "TrialResult":
        curves = record.get("fit_curves", {})
        fit = FitResult(history=record.get("history", []), steps=int(curves.get("steps", 0)),
                        train_curve=[tuple(p) for p in curves.get("train_curve", [])],
                        heldout_curve=[tuple(p) for p in curves.get("heldout_curve", [])],
                        steps_per_epoch=int(curves.get("steps_per_epoch", 0)),
                        stopped_early=bool(record.get("stopped_early", False)),
                        stopped_for_copying=bool(record.get("stopped_for_copying", False)))
        return cls(dict(record.get("metrics", {})), fit, list(record.get("sample_texts", [])),
                   [list(i) for i in record.get("sample_ids", [])], seconds=dict(record.get("seconds", {})),
                   trajectory=list(record.get("trajectory", [])), worker=dict(record.get("worker", {})))


def trial_train_config(config: Config, params: dict[str, Any]) -> TrainConfig:
    """The training settings of a study trial with ``params`` (lr, epochs, batch_size, and
    goldfish_k and lora_r where the study searches them: rank 0 trains every weight, a rank r > 0
    trains LoRA adapters of rank r).

    The one place a trial's settings are made, for the study and for export's retrain alike,
    so a retrained export trains the trial's steps (``candidate_train_config`` stops it there).
    """
    patience = config.train.early_stop_patience
    if config.study.early_stop and patience == 0:
        patience = EARLY_STOP_PATIENCE
    rank = int(params.get("lora_r", config.train.rank))
    return dataclasses.replace(config.train, lr=params["lr"], epochs=params["epochs"],
                               batch_size=params["batch_size"], early_stop_patience=patience,
                               goldfish_k=int(params.get("goldfish_k", config.train.goldfish_k)),
                               method="lora" if rank else "full", lora_r=rank or config.train.lora_r)


def candidate_train_config(config: Config, params: dict[str, Any], step: int) -> TrainConfig:
    """The settings that retrain a trial exactly to ``step``: its own settings, stopped there.
    The data order comes from the trial's seed and measuring draws no training random numbers,
    so the first ``step`` steps are the trial's own (``tests/test_candidates.py`` checks bitwise).
    Without early stop: the trial went on past ``step``, so a stop could only cut the retrain
    short, and on CUDA a nondeterministic held-out loss near a plateau can trip it."""
    return dataclasses.replace(trial_train_config(config, params), max_steps=int(step), early_stop_patience=0)


def retrain(config: Config, params: dict[str, Any], step: int, assets: Assets, progress: bool = False):
    """A study trial with ``params`` trained again to ``step``: returns the model and fit's result.

    The trial's own settings (``candidate_train_config``: no early stop) under the config it
    trained with, and fit evaluates held-out loss at the steps the trial did (every
    ``sample.every_steps`` point, as ``run_trial`` asks, and ``train.eval_every``).
    Measuring drew none of training's random numbers, so no point is measured here."""
    tcfg = candidate_train_config(config, params, step)
    seed_everything(tcfg.seed)
    model = assets.fresh_model(tcfg)
    result = fit(tcfg, model, assets.data, None, assets.runtime, progress=progress,
                 point_every=config.sample.every_steps)
    return model, result


class _Tracer:
    """Measures a training model's samples at the trajectory's interior points and logs them
    as step metrics under the final metrics' names, so MLflow charts show the path. Each point
    is a candidate of the pick, handed to ``on_candidate`` (the study keeps its checkpoint when
    it could be chosen)."""

    def __init__(self, assets: Assets, model, run, seed: int, bounds: J.Bounds,
                 on_candidate: Optional[Callable[[Any, dict[str, float]], None]] = None):
        self.assets, self.model, self.run, self.seed = assets, model, run, seed
        self.on_candidate = on_candidate
        self.points: list[dict[str, float]] = []
        self.heldout: dict[int, float] = {}
        self.seconds = 0.0
        self.keep_seconds = 0.0  # the study keeping points' checkpoints: not measuring
        self.last: Optional[tuple[dict[str, float], list[str], list[list[int]]]] = None
        # The copying stop (study.stop_after): points in a row that only copy more.
        self.stop_after = assets.config.study.stop_after
        self.bounds = bounds
        self.copying_in_row = 0

    def saw(self, metrics: dict[str, float], step: int) -> None:
        """The fit's metric stream: remember each step's held-out loss (fit evaluates at every point)."""
        if "heldout_loss" in metrics:
            self.heldout[step] = float(metrics["heldout_loss"])
        if self.run is not None:
            self.run.log_metrics(metrics, step)

    def base_point(self) -> dict[str, float]:
        """Step 0 is the base model, measured once per study: reused, and logged at step 0."""
        refs = self.assets.references.values
        base = {k: refs[f"base_{k}"] for k in T.POINT_METRICS if f"base_{k}" in refs}
        if self.run is not None and base:
            self.run.log_metrics(base, 0)
        return T.point(0, 0.0, base, math.nan)

    def __call__(self, step: int, epoch: float) -> bool:
        """Measure the point, hand it on, and say whether training should stop here."""
        t = time.perf_counter()
        device = self.assets.runtime.device
        # Measuring must not draw the random numbers training uses, so the weights after epoch e
        # of an E-epoch trial are those of an e-epoch trial (export retrains to a point's step).
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            self.last = measure_model(self.assets, self.model, self.assets.config.sample.n_samples, self.seed)
        metrics = self.last[0]
        p = T.point(step, epoch, metrics, self.heldout.get(step, math.nan))
        self.points.append(p)
        if self.run is not None:
            self.run.log_metrics({k: v for k, v in metrics.items() if k in T.POINT_METRICS}, step)
        self.seconds += time.perf_counter() - t
        if self.on_candidate is not None:
            t = time.perf_counter()
            self.on_candidate(self.model, p)
            self.keep_seconds += time.perf_counter() - t
        return self.only_copies(p)

    def only_copies(self, p: dict[str, float]) -> bool:
        """True once ``study.stop_after`` points in a row fail a copying judge of the pick with
        held-out loss above the trial's lowest so far: past its best held-out loss a trial only
        copies more, and no later point can be picked."""
        if not self.stop_after:
            return False
        fails = J.copying_failures(J.judged_values(p), self.bounds)
        above = p["heldout_loss"] > min(self.heldout.values(), default=math.inf)
        self.copying_in_row = self.copying_in_row + 1 if fails and above else 0
        return self.copying_in_row >= self.stop_after

    def final(self, model, result: FitResult, n: int, seed: int) -> tuple[dict[str, float], list, list, float]:
        """The trial's end measurement: made now, or, when training stopped at a point for
        copying, that point's own (the same weights), which then is the end of the path."""
        if result.stopped_for_copying and self.last is not None:
            self.points.pop()
            metrics, texts, ids = self.last
            stop = {"stopped_for_copying": 1.0, "stopped_for_copying_step": float(result.steps)}
            return {**metrics, **stop}, texts, ids, 0.0
        t = time.perf_counter()
        metrics, texts, ids = measure_model(self.assets, model, n, seed)
        return {**metrics, "stopped_for_copying": 0.0}, texts, ids, time.perf_counter() - t

    def path(self, result: FitResult, final: dict[str, float]) -> list[dict[str, float]]:
        """Base, interior points and the end, each with the held-out loss of its step."""
        end = T.point(result.steps, result.steps / max(result.steps_per_epoch, 1), final, math.nan)
        points = [self.base_point(), *self.points, end]
        for p in points:
            p["heldout_loss"] = T.heldout_at(result.heldout_curve, int(p["step"]))
        return points


def _fit_metrics(result: FitResult) -> dict[str, float]:
    """The trial's training numbers: the latest values of the step-wise series (the epoch means
    stay in history.json), so the run's summary and the last point of each curve agree.

    ``train_loss`` and ``overfit_gap`` both use the last log interval's mean training loss (the
    end of ``train_curve``), the one nearest the final weights that ``heldout_loss`` measures;
    an epoch's mean would include the loss of its first, less trained steps. ``best_epoch`` is
    fractional, ``best_heldout_step / steps_per_epoch`` as in the plots and the trajectory: an
    evaluation between epoch ends (``train.eval_every``) is not epoch 0, and one at an epoch's
    end is that whole epoch (nan when the epoch length is unknown)."""
    best_step, best_loss = result.best_heldout
    train_loss, heldout_loss = result.train_curve[-1][1], result.heldout_curve[-1][1]
    return {"train_loss": train_loss, "heldout_loss": heldout_loss,
            "heldout_perplexity": math.exp(min(heldout_loss, 50.0)),
            "best_heldout_loss": best_loss,
            "best_epoch": best_step / result.steps_per_epoch if result.steps_per_epoch else math.nan,
            "overfit_gap": heldout_loss - train_loss,
            "steps": float(result.steps), "tokens_per_second": result.tokens / max(result.step_seconds, 1e-9)}


def run_trial(assets: Assets, train_cfg: TrainConfig, run=None, keep_model: bool = False,
              progress: bool = True, plots: bool = True,
              after_fit: Optional[Callable[[Any, FitResult], None]] = None, defer_log: bool = False,
              on_candidate: Optional[Callable[[Any, dict[str, float]], None]] = None,
              bounds: Optional[J.Bounds] = None) -> TrialResult:
    """Fine-tune a fresh copy of the base model with ``train_cfg``, measuring its samples along
    the way (``sample.trajectory``) and at the end; log everything to ``run``.

    With ``defer_log`` the final writes (metrics, samples, tables, plots) are not made but
    returned as ``log_ops``, so a study can apply them off the trial's critical path; the
    seconds that matter (``trial_seconds``, ``measure_share``) are then those of the trial
    without them, and applying them logs their own ``log_seconds``."""
    t0 = time.perf_counter()
    seed_everything(train_cfg.seed)
    reset_peak_memory(assets.runtime.device)
    model = assets.fresh_model(train_cfg)
    t_copy = time.perf_counter() - t0
    sc = assets.config.sample
    # A study passes the bounds it recorded at setup, the pick's own; a lone run builds them.
    bounds = bounds or study_bounds(assets.config, assets.references.values).only(assets.config.study.judges)
    tracer = _Tracer(assets, model, run, train_cfg.seed, bounds, on_candidate)
    try:
        result = fit(train_cfg, model, assets.data, tracer.saw, assets.runtime, progress=progress,
                     on_point=tracer if sc.trajectory else None, point_every=sc.every_steps)
        if after_fit is not None:
            after_fit(model, result)
        metrics, texts, ids, t_measure = tracer.final(model, result, sc.n_samples, train_cfg.seed)
        metrics.update(_fit_metrics(result), trainable_params=float(lora.trainable(model)))
        path = tracer.path(result, metrics)
        metrics.update(T.onset_metrics(path, result.heldout_curve, bounds.memorization))
        seconds = {"copy_seconds": t_copy, "step_seconds": result.step_seconds, "eval_seconds": result.eval_seconds,
                   "measure_seconds": t_measure, "trajectory_seconds": tracer.seconds,
                   "checkpoint_seconds": tracer.keep_seconds}
        out = TrialResult(metrics, result, texts, ids, seconds, model if keep_model else None, path,
                          worker=peak_memory(assets.runtime.device))
        # The trial's seconds end here, before its final writes (logged apart as log_seconds).
        seconds["trial_seconds"] = time.perf_counter() - t0
        seconds["measure_share"] = (t_measure + tracer.seconds) / seconds["trial_seconds"]
        if run is not None:
            out.log_ops = trial_ops(assets, out, plots)
            if not defer_log:
                seconds["log_seconds"] = write_now(run, out.log_ops, result.steps)
        return out
    finally:
        if not keep_model:
            del model
        free_accelerator()


def samples_markdown(texts: list[str], title: str) -> str:
    body = "\n\n".join(f"### Sample {i + 1}\n\n{t}" for i, t in enumerate(texts))
    return f"# {title}\n\n{body}\n"


def trial_ops(assets: Assets, res: TrialResult, plots: bool = True) -> list[logops.Op]:
    """The trial's final MLflow writes as data: metrics, samples, tables and the plots' specs."""
    # train_loss/heldout_loss were logged step by step during fit; logging them again here
    # would add a duplicate point to those curves.
    ops: list[logops.Op] = [
        ("metrics", {k: v for k, v in res.metrics.items() if k not in ("train_loss", "heldout_loss")}, res.fit.steps),
        ("text", samples_markdown(res.texts, "Samples after fine-tuning"), "samples.md"),
        ("dict", {"history": res.fit.history, "train_curve": res.fit.train_curve,
                  "heldout_curve": res.fit.heldout_curve, "stopped_early": res.fit.stopped_early}, "history.json"),
        ("dict", res.trajectory, "trajectory.json")]
    if res.seconds:  # where the trial's time went (its writes' own log_seconds come with them)
        ops.append(("metrics", {k: v for k, v in res.seconds.items() if k != "log_seconds"}, res.fit.steps))
    _, copied = longest_copy(assets, res.ids)
    if copied:
        ops.append(("text", copied, "longest_copy.txt"))
    novelty = report.novelty_data(assets, {"fine-tuned": res.ids})
    ops.append(("dict", report.novelty_table(novelty), "novelty_curve.json"))
    if plots:
        specs = report.trial_figure_specs(assets, res, novelty)
        ops += [("figure", fn, kw, f"plots/{name}.png") for name, (fn, kw) in specs.items()]
    return ops
