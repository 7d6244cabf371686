"""Rendering tests for gpt2ft.plots: every figure draws from small fake data, saves a real
PNG, labels its axes, and survives empty tables and NaN values. The fake trial table and
trajectories follow the trial-summary contract (gpt2ft.summary)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.scale import SymmetricalLogScale
from matplotlib.text import Text

from gpt2ft import plots

NAN = float("nan")

REFS = {
    "book_top100_ratio": 0.56,
    "book_memorization": 0.01,
    "base_top100_ratio": 0.49,
    "base_memorization": 0.004,
    "memorization_bound": 0.03,
}


def saved_ok(fig: Figure, path: Path) -> None:
    out = plots.save(fig, path)
    assert out == path and path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5_000  # an actual picture, not an empty canvas


def main_axes(fig: Figure) -> list:
    # Colorbars and secondary (epoch) axes are axes too; the checks below are about plots.
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.get_navigate()]


def all_text(fig: Figure) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)


def trials_table() -> pd.DataFrame:
    return pd.DataFrame({
        "number": [0, 1, 2, 3, 4, 5],
        "state": ["COMPLETE", "COMPLETE", "COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"],
        "lr": [1e-5, 3e-5, 1e-4, 2e-5, 5e-5, 2e-4],
        "top100_ratio": [0.50, 0.55, 0.61, NAN, 0.57, 0.58],
        "memorization": [0.002, 0.02, 0.15, 0.01, 0.025, 0.3],
        "on_front": [True, True, False, False, True, False],
        "selected": [False, False, False, False, True, False],
    })


@pytest.fixture(autouse=True)
def no_leaked_figures():
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before  # figures are not registered with pyplot


# --- loss curves -----------------------------------------------------------------------


def test_loss_curves_marks_lowest_heldout(tmp_path: Path) -> None:
    train = [(s, 4.0 - s / 100) for s in range(0, 300, 10)]
    heldout = [(0, 3.8), (100, 3.1), (200, 2.9), (300, 3.0)]
    fig = plots.loss_curves(train, heldout, steps_per_epoch=100)
    ax = main_axes(fig)[0]
    assert "step" in ax.get_xlabel() and "nats/token" in ax.get_ylabel()
    text = all_text(fig)
    assert "2.900" in text and "step 200" in text and "epoch 2.00" in text
    assert fig.get_suptitle()
    labels = ax.get_legend_handles_labels()[1]
    assert "train loss" in labels and "lowest held-out loss" in labels
    saved_ok(fig, tmp_path / "loss.png")


def test_loss_curves_unsorted_nan_and_no_epochs(tmp_path: Path) -> None:
    heldout = [(200, 2.5), (0, 3.0), (100, NAN)]
    fig = plots.loss_curves([(10, NAN), (0, 3.5), (20, 3.0)], heldout)
    text = all_text(fig)
    assert "2.500" in text and "step 200" in text and "epoch" not in text
    saved_ok(fig, tmp_path / "loss_nan.png")


def test_loss_curves_diverged_run(tmp_path: Path) -> None:
    fig = plots.loss_curves([(0, 5.0), (10, math.inf)], [(0, 900.0), (10, 1e4)])
    assert "overflow" in all_text(fig)
    saved_ok(fig, tmp_path / "loss_diverged.png")


def test_loss_curves_empty(tmp_path: Path) -> None:
    fig = plots.loss_curves([], [], steps_per_epoch=50)
    assert "no loss values" in all_text(fig)
    saved_ok(fig, tmp_path / "loss_empty.png")


# --- top-100 frequencies ---------------------------------------------------------------


def test_top100_frequencies(tmp_path: Path) -> None:
    n = 100
    book = [1 / (r + 3) for r in range(n)]
    base = [b * (1.5 if r % 2 else 0.6) for r, b in enumerate(book)]
    tuned = [b * 1.05 for b in book]
    base[40], tuned[41] = 0.0, NAN  # unseen token / missing value must not break log axes
    labels = [" the", ",", "\n", " of"] + [f" w{i}" for i in range(n - 4)]
    fig = plots.top100_frequencies(list(range(n)), labels, book, base, tuned)
    axes = main_axes(fig)
    assert len(axes) == 2
    assert all(ax.get_ylabel() for ax in axes)
    assert "rank" in axes[1].get_xlabel()
    assert "' the'" in all_text(fig)  # leading space made visible
    ticks = [t.get_text() for t in axes[1].get_xticklabels()]
    assert any(t.startswith("10:") for t in ticks)
    assert len(axes[0].get_legend().get_texts()) == 3
    saved_ok(fig, tmp_path / "top100.png")


def test_top100_frequencies_length_mismatch() -> None:
    with pytest.raises(ValueError, match="same length"):
        plots.top100_frequencies([1, 2], ["a", "b"], [0.1, 0.1], [0.1], [0.1, 0.1])


def test_top100_frequencies_empty_and_all_nan(tmp_path: Path) -> None:
    saved_ok(plots.top100_frequencies([], [], [], [], []), tmp_path / "top_empty.png")
    fig = plots.top100_frequencies([1, 2], ["a", "b"], [NAN, 0.0], [NAN, NAN], [0.0, 0.0])
    saved_ok(fig, tmp_path / "top_nan.png")


# --- style vs copying ------------------------------------------------------------------


def trajectories_table() -> pd.DataFrame:
    """Per trial of trials_table(): base (epoch 0), each epoch; the last epoch differs a
    little from the trial's final (re-measured) point, as it does in a real study. Trial 3
    (NaN final ratio) and 5 (PRUNED) have paths that must not be drawn."""
    rows = []
    finals = trials_table().set_index("number")
    for number, epochs in ((0, 2), (1, 2), (2, 3), (3, 1), (4, 3), (5, 1)):
        lr, mem = finals.loc[number, "lr"], finals.loc[number, "memorization"]
        ratio = finals.loc[number, "top100_ratio"]
        for e in range(epochs + 1):
            f = e / epochs
            rows.append({"number": number, "lr": lr, "step": 10 * e, "epoch": float(e),
                         "top100_ratio": 0.49 + ((0.56 if math.isnan(ratio) else ratio) - 0.49) * f * 0.98,
                         "memorization": 0.004 + (mem - 0.004) * f * f * 0.9,
                         "heldout_loss": 3.5 - 0.2 * f + (0.5 * f * f if number == 2 else 0.0)})
    return pd.DataFrame(rows)


def trajectory_lines(fig: Figure) -> dict[int, object]:
    ax = main_axes(fig)[0]
    return {int(line.get_gid().split("-")[1]): line for line in ax.get_lines()
            if (line.get_gid() or "").startswith("trajectory-")}


def colourbar_labels(fig: Figure) -> list[str]:
    fig.draw_without_rendering()  # tick labels are filled in at draw time
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1
    return [t.get_text() for t in bars[0].get_yticklabels() if t.get_text()]


def test_style_vs_copying_annotates_selected(tmp_path: Path) -> None:
    fig = plots.style_vs_copying(trials_table(), REFS)
    ax = main_axes(fig)[0]
    assert "memorization" in ax.get_xlabel() and "top-100" in ax.get_ylabel()
    assert fig.get_suptitle()
    text = all_text(fig)
    assert "selected: trial 4" in text
    assert "2 failed/pruned/unmeasured trial(s) not shown" in text  # NaN and PRUNED rows
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert any("book's own top-100 ratio" in t for t in legend)
    assert any("before fine-tuning" in t for t in legend)
    assert any("Pareto front" in t for t in legend)
    assert not trajectory_lines(fig)  # no trajectories given, no paths
    saved_ok(fig, tmp_path / "style.png")


def test_style_vs_copying_front_comes_from_on_front_column() -> None:
    table = trials_table()
    table["on_front"] = [False, False, True, False, False, True]  # 5 is PRUNED: not drawn
    fig = plots.style_vs_copying(table, REFS)
    ax = main_axes(fig)[0]
    numbers = {t.get_text() for t in ax.texts}
    assert "2" in numbers and "0" not in numbers and "4" not in numbers and "5" not in numbers


def test_style_vs_copying_accepts_enum_state_strings(tmp_path: Path) -> None:
    table = trials_table()
    table["state"] = "TrialState.COMPLETE"
    fig = plots.style_vs_copying(table, REFS)
    assert "selected: trial 4" in all_text(fig)
    saved_ok(fig, tmp_path / "style_enum.png")


def test_style_vs_copying_without_references_keeps_the_broken_axis(tmp_path: Path) -> None:
    refs = {"book_top100_ratio": NAN, "base_memorization": 0.01}  # incomplete references
    fig = plots.style_vs_copying(trials_table(), refs, trajectories_table())
    assert main_axes(fig)[0].get_xscale() == "symlog"
    assert not [c for c in main_axes(fig)[0].collections if "Pareto front:" in str(c.get_label())]
    saved_ok(fig, tmp_path / "style_norefs.png")


@pytest.mark.parametrize("table", [
    pd.DataFrame(),
    pd.DataFrame(columns=["number", "top100_ratio", "memorization", "state", "on_front", "selected"]),
    pd.DataFrame({"number": [0, 1], "top100_ratio": [NAN, NAN], "memorization": [NAN, 0.1],
                  "state": ["COMPLETE", "FAIL"], "on_front": [True, NAN], "selected": [True, False]}),
])
def test_style_vs_copying_empty_or_nan(tmp_path: Path, table: pd.DataFrame) -> None:
    fig = plots.style_vs_copying(table, REFS, trajectories_table())
    ax = main_axes(fig)[0]
    assert ax.get_xlabel() and ax.get_ylabel()
    assert "no completed trials" in all_text(fig)
    assert "selected:" not in all_text(fig)
    assert not trajectory_lines(fig)
    saved_ok(fig, tmp_path / "style_empty.png")


def test_style_vs_copying_draws_one_path_per_trial_ending_at_final(tmp_path: Path) -> None:
    table = trials_table()
    fig = plots.style_vs_copying(table, REFS, trajectories_table())
    lines = trajectory_lines(fig)
    assert sorted(lines) == [0, 1, 2, 4]  # 3 (NaN metric) and 5 (PRUNED) are not drawn
    finals = table.set_index("number")
    scatter = main_axes(fig)[0].collections[0]  # the trials' final points, coloured
    colour_at = {tuple(np.round(xy, 6)): scatter.cmap(scatter.norm(v))[:3]
                 for xy, v in zip(scatter.get_offsets(), scatter.get_array())}
    for number, line in lines.items():
        xs, ys = line.get_xdata(), line.get_ydata()
        final = (finals.loc[number, "memorization"], finals.loc[number, "top100_ratio"])
        assert (xs[-1], ys[-1]) == pytest.approx(final)
        assert (xs[0], ys[0]) == pytest.approx((0.004, 0.49))  # the base model, epoch 0
        assert len(xs) == {0: 4, 1: 4, 2: 5, 4: 5}[number]  # epochs 0..E, then the final
        assert to_rgb(line.get_color()) == pytest.approx(colour_at[tuple(np.round(final, 6))])
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert sum("path" in t for t in legend) == 1  # one legend entry, not one per trial
    saved_ok(fig, tmp_path / "style_paths.png")


def test_style_vs_copying_draws_each_method_in_its_own_line_style() -> None:
    table = trials_table()
    table["lora_r"] = [0, 8, 64, 0, 8, 0]
    table["goldfish_k"] = [4, 0, 0, 0, 0, 0]
    lines = trajectory_lines(plots.style_vs_copying(table, REFS, trajectories_table()))
    styles = {n: line.get_linestyle() for n, line in lines.items()}
    assert styles == {0: "--", 1: ":", 2: "-.", 4: ":"}  # goldfish, rank 8, rank 64, rank 8
    legend = [str(line.get_label()) for line in lines.values() if not str(line.get_label()).startswith("_")]
    assert sorted(legend) == ["LoRA rank 64 trial's path (dash-dotted)", "LoRA rank 8 trial's path (dotted)",
                              "goldfish-loss trial's path (dashed)"]
    table["lora_r"] = 0
    assert {line.get_linestyle() for line in trajectory_lines(
        plots.style_vs_copying(table.drop(columns="goldfish_k"), REFS, trajectories_table())).values()} == {"-"}


def test_trajectory_paths_order_base_and_final() -> None:
    points, _ = plots.style_points(trials_table())
    traj = pd.DataFrame({  # unsorted, no epoch-0 row, one NaN measurement
        "number": [1, 1, 1, 4],
        "epoch": [2.0, 1.0, 1.5, 1.0],
        "step": [20, 10, 15, 10],
        "top100_ratio": [0.54, 0.52, NAN, 0.57],
        "memorization": [0.018, 0.01, 0.012, 0.025],
    })
    paths = plots.trajectory_paths(traj, points, base=(0.004, 0.49))
    xs, ys = paths[1]
    assert list(xs) == [0.004, 0.01, 0.018, 0.02] and list(ys) == [0.49, 0.52, 0.54, 0.55]
    xs, ys = paths[4]  # its last measurement already equals the final: not repeated
    assert list(xs) == [0.004, 0.025] and list(ys) == [0.49, 0.57]
    assert set(paths) == {1, 4}
    assert plots.trajectory_paths(None, points) == {}
    assert list(plots.trajectory_paths(traj, points)[1][0]) == [0.01, 0.018, 0.02]  # no base


def test_style_points_is_display_hygiene_only() -> None:
    table = trials_table()
    table["on_front"] = [NAN, True, False, False, True, None]  # unknown reads False, not True
    points, hidden = plots.style_points(table)
    assert hidden == 2
    assert list(points["number"]) == [0, 1, 4, 2]  # sorted by memorization
    assert list(points["on_front"]) == [False, True, True, False]
    assert list(points["selected"]) == [False, False, True, False]
    points, hidden = plots.style_points(None)
    assert points.empty and hidden == 0


def test_style_vs_copying_colour_bar_shows_learning_rates() -> None:
    labels = colourbar_labels(plots.style_vs_copying(trials_table(), REFS))
    values = [float(t) for t in labels]
    assert len(values) >= 2 and all(1e-5 <= v <= 1e-4 for v in values)
    assert "1e-5" in labels and "1e-4" in labels


def test_style_vs_copying_colour_bar_integer_trial_numbers_without_lr() -> None:
    # Trials 0..2 only: a default locator would put ticks at 0.25, 0.5, ... (no such trials).
    table = trials_table().drop(columns=["lr"]).iloc[:3]
    fig = plots.style_vs_copying(table, REFS)
    labels = colourbar_labels(fig)
    (bar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    locs = [v for v in bar.get_yticks() if 0 <= v <= 2]
    assert locs and all(float(v).is_integer() for v in locs)
    assert labels == [str(int(v)) for v in locs]
    assert "trial number" in bar.get_ylabel()


def test_copying_axis_sets_zero_apart_and_each_decade_alike() -> None:
    axis = plots.CopyingAxis([0.0, 0.0017, 0.025, NAN])
    assert axis.decade == -3  # the largest power of ten at or below 0.0017
    scale = SymmetricalLogScale(None, **axis.scale).get_transform()

    def forward(m: np.ndarray) -> np.ndarray:  # axis position, in decades of the log part
        return scale.transform(m) / axis.unit

    x0, x_small, x_big = forward(np.array([0.0, 0.0017, 0.025]))
    assert x_small - x0 >= 1.0  # a zero and a small copy are a decade apart, not a hair
    assert forward(np.array([0.01]))[0] - forward(np.array([0.001]))[0] == pytest.approx(1.0)
    grid = np.array([-0.0008, -0.0004, 0.0, 0.0005, 0.001, 0.003, 0.02, 0.3])
    assert np.all(np.diff(forward(grid)) > 0)  # monotonic, as a matplotlib scale must be
    assert scale.inverted().transform(scale.transform(grid)) == pytest.approx(grid)
    slots = [float(axis.dodged(np.array([0.0]), i, 4)[0]) for i in range(4)]
    assert len(set(slots)) == 4 and all(-0.0008 < v < 0 for v in slots)  # inside the zero band
    assert float(axis.dodged(np.array([0.02]), 1, 4)[0]) == 0.02  # only zeros move
    assert plots.CopyingAxis([]).decade == -2 and plots.CopyingAxis([1e-9]).decade == -5
    assert axis.ticks(0.03) == ([axis.zero, 0.001, 0.01, 0.1], ["0 (none)", "0.001", "0.01", "0.1"])


def demo_like(copy_all: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The demo's eleven candidates (docs/demo.md): seven copy nothing; or every one copies."""
    rows = [(0, 3e-5, 1, .442, 0), (0, 3e-5, 2, .422, 0), (1, 1.2e-4, 1, .481, 0), (1, 1.2e-4, 2, .531, 0),
            (1, 1.2e-4, 3, .560, .0017), (2, 4e-4, 1, .513, 0), (2, 4e-4, 2, .548, 0), (2, 4e-4, 3, .550, .0287),
            (8, 3.9e-4, 1, .513, 0), (8, 3.9e-4, 2, .498, .0046), (8, 3.9e-4, 3, .565, .0253)]
    traj = pd.DataFrame([(n, lr, e, 4 * e, y, m + 0.01 * e * copy_all) for n, lr, e, y, m in rows],
                        columns=["number", "lr", "epoch", "step", "top100_ratio", "memorization"])
    final = traj.groupby("number").last().reset_index().assign(state="COMPLETE", selected=False)
    final["on_front"] = final["number"].isin([1, 8])
    chosen = traj.iloc[3].to_dict()
    return final, traj, chosen


