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

from gpt2ft import report
from gpt2ft.assets import Assets
from gpt2ft.config import Config, TrainConfig
from gpt2ft.measure import measure_model
from gpt2ft.metrics import longest_copy
from gpt2ft.model import free_accelerator, seed_everything
from gpt2ft.train import FitResult, fit

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


def trial_train_config(config: Config, params: dict[str, Any]) -> TrainConfig:
    """The training settings of a study trial with ``params`` (lr, epochs, batch_size).

    The one place a trial's settings are made, for the study and for export's retrain alike,
    so a retrained export trains exactly the steps its trial did (early stop included).
    """
    patience = config.train.early_stop_patience
    if config.study.early_stop and patience == 0:
        patience = EARLY_STOP_PATIENCE
    return dataclasses.replace(config.train, lr=params["lr"], epochs=params["epochs"],
                               batch_size=params["batch_size"], early_stop_patience=patience)


def run_trial(assets: Assets, train_cfg: TrainConfig, run=None, keep_model: bool = False,
              progress: bool = True, plots: bool = True,
              after_fit: Optional[Callable[[Any, FitResult], None]] = None) -> TrialResult:
    """Fine-tune a fresh copy of the base model with ``train_cfg``, sample, measure, log."""
    t0 = time.perf_counter()
    seed_everything(train_cfg.seed)
    model = assets.fresh_model()
    t_copy = time.perf_counter() - t0

    try:
        result = fit(train_cfg, model, assets.data, run.log_metrics if run is not None else None,
                     assets.runtime, progress=progress)
        if after_fit is not None:
            after_fit(model, result)
        t = time.perf_counter()
        metrics, texts, ids = measure_model(assets, model, assets.config.sample.n_samples, train_cfg.seed)
        t_measure = time.perf_counter() - t
        best_step, best_loss = result.best_heldout
        last = result.history[-1]
        metrics.update({
            # The latest values of the step-wise series (the epoch means stay in history.json),
            # so the run's summary and the last point of each curve agree.
            "train_loss": result.train_curve[-1][1], "heldout_loss": result.heldout_curve[-1][1],
            "heldout_perplexity": math.exp(min(result.heldout_curve[-1][1], 50.0)),
            "best_heldout_loss": best_loss,
            "best_epoch": float(next((h["epoch"] for h in result.history if h["step"] == best_step), 0)),
            "overfit_gap": result.heldout_curve[-1][1] - last["train_loss"],
            "steps": float(result.steps), "tokens_per_second": result.tokens / max(result.step_seconds, 1e-9),
        })
        seconds = {"copy_seconds": t_copy, "step_seconds": result.step_seconds,
                   "eval_seconds": result.eval_seconds, "measure_seconds": t_measure}
        out = TrialResult(metrics, result, texts, ids, seconds, model if keep_model else None)
        if run is not None:
            t = time.perf_counter()
            log_trial(run, assets, out, plots)
            seconds["log_seconds"] = time.perf_counter() - t
        seconds["trial_seconds"] = time.perf_counter() - t0
        if run is not None:
            run.log_metrics({**seconds}, result.steps)
        return out
    finally:
        if not keep_model:
            del model
        free_accelerator()


def samples_markdown(texts: list[str], title: str) -> str:
    body = "\n\n".join(f"### Sample {i + 1}\n\n{t}" for i, t in enumerate(texts))
    return f"# {title}\n\n{body}\n"


def log_trial(run, assets: Assets, res: TrialResult, plots: bool = True) -> None:
    """Final metrics, samples and the trial's plots."""
    # train_loss/heldout_loss were logged step by step during fit; logging them again here
    # would add a duplicate point to those curves.
    run.log_metrics({k: v for k, v in res.metrics.items() if k not in ("train_loss", "heldout_loss")},
                    res.fit.steps)
    run.log_text(samples_markdown(res.texts, "Samples after fine-tuning"), "samples.md")
    run.log_dict({"history": res.fit.history, "train_curve": res.fit.train_curve,
                  "heldout_curve": res.fit.heldout_curve, "stopped_early": res.fit.stopped_early},
                 "history.json")
    copied = longest_copy_text(assets, res.ids)
    if copied:
        run.log_text(copied, "longest_copy.txt")
    run.log_dict(report.novelty_table(assets, {"fine-tuned": res.ids}), "novelty_curve.json")
    if plots:
        for name, fig in report.trial_figures(assets, res).items():
            run.log_figure(fig, f"plots/{name}.png")


def longest_copy_text(assets: Assets, ids: list[list[int]]) -> str:
    """The longest verbatim span a sample shares with training, as text, for a person to read."""
    length, which, start = longest_copy(ids, assets.index)
    if length <= 0:
        return ""
    span = ids[which][start:start + length]
    return (f"Longest copied span: {length} tokens (sample {which + 1}, token {start}).\n\n"
            f"{assets.tokenizer.decode(span)}\n")
