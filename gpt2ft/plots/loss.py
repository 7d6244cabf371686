"""The loss-curves figure of a trial: train and held-out loss against optimizer step, with
epoch boundaries and the lowest held-out loss marked."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gpt2ft.plots.prepare import sorted_pairs
from gpt2ft.plots.theme import SELECTED_COLOR, int_or_float, new_figure, no_data, styled


def _lowest_text(step: float, loss: float, steps_per_epoch: int | None) -> str:
    """The annotation of the lowest held-out loss: loss, perplexity, step (and epoch)."""
    # exp() overflows past ~709 nats; a diverged run should still get its figure.
    ppl = f"{math.exp(loss):.1f}" if loss < 700 else "overflow"
    text = (f"lowest held-out loss {loss:.3f} nats/token\n"
            f"(perplexity {ppl}) at step {int_or_float(step)}")
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
    ax.scatter([best_step], [best_loss], s=160, marker="*", color=SELECTED_COLOR,
               zorder=5, label="lowest held-out loss")
    # Put the label on whichever side has more room so it stays inside the axes.
    right_half = max_step > 0 and best_step > 0.6 * max_step
    ax.annotate(_lowest_text(best_step, best_loss, steps_per_epoch), (best_step, best_loss),
                xytext=(-15 if right_half else 15, 35), textcoords="offset points",
                ha="right" if right_half else "left", fontsize="small",
                arrowprops=dict(arrowstyle="->", color="0.3"),
                bbox=dict(boxstyle="round", fc="white", ec="0.7", alpha=0.9))


@styled
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
    fig = new_figure((9, 5))
    ax = fig.subplots()
    tr_x, tr_y = sorted_pairs(train)
    ho_x, ho_y = sorted_pairs(heldout)
    palette = sns.color_palette("colorblind")
    if tr_x.size:
        ax.plot(tr_x, tr_y, color=palette[0], lw=1.3, alpha=0.85, label="train loss")
    if ho_x.size:
        ax.plot(ho_x, ho_y, color=palette[1], lw=2, marker="o", ms=4,
                label="held-out loss (book text not trained on)")
    if not tr_x.size and not ho_x.size:
        no_data(ax, "no loss values recorded")
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
