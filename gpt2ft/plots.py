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
columns); nothing here re-derives the pick. The data-preparation helpers
(:func:`style_points`, :func:`trajectory_paths`, :func:`epoch_series`,
:func:`copying_onsets`) are pure and return frames/arrays, so they are tested apart from
the drawing.
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
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FixedLocator,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    NullLocator,
)

from gpt2ft.pick import state_name  # noqa: E402

__all__ = [
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
    "epoch": "epoch (passes over the training text; 0 = base model before fine-tuning)",
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
_CMAP = matplotlib.colormaps["viridis"]
_LR_LABEL = "learning rate (log colour scale)"
_NUMBER_LABEL = "trial number (order in the search)"


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


def _ref(references: Mapping[str, Any] | None, key: str) -> float | None:
    """A reference value if present and finite, else None (drawn only when known)."""
    value = (references or {}).get(key)
    return float(value) if _finite(value) else None


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    """Column ``col`` as floats; NaN where the value is not a number or the column is missing."""
    if col in df.columns:
        return pd.to_numeric(df[col], errors="coerce").astype(float)
    return pd.Series(np.nan, index=df.index, dtype=float)


def _flag(df: pd.DataFrame, col: str) -> pd.Series:
    """Column ``col`` as bools; False where missing or NaN (NaN would otherwise read True)."""
    if col not in df.columns:
        return pd.Series(False, index=df.index, dtype=bool)
    return df[col].where(df[col].notna(), False).astype(bool)


def _int_or_float(v: float) -> str:
    return f"{int(v)}" if float(v).is_integer() else f"{v:g}"


def _lr_text(v: float) -> str:
    """A learning rate as '2e-5' or '3.5e-5': short, and the exponent is what matters."""
    return np.format_float_scientific(v, precision=1, trim="-", exp_digits=1)


# --- colours shared by the trial figures ------------------------------------------------


def _lr_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks within [lo, hi]; the two ends when fewer than two such ticks fit."""
    ticks = [m * 10.0 ** k
             for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5)
             if lo * (1 - 1e-9) <= m * 10.0 ** k <= hi * (1 + 1e-9)]
    return ticks if len(ticks) >= 2 else sorted({lo, hi})


def _colour_scale(numbers: Sequence[float], lrs: Sequence[float]) -> tuple[np.ndarray, Normalize, str]:
    """Colour value per trial, its norm and the colour bar's label.

    Learning rate on a log norm when every trial has a positive finite one (the lr is what
    moves a trial along its path); otherwise the trial number, whose colour bar gets
    integer ticks.
    """
    lr = np.asarray(lrs, dtype=float)
    if lr.size and np.all(np.isfinite(lr) & (lr > 0)):
        lo, hi = float(lr.min()), float(lr.max())
        if lo == hi:  # one learning rate: widen so the colour bar has a range to show
            lo, hi = lo / 2, hi * 2
        return lr, LogNorm(lo, hi), _LR_LABEL
    num = np.nan_to_num(np.asarray(numbers, dtype=float))
    lo, hi = (float(num.min()), float(num.max())) if num.size else (0.0, 1.0)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return num, Normalize(lo, hi), _NUMBER_LABEL


def _colourbar(fig: Figure, axes: Axes | list[Axes], norm: Normalize, label: str) -> None:
    """Colour bar for ``norm``: learning-rate labels on a log norm, else integer ticks."""
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=_CMAP), ax=axes, pad=0.01)
    cbar.set_label(label)
    if isinstance(norm, LogNorm):
        ticks = _lr_ticks(norm.vmin, norm.vmax)
        cbar.set_ticks(ticks, labels=[_lr_text(t) for t in ticks])
        # Minor log ticks come labelled "2x10^-5" when lrs span under a decade.
        cbar.minorticks_off()
    else:
        # Trial numbers are integers: 2.5 would name a trial that does not exist.
        cbar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        cbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}"))


# --- loss curves -----------------------------------------------------------------------


def _lowest_text(step: float, loss: float, steps_per_epoch: int | None) -> str:
    """The annotation of the lowest held-out loss: loss, perplexity, step (and epoch)."""
    # exp() overflows past ~709 nats; a diverged run should still get its figure.
    ppl = f"{math.exp(loss):.1f}" if loss < 700 else "overflow"
    text = (f"lowest held-out loss {loss:.3f} nats/token\n"
            f"(perplexity {ppl}) at step {_int_or_float(step)}")
    if steps_per_epoch and steps_per_epoch > 0:
        text += f", epoch {step / steps_per_epoch:.2f}"
    return text


def _epoch_marks(ax: Axes, max_step: float, steps_per_epoch: int) -> None:
    """Dotted epoch boundaries and an epoch axis on top."""
    spe = float(steps_per_epoch)
    # Epoch boundaries help explain jumps: the train loss often drops as an epoch
    # starts re-reading text the model has already seen.
    for k in range(1, int(max_step // spe) + 1):
        ax.axvline(k * spe, color="0.6", ls=":", lw=1,
                   label="epoch boundary" if k == 1 else None)
    top = ax.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe))
    top.set_xlabel("epoch (passes over the training text)")


def _mark_lowest(ax: Axes, ho_x: np.ndarray, ho_y: np.ndarray, max_step: float,
                 steps_per_epoch: int | None) -> None:
    """Star and annotate the lowest held-out loss."""
    i = int(np.argmin(ho_y))
    best_step, best_loss = ho_x[i], ho_y[i]
    ax.scatter([best_step], [best_loss], s=160, marker="*", color=_SELECTED_COLOR,
               zorder=5, label="lowest held-out loss")
    # Put the label on whichever side has more room so it stays inside the axes.
    right_half = max_step > 0 and best_step > 0.6 * max_step
    ax.annotate(_lowest_text(best_step, best_loss, steps_per_epoch), (best_step, best_loss),
                xytext=(-15 if right_half else 15, 35), textcoords="offset points",
                ha="right" if right_half else "left", fontsize="small",
                arrowprops=dict(arrowstyle="->", color="0.3"),
                bbox=dict(boxstyle="round", fc="white", ec="0.7", alpha=0.9))


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
        _epoch_marks(ax, max_step, steps_per_epoch)
    if ho_x.size:
        _mark_lowest(ax, ho_x, ho_y, max_step, steps_per_epoch)
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


def _frequency_panel(ax: Axes, ranks: np.ndarray, book: np.ndarray, base: np.ndarray,
                     tuned: np.ndarray) -> None:
    """Book bars and the two models' frequencies, log y when anything is drawable."""
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


def _ratio_panel(ax: Axes, ranks: np.ndarray, book: np.ndarray, base: np.ndarray,
                 tuned: np.ndarray) -> None:
    """Each model's frequency divided by the book's (1 = same as the book)."""
    palette = sns.color_palette("colorblind")
    with np.errstate(divide="ignore", invalid="ignore"):
        base_ratio = base / book
        tuned_ratio = tuned / book
    ax.axhline(1.0, color=_BOOK_COLOR, ls="--", lw=1, label="same frequency as book")
    ax.plot(ranks, base_ratio, color=palette[7], marker="o", ms=3.5, lw=1, ls="--",
            label="before fine-tuning ÷ book")
    ax.plot(ranks, tuned_ratio, color=palette[3], marker="o", ms=3.5, lw=1.3,
            label="fine-tuned ÷ book")
    if np.isfinite(np.concatenate([base_ratio, tuned_ratio])).any():
        ax.set_yscale("log", base=2)
        # Plain numbers (0.5, 1, 2) read better than 2^-1, 2^0, 2^1.
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel("model ÷ book\n(log scale; 1 = same as book)")
    ax.set_xlabel("token, by book rank (1 = most frequent in the book)")
    ax.legend(loc="upper right", fontsize="small")


def _token_labels(ax: Axes, ax_ratio: Axes, labels: Sequence[str], n_labelled: int) -> None:
    """Token strings: the first ranks in a strip on top, every 10th rank as tick label."""
    n = len(labels)
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
    shown = sorted({1, *[r for r in range(1, n + 1) if r % 10 == 0]})
    ax_ratio.xaxis.set_major_locator(FixedLocator(shown))
    ax_ratio.xaxis.set_minor_locator(NullLocator())
    ax_ratio.set_xticklabels([f"{r}: {_token_label(labels[r - 1])}" for r in shown],
                             rotation=45, ha="right", rotation_mode="anchor",
                             fontsize="small")
    ax_ratio.set_xlim(0.3, n + 0.7)


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
    if {len(labels), len(book_freq), len(base_freq), len(tuned_freq)} != {n}:
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
    book, base, tuned = (_positive_or_nan(f) for f in (book_freq, base_freq, tuned_freq))
    _frequency_panel(ax, ranks, book, base, tuned)
    _ratio_panel(ax_ratio, ranks, book, base, tuned)
    _token_labels(ax, ax_ratio, labels, n_labelled)
    return fig


# --- style vs copying ------------------------------------------------------------------


def style_points(trials: pd.DataFrame | None) -> tuple[pd.DataFrame, int]:
    """The trials :func:`style_vs_copying` draws, and how many rows it leaves out.

    Returns a frame with columns ``number``, ``lr``, ``top100_ratio``, ``memorization``
    (floats) and ``on_front``, ``selected`` (bools; missing or NaN read False): the rows
    whose ``state`` is COMPLETE (any spelling :func:`gpt2ft.pick.state_name` accepts; a
    missing ``state`` column counts as COMPLETE) and whose two metrics are finite, sorted by
    memorization then number. This is display hygiene only: front and selection are taken
    from the table as given.
    """
    df = trials if trials is not None else pd.DataFrame()
    state = (df["state"].map(state_name) if "state" in df.columns
             else pd.Series("COMPLETE", index=df.index))
    points = pd.DataFrame({
        "number": _numeric(df, "number"),
        "lr": _numeric(df, "lr"),
        "top100_ratio": _numeric(df, "top100_ratio"),
        "memorization": _numeric(df, "memorization"),
        "on_front": _flag(df, "on_front"),
        "selected": _flag(df, "selected"),
    }, index=df.index)
    ok = ((state == "COMPLETE") & np.isfinite(points["top100_ratio"])
          & np.isfinite(points["memorization"]))
    shown = points[ok].sort_values(["memorization", "number"]).reset_index(drop=True)
    return shown, int((~ok).sum())


def trajectory_paths(
    trajectories: pd.DataFrame | None,
    points: pd.DataFrame,
    base: tuple[float, float] | None = None,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per trial of ``points`` (from :func:`style_points`) that has measurements in
    ``trajectories``: its path as (memorization array, top100_ratio array).

    The path follows the trial's measurements by epoch (then step), skipping those with a
    NaN metric, and always ends at the trial's final point in ``points`` (appended unless
    the last measurement equals it; re-measured finals usually differ a little). When the
    trial has no epoch-0 measurement and ``base`` = (memorization, top100_ratio) of the
    base model is given, the path starts there, since epoch 0 is the base model.
    """
    if trajectories is None or trajectories.empty or points.empty:
        return {}
    traj = pd.DataFrame({c: _numeric(trajectories, c) for c in
                         ("number", "epoch", "step", "memorization", "top100_ratio")})
    traj = traj[np.isfinite(traj["memorization"]) & np.isfinite(traj["top100_ratio"])]
    traj = traj.sort_values(["number", "epoch", "step"], na_position="last")
    paths: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for row in points.itertuples(index=False):
        rows = traj[traj["number"] == row.number]
        if rows.empty:
            continue
        xs, ys = rows["memorization"].tolist(), rows["top100_ratio"].tolist()
        if rows["epoch"].iloc[0] != 0 and base is not None:
            xs.insert(0, base[0])
            ys.insert(0, base[1])
        if (xs[-1], ys[-1]) != (row.memorization, row.top100_ratio):
            xs.append(row.memorization)
            ys.append(row.top100_ratio)
        paths[int(row.number)] = (np.asarray(xs), np.asarray(ys))
    return paths


def _draw_trials(fig: Figure, ax: Axes, points: pd.DataFrame,
                 trajectories: pd.DataFrame | None, base: tuple[float, float] | None) -> None:
    """Each trial's final point and, when measured by epoch, its path there; same colour."""
    values, norm, label = _colour_scale(points["number"], points["lr"])
    ax.scatter(points["memorization"], points["top100_ratio"], c=values, cmap=_CMAP,
               norm=norm, s=45, edgecolor="white", lw=0.6, zorder=3, label="trial (final)")
    if len(points) > 1:
        _colourbar(fig, ax, norm, label)
    colour = {int(n): _CMAP(norm(v)) for n, v in zip(points["number"], values) if _finite(n)}
    paths = trajectory_paths(trajectories, points, base)
    for i, (number, (xs, ys)) in enumerate(sorted(paths.items())):
        ax.plot(xs, ys, color=colour[number], lw=0.9, alpha=0.65, marker="o", ms=2.5,
                zorder=2, gid=f"trajectory-{number}",
                label="trial's path: base model → each epoch → final" if i == 0 else None)


def _memorization_lines(draw: Callable[..., Any], book_mem: float | None, bound: float | None) -> None:
    """The held-out book's memorization and the pick's bound, each only when known, drawn with
    ``draw`` (``ax.axvline`` where memorization is x, ``ax.axhline`` where it is y)."""
    if book_mem is not None:
        draw(book_mem, color=_BOOK_COLOR, ls="-.", lw=1.2, label=f"held-out book text vs training ({book_mem:.3f})")
    if bound is not None:
        draw(bound, color=_SELECTED_COLOR, ls=":", lw=1.5, label=f"memorization bound of the pick ({bound:.3f})")


def _reference_marks(ax: Axes, references: Mapping[str, Any]) -> None:
    """Book lines, the pick's bound and the base model, each only when known."""
    book_style = _ref(references, "book_top100_ratio")
    book_mem = _ref(references, "book_memorization")
    base_style = _ref(references, "base_top100_ratio")
    base_mem = _ref(references, "base_memorization")
    bound = _ref(references, "memorization_bound")
    if book_style is not None:
        ax.axhline(book_style, color=_BOOK_COLOR, ls="--", lw=1.2,
                   label=f"book's own top-100 ratio ({book_style:.3f})")
    _memorization_lines(ax.axvline, book_mem, bound)
    if base_style is not None and base_mem is not None:
        ax.scatter([base_mem], [base_style], marker="X", s=140, color=_BASE_COLOR,
                   edgecolor="black", zorder=4, label="base model before fine-tuning")


def _draw_front(ax: Axes, front: pd.DataFrame, book_style: float | None) -> None:
    """Ring the ``on_front`` trials; draw the front as a band around the book's ratio when
    that is known, else as a line through the front."""
    if front.empty:
        return
    ax.scatter(front["memorization"], front["top100_ratio"], s=150, facecolor="none",
               edgecolor="0.2", lw=1.2, zorder=4, label="Pareto-front trial (number)")
    for row in front.itertuples(index=False):
        ax.annotate(_int_or_float(row.number), (row.memorization, row.top100_ratio),
                    xytext=(7, -12), textcoords="offset points", fontsize="x-small",
                    color="0.2")
    if book_style is not None:
        _front_funnel(ax, front, book_style)
    elif len(front) > 1:
        ax.plot(front["memorization"], front["top100_ratio"], color="0.25", lw=1, zorder=2,
                label="Pareto front")


def _front_funnel(ax: Axes, front: pd.DataFrame, book_style: float) -> None:
    """Draw the Pareto front as a funnel around the book's line, labelled on the band.

    Style is closeness to the book's ratio, from either side, so in top100_ratio units the
    front zig-zags above and below the book line and a polyline through it misleads. The
    honest picture is a step function: d(m) = the smallest distance to the book reached by
    any front trial with memorization <= m, drawn as the band book +/- d(m). It narrows
    to the right: each step is what extra copying bought in closeness to the book.
    """
    xs = front["memorization"].to_numpy(float)
    dist = np.minimum.accumulate(np.abs(front["top100_ratio"].to_numpy(float) - book_style))
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
    # The legend is far from the band; say what it is where it is drawn, in its widest
    # (first) step, half-way between the book line and the upper edge.
    ax.annotate("Pareto band: closest to the book\nfor this much copying or less",
                (xs[0], book_style + dist[0] / 2), xytext=(4, 0), textcoords="offset points",
                ha="left", va="center", fontsize="x-small", color="0.25", zorder=2,
                gid="pareto-band-label", annotation_clip=True,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.6))
    ax.set_xlim(left, right)  # the band must not widen the view


