"""URL helpers shared by tracking and the study: never show a password; fail fast on a dead server."""
from __future__ import annotations

import re
import socket
from typing import Optional
from urllib.parse import urlsplit

_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@]*):(?P<pw>[^@/]*)@")


def mask_url(url: str | None) -> str | None:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db``; other text unchanged."""
    if url is None:
        return None
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)


def unreachable(url: str, timeout: float = 3.0) -> Optional[str]:
    """Why nothing accepts a TCP connection at an http(s) URL's host and port within ``timeout``
    seconds (the exception's class name), or None when something does (or the URL is not http)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except (OSError, ValueError) as exc:  # refused, timed out, unknown host; ValueError: bad port
        return exc.__class__.__name__