@pytest.mark.parametrize("copy_all", [False, True])
def test_style_vs_copying_labels_cover_no_point_and_clean_paths_stand_apart(copy_all: bool) -> None:
    final, traj, chosen = demo_like(copy_all)
    refs = {"book_top100_ratio": .554, "book_memorization": .0007, "base_top100_ratio": .407,
            "base_memorization": 0.0, "memorization_bound": .02}
    fig = plots.style_vs_copying(final, refs, traj, chosen=chosen)
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = main_axes(fig)[0]
    pts = np.concatenate([ax.transData.transform(np.asarray(c.get_offsets(), float)) for c in ax.collections
                          if hasattr(c, "get_offsets") and len(c.get_offsets())]
                         + [ax.transData.transform(line.get_xydata()) for line in trajectory_lines(fig).values()])
    labels = [t for t in ax.texts if t.get_gid() in ("selected-label", "front-label")]
    assert len(labels) == 3  # the pick and the two front trials
    for label in labels:
        box = Text.get_window_extent(label, renderer)
        inside = (pts[:, 0] > box.x0) & (pts[:, 0] < box.x1) & (pts[:, 1] > box.y0) & (pts[:, 1] < box.y1)
        assert not inside.any(), label.get_text()
    starts = {n: line.get_xdata()[0] for n, line in trajectory_lines(fig).items()}
    assert len(set(starts.values())) == 4  # every path leaves the base model from a slot of its own
    legend = fig.legends[0].get_window_extent(renderer)
    assert legend.y1 <= ax.get_window_extent(renderer).y0  # the legend stands below the data
    assert "0 (none)" in [t.get_text() for t in ax.get_xticklabels()]


