"""The book's prose, and only its prose: what a study trains on and judges with, whatever book
it is given (a Project Gutenberg file or a researcher's own plain text).

Out: the Gutenberg header and licence, producer's and transcriber's notes, the front matter
before the story's first paragraph (title page, contents, lists of illustrations, dedication),
chapter / part / book headings, ``[Illustration: ...]`` tags, footnote markers and footnotes,
"THE END", URLs and e-mail addresses. In: every other paragraph, however short: spoken lines
such as "No." or "I went." are most of some novels, and verse or letters inside the story are
the story. A paragraph is judged by its *form* (a heading is a numbered "CHAPTER" or "Kapitel", a
lone numeral, an all-capitals or title-case line without end punctuation), never by its length;
a line of capitals or title case between spoken lines or after a letter's closing is the story's.
A file is read as UTF-8, cp1252 or Latin-1 (``decode``); one without blank lines between its
paragraphs is split at its lines (``_blocks``).

Why not a library (checked 2026-12-03 on PyPI): ``gutenberg-cleaner`` 0.1.6 (2019, unmaintained)
``super_cleaner`` drops every paragraph under 5 tokens unless it holds exactly two ASCII ``"``
or ``'`` -- so "No." and every short line in curly quotes goes -- and also any paragraph that
starts with ``_`` (italics), holds an e-mail address or more than three colons; it needs
nltk's punkt data (a download) and installs a top-level package named ``_cleaning_options``.
``gutenbergpy`` 0.4.0 (maintained) and ``Gutenberg`` 0.8.2 strip only the header and footer
(the part ``gutenberg.strip_gutenberg`` does), on bytes, and bring lxml, pymongo and chardet
(or a SPARQL stack) for a catalogue cache the harness does not use. Their marker lists are the
source of the producer's-note prefixes below.

Pure: no torch, so ``gpt2ft book`` answers in well under a second of cleaning.
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gpt2ft.errors import UserError
from gpt2ft.gutenberg import has_markers, read_bytes, strip_gutenberg

log = logging.getLogger(__name__)

#: Kinds of dropped text, in the order reports list them.
KINDS = ("licence", "producer's note", "front matter", "heading", "illustration", "footnote", "the end",
         "url or e-mail")

_NUMERAL = (r"(?:[IVXLCDM]+|[ivxlcdm]+|\d+|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
            r"first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|last)")
# "CHAPTER I.", "Chapter 1", "PART I. The Wild Land", "Book I— The Shimerdas", "CHAPTER THE FIRST".
# The chapter words of the common European languages too ("Chapitre 1", "Kapitel 12", "Глава 3").
_NUMBERED = re.compile(rf"^(?:chapter|part|book|volume|vol\.|letter|canto|stave|section|article|chapitre|livre|partie|"
                       rf"kapitel|teil|buch|cap[ií]tulo|capitolo|libro|parte|hoofdstuk|deel|rozdzia[lł]|kapitola|"
                       rf"luku|kapittel|глава|часть|книга)\s+(?:the\s+)?"
                       rf"{_NUMERAL}(?=$|[\s.:,;—–-])", re.IGNORECASE)
_LONE_NUMERAL = re.compile(r"^(?:[IVXLCDM]+|\d+)\.?$")
_THE_END = re.compile(r"^(?:the end|finis)\.?$", re.IGNORECASE)
_FOOTNOTES_HEAD = re.compile(r"^foot-?notes?\s*[:.]?$", re.IGNORECASE)
_FOOTNOTE_ENTRY = re.compile(r"^(?:\{\w{1,6}\}|\[\d{1,4}\])")
# Inside a FOOTNOTES section an entry may be a bare number too (My Ántonia's "1 The Bohemian name").
_SECTION_ENTRY = re.compile(r"^\d{1,3}[.)]?\s")
#: Footnotes above this share of the prose are named in a warning (a section that ran on?).
_MAX_FOOTNOTE_SHARE = 0.03
_LICENCE = re.compile(r"project gutenberg|gutenberg\.(?:org|net)|gutenberg literary archive", re.IGNORECASE)
_PRODUCER = re.compile(r"^\[?(?:produced by|transcribed (?:from|by)|e-?text prepared by|this e-?(?:text|book) was "
                       r"(?:prepared|produced)|transcriber['’]?s? notes?|note from the transcriber|"
                       r"distributed proofread|"
                       # Transcribers' notes that are paragraphs of their own, wherever they stand.
                       r"text (?:enclosed|surrounded) by (?:underscores|equals signs|asterisks)|"
                       r"this (?:version of the )?(?:e-?)?text cannot represent|"
                       r"(?:obvious )?(?:typographical|printer['’]?s) errors have been|"
                       r"the following (?:corrections|changes) have been made)", re.IGNORECASE)
# Tags that may span lines (captions run on); bounded, so an unclosed bracket eats no chapter.
_INLINE = (("illustration", re.compile(r"\[(?:Illustration|Picture)\b[^\]]{0,2000}\]", re.IGNORECASE)),
           ("footnote", re.compile(r"\[(?:Footnote\b|\*)[^\]]{0,5000}\]", re.IGNORECASE)),
           ("producer's note", re.compile(r"\[Transcriber['’]?s? notes?[^\]]{0,5000}\]", re.IGNORECASE)),
           ("footnote", re.compile(r"(?<!\n\n)\{\d{1,4}[a-z]?\}")),  # not an entry's own, at a block's start
           ("url or e-mail", re.compile(r"\b(?:https?://|www\.)\S+|\b[\w.+-]+@[\w-]+\.[\w.-]*\w")))
_ILLUSTRATION_LINE = re.compile(r"^\[?(?:illustration|picture)\b", re.IGNORECASE)
_QUOTES = "\"'“”‘’«»"
_END_PUNCT = ".!?…:;,\"'”’)]—–-_"
_SMALL_WORDS = {"a", "an", "and", "at", "by", "for", "in", "of", "on", "or", "the", "to", "with"}
#: A block this long may hold a licence line; blocks this long on average mean no blank lines.
_LONG_BLOCK, _HUGE_BLOCK = 2_000, 5_000
#: Front matter larger than this share of the body means the story's start was misjudged.
_MAX_FRONT_SHARE = 0.25


@dataclass(frozen=True)
class Prose:
    """A book's prose paragraphs and what was left out, in the book's order."""

    paragraphs: tuple[str, ...]
    """The prose paragraphs, hard wraps undone and whitespace collapsed."""
    dropped: tuple[tuple[str, str], ...] = ()
    """(kind, text) of each piece left out (kinds: :data:`KINDS`), whitespace collapsed: the tags
    and markers cut out of paragraphs first, then whole paragraphs, each in the book's order. The
    licence outside Gutenberg's START/END lines is counted in ``licence_chars``, not listed."""
    marked: bool = True
    """Whether the file had Project Gutenberg's START/END lines (else it was taken whole)."""
    licence_chars: int = 0
    """Characters outside the START/END lines (header and licence), whitespace collapsed."""
    by_kind: dict[str, int] = field(default_factory=dict)
    """Dropped characters per kind, the licence outside the markers included."""

    @property
    def text(self) -> str:
        """The prose as the study splits it: paragraphs joined by blank lines."""
        return "\n\n".join(self.paragraphs)

    @property
    def prose_chars(self) -> int:
        return len(self.text)

    @property
    def dropped_chars(self) -> int:
        return sum(self.by_kind.values())


