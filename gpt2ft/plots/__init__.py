"""Figures for a fine-tuning study: loss curves, token frequencies, style vs copying (with
each trial's path through the epochs), copying and held-out loss by epoch, hyperparameters
vs objectives, and n-gram novelty.

Every public plotting function returns a :class:`matplotlib.figure.Figure` and never shows
or saves it: the caller saves it with :func:`save` or logs it (e.g. ``mlflow.log_figure``).
Figures are built as plain ``Figure`` objects, not through ``pyplot``, so nothing is
registered in pyplot's global figure list and a long study cannot leak hundreds of open
figures. Missing or NaN values never raise: the affected series is left out and, where a
whole panel has nothing to show, the panel says so.

Plots draw what they are given. Which trials are on the Pareto front, within the pick's
bound or selected comes from the trial-summary table (``on_front``, ``selected``
columns); nothing here re-derives the pick.

One module per figure (``loss``, ``frequencies``, ``tradeoff`` for style vs copying,
``epochs``, ``hyperparams``, ``novelty``) draws it; ``prepare`` holds the pure functions that
turn the tables into what the figures show (:func:`style_points`, :func:`trajectory_paths`,
:func:`epoch_series`, :func:`copying_onsets`, tested apart from the drawing); ``theme`` holds
what every figure shares (style, colours, labels, colour scale, saving). The figures are
named here, so ``gpt2ft.logops`` finds one by its function name (``getattr(plots, name)``).
"""
from __future__ import annotations

# theme first: it picks the headless backend before anything loads pyplot.
from gpt2ft.plots.theme import save
from gpt2ft.plots.epochs import copying_and_loss_by_epoch
from gpt2ft.plots.frequencies import top100_frequencies
from gpt2ft.plots.hyperparams import params_vs_objectives
from gpt2ft.plots.loss import loss_curves
from gpt2ft.plots.novelty import novelty_curves
from gpt2ft.plots.prepare import CopyingAxis, copying_onsets, epoch_series, style_points, trajectory_paths
from gpt2ft.plots.tradeoff import style_vs_copying

__all__ = [
    "CopyingAxis",
    "copying_and_loss_by_epoch",
    "copying_onsets",
    "epoch_series",
    "loss_curves",
    "novelty_curves",
    "params_vs_objectives",
    "save",
    "style_points",
    "style_vs_copying",
    "top100_frequencies",
    "trajectory_paths",
]
