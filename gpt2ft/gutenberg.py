"""Project Gutenberg, and only here: its URL, its header/licence markers, the download cache,
where the book and the other novels are found, and reading a book file's bytes.

A file without START/END markers is taken whole: a researcher's own text is a book too
(``gpt2ft.prose`` then drops the apparatus either way, the licence included).
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

from gpt2ft.config import DataConfig
from gpt2ft.errors import UserError

#: Plain-text file of Gutenberg book ``id`` (the cache Gutenberg asks robots to use).
URL_TEMPLATE = "https://www.gutenberg.org/cache/epub/{id}/pg{id}.txt"
#: Environment variable naming the book's file.
CORPUS_ENV = "GPT2FT_CORPUS"
#: Environment variable naming a folder of ``.txt`` novels (the classifier's negative class).
OTHER_CORPORA_ENV = "GPT2FT_OTHER_CORPORA"

# Marker lines come as "*** START OF THIS PROJECT GUTENBERG EBOOK X ***" (older files) or
# "***START OF THE PROJECT GUTENBERG EBOOK X***" (newer), sometimes "E-BOOK", in any case,
# possibly indented. [ \t] rather than \s so that a marker never reaches across a line break.
_START = re.compile(r"^[ \t]*\*{3}[ \t]*START OF (?:THIS|THE) PROJECT GUTENBERG E-?BOOK.*$",
                    re.IGNORECASE | re.MULTILINE)
_END = re.compile(r"^[ \t]*\*{3}[ \t]*END OF (?:THIS|THE) PROJECT GUTENBERG E-?BOOK.*$",
                  re.IGNORECASE | re.MULTILINE)


def strip_gutenberg(text: str) -> str:
    """The book proper: the text between the START and END marker lines, whitespace-stripped,
    with a leading BOM removed and line endings made ``\\n``. A missing marker keeps the text
    on that side, so a plain text without a Gutenberg header comes back whole."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    start = _START.search(text)
    # The END is looked for only after the START: one before it belongs to something else.
    end = _END.search(text, start.end() if start else 0)
    return text[start.end() if start else 0:end.start() if end else len(text)].strip()


def has_markers(text: str) -> bool:
    """Whether ``text`` has a START line and an END line after it."""
    start = _START.search(text)
    return start is not None and _END.search(text, start.end()) is not None


def resolve_corpus_path(cfg: DataConfig, explicit: Optional[str] = None) -> Path:
    """The book's path: option, config, $GPT2FT_CORPUS, else a cached Gutenberg download."""
    for candidate in (explicit, cfg.corpus, os.environ.get(CORPUS_ENV)):
        if candidate:
            path = Path(candidate).expanduser()
            if path.is_dir():
                raise UserError(f"corpus path {path} is a directory, not a file; pass --corpus PATH or set "
                                f"{CORPUS_ENV} to the book's .txt file.")
            if not path.is_file():
                raise UserError(f"corpus file {path} does not exist; pass --corpus PATH or set "
                                f"{CORPUS_ENV} to the book's .txt file.")
            return path
    return download(cfg.gutenberg_id, Path(cfg.cache_dir),
                    offline_hint=f"without a network set {CORPUS_ENV} (or --corpus) to a local copy")


def read_bytes(path: Path) -> bytes:
    """The file's bytes; an unreadable file is a ``UserError``."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror}); check its permissions.") from None


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
