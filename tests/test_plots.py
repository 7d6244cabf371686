"""Rendering tests for gpt2ft.plots: every figure draws from small fake data, saves a real
PNG, labels its axes, and survives empty tables and NaN values."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

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
        "style": [0.50, 0.55, 0.61, NAN, 0.57, 0.58],
        "memorization": [0.002, 0.02, 0.15, 0.01, 0.025, 0.3],
        "state": ["COMPLETE", "COMPLETE", "COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"],
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


def test_style_vs_copying_annotates_selected(tmp_path: Path) -> None:
    fig = plots.style_vs_copying(trials_table(), REFS, pareto=[0, 1, 4])
    ax = main_axes(fig)[0]
    assert "memorization" in ax.get_xlabel() and "top-100" in ax.get_ylabel()
    assert fig.get_suptitle()
    text = all_text(fig)
    assert "selected: trial 4" in text
    assert "not shown" in text  # the NaN and PRUNED rows are counted, not drawn
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert any("book's own top-100 ratio" in t for t in legend)
    assert any("before fine-tuning" in t for t in legend)
    assert any("Pareto front" in t for t in legend)
    saved_ok(fig, tmp_path / "style.png")


def test_style_vs_copying_accepts_enum_state_strings(tmp_path: Path) -> None:
    table = trials_table()
    table["state"] = "TrialState.COMPLETE"
    fig = plots.style_vs_copying(table, REFS, pareto=[4])
    assert "selected: trial 4" in all_text(fig)
    saved_ok(fig, tmp_path / "style_enum.png")


def test_style_vs_copying_without_references_and_log_axis(tmp_path: Path) -> None:
    refs = {"book_top100_ratio": NAN, "base_memorization": 0.01}  # incomplete references
    fig = plots.style_vs_copying(trials_table(), refs, pareto=[0, 1, 4],
                                 log_memorization=True)
    assert main_axes(fig)[0].get_xscale() == "symlog"
    saved_ok(fig, tmp_path / "style_norefs.png")


@pytest.mark.parametrize("table", [
    pd.DataFrame(),
    pd.DataFrame(columns=["number", "style", "memorization", "state", "selected"]),
    pd.DataFrame({"number": [0, 1], "style": [NAN, NAN], "memorization": [NAN, 0.1],
                  "state": ["COMPLETE", "FAIL"], "selected": [True, False]}),
])
def test_style_vs_copying_empty_or_nan(tmp_path: Path, table: pd.DataFrame) -> None:
    fig = plots.style_vs_copying(table, REFS, pareto=[])
    ax = main_axes(fig)[0]
    assert ax.get_xlabel() and ax.get_ylabel()
    assert "no completed trials" in all_text(fig)
    assert "selected:" not in all_text(fig)
    saved_ok(fig, tmp_path / "style_empty.png")


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