def test_a_label_moves_off_the_points_its_first_place_would_cover() -> None:
    from gpt2ft.plots.tradeoff import _place_labels
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    xs, ys = np.meshgrid(np.linspace(0.52, 0.8, 8), np.linspace(0.52, 0.8, 8))  # crowd the upper right
    ax.scatter(xs.ravel(), ys.ravel())
    label = ax.text(0.5, 0.5, "selected: trial 1\ntop-100 ratio 0.531", gid="selected-label")
    _place_labels(fig, ax)
    renderer = fig.canvas.get_renderer()
    box = Text.get_window_extent(label, renderer)
    pts = ax.transData.transform(np.column_stack([xs.ravel(), ys.ravel()]))
    assert not ((pts[:, 0] > box.x0) & (pts[:, 0] < box.x1) & (pts[:, 1] > box.y0) & (pts[:, 1] < box.y1)).any()
    assert label.get_position() != (0.5, 0.5)


def test_style_vs_copying_selected_label_stays_inside_axes_below_title() -> None:
    # The selected trial top-right, where the label used to run into the subtitle.
    table = trials_table()
    table["selected"] = table["number"] == 2
    fig = plots.style_vs_copying(table, REFS, trajectories_table())
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = main_axes(fig)[0]
    (label,) = [t for t in ax.texts if t.get_gid() == "selected-label"]
    box = label.get_bbox_patch().get_window_extent(renderer)
    inside = ax.get_window_extent(renderer)
    assert inside.x0 <= box.x0 and box.x1 <= inside.x1
    assert inside.y0 <= box.y0 and box.y1 <= inside.y1
    assert not box.overlaps(ax.title.get_window_extent(renderer))


