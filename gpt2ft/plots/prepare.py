"""What each figure shows, prepared from the tables it is given: pure pandas and numpy, no
drawing, so each is tested apart from the figure (tests/test_plots.py).

Missing columns read NaN and NaN values are kept for each figure to skip; nothing raises on
them. Nothing here re-derives the pick either: which trials are on the Pareto front or selected
comes from the trial-summary table's ``on_front`` and ``selected`` columns as given.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from gpt2ft.pick import state_name


def finite(x: Any) -> bool:
    """``x`` is a number and neither NaN nor infinite (None and text are not)."""
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def ref(references: Mapping[str, Any] | None, key: str) -> float | None:
    """A reference value if present and finite, else None (drawn only when known)."""
    value = (references or {}).get(key)
    return float(value) if finite(value) else None


def numeric(df: pd.DataFrame, col: str) -> pd.Series:
    """Column ``col`` as floats; NaN where the value is not a number or the column is missing."""
    if col in df.columns:
        return pd.to_numeric(df[col], errors="coerce").astype(float)
    return pd.Series(np.nan, index=df.index, dtype=float)


def flag(df: pd.DataFrame, col: str) -> pd.Series:
    """Column ``col`` as bools; False where missing or NaN (NaN would otherwise read True)."""
    if col not in df.columns:
        return pd.Series(False, index=df.index, dtype=bool)
    return df[col].where(df[col].notna(), False).astype(bool)


def sorted_pairs(points: Sequence[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values sorted by step; non-finite entries are dropped."""
    clean = sorted((float(s), float(v)) for s, v in points if finite(s) and finite(v))
    if not clean:
        return np.array([]), np.array([])
    steps, values = zip(*clean)
    return np.asarray(steps), np.asarray(values)


def positive_or_nan(values: Sequence[float]) -> np.ndarray:
    # Zero frequencies cannot sit on a log axis; leave them out instead of clipping them to
    # an arbitrary tiny value that would stretch the axis.
    arr = np.asarray([float(v) if finite(v) else np.nan for v in values], dtype=float)
    arr[arr <= 0] = np.nan
    return arr


