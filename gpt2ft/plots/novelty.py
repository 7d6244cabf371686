"""The n-gram novelty figure: the share of sampled n-grams found verbatim in the training text,
against n, for the fine-tuned model and its references (the held-out book, the base model)."""
from __future__ import annotations

from typing import Any, Mapping

import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from gpt2ft.plots.prepare import novelty_points
from gpt2ft.plots.theme import BASE_COLOR, BOOK_COLOR, new_figure, no_data, styled


def _novelty_style(name: str, palette: Any) -> dict[str, Any]:
    """References look like references: book black dashed, base grey; others in colour."""
    lowered = name.lower()
    if "book" in lowered:
        return dict(color=BOOK_COLOR, ls="--", marker="s", lw=1.8)
    if "base" in lowered:
        return dict(color=BASE_COLOR, ls="-.", marker="^", lw=1.6)
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


@styled
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
    fig = new_figure((9, 5.5))
    ax = fig.subplots()
    palette = iter(sns.color_palette("colorblind"))
    all_n: set[int] = set()
    for name, curve in curves.items():
        ns, vs = novelty_points(curve, log_y)
        if ns:
            all_n.update(ns)
            ax.plot(ns, vs, ms=5, label=name, **_novelty_style(name, palette))
    if not all_n:
        no_data(ax, "no novelty measurements given")
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