# --- copying and loss by epoch ---------------------------------------------------------


def epoch_lines(fig: Figure, metric: str) -> dict[int, object]:
    return {int(line.get_gid().rsplit("-", 1)[1]): line for ax in fig.axes
            for line in ax.get_lines() if (line.get_gid() or "").startswith(metric + "-")}


def test_copying_and_loss_by_epoch(tmp_path: Path) -> None:
    traj = trajectories_table()
    fig = plots.copying_and_loss_by_epoch(traj, REFS)
    ax_mem, ax_loss = main_axes(fig)
    assert ax_mem.get_shared_x_axes().joined(ax_mem, ax_loss)
    assert "memorization" in ax_mem.get_ylabel() and "held-out loss" in ax_loss.get_ylabel()
    assert "epoch" in ax_loss.get_xlabel()
    mem, loss = epoch_lines(fig, "memorization"), epoch_lines(fig, "heldout_loss")
    assert sorted(mem) == sorted(loss) == [0, 1, 2, 3, 4, 5]
    assert all(line in ax_mem.get_lines() for line in mem.values())
    assert all(line in ax_loss.get_lines() for line in loss.values())
    assert list(mem[2].get_xdata()) == [0, 1, 2, 3]
    bound = [line for line in ax_mem.get_lines() if "bound" in str(line.get_label())]
    assert len(bound) == 1 and list(bound[0].get_ydata()) == [0.03, 0.03]
    assert not any("bound" in str(line.get_label()) for line in ax_loss.get_lines())
    # Trials 2 (final 0.15) and 5 (0.3) cross 0.03; each gets one onset marker.
    (onsets,) = [c for c in ax_mem.collections if "onset" in str(c.get_label())]
    assert len(onsets.get_offsets()) == 2
    labels = colourbar_labels(fig)
    assert "learning rate" in [ax for ax in fig.axes if ax.get_label() == "<colorbar>"][0].get_ylabel()
    assert all(1e-5 <= float(t) <= 2e-4 for t in labels)
    saved_ok(fig, tmp_path / "epoch.png")


