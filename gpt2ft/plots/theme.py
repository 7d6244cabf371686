"""The look every figure shares, in one place: the headless backend, seaborn's style
(:func:`styled`), the colours, the axis labels, the colour scale of the trial figures, and how a
figure is made (:func:`new_figure`) and saved (:func:`save`).

A metric reads the same in every figure because its label is written here once; the book, the
base model and the selected candidate have the same colour in every figure for the same reason.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import matplotlib

# Training hosts are headless; Agg renders PNGs without a display. Set before pyplot loads.
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

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
    "discoverable_rate": "(n, p)-discoverable rate under the sampler (share of prompts)",
    "near_verbatim": "near-verbatim (share of sampled word 8-grams in training)",
    "mia_auc": "membership AUC (0.5 = cannot tell training from held-out)",
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

# The book, the base model and the selected candidate look the same in every figure;
# trials take their colour from CMAP.
BOOK_COLOR = "black"
BASE_COLOR = "0.45"
SELECTED_COLOR = "#d62728"
CMAP = matplotlib.colormaps["viridis"]
_LR_LABEL = "learning rate (log colour scale)"
_NUMBER_LABEL = "trial number (order in the search)"


def styled(func: F) -> F:
    """Run a plotting function under seaborn's whitegrid/notebook style without touching
    the caller's global rcParams (``sns.set_theme`` would change every later figure)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def new_figure(figsize: tuple[float, float]) -> Figure:
    # constrained layout keeps long axis labels, colorbars and legends from overlapping.
    return Figure(figsize=figsize, layout="constrained")


def no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center",
            color="0.4", fontsize="medium", wrap=True)


def int_or_float(v: float) -> str:
    return f"{int(v)}" if float(v).is_integer() else f"{v:g}"


def lr_text(v: float) -> str:
    """A learning rate as '2e-5' or '3.5e-5': short, and the exponent is what matters."""
    return np.format_float_scientific(v, precision=1, trim="-", exp_digits=1)


def _lr_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks within [lo, hi]; the two ends when fewer than two such ticks fit."""
    ticks = [m * 10.0 ** k
             for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5)
             if lo * (1 - 1e-9) <= m * 10.0 ** k <= hi * (1 + 1e-9)]
    return ticks if len(ticks) >= 2 else sorted({lo, hi})


def colour_scale(numbers: Sequence[float], lrs: Sequence[float]) -> tuple[np.ndarray, Normalize, str]:
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


def colourbar(fig: Figure, axes: Axes | list[Axes], norm: Normalize, label: str) -> None:
    """Colour bar for ``norm``: learning-rate labels on a log norm, else integer ticks."""
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), ax=axes, pad=0.01)
    cbar.set_label(label)
    if isinstance(norm, LogNorm):
        ticks = _lr_ticks(norm.vmin, norm.vmax)
        cbar.set_ticks(ticks, labels=[lr_text(t) for t in ticks])
        # Minor log ticks come labelled "2x10^-5" when lrs span under a decade.
        cbar.minorticks_off()
    else:
        # Trial numbers are integers: 2.5 would name a trial that does not exist.
        cbar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        cbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}"))


def memorization_lines(draw: Callable[..., Any], book_mem: float | None, bound: float | None) -> None:
    """The held-out book's memorization and the pick's bound, each only when known, drawn with
    ``draw`` (``ax.axvline`` where memorization is x, ``ax.axhline`` where it is y)."""
    if book_mem is not None:
        draw(book_mem, color=BOOK_COLOR, ls="-.", lw=1.2, label=f"held-out book text vs training ({book_mem:.3f})")
    if bound is not None:
        draw(bound, color=SELECTED_COLOR, ls=":", lw=1.5, label=f"memorization bound of the pick ({bound:.3f})")


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
