"""Figures for a fine-tuning study: loss curves, token frequencies, style vs copying,
hyperparameters vs objectives, and n-gram novelty.

Every public plotting function returns a :class:`matplotlib.figure.Figure` and never shows
or saves it: the caller saves it with :func:`save` or logs it (e.g. ``mlflow.log_figure``).
Figures are built as plain ``Figure`` objects, not through ``pyplot``, so nothing is
registered in pyplot's global figure list and a long study cannot leak hundreds of open
figures. Missing or NaN values never raise: the affected series is left out and, where a
whole panel has nothing to show, the panel says so.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import matplotlib

# Training hosts are headless; Agg renders PNGs without a display. Set before pyplot loads.
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FixedLocator,
    FuncFormatter,
    LogLocator,
    NullFormatter,
    NullLocator,
)

__all__ = [
    "loss_curves",
    "novelty_curves",
    "params_vs_objectives",
    "save",
    "style_vs_copying",
    "top100_frequencies",
]

F = TypeVar("F", bound=Callable[..., Figure])

# Axis labels shared by several figures, so the same metric reads the same everywhere.
LABELS: dict[str, str] = {
    "train_loss": "train loss (nats/token)",
    "heldout_loss": "held-out loss (nats/token)",
    "heldout_perplexity": "held-out perplexity (exp of nats/token)",
    "top100_ratio": "top-100 ratio\n(share of sampled tokens in book's top 100)",
    "memorization": "memorization\n(share of sampled 8-grams copied from training)",
    "style_js": "style JS divergence (lower = closer to book)",
    "style_prob": "style classifier P(Gulliver)",
    "longest_copy": "longest verbatim copy (tokens)",
    "extractable_rate": "extractable rate (share of prompts)",
    "lr": "learning rate (log scale)",
    "epochs": "epochs",
    "batch_size": "batch size (sequences)",
}

# Shorter labels for the small panels of the params_vs_objectives grid.
SHORT_LABELS: dict[str, str] = {
    "top100_ratio": "top-100 ratio\n(share of tokens)",
    "memorization": "memorization\n(share of 8-grams copied)",
    "heldout_loss": "held-out loss\n(nats/token)",
    "train_loss": "train loss\n(nats/token)",
    "style_js": "style JS divergence\n(lower = closer)",
}

_BOOK_COLOR = "black"
_BASE_COLOR = "0.45"
_SELECTED_COLOR = "#d62728"


def _styled(func: F) -> F:
    """Run a plotting function under seaborn's whitegrid/notebook style without touching
    the caller's global rcParams (``sns.set_theme`` would change every later figure)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _figure(figsize: tuple[float, float]) -> Figure:
    # constrained layout keeps long axis labels, colorbars and legends from overlapping.
    return Figure(figsize=figsize, layout="constrained")