def fingerprint() -> str:
    """A hash of the cleaning's code (this module and the Gutenberg markers): part of the setup
    cache's key, so a changed rule never reuses references computed on the old prose."""
    from gpt2ft import gutenberg

    h = hashlib.sha256()
    for module in (__file__, gutenberg.__file__):
        h.update(Path(module).read_bytes())
    return h.hexdigest()[:16]


def decode(raw: bytes, source: str) -> str:
    """The text of a file's bytes: UTF-8 (with or without BOM; a file that is UTF-8 but for a few
    stray bytes, under one per hundred of its non-ASCII characters, keeps them as U+FFFD with a
    warning saying how many), UTF-16 with a BOM, else
    Windows-1252, else Latin-1. An empty or binary file is a ``UserError`` naming ``source``.

    Why not charset-normalizer (3.5.3, checked 2026-12-07): it names a cp1252 novel "cp1250" and
    a UTF-8 file with one stray cp1252 byte "mac_iceland", turning every curly quote to mojibake.
    cp1252 comes before Latin-1 because older downloads and Word exports are cp1252: read as
    Latin-1, their quotes, dashes and ellipses become C1 control characters."""
    if not raw.strip():
        raise UserError(f"{source} is empty; pass the plain-text file of a book.")
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        text = raw.decode("utf-16", errors="replace")
    else:
        text = raw.decode("utf-8-sig", errors="replace")
        bad = text.count("\ufffd") - raw.count("\ufffd".encode())
        good = sum(1 for c in text if ord(c) > 127) - text.count("\ufffd")
        if bad * 100 > good:  # UTF-8 only where its multi-byte characters outnumber the stray bytes
            try:
                text = raw.decode("cp1252")
            except UnicodeDecodeError:  # cp1252 leaves five bytes undefined; Latin-1 decodes all
                text = raw.decode("latin-1")  # the control-character test below judges
        elif bad:
            log.warning("%s is UTF-8 but for %d byte(s), read as U+FFFD", source, bad)
    controls = sum(1 for c in text[:100_000] if ord(c) < 32 and c not in "\t\n\r\f" or 0x7f <= ord(c) < 0xa0)
    if "\x00" in text or controls > 0.01 * min(len(text), 100_000):
        raise UserError(f"{source} is not a text file (binary bytes, or none of UTF-8, Windows-1252, Latin-1); "
                        "pass the plain-text file of a book.")
    return text