def _chosen_points(points: pd.DataFrame, chosen: Mapping[str, Any] | None) -> list[tuple[float, float, str]]:
    """(memorization, top100_ratio, label) of the selected candidate: ``chosen`` (a point on its
    trial's path, often not its end) when given, else the rows flagged ``selected``."""
    if chosen is not None:
        x, y = float(chosen.get("memorization", np.nan)), float(chosen.get("top100_ratio", np.nan))
        if not (np.isfinite(x) and np.isfinite(y)):
            return []
        return [(x, y, f"selected: trial {_int_or_float(chosen.get('number'))}, epoch "
                       f"{float(chosen.get('epoch', np.nan)):.3g} (step {_int_or_float(chosen.get('step'))})")]
    return [(r.memorization, r.top100_ratio, f"selected: trial {_int_or_float(r.number)}")
            for r in points[points["selected"]].itertuples(index=False)]


def _mark_selected(ax: Axes, points: pd.DataFrame, chosen: Mapping[str, Any] | None = None) -> None:
    """Star and annotate the selected candidate, the label pointing into the axes.

    Call after the limits and scale are final: the label goes towards the axes' centre
    from where the point sits, so it cannot run into the title or out of the axes.
    """
    for x, y, text in _chosen_points(points, chosen):
        ax.scatter([x], [y], marker="*", s=420, color=_SELECTED_COLOR, edgecolor="black",
                   lw=0.8, zorder=6, label="selected trial")
        ax.get_xlim(), ax.get_ylim()  # settle autoscaling before reading the transform
        fx, fy = ax.transAxes.inverted().transform(ax.transData.transform((x, y)))
        dx, dy = (-18 if fx > 0.5 else 18), (-18 if fy > 0.5 else 18)
        ax.annotate(f"{text}\ntop-100 ratio {y:.3f}, memorization {x:.3f}",
                    (x, y), xytext=(dx, dy), textcoords="offset points", fontsize="small",
                    ha="right" if dx < 0 else "left", va="top" if dy < 0 else "bottom",
                    arrowprops=dict(arrowstyle="->", color="0.2"), gid="selected-label",
                    bbox=dict(boxstyle="round", fc="white", ec=_SELECTED_COLOR, alpha=0.95),
                    zorder=7)


