"""Project Gutenberg, and only here: its URL, its header/licence markers, the download cache
and where the other novels are found.

Two callers, two needs:

* the book (``data``) is read *strictly*: a file without START/END markers is most likely
  the wrong file, and training on Gutenberg's licence would be wrong, so it is an error;
* the other novels (``style``) are read *leniently*: they are only the classifier's negative
  class, so any plain ``.txt`` novel will do, with or without a Gutenberg header.
"""
from __future__ import annotations

import http.client
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from gpt2ft.errors import UserError

#: Plain-text file of Gutenberg book ``id`` (the cache Gutenberg asks robots to use).
URL_TEMPLATE = "https://www.gutenberg.org/cache/epub/{id}/pg{id}.txt"
#: Environment variable naming a folder of ``.txt`` novels (the classifier's negative class).
OTHER_CORPORA_ENV = "GPT2FT_OTHER_CORPORA"

# Marker lines come as "*** START OF THIS PROJECT GUTENBERG EBOOK X ***" (older files) or
# "***START OF THE PROJECT GUTENBERG EBOOK X***" (newer), sometimes "E-BOOK", in any case,
# possibly indented. [ \t] rather than \s so that a marker never reaches across a line break.
_START = re.compile(r"^[ \t]*\*{3}[ \t]*START OF (?:THIS|THE) PROJECT GUTENBERG E-?BOOK.*$",
                    re.IGNORECASE | re.MULTILINE)
_END = re.compile(r"^[ \t]*\*{3}[ \t]*END OF (?:THIS|THE) PROJECT GUTENBERG E-?BOOK.*$",
                  re.IGNORECASE | re.MULTILINE)


def strip_gutenberg(text: str, source: str = "text", strict: bool = True) -> str:
    """The book proper: the text between the START and END marker lines, whitespace-stripped,
    with a leading BOM removed and line endings made ``\\n``.

    ``strict`` (the book): a missing marker, or an END that does not follow the START, raises
    a ``UserError`` naming ``source``. Lenient (the other novels): a missing marker keeps the
    text on that side, so a plain novel without a Gutenberg header comes back whole.
    """
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    start = _START.search(text)
    # The END is looked for only after the START: one before it belongs to something else.
    end = _END.search(text, start.end() if start else 0)
    if strict and (start is None or end is None):
        raise UserError(f"{source} has no Project Gutenberg START/END markers; pass the plain-text "
                        "Gutenberg file of the book (e.g. pg829.txt).")
    return text[start.end() if start else 0:end.start() if end else len(text)].strip()


def download(book_id: int, cache_dir: Path, timeout: float = 30.0, offline_hint: Optional[str] = None) -> Path:
    """Path of Gutenberg book ``book_id`` as ``<cache_dir>/pg<id>.txt``, downloaded once.

    A file already there is reused (Gutenberg revises its texts; callers record the sha256 of
    what they read). The download goes to a temporary name and is renamed into place, so an
    interrupted one never leaves a truncated file that a later run would take as complete.
    Any failure is a ``UserError`` naming the URL and ending with ``offline_hint`` (what to
    do without a network; by default: save the file at the cache path yourself).
    """
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / f"pg{book_id}.txt"
    if target.is_file() and target.stat().st_size > 0:
        return target
    url = URL_TEMPLATE.format(id=book_id)
    hint = offline_hint or f"without a network, save the file as {target} yourself"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        raise UserError(f"cannot write to the download folder {cache_dir} ({exc.strerror}); {hint}.") from None
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, target)
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError, timeouts are OSErrors
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"could not download {url} ({exc.__class__.__name__}); {hint}.") from None
    return target


def other_novels_folder(configured: Optional[str], book_source: Optional[str]) -> Optional[Path]:
    """Folder of the other novels: ``configured`` (``data.other_corpora``), else
    ``$GPT2FT_OTHER_CORPORA``, else an ``other/`` folder beside the book (the layout of
    shared/data), else None, meaning "download the default novels".

    A configured or environment folder is returned whether or not it exists: naming a folder
    that is not there is the user's mistake, which the reader reports.
    """
    for candidate in (configured, os.environ.get(OTHER_CORPORA_ENV)):
        if candidate:
            return Path(candidate).expanduser()
    if book_source:
        beside = Path(book_source).expanduser().parent / "other"
        if beside.is_dir():
            return beside
    return None