def read(path) -> tuple[Prose, str]:
    """The prose of the book file at ``path`` and the sha256 of its bytes (what a run records)."""
    raw = read_bytes(path)
    return clean(decode(raw, str(path))), hashlib.sha256(raw).hexdigest()


def clean(text: str) -> Prose:
    """The prose of a book's text (a Gutenberg file or plain text): see the module's docstring."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    marked = has_markers(text)
    body = strip_gutenberg(text)
    dropped: list[tuple[str, str]] = []
    for kind, pattern in _INLINE:
        body = pattern.sub(lambda m, k=kind: _drop(dropped, k, m.group(0)), body)
    blocks = _blocks(body)
    kinds = _classify(blocks)
    paragraphs = []
    for block, kind in zip(blocks, kinds):
        if kind is None:
            paragraphs.append(" ".join(block.split()))
        else:
            _drop(dropped, kind, block)
    by_kind = Counter()
    for kind, piece in dropped:
        by_kind[kind] += len(piece)
    if by_kind["footnote"] > max(1000, _MAX_FOOTNOTE_SHARE * sum(map(len, paragraphs))):
        log.warning("footnotes are %s characters, over %.0f%% of the prose: check `gpt2ft book`'s footnote lines",
                    f"{by_kind['footnote']:,}", 100 * _MAX_FOOTNOTE_SHARE)
    licence = max(0, len(" ".join(text.split())) - len(" ".join(strip_gutenberg(text).split())))
    if licence:
        by_kind["licence"] += licence
    return Prose(tuple(paragraphs), tuple(dropped), marked, licence,
                 {k: by_kind[k] for k in KINDS if by_kind[k]})


def _blocks(body: str) -> list[str]:
    """The body's paragraphs: blocks between blank lines. A book without blank lines between its
    paragraphs (one paragraph per line, as many editors and converters write) gives few, huge
    blocks: those are split before indented lines where its paragraphs are indented, else at every
    line. In any long block a licence or producer's line stands alone, so its rule drops that line,
    not the block around it."""
    blocks = [b for b in re.split(r"\n[ \t]*\n", body) if b.strip()]
    few_huge = len(body) > 20_000 and len(blocks) * _HUGE_BLOCK < len(body)
    out = []
    for block in blocks:
        if len(block) <= _LONG_BLOCK:
            out.append(block)
            continue
        lines = block.strip("\n").split("\n")
        if few_huge and len(block) > _HUGE_BLOCK:
            indented = sum(1 for ln in lines[1:] if re.match(r"[ \t]+\S", ln)) >= len(lines) / 20
            out.extend(re.split(r"\n(?=[ \t]+\S)", block) if indented else [ln for ln in lines if ln.strip()])
            continue
        run: list[str] = []
        for ln in lines:  # a licence or producer's line inside a long block: its own block
            if _LICENCE.search(ln) or _PRODUCER.match(ln.strip()):
                out.extend(["\n".join(run)] if run else [])
                out.append(ln)
                run = []
            else:
                run.append(ln)
        out.extend(["\n".join(run)] if run else [])
    return [b for b in out if b.strip()]


def _drop(dropped: list[tuple[str, str]], kind: str, piece: str) -> str:
    flat = " ".join(piece.split())
    if flat:
        dropped.append((kind, flat))
    return ""


def _classify(blocks: list[str]) -> list[str | None]:
    """Each block's kind of apparatus, or None for prose."""
    kinds: list[str | None] = []
    in_footnotes = False
    for i, block in enumerate(blocks):
        kind = _apparatus(block)
        if kind == "footnote" and _FOOTNOTES_HEAD.match(block.strip()):
            in_footnotes = True  # a FOOTNOTES section runs while its entries do ("{1} ...", "[1] ...")
        elif in_footnotes and kind is None and (_SECTION_ENTRY.match(block.strip()) or i + 1 < len(blocks)
                                                and _FOOTNOTE_ENTRY.match(blocks[i + 1].strip())):
            kind = "footnote"  # a numbered entry, or an entry's second paragraph with another after it
        elif kind != "footnote":
            in_footnotes = False  # a heading or the story again: per-chapter footnotes end here
        kinds.append(kind)
    for i in range(1, len(blocks) - 1):
        if kinds[i] == "heading" and kinds[i - 1] is None and _in_speech(blocks[i - 1], blocks[i], blocks[i + 1]):
            kinds[i] = None
    # A spoken line opens the story only where a sentence follows it: a list of illustrations
    # has quoted titles too ("“Got it at Last!”"), each followed by another title.
    start = next((i for i, (b, k) in enumerate(zip(blocks, kinds)) if k is None and _opens_story(b)
                  and (b.lstrip()[0] not in _QUOTES or i + 1 < len(kinds) and kinds[i + 1] is None
                       and _ends_sentence(blocks[i + 1]) and not _caption(blocks[i + 1]))), 0)
    front = sum(len(b) for b, k in zip(blocks[:start], kinds) if k is None)
    if front <= _MAX_FRONT_SHARE * sum(len(b) for b in blocks):
        kinds[:start] = [k if k in ("licence", "producer's note") else "front matter" for k in kinds[:start]]
    return kinds