@_styled
def style_vs_copying(
    trials: pd.DataFrame,
    references: Mapping[str, Any],
    trajectories: pd.DataFrame | None = None,
    log_memorization: bool = False,
    title: str = "Style vs copying: every fine-tuning trial",
    chosen: Mapping[str, Any] | None = None,
) -> Figure:
    """Scatter of each trial's style (``top100_ratio``, y) against its copying
    (``memorization``, x), optionally with each trial's path through the epochs.

    ``trials`` is the trial-summary table; read are ``number``, ``state``, ``lr``,
    ``top100_ratio``, ``memorization``, ``on_front`` and ``selected`` (see
    :func:`style_points`: rows that are not COMPLETE or lack a metric are counted in a
    note, not drawn). Points are coloured by learning rate (log colour bar) when every
    drawn trial has one, else by trial number (integer colour bar). ``references`` may
    hold ``book_top100_ratio``, ``book_memorization`` (dashed lines), ``base_top100_ratio``
    and ``base_memorization`` (base-model marker) and ``memorization_bound`` (dotted);
    missing/NaN ones are skipped. ``on_front`` trials are ringed and, with the book's
    ratio known, drawn as a labelled band book +/- (best distance reached at that
    memorization or less). Selected trials are starred and annotated "selected: trial N".
    ``trajectories`` (long format: ``number``, ``epoch``, ``step``, ``top100_ratio``,
    ``memorization``) adds a thin line per trial, base model -> each epoch -> final point,
    in the trial's colour (see :func:`trajectory_paths`). ``chosen`` (``number``, ``step``, ``epoch``,
    ``memorization``, ``top100_ratio`` of the selected candidate) puts the star on its point.
    """
    fig = _figure((10, 7.5))
    ax = fig.subplots()
    fig.suptitle(title)
    ax.set_title("closer to the book's dashed line = more book-like word use; "
                 "further right = more text copied verbatim from training",
                 fontsize="small", color="0.3")
    points, n_hidden = style_points(trials)
    base_mem, base_style = (_ref(references, "base_memorization"),
                            _ref(references, "base_top100_ratio"))
    base = (base_mem, base_style) if base_mem is not None and base_style is not None else None
    if len(points):
        _draw_trials(fig, ax, points, trajectories, base)
    else:
        _no_data(ax, "no completed trials with both metrics yet")
    _reference_marks(ax, references)
    if log_memorization:
        # symlog: memorization can be exactly 0, which a pure log axis cannot show. Before
        # the front: its band reads the x limits, which depend on the scale.
        ax.set_xscale("symlog", linthresh=0.01)
    _draw_front(ax, points[points["on_front"]], _ref(references, "book_top100_ratio"))
    _mark_selected(ax, points, chosen)
    if n_hidden:
        ax.text(0.99, 0.01, f"{n_hidden} failed/pruned/unmeasured trial(s) not shown",
                transform=ax.transAxes, ha="right", va="bottom", fontsize="x-small",
                color="0.4")
    ax.set_xlabel(LABELS["memorization"])
    ax.set_ylabel(LABELS["top100_ratio"])
    handles, names = ax.get_legend_handles_labels()
    if handles:
        # Below the axes: inside, a legend this long always hides some trials.
        fig.legend(handles, names, loc="outside lower center", ncol=3, fontsize="x-small",
                   frameon=False)
    return fig


