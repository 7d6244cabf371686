"""The by-epoch figure of a study: memorization and held-out loss against epoch, one line per
trial, with each trial's copying onset, the pick's bounds and the selected candidate."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gpt2ft.plots.prepare import copying_onsets, epoch_series, ref
from gpt2ft.plots.theme import (CMAP, LABELS, SELECTED_COLOR, colour_scale, colourbar, memorization_lines, new_figure,
                                no_data, styled)


def _epoch_lines(ax_mem: Axes, ax_loss: Axes, series: pd.DataFrame) -> tuple[Normalize, str]:
    """One memorization line and one held-out-loss line per trial, coloured by its lr."""
    lrs = series.groupby("number", sort=True)["lr"].first()  # first finite lr per trial
    values, norm, label = colour_scale(lrs.index.to_numpy(float), lrs.to_numpy(float))
    for (number, rows), value in zip(series.groupby("number", sort=True), values):
        colour = CMAP(norm(value))
        for ax, metric in ((ax_mem, "memorization"), (ax_loss, "heldout_loss")):
            ok = rows[np.isfinite(rows[metric])]
            if len(ok):
                ax.plot(ok["epoch"], ok[metric], color=colour, lw=1.3, marker="o", ms=3,
                        alpha=0.85, gid=f"{metric}-{int(number)}")
    return norm, label


@styled
def copying_and_loss_by_epoch(
    trajectories: pd.DataFrame | None,
    references: Mapping[str, Any] | None = None,
    title: str = "Copying and held-out loss through fine-tuning, one line per trial",
    chosen: Mapping[str, Any] | None = None,
) -> Figure:
    """Memorization (top panel) and held-out loss (bottom panel) against epoch, sharing
    the epoch axis; one line per trial, coloured by learning rate (log colour bar labelled
    "learning rate"; by trial number when some trial has no lr).

    ``trajectories`` is long format: ``number``, ``lr``, ``epoch`` (0 = base model),
    ``step``, ``memorization``, ``heldout_loss``; NaN values are skipped per panel.
    ``references`` may give ``memorization_bound`` (dotted line; each trial's first
    measurement above it is marked as its copying onset, see :func:`copying_onsets`) and
    ``book_memorization`` (dash-dot line); ``heldout_bound`` (dotted, bottom panel). ``chosen``
    (``epoch``, ``memorization``, ``heldout_loss`` of the selected candidate) is starred on both
    panels. Empty or all-NaN input gives "no data" panels.
    """
    fig = new_figure((9, 7.5))
    ax_mem, ax_loss = fig.subplots(2, 1, sharex=True)
    fig.suptitle(title)
    series = epoch_series(trajectories)
    bound = ref(references, "memorization_bound")
    book_mem = ref(references, "book_memorization")
    if not series.empty:
        norm, label = _epoch_lines(ax_mem, ax_loss, series)
        colourbar(fig, [ax_mem, ax_loss], norm, label)
        onsets = copying_onsets(series, bound)
        if onsets:
            xs, ys = zip(*onsets.values())
            ax_mem.scatter(xs, ys, marker="D", s=50, facecolor="none", edgecolor=SELECTED_COLOR,
                           lw=1.4, zorder=5, label="copying onset (first epoch above the bound)")
    for ax, metric in ((ax_mem, "memorization"), (ax_loss, "heldout_loss")):
        if not ax.get_lines():
            no_data(ax, f"no {metric} measured by epoch")
    memorization_lines(ax_mem.axhline, book_mem, bound)
    loss_bound = ref(references, "heldout_bound")
    if loss_bound is not None and np.isfinite(loss_bound):
        ax_loss.axhline(loss_bound, color=SELECTED_COLOR, ls=":", lw=1.2,
                        label=f"pick's held-out bound ({loss_bound:.3f})")
    if chosen is not None:
        for ax, metric in ((ax_mem, "memorization"), (ax_loss, "heldout_loss")):
            x, y = float(chosen.get("epoch", np.nan)), float(chosen.get(metric, np.nan))
            if np.isfinite(x) and np.isfinite(y):
                ax.scatter([x], [y], marker="*", s=260, color=SELECTED_COLOR, edgecolor="black", lw=0.8,
                           zorder=6, label="selected candidate")
    ax_mem.set_ylabel(LABELS["memorization"])
    ax_loss.set_ylabel(LABELS["heldout_loss"])
    ax_loss.set_xlabel(LABELS["epoch"])
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_mem, ax_loss):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize="x-small")
    return fig
