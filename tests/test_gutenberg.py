"""gpt2ft.gutenberg: one marker regex for the book and the other novels (a file without
markers is taken whole), one download cache, and where the other novels are found."""
from __future__ import annotations

import io
import re
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpt2ft import assets, data, gutenberg, prose, style
from gpt2ft.config import DataConfig
from gpt2ft.errors import UserError
from gpt2ft.gutenberg import OTHER_CORPORA_ENV, download, other_novels_folder, strip_gutenberg

PARAS = [f"Paragraph P{i:02d} begins here and\nruns on over a second line " + "lorem " * 15 for i in range(10)]

# (start line, end line) as they occur in Gutenberg files of different vintages.
MARKERS = {
    "this_with_title": ("*** START OF THIS PROJECT GUTENBERG EBOOK A TEST ***",
                        "*** END OF THIS PROJECT GUTENBERG EBOOK A TEST ***"),
    "the_no_space": ("***START OF THE PROJECT GUTENBERG EBOOK A TEST***",
                     "***END OF THE PROJECT GUTENBERG EBOOK A TEST***"),
    "no_trailing_text": ("*** START OF THIS PROJECT GUTENBERG EBOOK", "*** END OF THE PROJECT GUTENBERG EBOOK"),
    "lower_case_e_book": ("*** start of the project gutenberg e-book a test ***",
                          "*** end of the project gutenberg e-book a test ***"),
    "indented": ("  *** START OF THE PROJECT GUTENBERG EBOOK A TEST ***",
                 "\t*** END OF THE PROJECT GUTENBERG EBOOK A TEST ***"),
}


def _file(folder: Path, start: str, end: str, newline: str) -> Path:
    text = (f"The Project Gutenberg eBook of A Test\n\nLICENCE HEAD\n{start}\n\n" + "\n\n".join(PARAS)
            + f"\n\n{end}\n\nLICENCE TAIL: Project Gutenberg Literary Archive Foundation.\n")
    path = folder / "book.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", newline).encode("utf-8"))
    return path


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("variant", sorted(MARKERS))
def test_book_and_novels_strip_the_same_marker_variants(tmp_path, variant, newline):
    start, end = MARKERS[variant]
    path = _file(tmp_path, start, end, newline)
    book = data.load_book(DataConfig(segment_chars=100, heldout_every=2), str(path))
    novel = style.load_other_novels(tmp_path)["book"]
    want = " ".join("\n\n".join(PARAS).split())
    # Both call sites keep exactly the body: every paragraph, no header, no licence.
    assert " ".join(novel.split()) == want
    assert sorted(re.findall(r"P\d\d", book.train_text + book.heldout_text)) == [f"P{i:02d}" for i in range(10)]
    for text in (novel, book.train_text, book.heldout_text):
        assert "LICENCE" not in text and "GUTENBERG" not in text.upper() and "\r" not in text


def test_both_call_sites_clean_with_the_one_function():
    # The book (data) and the other novels (style) read through gpt2ft.prose, which strips here.
    assert data.read is style.read is prose.read
    assert prose.strip_gutenberg is gutenberg.strip_gutenberg
    assert style.download is gutenberg.download