# --- copying and held-out loss by epoch ------------------------------------------------


def epoch_series(trajectories: pd.DataFrame | None) -> pd.DataFrame:
    """The long trajectory table cleaned for per-epoch plots.

    Columns ``number``, ``lr``, ``epoch``, ``step``, ``memorization``, ``heldout_loss``
    (floats; missing columns read NaN); rows without a finite ``number`` or ``epoch`` are
    dropped, the rest sorted by number, epoch, step. NaN metrics are kept: each panel
    skips only its own missing values.
    """
    df = trajectories if trajectories is not None else pd.DataFrame()
    out = pd.DataFrame({c: _numeric(df, c) for c in
                        ("number", "lr", "epoch", "step", "memorization", "heldout_loss")})
    out = out[np.isfinite(out["number"]) & np.isfinite(out["epoch"])]
    return out.sort_values(["number", "epoch", "step"]).reset_index(drop=True)


def copying_onsets(series: pd.DataFrame, bound: float | None) -> dict[int, tuple[float, float]]:
    """Per trial of ``series`` (from :func:`epoch_series`): (epoch, memorization) of its
    first measurement with memorization strictly above ``bound``, i.e. the first one the
    pick would reject (its bound is inclusive). Trials that never cross get no entry; no
    bound, no onsets."""
    if bound is None or series.empty:
        return {}
    above = series[series["memorization"] > bound]
    first = above.groupby("number", sort=True).first()
    return {int(n): (float(r["epoch"]), float(r["memorization"])) for n, r in first.iterrows()}


