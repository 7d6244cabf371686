"""The style-vs-copying figure of a study: each trial's style (top-100 ratio) against its copying
(memorization), its path through the epochs, the book and base-model references, the Pareto
front as a band and the selected candidate starred."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gpt2ft.plots.prepare import finite, ref, style_points, trajectory_paths
from gpt2ft.plots.theme import (BASE_COLOR, BOOK_COLOR, CMAP, LABELS, SELECTED_COLOR, colour_scale, colourbar,
                                int_or_float, memorization_lines, new_figure, no_data, styled)


def _draw_trials(fig: Figure, ax: Axes, points: pd.DataFrame,
                 trajectories: pd.DataFrame | None, base: tuple[float, float] | None) -> None:
    """Each trial's final point and, when measured by epoch, its path there; same colour."""
    values, norm, label = colour_scale(points["number"], points["lr"])
    ax.scatter(points["memorization"], points["top100_ratio"], c=values, cmap=CMAP,
               norm=norm, s=45, edgecolor="white", lw=0.6, zorder=3, label="trial (final)")
    if len(points) > 1:
        colourbar(fig, ax, norm, label)
    colour = {int(n): CMAP(norm(v)) for n, v in zip(points["number"], values) if finite(n)}
    paths = trajectory_paths(trajectories, points, base)
    for i, (number, (xs, ys)) in enumerate(sorted(paths.items())):
        ax.plot(xs, ys, color=colour[number], lw=0.9, alpha=0.65, marker="o", ms=2.5,
                zorder=2, gid=f"trajectory-{number}",
                label="trial's path: base model → each epoch → final" if i == 0 else None)


def _reference_marks(ax: Axes, references: Mapping[str, Any]) -> None:
    """Book lines, the pick's bound and the base model, each only when known."""
    book_style = ref(references, "book_top100_ratio")
    book_mem = ref(references, "book_memorization")
    base_style = ref(references, "base_top100_ratio")
    base_mem = ref(references, "base_memorization")
    bound = ref(references, "memorization_bound")
    if book_style is not None:
        ax.axhline(book_style, color=BOOK_COLOR, ls="--", lw=1.2,
                   label=f"book's own top-100 ratio ({book_style:.3f})")
    memorization_lines(ax.axvline, book_mem, bound)
    if base_style is not None and base_mem is not None:
        ax.scatter([base_mem], [base_style], marker="X", s=140, color=BASE_COLOR,
                   edgecolor="black", zorder=4, label="base model before fine-tuning")


def _draw_front(ax: Axes, front: pd.DataFrame, book_style: float | None) -> None:
    """Ring the ``on_front`` trials; draw the front as a band around the book's ratio when
    that is known, else as a line through the front."""
    if front.empty:
        return
    ax.scatter(front["memorization"], front["top100_ratio"], s=150, facecolor="none",
               edgecolor="0.2", lw=1.2, zorder=4, label="Pareto-front trial (number)")
    for row in front.itertuples(index=False):
        ax.annotate(int_or_float(row.number), (row.memorization, row.top100_ratio),
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
        return [(x, y, f"selected: trial {int_or_float(chosen.get('number'))}, epoch "
                       f"{float(chosen.get('epoch', np.nan)):.3g} (step {int_or_float(chosen.get('step'))})")]
    return [(r.memorization, r.top100_ratio, f"selected: trial {int_or_float(r.number)}")
            for r in points[points["selected"]].itertuples(index=False)]


def _mark_selected(ax: Axes, points: pd.DataFrame, chosen: Mapping[str, Any] | None = None) -> None:
    """Star and annotate the selected candidate, the label pointing into the axes.

    Call after the limits and scale are final: the label goes towards the axes' centre
    from where the point sits, so it cannot run into the title or out of the axes.
    """
    for x, y, text in _chosen_points(points, chosen):
        ax.scatter([x], [y], marker="*", s=420, color=SELECTED_COLOR, edgecolor="black",
                   lw=0.8, zorder=6, label="selected trial")
        ax.get_xlim(), ax.get_ylim()  # settle autoscaling before reading the transform
        fx, fy = ax.transAxes.inverted().transform(ax.transData.transform((x, y)))
        dx, dy = (-18 if fx > 0.5 else 18), (-18 if fy > 0.5 else 18)
        ax.annotate(f"{text}\ntop-100 ratio {y:.3f}, memorization {x:.3f}",
                    (x, y), xytext=(dx, dy), textcoords="offset points", fontsize="small",
                    ha="right" if dx < 0 else "left", va="top" if dy < 0 else "bottom",
                    arrowprops=dict(arrowstyle="->", color="0.2"), gid="selected-label",
                    bbox=dict(boxstyle="round", fc="white", ec=SELECTED_COLOR, alpha=0.95),
                    zorder=7)


@styled
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
    fig = new_figure((10, 7.5))
    ax = fig.subplots()
    fig.suptitle(title)
    ax.set_title("closer to the book's dashed line = more book-like word use; "
                 "further right = more text copied verbatim from training",
                 fontsize="small", color="0.3")
    points, n_hidden = style_points(trials)
    base_mem, base_style = (ref(references, "base_memorization"),
                            ref(references, "base_top100_ratio"))
    base = (base_mem, base_style) if base_mem is not None and base_style is not None else None
    if len(points):
        _draw_trials(fig, ax, points, trajectories, base)
    else:
        no_data(ax, "no completed trials with both metrics yet")
    _reference_marks(ax, references)
    if log_memorization:
        # symlog: memorization can be exactly 0, which a pure log axis cannot show. Before
        # the front: its band reads the x limits, which depend on the scale.
        ax.set_xscale("symlog", linthresh=0.01)
    _draw_front(ax, points[points["on_front"]], ref(references, "book_top100_ratio"))
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
