"""The style-vs-copying figure of a study: each trial's style (top-100 ratio) against its copying
(memorization), its path through the epochs, the book and base-model references, the Pareto
front as a band and the selected candidate starred.

Memorization is drawn on matplotlib's ``symlog`` scale as
:class:`~gpt2ft.plots.prepare.CopyingAxis` sets it: exactly zero in a band of its own, where each
trial has a slot so clean paths stand apart, and copying on a log scale beside it. adjustText moves
the labels off the points, and the legend sits below the axes."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
from adjustText import adjust_text, get_bboxes_pathcollection
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from gpt2ft.plots.prepare import CopyingAxis, finite, ref, style_points, trajectory_paths
from gpt2ft.plots.theme import (BASE_COLOR, BOOK_COLOR, CMAP, LABELS, SELECTED_COLOR, colour_scale, colourbar,
                                int_or_float, memorization_lines, new_figure, no_data, styled)

#: adjustText's iterations: a fixed count, not its default time limit (1 s), so a figure is the same
#: on a fast or a busy machine.
_ITERATIONS = 200


class _Slots:
    """Each drawn trial's slot in the zero band (by trial number) and the dodge it implies."""

    def __init__(self, axis: CopyingAxis, numbers: pd.Series) -> None:
        self.axis = axis
        self.slot = {int(n): i for i, n in enumerate(sorted(int(n) for n in numbers if finite(n)))}

    def x(self, number: Any, m: Any) -> np.ndarray:
        slot = self.slot.get(int(number), 0) if finite(number) else 0
        return self.axis.dodged(m, slot, len(self.slot))


def _draw_trials(fig: Figure, ax: Axes, points: pd.DataFrame, trajectories: pd.DataFrame | None,
                 base: tuple[float, float] | None, slots: _Slots) -> None:
    """Each trial's final point and, when measured by epoch, its path there; same colour."""
    values, norm, label = colour_scale(points["number"], points["lr"])
    xs = [float(slots.x(n, m)) for n, m in zip(points["number"], points["memorization"])]
    ax.scatter(xs, points["top100_ratio"], c=values, cmap=CMAP,
               norm=norm, s=45, edgecolor="white", lw=0.6, zorder=3, label="trial (final)")
    if len(points) > 1:
        colourbar(fig, ax, norm, label)
    colour = {int(n): CMAP(norm(v)) for n, v in zip(points["number"], values) if finite(n)}
    paths = trajectory_paths(trajectories, points, base)
    # Each way of training gets its own line style (full fine-tuning solid, the goldfish loss
    # dashed, each LoRA rank dotted or dash-dotted), so the methods' paths read apart.
    kinds = {int(n): path_kind(k, r) for n, k, r in zip(points["number"], points["goldfish_k"], points["lora_r"])
             if finite(n)}
    labelled = set()
    for number, (path_x, ys) in sorted(paths.items()):
        kind = kinds.get(number, PLAIN)
        label = None if kind in labelled else kind[0]
        labelled.add(kind)
        ax.plot(slots.x(number, path_x), ys, color=colour[number], lw=0.9, alpha=0.65, marker="o", ms=2.5,
                ls=kind[1], zorder=2, gid=f"trajectory-{number}", label=label)


#: (legend label, line style) of a full fine-tuning trial's path.
PLAIN = ("trial's path: base model → each epoch → final", "-")


def path_kind(goldfish_k: float, lora_r: float) -> tuple[str, Any]:
    """How a trial's path is drawn: by its method (LoRA's rank first), then its loss."""
    if finite(lora_r) and lora_r > 0:
        low = lora_r <= 16  # the demo's ranks 8 and 64 apart; a study of other ranks still reads LoRA
        return f"LoRA rank {int(lora_r)} trial's path ({'dotted' if low else 'dash-dotted'})", ":" if low else "-."
    if finite(goldfish_k) and goldfish_k > 0:
        return "goldfish-loss trial's path (dashed)", "--"
    return PLAIN