def test_copying_and_loss_by_epoch_without_references_or_loss() -> None:
    traj = trajectories_table()
    traj["heldout_loss"] = NAN
    fig = plots.copying_and_loss_by_epoch(traj)
    ax_mem, ax_loss = main_axes(fig)
    assert len(epoch_lines(fig, "memorization")) == 6
    assert not ax_loss.get_lines() and "no heldout_loss" in all_text(fig)
    assert not any("bound" in str(line.get_label()) for line in ax_mem.get_lines())
    assert not [c for c in ax_mem.collections if "onset" in str(c.get_label())]


@pytest.mark.parametrize("traj", [
    None,
    pd.DataFrame(),
    pd.DataFrame(columns=["number", "lr", "step", "epoch", "top100_ratio", "memorization",
                          "heldout_loss"]),
    pd.DataFrame({"number": [0, 1], "epoch": [NAN, 1.0], "memorization": [0.1, NAN],
                  "heldout_loss": [NAN, NAN]}),
])
def test_copying_and_loss_by_epoch_empty(tmp_path: Path, traj: pd.DataFrame | None) -> None:
    fig = plots.copying_and_loss_by_epoch(traj, REFS)
    assert len(main_axes(fig)) == 2
    assert "no memorization" in all_text(fig) and "no heldout_loss" in all_text(fig)
    saved_ok(fig, tmp_path / "epoch_empty.png")


