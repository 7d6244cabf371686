"""Process memory for ``make bench``'s trials section: VmRSS and VmHWM from /proc, the heap given
back to the OS between trials, and whether memory grows from trial to trial.

Memory is read after each trial, raw and after ``malloc_trim`` (= live memory), and VmHWM is
reset before each trial (that trial's peak). Growth is judged by the fitted trend over trials
2..n against a noise allowance, since the allocator's slack swings by ~100 MiB between trials.
"""
from __future__ import annotations

from typing import Any, Sequence

import benchlib as B

TARGET_RSS_GROWTH = 0.02    # growth from trial 2 to the last trial: <= 2% of trial 2's ...
RSS_NOISE_MIB = 16.0        # ... or <= 16 MiB, whichever is larger (allocator noise)


def proc_status() -> dict[str, float]:
    """VmRSS and VmHWM of this process in MiB (Linux /proc)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) / 1024.0
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def malloc_trim() -> bool:
    """Give glibc's free heap pages back to the OS, so VmRSS shows live memory rather than
    allocator slack (which swings by ~100 MiB from trial to trial and hides any trend)."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def trend(values: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope per step of ``values`` and its standard error."""
    n = len(values)
    xs = range(n)
    mx, my = (n - 1) / 2, sum(values) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, values)) / sxx
    resid = [y - (my + slope * (x - mx)) for x, y in zip(xs, values)]
    se = (sum(r * r for r in resid) / max(n - 2, 1) / sxx) ** 0.5
    return slope, se


def memory_rows(trials: list[dict[str, Any]], hwm_reset: bool, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Growth from trial 2 on: the fitted trend over trials 2..n, against a noise allowance of
    max(2% of trial 2, 16 MiB, twice the trend's standard error)."""
    if len(trials) < 4:
        return []
    out: dict[str, Any] = {"peak_is_per_trial": hwm_reset}
    rows = []
    for key, label in (("rss_after_trim_mib", "live RSS after trial (malloc_trim)"),
                       ("rss_after_mib", "RSS after trial (raw)"),
                       ("peak_rss_mib", "peak RSS within trial" if hwm_reset else "peak RSS (VmHWM, monotone)")):
        vals = [r[key] for r in trials[1:]]
        slope, se = trend(vals)
        span = len(vals) - 1
        growth, noise = slope * span, 2 * se * span
        allowed = max(TARGET_RSS_GROWTH * vals[0], RSS_NOISE_MIB, noise)
        out[key] = {"values": [r[key] for r in trials], "slope_mib_per_trial": slope, "slope_se": se,
                    "fitted_growth_mib": growth, "allowed_mib": allowed}
        rows.append(B.row(f"{label}: growth trial 2->{trials[-1]['trial']}, MiB", growth, "trial 2, MiB",
                          vals[0], growth / vals[0], f"<= {allowed:.0f} MiB (noise)", growth <= allowed))
    results["memory"] = out
    return rows