def _reference_marks(ax: Axes, references: Mapping[str, Any], axis: CopyingAxis) -> None:
    """Book lines, the pick's bound and the base model, each only when known."""
    book_style = ref(references, "book_top100_ratio")
    base_style = ref(references, "base_top100_ratio")
    base_mem = ref(references, "base_memorization")
    if book_style is not None:
        ax.axhline(book_style, color=BOOK_COLOR, ls="--", lw=1.2,
                   label=f"book's own top-100 ratio ({book_style:.3f})")
    memorization_lines(ax.axvline, ref(references, "book_memorization"), ref(references, "memorization_bound"))
    if base_style is not None and base_mem is not None:
        ax.scatter([axis.zero if base_mem == 0 else base_mem], [base_style], marker="X", s=140,
                   color=BASE_COLOR, edgecolor="black", zorder=4, label="base model before fine-tuning")


def _draw_front(ax: Axes, front: pd.DataFrame, book_style: float | None, slots: _Slots) -> None:
    """Ring the ``on_front`` trials; draw the front as a band around the book's ratio when
    that is known, else as a line through the front."""
    if front.empty:
        return
    xs = np.array([float(slots.x(n, m)) for n, m in zip(front["number"], front["memorization"])])
    ax.scatter(xs, front["top100_ratio"], s=150, facecolor="none",
               edgecolor="0.2", lw=1.2, zorder=4, label="Pareto-front trial (number)")
    for x, row in zip(xs, front.itertuples(index=False)):
        ax.text(x, row.top100_ratio, int_or_float(row.number), fontsize="x-small", color="0.2", gid="front-label")
    if book_style is not None:
        _front_funnel(ax, front, book_style)
    elif len(front) > 1:
        ax.plot(xs, front["top100_ratio"], color="0.25", lw=1, zorder=2, label="Pareto front")


def _front_funnel(ax: Axes, front: pd.DataFrame, book_style: float) -> None:
    """Draw the Pareto front as a funnel around the book's line.

    Style is closeness to the book's ratio, from either side, so in top100_ratio units the
    front zig-zags above and below the book line and a polyline through it misleads. The
    honest picture is a step function: d(m) = the smallest distance to the book reached by
    any front trial with memorization <= m, drawn as the band book +/- d(m). It narrows
    to the right: each step is what extra copying bought in closeness to the book. The band
    starts at the axis' left edge: a front trial that copies nothing covers the whole zero band.
    """
    left, right = ax.get_xlim()
    mem = front["memorization"].to_numpy(float)
    xs = np.where(mem == 0, left, mem)
    dist = np.minimum.accumulate(np.abs(front["top100_ratio"].to_numpy(float) - book_style))
    xs_ext = np.append(xs, max(right, xs[-1]))
    d_ext = np.append(dist, dist[-1])
    ax.fill_between(xs_ext, book_style - d_ext, book_style + d_ext, step="post",
                    color="0.5", alpha=0.25, lw=0, zorder=1,
                    label="Pareto front: closest to the book's ratio\n"
                          "reached with this much copying or less")
    for sign in (1, -1):
        ax.step(xs_ext, book_style + sign * d_ext, where="post", color="0.45", lw=1, zorder=1)
    ax.set_xlim(left, right)  # the band must not widen the view


def _chosen_points(points: pd.DataFrame, chosen: Mapping[str, Any] | None,
                   slots: _Slots) -> list[tuple[float, float, float, str]]:
    """(x, memorization, top100_ratio, label) of the selected candidate: ``chosen`` (a point on
    its trial's path, often not its end) when given, else the rows flagged ``selected``."""
    if chosen is not None:
        x, y = float(chosen.get("memorization", np.nan)), float(chosen.get("top100_ratio", np.nan))
        if not (np.isfinite(x) and np.isfinite(y)):
            return []
        return [(float(slots.x(chosen.get("number"), x)), x, y,
                 f"selected: trial {int_or_float(chosen.get('number'))}, epoch "
                 f"{float(chosen.get('epoch', np.nan)):.3g} (step {int_or_float(chosen.get('step'))})")]
    return [(float(slots.x(r.number, r.memorization)), r.memorization, r.top100_ratio,
             f"selected: trial {int_or_float(r.number)}")
            for r in points[points["selected"]].itertuples(index=False)]