def test_copying_onsets_first_epoch_strictly_above_bound() -> None:
    series = plots.epoch_series(pd.DataFrame({
        "number": [7, 7, 7, 7, 8, 8],
        "epoch": [3.0, 0.0, 1.0, 2.0, 0.0, 1.0],
        "step": [30, 0, 10, 20, 0, 10],
        "memorization": [0.2, 0.0, 0.03, 0.05, 0.0, 0.03],
    }))
    assert list(series["epoch"][series["number"] == 7]) == [0, 1, 2, 3]
    # 0.03 equals the bound: the pick still accepts it, so copying starts at epoch 2.
    assert plots.copying_onsets(series, 0.03) == {7: (2.0, 0.05)}
    assert plots.copying_onsets(series, None) == {}
    assert plots.copying_onsets(series, 0.01) == {7: (1.0, 0.03), 8: (1.0, 0.03)}


# --- house rule --------------------------------------------------------------------------


def test_no_plots_function_over_sixty_lines() -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "long_functions.py"
    spec = importlib.util.spec_from_file_location("long_functions", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    modules = sorted(Path(plots.__file__).parent.glob("*.py"))
    assert len(modules) > 1  # the figures' package, every module of it
    assert [hit for m in modules for hit in module.long_functions(str(m))] == []
    assert module.long_functions(plots.tradeoff.__file__, limit=10)  # the check does find long ones


# --- params vs objectives --------------------------------------------------------------


def params_table(n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "lr": 10 ** rng.uniform(-5, -3.5, n),
        "epochs": rng.integers(1, 4, n),
        "batch_size": rng.choice([4, 8], n),
        "top100_ratio": rng.uniform(0.45, 0.6, n),
        "memorization": rng.uniform(0, 0.1, n),
        "heldout_loss": rng.uniform(2.8, 3.3, n),
    })


