"""URL helpers shared by tracking and the study: never show a password."""
from __future__ import annotations

import re

_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@]*):(?P<pw>[^@/]*)@")


def mask_url(url: str | None) -> str | None:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db``; other text unchanged."""
    if url is None:
        return None
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)
