"""The name each metric has in the MLflow UI: its own name under a section.

MLflow 3.17's run page groups metric charts into sections by the name's prefix before the first
``/`` and orders the sections by that prefix in code-point order, unprefixed charts last
(checked in Chromium, ../shared/NOTES.md). A trial logs 50-90 metrics; unsorted, the few a
researcher reads sat among timings and re-measure values. So every metric goes under a section,
the leading one capitalised so that it sorts before the lowercase rest:

* ``Style and copying``: losses, style and the copying judges (a trial's page opens with them);
* ``Pick``: on the study's run, the pick and the selected point's numbers;
* ``detail``, ``remeasure``, ``refs``, ``timing``: everything else.

The leaf is the metric's own name, the same as in ``metrics.json``, ``candidates.csv`` and the
docs; :func:`plain_name` strips the section for readers of the store.
"""
from __future__ import annotations

LEAD = "Style and copying"
PICK = "Pick"
#: The charts a trial's page leads with.
LEADING = ("train_loss", "heldout_loss", "top100_ratio", "memorization", "near_verbatim", "extractable_rate",
           "discoverable_rate", "extraction_log10p", "mia_auc", "style_prob", "fluency_ppl", "style_score")
_REFERENCE_PREFIXES = ("book_", "base_", "train_", "other_")
_TIMING = ("tokens_per_second", "measure_share", "steps", "setup_cache_hit")
SECTIONS = (LEAD, PICK, "detail", "remeasure", "refs", "timing")


def ui_name(key: str) -> str:
    """``key`` as logged to MLflow: ``section/key``."""
    if key in LEADING:
        return f"{LEAD}/{key}"
    if key.startswith("selected_"):
        return f"{PICK}/{key}"
    if key.startswith("final_step"):
        return f"remeasure/{key}"
    if key.startswith(_REFERENCE_PREFIXES) or key.endswith("_bound") or key.startswith("style_classifier"):
        return f"refs/{key}"
    if key.endswith("_seconds") or key in _TIMING:
        return f"timing/{key}"
    return f"detail/{key}"


def plain_name(name: str) -> str:
    """A logged name back to the metric's own (names logged before sections pass through)."""
    section, sep, rest = name.partition("/")
    return rest if sep and section in SECTIONS else name


def plain(metrics: dict[str, float]) -> dict[str, float]:
    """A run's metrics under their own names."""
    return {plain_name(k): v for k, v in metrics.items()}