def _epoch_lines(ax_mem: Axes, ax_loss: Axes, series: pd.DataFrame) -> tuple[Normalize, str]:
    """One memorization line and one held-out-loss line per trial, coloured by its lr."""
    lrs = series.groupby("number", sort=True)["lr"].first()  # first finite lr per trial
    values, norm, label = _colour_scale(lrs.index.to_numpy(float), lrs.to_numpy(float))
    for (number, rows), value in zip(series.groupby("number", sort=True), values):
        colour = _CMAP(norm(value))
        for ax, metric in ((ax_mem, "memorization"), (ax_loss, "heldout_loss")):
            ok = rows[np.isfinite(rows[metric])]
            if len(ok):
                ax.plot(ok["epoch"], ok[metric], color=colour, lw=1.3, marker="o", ms=3,
                        alpha=0.85, gid=f"{metric}-{int(number)}")
    return norm, label


@_styled
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
    fig = _figure((9, 7.5))
    ax_mem, ax_loss = fig.subplots(2, 1, sharex=True)
    fig.suptitle(title)
    series = epoch_series(trajectories)
    bound = _ref(references, "memorization_bound")
    book_mem = _ref(references, "book_memorization")
    if not series.empty:
        norm, label = _epoch_lines(ax_mem, ax_loss, series)
        _colourbar(fig, [ax_mem, ax_loss], norm, label)
        onsets = copying_onsets(series, bound)
        if onsets:
            xs, ys = zip(*onsets.values())
            ax_mem.scatter(xs, ys, marker="D", s=50, facecolor="none", edgecolor=_SELECTED_COLOR,
                           lw=1.4, zorder=5, label="copying onset (first epoch above the bound)")
    for ax, metric in ((ax_mem, "memorization"), (ax_loss, "heldout_loss")):
        if not ax.get_lines():
            _no_data(ax, f"no {metric} measured by epoch")
    _memorization_lines(ax_mem.axhline, book_mem, bound)
    loss_bound = _ref(references, "heldout_bound")
    if loss_bound is not None and np.isfinite(loss_bound):
        ax_loss.axhline(loss_bound, color=_SELECTED_COLOR, ls=":", lw=1.2,
                        label=f"pick's held-out bound ({loss_bound:.3f})")
    if chosen is not None:
        for ax, metric in ((ax_mem, "memorization"), (ax_loss, "heldout_loss")):
            x, y = float(chosen.get("epoch", np.nan)), float(chosen.get(metric, np.nan))
            if np.isfinite(x) and np.isfinite(y):
                ax.scatter([x], [y], marker="*", s=260, color=_SELECTED_COLOR, edgecolor="black", lw=0.8,
                           zorder=6, label="selected candidate")
    ax_mem.set_ylabel(LABELS["memorization"])
    ax_loss.set_ylabel(LABELS["heldout_loss"])
    ax_loss.set_xlabel(LABELS["epoch"])
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_mem, ax_loss):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize="x-small")
    return fig