def _no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center",
            color="0.4", fontsize="medium", wrap=True)


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _sorted_pairs(points: Sequence[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values sorted by step; non-finite entries are dropped."""
    clean = sorted((float(s), float(v)) for s, v in points if _finite(s) and _finite(v))
    if not clean:
        return np.array([]), np.array([])
    steps, values = zip(*clean)
    return np.asarray(steps), np.asarray(values)


def _ref(references: Mapping[str, Any], key: str) -> float | None:
    """A reference value if present and finite, else None (drawn only when known)."""
    value = references.get(key)
    return float(value) if _finite(value) else None


def _state_name(state: Any) -> str:
    """"COMPLETE" for "COMPLETE", "complete", TrialState.COMPLETE or its str()."""
    name = getattr(state, "name", None)
    return str(name if isinstance(name, str) else state).rsplit(".", 1)[-1].upper()


def _int_or_float(v: float) -> str:
    return f"{int(v)}" if float(v).is_integer() else f"{v:g}"


# --- loss curves -----------------------------------------------------------------------


@_styled
def loss_curves(
    train: Sequence[tuple[int, float]],
    heldout: Sequence[tuple[int, float]],
    steps_per_epoch: int | None = None,
    title: str = "Fine-tuning loss: training text vs held-out book text",
) -> Figure:
    """Train and held-out loss (nats/token) against optimizer step on one chart.

    ``train`` and ``heldout`` are ``(step, loss)`` pairs in any order. The lowest held-out
    loss is marked and annotated (with its epoch when ``steps_per_epoch`` is given, which
    also adds epoch boundaries and an epoch axis on top). NaN losses are skipped.
    """
    fig = _figure((9, 5))
    ax = fig.subplots()
    tr_x, tr_y = _sorted_pairs(train)
    ho_x, ho_y = _sorted_pairs(heldout)
    palette = sns.color_palette("colorblind")

    if tr_x.size:
        ax.plot(tr_x, tr_y, color=palette[0], lw=1.3, alpha=0.85, label="train loss")
    if ho_x.size:
        ax.plot(ho_x, ho_y, color=palette[1], lw=2, marker="o", ms=4,
                label="held-out loss (book text not trained on)")
    if not tr_x.size and not ho_x.size:
        _no_data(ax, "no loss values recorded")

    max_step = max([0.0, *tr_x.tolist(), *ho_x.tolist()])
    if steps_per_epoch and steps_per_epoch > 0:
        spe = float(steps_per_epoch)
        # Epoch boundaries help explain jumps: the train loss often drops as an epoch
        # starts re-reading text the model has already seen.
        for k in range(1, int(max_step // spe) + 1):
            ax.axvline(k * spe, color="0.6", ls=":", lw=1,
                       label="epoch boundary" if k == 1 else None)
        top = ax.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe))
        top.set_xlabel("epoch (passes over the training text)")

    if ho_x.size:
        i = int(np.argmin(ho_y))
        best_step, best_loss = ho_x[i], ho_y[i]
        ax.scatter([best_step], [best_loss], s=160, marker="*", color=_SELECTED_COLOR,
                   zorder=5, label="lowest held-out loss")
        # exp() overflows past ~709 nats; a diverged run should still get its figure.
        ppl = f"{math.exp(best_loss):.1f}" if best_loss < 700 else "overflow"
        text = (f"lowest held-out loss {best_loss:.3f} nats/token\n"
                f"(perplexity {ppl}) at step {_int_or_float(best_step)}")
        if steps_per_epoch and steps_per_epoch > 0:
            text += f", epoch {best_step / steps_per_epoch:.2f}"
        # Put the label on whichever side has more room so it stays inside the axes.
        right_half = max_step > 0 and best_step > 0.6 * max_step
        ax.annotate(text, (best_step, best_loss), xytext=(-15 if right_half else 15, 35),
                    textcoords="offset points", ha="right" if right_half else "left",
                    fontsize="small", arrowprops=dict(arrowstyle="->", color="0.3"),
                    bbox=dict(boxstyle="round", fc="white", ec="0.7", alpha=0.9))

    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token; lower = better prediction)")
    # suptitle, not ax.set_title: the epoch axis label sits on top of the axes and would
    # read as part of the title.
    fig.suptitle(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize="small")
    return fig


# --- token frequencies -----------------------------------------------------------------


def _token_label(label: str, max_len: int = 12) -> str:
    # repr() makes GPT-2's leading spaces and newlines visible: ' the' vs 'the' vs '\n'.
    text = repr(label)
    return text if len(text) <= max_len else text[: max_len - 1] + "…"


def _positive_or_nan(values: Sequence[float]) -> np.ndarray:
    # Zero frequencies cannot sit on a log axis; leave them out instead of clipping them to
    # an arbitrary tiny value that would stretch the axis.
    arr = np.asarray([float(v) if _finite(v) else np.nan for v in values], dtype=float)
    arr[arr <= 0] = np.nan
    return arr


@_styled
def top100_frequencies(
    top_ids: Sequence[int],
    labels: Sequence[str],
    book_freq: Sequence[float],
    base_freq: Sequence[float],
    tuned_freq: Sequence[float],
    n_labelled: int = 10,
    title: str = "How often the book's 100 most frequent tokens appear: book vs model samples",
) -> Figure:
    """Relative frequency of the book's top-100 tokens in the book, in the base model's
    samples and in the fine-tuned model's samples (top panel, log scale), plus each
    model's frequency divided by the book's (bottom panel, 1 = same as the book).

    All five sequences are aligned and ordered by book rank (most frequent first);
    ``labels`` are the decoded token strings (shown with repr() so leading spaces and
    newlines are visible). The first ``n_labelled`` tokens get their string written above
    their bar, every 10th rank as tick label. ``top_ids`` is used only to check alignment.
    Zero or NaN frequencies are left out (log axes). Raises ValueError if lengths differ.
    """
    n = len(top_ids)
    lengths = {len(labels), len(book_freq), len(base_freq), len(tuned_freq)}
    if lengths != {n}:
        raise ValueError(
            "top_ids, labels, book_freq, base_freq and tuned_freq must have the same length; "
            f"got {len(top_ids)}, {len(labels)}, {len(book_freq)}, {len(base_freq)}, "
            f"{len(tuned_freq)}"
        )
    fig = _figure((12, 7.5))
    ax, ax_ratio = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    ax.set_title(title)
    if n == 0:
        _no_data(ax, "no tokens given")
        ax.set_ylabel("relative frequency\n(share of all tokens)")
        ax_ratio.set_ylabel("model ÷ book")
        ax_ratio.set_xlabel("book rank of token (1 = most frequent in the book)")
        return fig

    ranks = np.arange(1, n + 1)
    book = _positive_or_nan(book_freq)
    base = _positive_or_nan(base_freq)
    tuned = _positive_or_nan(tuned_freq)
    palette = sns.color_palette("colorblind")

    ax.bar(ranks, np.nan_to_num(book), width=0.8, color="0.8", edgecolor="0.6", lw=0.5,
           label="book (Gulliver's Travels)")
    ax.plot(ranks, base, color=palette[7], marker="o", ms=3.5, lw=1, ls="--",
            label="base model before fine-tuning (samples)")
    ax.plot(ranks, tuned, color=palette[3], marker="o", ms=3.5, lw=1.3,
            label="fine-tuned GPT-2 (samples)")
    if np.isfinite(np.concatenate([book, base, tuned])).any():
        ax.set_yscale("log")
    ax.set_ylabel("relative frequency\n(share of all tokens, log scale)")
    ax.legend(loc="upper right", fontsize="small")

    with np.errstate(divide="ignore", invalid="ignore"):
        base_ratio = base / book
        tuned_ratio = tuned / book
    ax_ratio.axhline(1.0, color=_BOOK_COLOR, ls="--", lw=1, label="same frequency as book")
    ax_ratio.plot(ranks, base_ratio, color=palette[7], marker="o", ms=3.5, lw=1, ls="--",
                  label="before fine-tuning ÷ book")
    ax_ratio.plot(ranks, tuned_ratio, color=palette[3], marker="o", ms=3.5, lw=1.3,
                  label="fine-tuned ÷ book")
    if np.isfinite(np.concatenate([base_ratio, tuned_ratio])).any():
        ax_ratio.set_yscale("log", base=2)
        # Plain numbers (0.5, 1, 2) read better than 2^-1, 2^0, 2^1.
        ax_ratio.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_ratio.set_ylabel("model ÷ book\n(log scale; 1 = same as book)")
    ax_ratio.set_xlabel("token, by book rank (1 = most frequent in the book)")
    ax_ratio.legend(loc="upper right", fontsize="small")

    # The first ranks are one bar-width apart, too close for tick labels: write their
    # strings vertically in a strip along the top of the panel (x in data units, y in axes
    # units) and raise the y limit so the data stay below the strip.
    if ax.get_yscale() == "log":
        lo, hi = ax.get_ylim()
        span = math.log10(hi) - math.log10(lo)
        ax.set_ylim(lo, 10 ** (math.log10(hi) + 0.3 * span))
    strip = ax.get_xaxis_transform()
    for r in range(1, min(n_labelled, n) + 1):
        ax.text(r, 0.98, _token_label(labels[r - 1]), transform=strip, rotation=90,
                ha="center", va="top", fontsize="x-small", color="0.15")
    # Every 10th rank gets rank and string as tick label on the shared x axis.
    shown = sorted({1, *[r for r in ranks if r % 10 == 0]})
    ax_ratio.xaxis.set_major_locator(FixedLocator(shown))
    ax_ratio.xaxis.set_minor_locator(NullLocator())
    ax_ratio.set_xticklabels([f"{r}: {_token_label(labels[r - 1])}" for r in shown],
                             rotation=45, ha="right", rotation_mode="anchor",
                             fontsize="small")
    ax_ratio.set_xlim(0.3, n + 0.7)
    return fig


# --- style vs copying ------------------------------------------------------------------


@_styled
def style_vs_copying(
    trials: pd.DataFrame,
    references: Mapping[str, Any],
    pareto: Sequence[int],
    log_memorization: bool = False,
    title: str = "Style vs copying: every fine-tuning trial",
) -> Figure:
    """Scatter of each trial's style (``top100_ratio``, y) against its copying
    (``memorization``, x).

    ``trials`` has columns ``number``, ``style`` (the trial's top100_ratio), ``memorization``,
    ``state`` and ``selected`` (bool); rows that are not COMPLETE or have NaN metrics are
    counted in a note but not drawn. ``references`` supplies ``book_top100_ratio``,
    ``book_memorization`` (drawn as dashed lines), ``base_top100_ratio`` and
    ``base_memorization`` (the model before fine-tuning, drawn as a marker) and optionally
    ``memorization_bound`` (the pick's bound, drawn dotted); missing/NaN references are
    skipped. ``pareto`` lists the Pareto-front trial numbers: they are ringed, and with a
    book reference the front is drawn as a band book +/- (best distance reached at that
    memorization or less), since style means closeness to the book from either side. The
    selected trial is highlighted and annotated "selected: trial N".
    """
    fig = _figure((10, 7.5))
    ax = fig.subplots()
    fig.suptitle(title)
    ax.set_title("closer to the book's dashed line = more book-like word use; "
                 "further right = more text copied verbatim from training",
                 fontsize="small", color="0.3")

    df = trials.copy() if trials is not None else pd.DataFrame()
    for col, default in (("number", np.nan), ("style", np.nan), ("memorization", np.nan),
                         ("state", "COMPLETE"), ("selected", False)):
        if col not in df.columns:
            df[col] = default
    style = pd.to_numeric(df["style"], errors="coerce")
    mem = pd.to_numeric(df["memorization"], errors="coerce")
    ok = (df["state"].map(_state_name) == "COMPLETE") & np.isfinite(style) & np.isfinite(mem)
    done = df[ok].assign(style=style[ok], memorization=mem[ok])
    n_hidden = int((~ok).sum())

    if len(done):
        numbers = pd.to_numeric(done["number"], errors="coerce").fillna(0)
        points = ax.scatter(done["memorization"], done["style"], c=numbers, cmap="viridis",
                            s=45, edgecolor="white", lw=0.6, zorder=3, label="trial")
        if len(done) > 1:
            cbar = fig.colorbar(points, ax=ax, pad=0.01)
            cbar.set_label("trial number (order in the search)")

    else:
        _no_data(ax, "no completed trials with both metrics yet")
    front = done[done["number"].isin(list(pareto))].sort_values(["memorization", "number"])
    if len(front):
        ax.scatter(front["memorization"], front["style"], s=150, facecolor="none",
                   edgecolor="0.2", lw=1.2, zorder=4, label="Pareto-front trial (number)")
        for _, row in front.iterrows():
            ax.annotate(_int_or_float(row["number"]), (row["memorization"], row["style"]),
                        xytext=(7, -12), textcoords="offset points", fontsize="x-small",
                        color="0.2")

    book_style = _ref(references, "book_top100_ratio")
    book_mem = _ref(references, "book_memorization")
    base_style = _ref(references, "base_top100_ratio")
    base_mem = _ref(references, "base_memorization")
    bound = _ref(references, "memorization_bound")
    if book_style is not None:
        ax.axhline(book_style, color=_BOOK_COLOR, ls="--", lw=1.2,
                   label=f"book's own top-100 ratio ({book_style:.3f})")
    if book_mem is not None:
        ax.axvline(book_mem, color=_BOOK_COLOR, ls="-.", lw=1.2,
                   label=f"held-out book text vs training ({book_mem:.3f})")
    if bound is not None:
        ax.axvline(bound, color=_SELECTED_COLOR, ls=":", lw=1.5,
                   label=f"memorization bound of the pick ({bound:.3f})")
    if base_style is not None and base_mem is not None:
        ax.scatter([base_mem], [base_style], marker="X", s=140, color=_BASE_COLOR,
                   edgecolor="black", zorder=4, label="base model before fine-tuning")

    selected = done[done["selected"].fillna(False).astype(bool)] if len(done) else done
    for _, row in selected.iterrows():
        x, y = row["memorization"], row["style"]
        ax.scatter([x], [y], marker="*", s=420, color=_SELECTED_COLOR, edgecolor="black",
                   lw=0.8, zorder=6, label="selected trial")
        ax.annotate(f"selected: trial {_int_or_float(row['number'])}\n"
                    f"top-100 ratio {y:.3f}, memorization {x:.3f}",
                    (x, y), xytext=(18, 18), textcoords="offset points", fontsize="small",
                    arrowprops=dict(arrowstyle="->", color="0.2"),
                    bbox=dict(boxstyle="round", fc="white", ec=_SELECTED_COLOR, alpha=0.95),
                    zorder=7)

    if len(front) and book_style is not None:
        _front_funnel(ax, front, book_style)
    elif len(front) > 1:
        ax.plot(front["memorization"], front["style"], color="0.25", lw=1, zorder=2,
                label="Pareto front")

    if n_hidden:
        ax.text(0.99, 0.01, f"{n_hidden} failed/pruned/unmeasured trial(s) not shown",
                transform=ax.transAxes, ha="right", va="bottom", fontsize="x-small",
                color="0.4")
    if log_memorization:
        # symlog: memorization can be exactly 0, which a pure log axis cannot show.
        ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel(LABELS["memorization"])
    ax.set_ylabel(LABELS["top100_ratio"])
    handles, names = ax.get_legend_handles_labels()
    if handles:
        # Below the axes: inside, a legend this long always hides some trials.
        fig.legend(handles, names, loc="outside lower center", ncol=3, fontsize="x-small",
                   frameon=False)
    return fig


def _front_funnel(ax: Axes, front: pd.DataFrame, book_style: float) -> None:
    """Draw the Pareto front as a funnel around the book's line.

    Style is closeness to the book's ratio, from either side, so in top100_ratio units the
    front zig-zags above and below the book line and a polyline through it misleads. The
    honest picture is a step function: d(m) = the smallest distance to the book reached by
    any front trial with memorization <= m, drawn as the band book +/- d(m). It narrows
    to the right: each step is what extra copying bought in closeness to the book.
    """
    xs = front["memorization"].to_numpy(float)
    dist = np.minimum.accumulate(np.abs(front["style"].to_numpy(float) - book_style))
    left, right = ax.get_xlim()
    xs_ext = np.append(xs, max(right, xs[-1]))
    d_ext = np.append(dist, dist[-1])
    ax.fill_between(xs_ext, book_style - d_ext, book_style + d_ext, step="post",
                    color="0.5", alpha=0.25, lw=0, zorder=1,
                    label="Pareto front: closest to the book's ratio\n"
                          "reached with this much copying or less")
    for sign in (1, -1):
        ax.step(xs_ext, book_style + sign * d_ext, where="post", color="0.45", lw=1,
                zorder=1)
    ax.set_xlim(left, right)  # the band must not widen the view


# --- hyperparameters vs objectives -----------------------------------------------------


@_styled
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
    fig = _figure((3.6 * n_cols + 1, 2.9 * n_rows + 0.6))
    # Shared axes: one x scale per hyperparameter column, one y scale per objective row,
    # so panels compare at a glance and only the outer ones need tick labels.
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex="col", sharey="row")
    fig.suptitle(title)
    color = sns.color_palette("colorblind")[0]
    rng = np.random.default_rng(0)  # fixed seed: the same study always draws the same figure

    for j, param in enumerate(params):
        x_all = (pd.to_numeric(df[param], errors="coerce") if param in df.columns
                 else pd.Series(np.nan, index=df.index, dtype=float))
        is_log = param == "lr"
        for i, obj in enumerate(objectives):
            ax = axes[i, j]
            y_all = (pd.to_numeric(df[obj], errors="coerce") if obj in df.columns
                     else pd.Series(np.nan, index=df.index, dtype=float))
            keep = np.isfinite(x_all) & np.isfinite(y_all)
            if is_log:
                keep &= x_all > 0
            x, y = x_all[keep].to_numpy(float), y_all[keep].to_numpy(float)
            if x.size:
                uniques = np.unique(x)
                if not is_log and 1 < uniques.size <= 12:
                    gap = float(np.min(np.diff(uniques)))
                    x = x + rng.uniform(-0.12, 0.12, size=x.size) * gap
                    ax.xaxis.set_major_locator(FixedLocator(uniques))
                    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.scatter(x, y, s=28, color=color, alpha=0.8, edgecolor="white", lw=0.5)
                if is_log:
                    ax.set_xscale("log")
                    # Learning rates usually span under two decades, where matplotlib
                    # labels minor ticks as overlapping 2x10^-5 strings; use 1e-05 style
                    # labels on 1-2-5 ticks instead.
                    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}"))
                    ax.xaxis.set_minor_formatter(NullFormatter())
            else:
                missing = [c for c in (param, obj) if c not in df.columns]
                _no_data(ax, f"no data ({', '.join(missing)} missing)" if missing
                         else "no data")
            book = _ref(refs, "book_top100_ratio")
            bound = _ref(refs, "memorization_bound")
            if obj == "top100_ratio" and book is not None:
                ax.axhline(book, color=_BOOK_COLOR, ls="--", lw=1,
                           label=f"book's own ratio ({book:.2f})")
            if obj == "memorization" and bound is not None:
                ax.axhline(bound, color=_SELECTED_COLOR, ls=":", lw=1.2,
                           label=f"pick's bound ({bound:.3f})")
            # Label and explain only the outer panels; inner ones mean the same.
            if j == 0 and ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize="x-small")
            if i == n_rows - 1:
                ax.set_xlabel(LABELS.get(param, param))
            if j == 0:
                ax.set_ylabel(SHORT_LABELS.get(obj, LABELS.get(obj, obj)))
    return fig


# --- n-gram novelty --------------------------------------------------------------------


@_styled
def novelty_curves(
    curves: Mapping[str, Mapping[int, float]],
    log_y: bool = False,
    title: str = "How much sampled text already exists in the training text, by n-gram length",
) -> Figure:
    """Share of sampled n-grams found verbatim in the training text, against n.

    ``curves`` maps a source name (e.g. "held-out book", "base model", "trial 3") to
    ``{n: share}`` for n in 1..16. Sources whose name contains "book" are drawn black and
    dashed and those containing "base" grey, as references; others get distinct colours.
    ``log_y`` puts the share on a log axis (zero shares are then left out). NaN shares
    are skipped.
    """
    fig = _figure((9, 5.5))
    ax = fig.subplots()
    palette = iter(sns.color_palette("colorblind"))
    all_n: set[int] = set()
    drawn = 0
    for name, curve in curves.items():
        pts = sorted((int(n), float(v)) for n, v in curve.items()
                     if _finite(n) and _finite(v) and float(n) > 0
                     and (not log_y or float(v) > 0))
        if not pts:
            continue
        ns, vs = zip(*pts)
        all_n.update(ns)
        lowered = name.lower()
        if "book" in lowered:
            style = dict(color=_BOOK_COLOR, ls="--", marker="s", lw=1.8)
        elif "base" in lowered:
            style = dict(color=_BASE_COLOR, ls="-.", marker="^", lw=1.6)
        else:
            style = dict(color=next(palette, None), ls="-", marker="o", lw=1.8)
        ax.plot(ns, vs, ms=5, label=name, **style)
        drawn += 1
    if not drawn:
        _no_data(ax, "no novelty measurements given")
    else:
        # n doubles in typical measurements (1, 2, 4, 8, 16), so a log2 axis spaces them
        # evenly; label the measured n's as plain integers.
        ax.set_xscale("log", base=2)
        measured = sorted(all_n)
        # With every n in 1..16 the log axis packs 9..16 tightly; label a readable subset
        # and keep a plain tick for the rest.
        labelled = measured if len(measured) <= 8 else [
            n for n in measured if n in {1, 2, 3, 4, 6, 8, 12, 16}]
        ax.xaxis.set_major_locator(FixedLocator(labelled or measured))
        ax.xaxis.set_minor_locator(FixedLocator(measured))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        if 8 in all_n:
            ax.axvline(8, color="0.6", ls=":", lw=1.2,
                       label="n = 8: the 'memorization' metric")
        ax.legend(title="text from", fontsize="small", loc="best")
    if log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("n-gram length n (tokens; log scale)")
    ax.set_ylabel("share of sampled n-grams found\nverbatim in training text (0-1)")
    ax.set_title(title)
    return fig


# --- saving ----------------------------------------------------------------------------


def save(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` as a PNG to ``path`` (parent folders created), close it, return the
    path. The figure must not be used afterwards."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=dpi, format="png", facecolor="white")
    finally:
        # Harmless for our pyplot-free figures, and frees a figure made via pyplot.
        plt.close(fig)
    return out