def test_params_vs_objectives_grid(tmp_path: Path) -> None:
    df = params_table()
    df.loc[0, "memorization"] = NAN
    fig = plots.params_vs_objectives(df, references=REFS)
    axes = main_axes(fig)
    assert len(axes) == 9
    grid = np.array(axes).reshape(3, 3)
    assert grid[0, 0].get_xscale() == "log"  # lr
    assert all(ax.get_xlabel() for ax in grid[-1])
    assert all(ax.get_ylabel() for ax in grid[:, 0])
    assert "learning rate" in grid[-1, 0].get_xlabel()
    assert fig.get_suptitle()
    saved_ok(fig, tmp_path / "params.png")


def test_params_vs_objectives_empty_and_missing_columns(tmp_path: Path) -> None:
    fig = plots.params_vs_objectives(pd.DataFrame())
    assert "missing" in all_text(fig)
    saved_ok(fig, tmp_path / "params_empty.png")
    df = params_table().drop(columns=["batch_size"])
    df["lr"] = NAN
    saved_ok(plots.params_vs_objectives(df), tmp_path / "params_missing.png")


# --- novelty curves --------------------------------------------------------------------


def novelty_data() -> dict[str, dict[int, float]]:
    ns = [1, 2, 4, 8, 16]
    return {
        "held-out book": {n: max(0.0, 1 - n / 8) for n in ns},
        "base model": {n: math.exp(-n / 2) for n in ns},
        "trial 3": {n: math.exp(-n / 6) for n in ns},
    }