def _apparatus(block: str) -> str | None:
    """The kind of apparatus ``block`` is by its form alone, or None."""
    lines = [ln.strip() for ln in block.strip().split("\n")]
    flat = " ".join(" ".join(lines).split())
    if _LICENCE.search(flat):
        return "licence"
    if _PRODUCER.match(flat):
        return "producer's note"
    if _THE_END.match(flat):
        return "the end"
    if _FOOTNOTES_HEAD.match(flat) or _FOOTNOTE_ENTRY.match(flat):
        return "footnote"
    if all(_ILLUSTRATION_LINE.match(ln) for ln in lines):
        return "illustration"
    if _heading(lines, flat):
        return "heading"
    return None


def _heading(lines: list[str], flat: str) -> bool:
    """A heading: short, not spoken, and numbered, a lone numeral, in capitals or in title case
    without end punctuation. "No." and "“TOM!”" are not headings."""
    if len(lines) > 4 or len(flat) > 300 or flat[0] in _QUOTES or flat[-1] in _QUOTES:
        return False
    if _NUMBERED.match(flat) or _LONE_NUMERAL.match(flat):
        return True
    if len(lines) > 3 or len(flat) > 200:
        return False
    letters = [c for c in flat if c.isalpha()]
    # Capitals ending in "," "!" or "?" are shouted or sung ("SAN--CTA MARI-I-I-A,"), not headings.
    if len(letters) >= 2 and flat[-1] not in ",!?" and sum(c.isupper() for c in letters) >= 0.9 * len(letters):
        return True
    words = flat.split()
    return (len(lines) == 1 and len(words) <= 6 and flat[-1] not in _END_PUNCT and not any(c.isdigit() for c in flat)
            and all(w[0].isupper() or not w[0].isalpha() or w.lower() in _SMALL_WORDS for w in words))