# --- hyperparameters vs objectives -----------------------------------------------------


def _panel_xy(df: pd.DataFrame, param: str, obj: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite (param, objective) pairs; for ``lr`` (log axis) only positive ones."""
    x_all, y_all = _numeric(df, param), _numeric(df, obj)
    keep = np.isfinite(x_all) & np.isfinite(y_all)
    if param == "lr":
        keep &= x_all > 0
    return x_all[keep].to_numpy(float), y_all[keep].to_numpy(float)


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
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _lr_text(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _objective_refs(ax: Axes, obj: str, refs: Mapping[str, Any]) -> None:
    book = _ref(refs, "book_top100_ratio")
    bound = _ref(refs, "memorization_bound")
    if obj == "top100_ratio" and book is not None:
        ax.axhline(book, color=_BOOK_COLOR, ls="--", lw=1, label=f"book's own ratio ({book:.2f})")
    if obj == "memorization" and bound is not None:
        ax.axhline(bound, color=_SELECTED_COLOR, ls=":", lw=1.2, label=f"pick's bound ({bound:.3f})")


def _param_panel(ax: Axes, df: pd.DataFrame, param: str, obj: str,
                 rng: np.random.Generator) -> None:
    """One scatter of objective vs parameter, or a note saying what is missing."""
    x, y = _panel_xy(df, param, obj)
    if not x.size:
        missing = [c for c in (param, obj) if c not in df.columns]
        _no_data(ax, f"no data ({', '.join(missing)} missing)" if missing else "no data")
        return
    if param != "lr":
        x = _jitter(ax, x, rng)
    ax.scatter(x, y, s=28, color=sns.color_palette("colorblind")[0], alpha=0.8,
               edgecolor="white", lw=0.5)
    if param == "lr":
        _log_lr_axis(ax)


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


# --- n-gram novelty --------------------------------------------------------------------


def _novelty_points(curve: Mapping[int, float], log_y: bool) -> tuple[list[int], list[float]]:
    """(n's, shares) sorted by n; NaN, n <= 0 and (on a log axis) zero shares dropped."""
    pts = sorted((int(n), float(v)) for n, v in curve.items()
                 if _finite(n) and _finite(v) and float(n) > 0 and (not log_y or float(v) > 0))
    return [n for n, _ in pts], [v for _, v in pts]


def _novelty_style(name: str, palette: Any) -> dict[str, Any]:
    """References look like references: book black dashed, base grey; others in colour."""
    lowered = name.lower()
    if "book" in lowered:
        return dict(color=_BOOK_COLOR, ls="--", marker="s", lw=1.8)
    if "base" in lowered:
        return dict(color=_BASE_COLOR, ls="-.", marker="^", lw=1.6)
    return dict(color=next(palette, None), ls="-", marker="o", lw=1.8)


def _n_axis(ax: Axes, all_n: set[int]) -> None:
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
        ax.axvline(8, color="0.6", ls=":", lw=1.2, label="n = 8: the 'memorization' metric")


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
    for name, curve in curves.items():
        ns, vs = _novelty_points(curve, log_y)
        if ns:
            all_n.update(ns)
            ax.plot(ns, vs, ms=5, label=name, **_novelty_style(name, palette))
    if not all_n:
        _no_data(ax, "no novelty measurements given")
    else:
        _n_axis(ax, all_n)
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