@pytest.mark.parametrize("log_y", [False, True])
def test_novelty_curves(tmp_path: Path, log_y: bool) -> None:
    data = novelty_data()
    data["trial 3"][4] = NAN
    fig = plots.novelty_curves(data, log_y=log_y)
    ax = main_axes(fig)[0]
    assert "n-gram" in ax.get_xlabel() and "share" in ax.get_ylabel()
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"held-out book", "base model", "trial 3"} <= set(names)
    assert ax.get_yscale() == ("log" if log_y else "linear")
    saved_ok(fig, tmp_path / f"novelty_{log_y}.png")


def test_novelty_curves_dense_n_labels_subset(tmp_path: Path) -> None:
    fig = plots.novelty_curves({"fine-tuned": {n: 1 / n for n in range(1, 17)}})
    ax = main_axes(fig)[0]
    assert list(ax.xaxis.get_majorticklocs()) == [1, 2, 3, 4, 6, 8, 12, 16]
    saved_ok(fig, tmp_path / "novelty_dense.png")


def test_novelty_curves_empty(tmp_path: Path) -> None:
    fig = plots.novelty_curves({})
    assert "no novelty" in all_text(fig)
    saved_ok(fig, tmp_path / "novelty_empty.png")
    saved_ok(plots.novelty_curves({"x": {1: NAN}}, log_y=True), tmp_path / "novelty_nan.png")


# --- save ------------------------------------------------------------------------------


def test_save_creates_parents_and_closes_pyplot_figures(tmp_path: Path) -> None:
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    ax.set_title("a pyplot figure with enough ink to be a real picture")
    out = plots.save(fig, tmp_path / "deep" / "dir" / "x.png", dpi=100)
    assert out.is_file()
    assert fig.number not in plt.get_fignums()


def test_style_vs_copying_crosses_every_point_another_judge_objects_to() -> None:
    traj = trajectories_table()
    traj["discoverable_rate"] = np.where((traj["number"] == 4) & (traj["epoch"] == 3), 0.2, 0.0)
    refs = {**REFS, "heldout_bound": 3.6, "discoverable_bound": 0.05, "membership_bound": math.inf}
    fig = plots.style_vs_copying(trials_table(), refs, traj)
    crosses = [c for ax in fig.axes for c in ax.collections if c.get_label() == "another judge of copying objects"]
    # Trial 2's epoch 3 passes the held-out bound (3.6); trial 4's epoch 3 the sampled extraction's.
    want = ((traj["heldout_loss"] > 3.6) | (traj["discoverable_rate"] > 0.05)) & traj["top100_ratio"].notna()
    assert len(crosses) == 1 and len(crosses[0].get_offsets()) == int(want.sum()) == 2
    plt.close(fig)
    fig = plots.style_vs_copying(trials_table(), REFS, traj)  # no other bound: no cross
    assert not [c for ax in fig.axes for c in ax.collections if c.get_label() == "another judge of copying objects"]
    plt.close(fig)