def test_a_book_without_markers_is_taken_whole(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("\n\n".join(PARAS * 3), encoding="utf-8")
    book = data.load_book(DataConfig(segment_chars=100), str(path))
    assert not book.prose.marked
    assert len(re.findall(r"P\d\d", book.train_text + book.heldout_text)) == 30


@pytest.mark.parametrize("text,body,marked", [
    ("*** START OF THE PROJECT GUTENBERG EBOOK X ***\nbody only\n", "body only", False),    # no END
    ("body only\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\n", "body only", False),      # no START
    ("*** END OF THE PROJECT GUTENBERG EBOOK X ***\nbody\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\n",
     "", False),                                                                           # END before START
    ("", "", False),
    ("head\n*** START OF THE PROJECT GUTENBERG EBOOK X\nBody.\n*** END OF THE PROJECT GUTENBERG EBOOK X\nlicence",
     "Body.", True),
])
def test_strip_keeps_what_the_markers_leave(text, body, marked):
    assert strip_gutenberg(text) == body
    assert gutenberg.has_markers(text) is marked


def test_strip_normalises_bom_and_line_ends():
    assert strip_gutenberg("\ufeff  Just a novel.\r\n") == "Just a novel."
    assert strip_gutenberg("head\r\n*** START OF THE PROJECT GUTENBERG EBOOK X\r\nBody.\r\nTwo.\r\n") == "Body.\nTwo."


# ------------------------------------------------------------------- other_novels_folder

def test_other_novels_folder_order_of_precedence(tmp_path, monkeypatch):
    book = tmp_path / "data" / "gulliver.txt"
    beside = tmp_path / "data" / "other"
    beside.mkdir(parents=True)
    book.write_text("x")
    monkeypatch.setenv(OTHER_CORPORA_ENV, str(tmp_path / "env"))
    assert other_novels_folder(str(tmp_path / "cfg"), str(book)) == tmp_path / "cfg"
    assert other_novels_folder(None, str(book)) == tmp_path / "env"
    monkeypatch.delenv(OTHER_CORPORA_ENV)
    assert other_novels_folder(None, str(book)) == beside
    assert other_novels_folder(None, None) is None
    beside.rmdir()
    assert other_novels_folder(None, str(book)) is None  # nothing beside: download the defaults
    monkeypatch.setenv(OTHER_CORPORA_ENV, "")
    assert other_novels_folder(None, str(book)) is None  # an empty variable counts as unset


def test_measure_asks_other_novels_folder(tmp_path, monkeypatch):
    """assets._fit_classifier loads the novels from other_novels_folder's answer."""
    (tmp_path / "other").mkdir()
    monkeypatch.delenv(OTHER_CORPORA_ENV, raising=False)
    seen = []

    def fake_load(folder, cache_dir=None):
        seen.append((folder, cache_dir))
        raise UserError("stop here.")

    monkeypatch.setattr(assets, "load_other_novels", fake_load)
    cfg = SimpleNamespace(data=DataConfig(cache_dir=str(tmp_path / "cache")))
    book = SimpleNamespace(source=str(tmp_path / "b.txt"))
    assert assets._fit_classifier(cfg, book, None) == (None, [])  # a UserError only switches style_prob off
    assert seen == [(tmp_path / "other", tmp_path / "cache")]


# ------------------------------------------------------------------------------- download

def test_download_once_into_one_layout(tmp_path, monkeypatch):
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return io.BytesIO(b"text of 829")

    monkeypatch.setattr(gutenberg.urllib.request, "urlopen", fake_urlopen)
    path = download(829, tmp_path / "cache")
    assert path == tmp_path / "cache" / "pg829.txt" and path.read_bytes() == b"text of 829"
    assert download(829, tmp_path / "cache") == path
    assert calls == ["https://www.gutenberg.org/cache/epub/829/pg829.txt"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["pg829.txt"]


def test_download_failure_names_the_url_and_leaves_nothing(tmp_path, monkeypatch):
    class Broken(io.BytesIO):
        def read(self, *args):  # the connection drops half-way through
            raise TimeoutError("timed out")

    monkeypatch.setattr(gutenberg.urllib.request, "urlopen", lambda url, timeout: Broken())
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as err:
        download(74, cache)
    msg = str(err.value)
    assert "https://www.gutenberg.org/cache/epub/74/pg74.txt" in msg and "TimeoutError" in msg
    assert f"without a network, save the file as {cache / 'pg74.txt'} yourself." in msg
    assert list(cache.iterdir()) == []  # no truncated file for a later run to trust

    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(gutenberg.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match=r"\(URLError\); set GPT2FT_CORPUS\.$"):
        download(74, cache, offline_hint="set GPT2FT_CORPUS")
