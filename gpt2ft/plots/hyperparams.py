"""The hyperparameters-vs-objectives figure of a study: a grid of scatter plots, one row per
objective and one column per hyperparameter, one dot per trial."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from gpt2ft.plots.prepare import panel_xy, ref
from gpt2ft.plots.theme import BOOK_COLOR, LABELS, SELECTED_COLOR, SHORT_LABELS, lr_text, new_figure, no_data, styled


def _jitter(ax: Axes, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Spread a few-valued parameter sideways so equal values do not hide each other, and
    tick exactly the values it takes."""
    uniques = np.unique(x)
    if not 1 < uniques.size <= 12:
        return x
    gap = float(np.min(np.diff(uniques)))
    ax.xaxis.set_major_locator(FixedLocator(uniques))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    return x + rng.uniform(-0.12, 0.12, size=x.size) * gap


def _log_lr_axis(ax: Axes) -> None:
    ax.set_xscale("log")
    # Learning rates usually span under two decades, where matplotlib labels minor ticks
    # as overlapping 2x10^-5 strings; use short labels on 1-2-5 ticks instead.
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: lr_text(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _objective_refs(ax: Axes, obj: str, refs: Mapping[str, Any]) -> None:
    book = ref(refs, "book_top100_ratio")
    bound = ref(refs, "memorization_bound")
    if obj == "top100_ratio" and book is not None:
        ax.axhline(book, color=BOOK_COLOR, ls="--", lw=1, label=f"book's own ratio ({book:.2f})")
    if obj == "memorization" and bound is not None:
        ax.axhline(bound, color=SELECTED_COLOR, ls=":", lw=1.2, label=f"pick's bound ({bound:.3f})")


def _param_panel(ax: Axes, df: pd.DataFrame, param: str, obj: str,
                 rng: np.random.Generator) -> None:
    """One scatter of objective vs parameter, or a note saying what is missing."""
    x, y = panel_xy(df, param, obj)
    if not x.size:
        missing = [c for c in (param, obj) if c not in df.columns]
        no_data(ax, f"no data ({', '.join(missing)} missing)" if missing else "no data")
        return
    if param != "lr":
        x = _jitter(ax, x, rng)
    ax.scatter(x, y, s=28, color=sns.color_palette("colorblind")[0], alpha=0.8,
               edgecolor="white", lw=0.5)
    if param == "lr":
        _log_lr_axis(ax)


@styled
def params_vs_objectives(
    trials: pd.DataFrame,
    params: Sequence[str] = ("lr", "epochs", "batch_size"),
    objectives: Sequence[str] = ("top100_ratio", "memorization", "heldout_loss"),
    references: Mapping[str, Any] | None = None,
    title: str = "How each hyperparameter relates to each outcome (one dot per trial)",
) -> Figure:
    """Grid of scatter plots: one row per objective, one column per hyperparameter.

    ``trials`` has one row per trial with the ``params`` and ``objectives`` columns
    (default ``lr``, ``epochs``, ``batch_size`` vs ``top100_ratio``, ``memorization``,
    ``heldout_loss``); ``lr`` is drawn on a log axis, parameters with few distinct values
    are jittered sideways so equal values do not hide each other. Optional ``references``
    (same keys as :func:`style_vs_copying`) add the book's top-100 ratio and the
    memorization bound as dashed lines. Missing columns or NaN values leave a panel
    labelled "no data" instead of raising.
    """
    df = trials if trials is not None else pd.DataFrame()
    refs = references or {}
    n_rows, n_cols = max(len(objectives), 1), max(len(params), 1)
    fig = new_figure((3.6 * n_cols + 1, 2.9 * n_rows + 0.6))
    # Shared axes: one x scale per hyperparameter column, one y scale per objective row,
    # so panels compare at a glance and only the outer ones need tick labels.
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex="col", sharey="row")
    fig.suptitle(title)
    rng = np.random.default_rng(0)  # fixed seed: the same study always draws the same figure
    for j, param in enumerate(params):
        for i, obj in enumerate(objectives):
            ax = axes[i, j]
            _param_panel(ax, df, param, obj, rng)
            _objective_refs(ax, obj, refs)
            # Label and explain only the outer panels; inner ones mean the same.
            if j == 0 and ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize="x-small")
            if i == n_rows - 1:
                ax.set_xlabel(LABELS.get(param, param))
            if j == 0:
                ax.set_ylabel(SHORT_LABELS.get(obj, LABELS.get(obj, obj)))
    return fig
