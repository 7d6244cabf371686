"""How a value is written for a person to read, in every printed table and model card."""
from __future__ import annotations

from typing import Any


def fmt(v: Any) -> str:
    """Floats to four significant digits; anything else as ``str``."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def duration(seconds: float) -> str:
    """A time estimate in the unit a person reads it in: seconds, minutes or hours."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} hours"
