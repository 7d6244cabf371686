"""How a value is written for a person to read, in every printed table and model card."""
from __future__ import annotations

from typing import Any


def fmt(v: Any) -> str:
    """Floats to four significant digits; anything else as ``str``."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)
