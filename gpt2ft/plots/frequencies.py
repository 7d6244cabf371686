"""The token-frequency figure of a trial: how often the book's 100 most frequent tokens appear
in the book, in the base model's samples and in the fine-tuned model's, and each model's
frequency divided by the book's."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from gpt2ft.plots.prepare import positive_or_nan
from gpt2ft.plots.theme import BOOK_COLOR, new_figure, no_data, styled


def _token_label(label: str, max_len: int = 12) -> str:
    # repr() makes GPT-2's leading spaces and newlines visible: ' the' vs 'the' vs '\n'.
    text = repr(label)
    return text if len(text) <= max_len else text[: max_len - 1] + "…"


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
    ax.axhline(1.0, color=BOOK_COLOR, ls="--", lw=1, label="same frequency as book")
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


@styled
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
    fig = new_figure((12, 7.5))
    ax, ax_ratio = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    ax.set_title(title)
    if n == 0:
        no_data(ax, "no tokens given")
        ax.set_ylabel("relative frequency\n(share of all tokens)")
        ax_ratio.set_ylabel("model ÷ book")
        ax_ratio.set_xlabel("book rank of token (1 = most frequent in the book)")
        return fig
    ranks = np.arange(1, n + 1)
    book, base, tuned = (positive_or_nan(f) for f in (book_freq, base_freq, tuned_freq))
    _frequency_panel(ax, ranks, book, base, tuned)
    _ratio_panel(ax_ratio, ranks, book, base, tuned)
    _token_labels(ax, ax_ratio, labels, n_labelled)
    return fig