def _in_speech(before: str, block: str, after: str) -> bool:
    """Whether a heading by its form alone (capitals, title case) is a line of the story: a reply
    or a shout between spoken lines ("Yes", "HELP."), or a letter's signature after its closing
    ("Yours truly," then "John Smith"). A numbered heading or a lone numeral is always a heading."""
    flat = " ".join(block.split())
    if _NUMBERED.match(flat) or _LONE_NUMERAL.match(flat):
        return False
    before, after = before.strip(), after.strip()
    return before.endswith(",") or (before[0] in _QUOTES or before[-1] in _QUOTES) and after[:1] in tuple(_QUOTES)


def _opens_story(block: str) -> bool:
    """Whether ``block`` can be the story's first paragraph: a sentence that ends as one, and
    spoken or of six words or more, not centred and not bracketed (a title page's lines, a list
    of illustrations' titles such as "'Tendin' to Business", are neither)."""
    lines = [ln for ln in block.split("\n") if ln.strip()]
    flat = " ".join(block.split())
    titles = len(lines) >= 3 and all(len(ln.strip()) < 60 and not ln.strip()[0].islower() for ln in lines)
    if not _ends_sentence(flat) or titles:
        return False  # a run of short lines each its own title (a list of captions) opens no story
    if flat[0] in _QUOTES:
        return True
    indent = min(len(ln) - len(ln.lstrip()) for ln in lines)
    return indent < 8 and flat[0] != "[" and len(flat.split()) >= 6 and any(c.islower() for c in flat)


def _caption(block: str) -> bool:
    """A list of illustrations' title ("Huck Finn at the Window."): one short line whose words
    after the first are capitalised (small words aside), unlike a reply such as "No answer."."""
    words = [w for w in block.split()[1:] if w.lower().strip(_QUOTES + ".,!?") not in _SMALL_WORDS]
    return "\n" not in block.strip() and len(block) < 80 and bool(words) and all(w[0].isupper() for w in words)


def _ends_sentence(block: str) -> bool:
    return block.rstrip().rstrip("\"'”’)_*")[-1:] in (".", "!", "?", "…")


def summary(prose: Prose, source: str, lines_per_kind: int = 3) -> str:
    """What was kept and dropped, by kind, with the first pieces of each kind (``gpt2ft book``
    prints it; the study logs it as ``dropped.txt``)."""
    total = prose.prose_chars + prose.dropped_chars
    out = [f"{source}: kept {prose.prose_chars:,} characters of prose in {len(prose.paragraphs):,} paragraphs "
           f"({prose.prose_chars / max(total, 1):.1%}); dropped {prose.dropped_chars:,}"
           + ("" if prose.marked else " (no Project Gutenberg START/END lines: the file was taken whole)")]
    for kind, chars in prose.by_kind.items():
        out.append(f"\n{kind}: {chars:,} characters ({chars / max(total, 1):.1%})")
        pieces = [t for k, t in prose.dropped if k == kind]
        if kind == "licence" and prose.licence_chars:
            out.append(f"  {prose.licence_chars:,} outside the START/END lines")
        for piece in pieces[:lines_per_kind]:
            out.append(f"  | {piece[:100]}{'...' if len(piece) > 100 else ''}")
        if len(pieces) > lines_per_kind:
            out.append(f"  ... and {len(pieces) - lines_per_kind} more")
    return "\n".join(out)


def dropped_text(prose: Prose) -> str:
    """Every dropped piece, one per line with its kind (the ``dropped.txt`` artifact)."""
    head = f"# licence: {prose.licence_chars} characters outside the START/END lines\n" if prose.licence_chars else ""
    return head + "".join(f"{kind}\t{piece}\n" for kind, piece in prose.dropped)