#: The judges besides memorization (the x axis) whose objections the figure marks: metric -> bound key.
_OTHER_JUDGES = {"near_verbatim": "near_verbatim_bound", "extractable_rate": "extraction_bound",
                 "discoverable_rate": "discoverable_bound", "mia_auc": "membership_bound",
                 "heldout_loss": "heldout_bound"}


def _mark_copying(ax: Axes, trajectories: pd.DataFrame | None, references: Mapping[str, Any], slots: _Slots) -> None:
    """A red cross on every measured point another judge of copying objects to: the figure's x axis
    is sampled memorization alone, and extraction, near-verbatim copies, membership or the held-out
    loss often see copying first."""
    if trajectories is None or trajectories.empty or "memorization" not in trajectories:
        return
    over = pd.Series(False, index=trajectories.index)
    for metric, key in _OTHER_JUDGES.items():
        bound = ref(references, key)
        if metric in trajectories and bound is not None and np.isfinite(bound):
            over |= pd.to_numeric(trajectories[metric], errors="coerce") > bound
    hit = trajectories[over & trajectories["memorization"].map(finite) & trajectories["top100_ratio"].map(finite)]
    if len(hit):
        xs = [float(slots.x(n, m)) for n, m in zip(hit["number"], hit["memorization"])]
        ax.scatter(xs, hit["top100_ratio"], marker="x", s=40, color="#c0392b", lw=1.2, zorder=5,
                   label="another judge of copying objects")


def _mark_selected(ax: Axes, points: pd.DataFrame, chosen: Mapping[str, Any] | None, slots: _Slots) -> None:
    """Star and annotate the selected candidate (placed later, by :func:`_place_labels`)."""
    for x, mem, y, text in _chosen_points(points, chosen, slots):
        ax.scatter([x], [y], marker="*", s=420, color=SELECTED_COLOR, edgecolor="black",
                   lw=0.8, zorder=6, label="selected trial")
        evidence = ", ".join(f"{short} {float(chosen[k]):.3g}" for k, short in (
            ("near_verbatim", "near-verbatim"), ("discoverable_rate", "discoverable"), ("mia_auc", "membership AUC"))
            if chosen is not None and finite(chosen.get(k)))
        ax.text(x, y, f"{text}\ntop-100 ratio {y:.3f}, memorization {mem:.3g}" + (f"\n{evidence}" if evidence else ""),
                fontsize="small", gid="selected-label", zorder=7,
                bbox=dict(boxstyle="round", fc="white", ec=SELECTED_COLOR, alpha=0.95))


def _place_labels(fig: Figure, ax: Axes) -> None:
    """Move the labels (written on their points) off every marker, path vertex and other label,
    inside the axes, with an arrow back to the point when they moved far (adjustText)."""
    labels = [t for t in ax.texts if t.get_gid() in ("selected-label", "front-label")]
    if not labels:
        return
    for label in labels:
        label.set_in_layout(False)  # the constrained layout must not move the axes under them
    FigureCanvasAgg(fig)  # adjustText measures with the canvas' renderer
    fig.draw_without_rendering()  # the constrained layout settles the axes first
    markers = [c for c in ax.collections if isinstance(c, PathCollection)]
    xy = [c.get_offsets() for c in markers] + [line.get_xydata() for line in ax.get_lines()
                                               if (line.get_gid() or "").startswith("trajectory-")]
    xy = np.concatenate([np.asarray(a, dtype=float).reshape(-1, 2) for a in xy] + [np.empty((0, 2))])
    # Each marker's own extent too (the star is 20 points wide), and a stronger first push and wider
    # boxes than adjustText's defaults: with those, its labels hid the star's tip and stuck on a crowd.
    boxes = [b for c in markers for b in get_bboxes_pathcollection(c, ax)]
    adjust_text(labels, x=xy[:, 0], y=xy[:, 1], objects=boxes, ax=ax, iter_lim=_ITERATIONS,
                force_explode=(1, 2), expand=(1.3, 1.6), arrowprops=dict(arrowstyle="->", color="0.2", lw=0.8))