def style_points(trials: pd.DataFrame | None) -> tuple[pd.DataFrame, int]:
    """The trials :func:`style_vs_copying` draws, and how many rows it leaves out.

    Returns a frame with columns ``number``, ``lr``, ``top100_ratio``, ``memorization``,
    ``goldfish_k``, ``lora_r`` (floats; a missing k or rank reads 0) and ``on_front``, ``selected`` (bools; missing
    or NaN read False): the rows whose ``state`` is COMPLETE (any spelling
    :func:`gpt2ft.pick.state_name` accepts; a missing ``state`` column counts as COMPLETE) and
    whose two metrics are finite, sorted by memorization then number. This is display hygiene
    only: front and selection are taken from the table as given.
    """
    df = trials if trials is not None else pd.DataFrame()
    state = (df["state"].map(state_name) if "state" in df.columns
             else pd.Series("COMPLETE", index=df.index))
    points = pd.DataFrame({
        "number": numeric(df, "number"),
        "lr": numeric(df, "lr"),
        "top100_ratio": numeric(df, "top100_ratio"),
        "memorization": numeric(df, "memorization"),
        "on_front": flag(df, "on_front"),
        "selected": flag(df, "selected"),
        "goldfish_k": numeric(df, "goldfish_k").fillna(0),  # 0: the plain loss (or not searched)
        "lora_r": numeric(df, "lora_r").fillna(0),  # 0: full fine-tuning (or not searched)
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
    traj = pd.DataFrame({c: numeric(trajectories, c) for c in
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


def epoch_series(trajectories: pd.DataFrame | None) -> pd.DataFrame:
    """The long trajectory table cleaned for per-epoch plots.

    Columns ``number``, ``lr``, ``epoch``, ``step``, ``memorization``, ``heldout_loss``
    (floats; missing columns read NaN); rows without a finite ``number`` or ``epoch`` are
    dropped, the rest sorted by number, epoch, step. NaN metrics are kept: each panel
    skips only its own missing values.
    """
    df = trajectories if trajectories is not None else pd.DataFrame()
    out = pd.DataFrame({c: numeric(df, c) for c in
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


def panel_xy(df: pd.DataFrame, param: str, obj: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite (param, objective) pairs; for ``lr`` (log axis) only positive ones."""
    x_all, y_all = numeric(df, param), numeric(df, obj)
    keep = np.isfinite(x_all) & np.isfinite(y_all)
    if param == "lr":
        keep &= x_all > 0
    return x_all[keep].to_numpy(float), y_all[keep].to_numpy(float)


def novelty_points(curve: Mapping[int, float], log_y: bool) -> tuple[list[int], list[float]]:
    """(n's, shares) sorted by n; NaN, n <= 0 and (on a log axis) zero shares dropped."""
    pts = sorted((int(n), float(v)) for n, v in curve.items()
                 if finite(n) and finite(v) and float(n) > 0 and (not log_y or float(v) > 0))
    return [n for n, _ in pts], [v for _, v in pts]


class CopyingAxis:
    """Memorization on matplotlib's ``symlog`` scale: exactly zero in a band of its own at the
    left, an empty decade, then positive values on a log scale.

    Most measured points of a healthy study copy nothing (memorization exactly 0) while the
    copying ones read 0.001-0.05; on a linear axis every clean trial's path is the same vertical
    stroke at 0 and small copying is squeezed against it. Here ``0`` and ``0.0017`` are a decade
    apart, each decade of copying gets the same width, and within the zero band each trial has a
    slot of its own (:meth:`dodged`), so clean paths stand side by side.

    ``decade`` is the lowest power of ten drawn on the log part: the largest one at or below the
    smallest positive value (at most 1e-2, at least 1e-5). The scale (:attr:`scale`) is linear
    within ``+-10**decade``: right of 0 that decade is empty (every positive value is past it), left
    of 0 it holds the zero band, ``[-0.8 * 10**decade, 0]``: a dodged zero is stored as a small
    negative number that the axis labels ``0``.
    """

    ZERO_BAND = 0.8  # the band's width, in decades of the log part

    def __init__(self, positives: Sequence[float]) -> None:
        pos = [float(v) for v in positives if finite(v) and float(v) > 0]
        low = min(pos) if pos else 1e-2
        self.decade = int(min(-2, max(-5, math.floor(math.log10(low)))))
        self.unit = 10.0 ** self.decade

    @property
    def scale(self) -> dict[str, float]:
        """``ax.set_xscale("symlog", **axis.scale)``; symlog's linear part spans ``linscale / (1 -
        1/10)`` decades each side of 0, so 0.9 makes it one decade, as wide as each log decade."""
        return {"linthresh": self.unit, "linscale": 0.9}

    def dodged(self, m: np.ndarray, slot: int, n_slots: int) -> np.ndarray:
        """``m`` with its exact zeros moved to slot ``slot`` of ``n_slots`` in the zero band."""
        m = np.asarray(m, dtype=float)
        where = -(max(n_slots, 1) - slot - 0.5) / max(n_slots, 1) * self.ZERO_BAND * self.unit
        return np.where(m == 0, where, m)

    @property
    def zero(self) -> float:
        """The data value at the zero band's middle (its tick, labelled 0)."""
        return -self.ZERO_BAND / 2 * self.unit

    def ticks(self, high: float) -> tuple[list[float], list[str]]:
        """Tick values and labels: ``0`` in the band, then each decade up to ``high``."""
        top = max(self.decade + 1, math.ceil(math.log10(high)) if finite(high) and high > 0 else 0)
        values = [self.zero] + [10.0 ** k for k in range(self.decade, min(top, 0) + 1)]
        return values, ["0 (none)"] + [f"{v:g}" for v in values[1:]]