def _copying_axis(ax: Axes, points: pd.DataFrame, trajectories: pd.DataFrame | None,
                  references: Mapping[str, Any]) -> CopyingAxis:
    """The broken memorization axis for these points and references, set on ``ax``."""
    values = list(points["memorization"])
    if trajectories is not None and "memorization" in trajectories:
        values += list(pd.to_numeric(trajectories["memorization"], errors="coerce"))
    values += [references.get(k) for k in ("book_memorization", "base_memorization", "memorization_bound")]
    axis = CopyingAxis(values)
    ax.set_xscale("symlog", **axis.scale)
    high = max([float(v) for v in values if finite(v)] + [axis.unit * 10])
    ax.set_xticks(*axis.ticks(high))
    ax.xaxis.set_minor_locator(NullLocator())  # symlog's minor ticks would fill the zero band
    ax.set_xlim(-0.9 * axis.unit, float(10 ** (np.log10(high) + 0.15)))
    ax.axvspan(-0.85 * axis.unit, 0, color="0.92", zorder=0, lw=0)
    return axis


@styled
def style_vs_copying(
    trials: pd.DataFrame,
    references: Mapping[str, Any],
    trajectories: pd.DataFrame | None = None,
    title: str = "Style vs copying: every fine-tuning trial",
    chosen: Mapping[str, Any] | None = None,
) -> Figure:
    """Scatter of each trial's style (``top100_ratio``, y) against its copying
    (``memorization``, x, on the broken axis of :class:`CopyingAxis`), optionally with each
    trial's path through the epochs.

    ``trials`` is the trial-summary table; read are ``number``, ``state``, ``lr``,
    ``top100_ratio``, ``memorization``, ``on_front`` and ``selected`` (see
    :func:`style_points`: rows that are not COMPLETE or lack a metric are counted in a
    note, not drawn). Points are coloured by learning rate (log colour bar) when every
    drawn trial has one, else by trial number (integer colour bar). ``references`` may
    hold ``book_top100_ratio``, ``book_memorization`` (dashed lines), ``base_top100_ratio``
    and ``base_memorization`` (base-model marker) and ``memorization_bound`` (dotted);
    missing/NaN ones are skipped. ``on_front`` trials are ringed and, with the book's
    ratio known, drawn as a band book +/- (best distance reached at that memorization or
    less). Selected trials are starred and annotated "selected: trial N".
    ``trajectories`` (long format: ``number``, ``epoch``, ``step``, ``top100_ratio``,
    ``memorization``) adds a thin line per trial, base model -> each epoch -> final point,
    in the trial's colour (see :func:`trajectory_paths`). ``chosen`` (``number``, ``step``, ``epoch``,
    ``memorization``, ``top100_ratio`` of the selected candidate) puts the star on its point.
    """
    fig = new_figure((10, 7))
    ax = fig.subplots()
    fig.suptitle(title)
    ax.set_title("closer to the book's dashed line = more book-like word use; "
                 "further right = more text copied verbatim from training (log scale; 0 apart)",
                 fontsize="small", color="0.3")
    points, n_hidden = style_points(trials)
    axis = _copying_axis(ax, points, trajectories, references)
    slots = _Slots(axis, points["number"])
    base_mem, base_style = ref(references, "base_memorization"), ref(references, "base_top100_ratio")
    base = (base_mem, base_style) if base_mem is not None and base_style is not None else None
    if len(points):
        _draw_trials(fig, ax, points, trajectories, base, slots)
    else:
        no_data(ax, "no completed trials with both metrics yet")
    _reference_marks(ax, references, axis)
    _draw_front(ax, points[points["on_front"]], ref(references, "book_top100_ratio"), slots)
    _mark_copying(ax, trajectories, references, slots)
    _mark_selected(ax, points, chosen, slots)
    if n_hidden:
        ax.text(0.99, 0.01, f"{n_hidden} failed/pruned/unmeasured trial(s) not shown",
                transform=ax.transAxes, ha="right", va="bottom", fontsize="x-small", color="0.4")
    ax.set_xlabel(LABELS["memorization"])
    ax.set_ylabel(LABELS["top100_ratio"])
    handles, names = ax.get_legend_handles_labels()
    if handles:
        # Below the axes, four to a row: inside, a legend this long always hides some trials.
        fig.legend(handles, names, loc="outside lower center", ncol=4, fontsize="x-small", frameon=False)
    _place_labels(fig, ax)
    return fig
