"""gpt2ft.prose and ``gpt2ft book``: the book's prose and only its prose, for any book.

Synthetic files pin the rule (apparatus out, every story paragraph in, dialogue included);
the seven novels of ../shared/data, where present, pin where each book's training text starts.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gpt2ft import cli, prose
from gpt2ft.config import DataConfig
from gpt2ft.data import load_book
from gpt2ft.style import load_other_novels

from conftest import TINY, book_path

# The story: narrative, one-word and short spoken lines, an unquoted short line, a letter, verse.
STORY = [
    "It was a cold morning when the stranger came to the village, and nobody knew his name.",
    "“No.”",
    "“I went.”",
    "No answer.",
    "‘TOM!’",
    "She looked at him for a long while before she spoke again, and then only to ask the way.",
    "“DEAR SIR,--I write to tell you that the house is let at last, and that we leave on Monday.”",
    "SAN--CTA MARI-I-I-A,",
    "The snow fell all that night upon the roofs of the village and on the road to the mill.",
    "    Over the hills and far away,\n    The piper played at break of day.",
    "He said nothing more, and in the morning he was gone, leaving only his coat behind him.",
]
FRONT = ["Produced by A. Volunteer and the Online Proofreading Team", "THE STRANGER\n\nA Novel\n\nBy Nobody",
         "      _To my mother_", "CONTENTS\n\nCHAPTER I. The Stranger Comes--A Cold Morning\n\nCHAPTER II. The Mill",
         "ILLUSTRATIONS\n\nThe Stranger\n\n“Got it at Last!”\n\n'Tendin' to Business\n\nIllustration: The Mill"]
GUTENBERG_HEAD = ("The Project Gutenberg EBook of The Stranger, by Nobody\n\nThis eBook is for the use of anyone\n\n"
                  "*** START OF THIS PROJECT GUTENBERG EBOOK THE STRANGER ***\n\n")
GUTENBERG_TAIL = ("\n\nEnd of the Project Gutenberg EBook of The Stranger\n\n"
                  "*** END OF THIS PROJECT GUTENBERG EBOOK THE STRANGER ***\n\nLICENCE: www.gutenberg.org\n")
APPARATUS = ("Produced by", "THE STRANGER", "A Novel", "By Nobody", "To my mother", "CONTENTS", "CHAPTER",
             "Chapter", "ILLUSTRATIONS", "Illustration", "Got it", "Tendin", "Picture", "[", "{", "FOOTNOTES",
             "Transcriber", "THE END", "gutenberg", "Gutenberg", "http", "@", "www", "PART")


def body() -> str:
    """The story with apparatus woven through its body (headings, tags, footnotes, notes)."""
    s = STORY
    return "\n\n".join([
        "CHAPTER I.", s[0] + "{1}", s[1], s[2], "[Illustration: The stranger at the door,\nhat in hand]",
        s[3], s[4],
        "PART II. The Mill", "Chapter 2", "II", s[5], s[6], "[Picture: The mill]", s[7],
        "[Transcriber's Note: a spelling was\nmade consistent.]", s[8],
        s[9] + " See http://example.org/x or me@example.org",
        "* * * * *", s[10], "THE END", "FOOTNOTES:", "{1} The village is in Kent.", "{2} A second note.",
    ])


def test_the_prose_comes_out_whole_and_the_apparatus_does_not():
    text = GUTENBERG_HEAD + "\n\n".join(FRONT) + "\n\n" + body() + GUTENBERG_TAIL
    out = prose.clean(text)
    want = [" ".join(p.split()) for p in STORY]
    want[9] += " See or"  # the URL and the address go, the sentence around them stays
    assert list(out.paragraphs) == want
    for piece in APPARATUS:
        assert piece not in out.text, piece
    assert out.marked
    assert set(out.by_kind) == {"licence", "producer's note", "front matter", "heading", "illustration", "footnote",
                                "the end", "url or e-mail"}
    assert out.prose_chars == len(out.text) and out.dropped_chars == sum(out.by_kind.values())
    kinds = dict((t, k) for k, t in out.dropped)
    # Before the story's first paragraph everything is front matter (the contents, the first heading).
    assert kinds["CHAPTER I. The Stranger Comes--A Cold Morning"] == kinds["CHAPTER I."] == "front matter"
    assert kinds["PART II. The Mill"] == "heading" and kinds["[Picture: The mill]"] == "illustration"
    assert kinds["{1} The village is in Kent."] == "footnote" and kinds["THE END"] == "the end"


def test_the_same_prose_without_markers_is_the_same_prose():
    marked = prose.clean(GUTENBERG_HEAD + "\n\n".join(FRONT) + "\n\n" + body() + GUTENBERG_TAIL)
    plain = prose.clean("\n\n".join(FRONT) + "\n\n" + body())
    assert plain.paragraphs == marked.paragraphs and not plain.marked
    assert prose.clean(body()).paragraphs == marked.paragraphs  # no front matter at all


def test_a_story_that_opens_with_dialogue_keeps_it():
    out = prose.clean("CHAPTER I\n\n“TOM!”\n\nNo answer.\n\n“TOM!”\n\nNo answer.\n\n" + STORY[0])
    assert out.paragraphs == ("“TOM!”", "No answer.", "“TOM!”", "No answer.", STORY[0])


def test_bom_crlf_and_latin1_are_read(tmp_path):
    text = "\r\n\r\n".join(["Le café était fermé ce matin-là, et personne ne savait pourquoi.", "“Non.”"] * 20)
    utf8, latin1 = tmp_path / "utf8.txt", tmp_path / "latin1.txt"
    utf8.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    latin1.write_bytes(text.replace("“", '"').replace("”", '"').encode("latin-1"))
    a, b = prose.read(utf8)[0], prose.read(latin1)[0]
    assert a.paragraphs[:2] == ("Le café était fermé ce matin-là, et personne ne savait pourquoi.", "“Non.”")
    assert b.paragraphs[0] == a.paragraphs[0] and b.paragraphs[1] == '"Non."'
    assert "\r" not in a.text and "\ufeff" not in a.text


@pytest.mark.parametrize("content", [b"", b"  \n\n", bytes(range(256)) * 40, b"\x81\x8d\x90\x9d\x05" * 500],
                         ids=["empty", "blank", "binary", "control bytes"])
def test_bad_files_are_one_sentence_and_exit_2(tmp_path, capsys, content):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    assert cli.main(["book", "--corpus", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gpt2ft: error: {path} is ") and err.count("\n") == 0 and err.endswith(".")


def test_gpt2ft_book_answers_fast_and_writes_the_prose(tmp_path):
    path = tmp_path / "book.txt"
    story = "\n\n".join([body()] * 50)
    path.write_text(GUTENBERG_HEAD + "\n\n".join(FRONT) + "\n\n" + story + GUTENBERG_TAIL, encoding="utf-8")
    out = tmp_path / "clean.txt"
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    res = subprocess.run([sys.executable, "-m", "gpt2ft.cli", "book", "--corpus", str(path), "--out", str(out)],
                         capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t
    assert res.returncode == 0, res.stderr
    assert seconds < 5, seconds
    assert "front matter:" in res.stdout and "heading:" in res.stdout and "| PART II. The Mill" in res.stdout
    assert out.read_text(encoding="utf-8") == prose.clean(path.read_text(encoding="utf-8")).text
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(range(256)) * 4)
    res = subprocess.run([sys.executable, "-m", "gpt2ft.cli", "book", "--corpus", str(bad)],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.count("\n") == 1


def test_the_other_novels_are_cleaned_like_the_book(tmp_path):
    (tmp_path / "novel.txt").write_text(GUTENBERG_HEAD + "\n\n".join(FRONT) + "\n\n" + body() + GUTENBERG_TAIL,
                                        encoding="utf-8")
    assert load_other_novels(tmp_path)["novel"] == prose.clean((tmp_path / "novel.txt").read_text()).text


def test_the_setup_cache_key_includes_the_cleaning(monkeypatch):
    from gpt2ft import cache
    from gpt2ft.config import load_config

    config = load_config(TINY)
    before = cache.cache_key(config, "0" * 64, "off")
    monkeypatch.setattr(prose, "fingerprint", lambda: "another rule")
    assert cache.cache_key(config, "0" * 64, "off") != before


# ------------------------------------------------------------------- the seven novels

SHARED = book_path().parent if book_path() else None
# Where each book's prose starts: its first paragraph of story (or the author's preface).
OPENINGS = {
    "gulliver.txt": "The author of these Travels, Mr. Lemuel Gulliver, is my ancient",
    "other/my_antonia_pg19810.txt": "LAST summer I happened to be crossing the plains of Iowa",
    "other/o_pioneers_pg24.txt": "One January day, thirty years ago, the little town of Hanover",
    "other/pride_and_prejudice_pg1342.txt": "It is a truth universally acknowledged, that a single man",
    "other/the_professor_pg1028.txt": "This little book was written before either “Jane Eyre”",
    "other/tom_sawyer_pg74.txt": "Most of the adventures recorded in this book really occurred",
    "other/wuthering_heights_pg768.txt": "1801.--I have just returned from a visit to my landlord",
}


@pytest.mark.parametrize("name", sorted(OPENINGS))
def test_each_novels_training_text_starts_with_its_story(name):
    if SHARED is None or not (SHARED / name).is_file():
        pytest.skip("the novels of ../shared/data are not available")
    t = time.perf_counter()
    cleaned, _ = prose.read(SHARED / name)
    seconds = time.perf_counter() - t
    assert seconds < 1.0, seconds  # the bound for a 600 kB novel
    # The book's prose, and so its whole training part, starts with the story...
    assert cleaned.paragraphs[0].startswith(OPENINGS[name])
    whole = load_book(DataConfig(segment_chars=400, heldout_every=5), str(SHARED / name))
    assert whole.train_text.startswith(OPENINGS[name])
    # ...and the demo's slice is four runs of the story's paragraphs from across the book.
    book = load_book(DataConfig(max_chars=8000, segment_chars=400, heldout_every=5), str(SHARED / name))
    paras = book.train_text.split("\n\n")
    assert 7000 < len(book.train_text) < 9000
    # Whole paragraphs, or the head of one longer than its run's share, cut at a sentence end.
    assert all(p in cleaned.paragraphs or any(q.startswith(p) for q in cleaned.paragraphs) for p in paras)
    assert not book.train_text.startswith(OPENINGS[name])
    for part in (book.train_text, book.heldout_text, book.unused_text):
        for piece in ("CHAPTER", "Chapter 1", "CONTENTS", "[Illustration", "Produced by", "Gutenberg", "THE END",
                      "{"):
            assert piece not in part, (name, piece)
    assert cleaned.by_kind["licence"] > 15_000 and cleaned.prose_chars > 290_000


def test_short_spoken_lines_of_the_novels_survive():
    if SHARED is None:
        pytest.skip("the novels of ../shared/data are not available")
    pride = prose.read(SHARED / "other/pride_and_prejudice_pg1342.txt")[0].paragraphs
    tom = prose.read(SHARED / "other/tom_sawyer_pg74.txt")[0].paragraphs
    assert {"“Bingley.”", "“Indeed!”", "“Not one.”"} <= set(pride)
    assert tom.count("No answer.") >= 3 and "“TOM!”" in tom
    pioneers = prose.read(SHARED / "other/o_pioneers_pg24.txt")[0].paragraphs
    assert "SAN--CTA MARI-I-I-A," in pioneers  # sung in capitals, not a heading


def test_a_story_start_found_late_is_not_taken_for_front_matter():
    # Verse without end punctuation, then one sentence: front matter that long (over a quarter of
    # the text) means the start was misjudged, and nothing is dropped as front matter.
    verse = ["The rain upon the hills\nThe wind along the shore", "And all the long night through\nThe sea"] * 10
    out = prose.clean("\n\n".join(verse + ["It ended there, as all such nights end, in a grey morning light."]))
    assert len(out.paragraphs) == 21 and "front matter" not in out.by_kind


def test_cp1252_and_utf8_with_a_stray_byte_are_read(tmp_path, caplog):
    # Issue 34 item 1: cp1252 was read as Latin-1 (curly quotes became C1 controls, a dialogue-dense
    # book was refused) and a UTF-8 file with one stray cp1252 byte was refused outright.
    story = ["“Well,” said he, “I don’t know — perhaps…”", "‘Yes,’ she answered.", STORY[0]] * 40
    cp = tmp_path / "cp1252.txt"
    cp.write_bytes("\r\n\r\n".join(story).encode("cp1252"))
    assert prose.read(cp)[0].paragraphs == tuple(story)
    mixed = tmp_path / "mixed.txt"
    raw = "\n\n".join(story + ["Le café était fermé."]).encode("utf-8")
    mixed.write_bytes(raw.replace("— perhaps".encode(), b"\x97 perhaps", 1))
    with caplog.at_level("WARNING"):
        out = prose.read(mixed)[0]
    assert out.paragraphs[0] == "“Well,” said he, “I don’t know \ufffd perhaps…”"
    assert out.paragraphs[1:] == tuple(story[1:] + ["Le café était fermé."])
    assert "UTF-8 but for 1 byte(s)" in caplog.text and str(mixed) in caplog.text


def test_per_chapter_footnotes_end_at_the_next_heading_or_story(caplog):
    # Issue 34 item 4: a FOOTNOTES section ran to the next CHAPTER/PART/BOOK heading, so with
    # chapters headed "II." everything after the first FOOTNOTES was dropped as footnotes.
    chapter = [STORY[0], "He came back with the note{1} in his hand.", STORY[5]]
    text = "\n\n".join(["I."] + chapter + ["FOOTNOTES:", "{1} A letter from the mill.", "II."] + chapter
                       + ["FOOTNOTES", "[1] The second note.", STORY[8], STORY[10]])
    out = prose.clean(text)
    body = [" ".join(p.split()) for p in chapter]
    body[1] = "He came back with the note in his hand."
    assert out.paragraphs == tuple(body * 2 + [STORY[8], STORY[10]])
    assert [t for k, t in out.dropped if k == "footnote"][-2:] == ["FOOTNOTES", "[1] The second note."]
    # Footnotes over a few per cent of the prose are named in a warning.
    notes = "\n\n".join(f"{{{i}}} " + "A long note on the mill and its history. " * 5 for i in range(40))
    with caplog.at_level("WARNING"):
        prose.clean("\n\n".join(chapter * 3 + ["FOOTNOTES:", notes]))
    assert "footnotes are" in caplog.text


def test_chapter_words_of_european_languages_are_headings_and_short_lines_in_speech_stay():
    # Issue 34 item 6: "Chapitre 1" etc. were kept as prose; "Yes", "HELP." and a letter's
    # signature between spoken lines were dropped as headings.
    headings = ["Chapitre 1", "Kapitel 12", "Capítulo 2", "Глава 3", "Capitolo IV", "Hoofdstuk 5"]
    speech = ["“Will you come with me to the mill tonight?” she asked him.", "Yes",
              "“Then come,” she said, and they went out together into the cold.", "HELP.",
              "“Who called?” cried the miller from the door of the mill.",
              "“DEAR SIR,--The house is let at last, and we leave on Monday. Yours truly,",
              "John Smith", STORY[0]]
    out = prose.clean("\n\n".join([headings[0], STORY[0]] + headings[1:] + speech))
    assert out.paragraphs == (STORY[0],) + tuple(speech)
    assert {t for k, t in out.dropped if k in ("heading", "front matter")} >= set(headings)


def test_a_book_of_one_paragraph_per_line_is_split_and_its_licence_line_alone_dropped(tmp_path):
    # Issue 34 item 3: without blank lines the whole book was one paragraph: "too short" for the
    # study, and with a "Project Gutenberg" line at its top the licence rule dropped all of it.
    flat = [f"{i}. " + " ".join(STORY[i % len(STORY)].split()) for i in range(400)]
    out = prose.clean("\n".join(["This eBook is from Project Gutenberg, for anyone anywhere."] + flat))
    assert out.paragraphs == tuple(flat) and out.by_kind["licence"] < 100
    # Paragraphs indented, hard-wrapped, no blank lines: split before each indented line.
    wrapped = "\n".join("    " + textwrap.fill(s, 40) for s in flat)
    assert prose.clean(wrapped).paragraphs == tuple(flat)
    # A licence line inside a long block of a normal book drops that line only.
    block = "\n".join(["Produced by A. Volunteer."] + [STORY[0]] * 30)
    out = prose.clean(block + "\n\n" + "\n\n".join(STORY))
    assert out.paragraphs[0] == " ".join([STORY[0]] * 30) and out.by_kind["producer's note"] < 30


def test_where_cleaning_took_the_book_the_error_names_the_cause(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(["Project Gutenberg's licence, for anyone anywhere: " + STORY[0]] * 50
                                + [STORY[0]]), encoding="utf-8")
    want = (r"too short \(cleaning dropped [\d,]+ of its characters, most as licence, and kept "
            rf"{len(STORY[0])} in 1 paragraph\(s\): see `gpt2ft book")
    with pytest.raises(prose.UserError, match=want):
        load_book(DataConfig(segment_chars=400, heldout_every=5), str(path))


def test_transcribers_notes_and_a_quoted_illustrations_list_are_apparatus():
    # Issue 34 item 5: a transcriber's note as a paragraph of its own opened the prose, and a
    # list of illustrations whose captions are quoted lines was kept as dialogue.
    notes = ["Text enclosed by underscores is in italics.",
             "This version of the text cannot represent certain typographical effects. Italics are _underscored_."]
    captions_block = "\n".join(["“He had a Rat!”", "The Doctor Leads Huck.", "“Tom, Come Here!”", "Huck at the Door."])
    captions = ["“He had a Rat!”", "Huck Finn at the Window.", "“Tom, Come Here!”", "The Doctor Leads Huck."]
    for front in ([*notes, "CONTENTS", captions_block], ["CONTENTS", "ILLUSTRATED", *captions, notes[0]]):
        out = prose.clean("\n\n".join(front + ["CHAPTER I"] + STORY))
        assert out.paragraphs == tuple(" ".join(p.split()) for p in STORY), front
    mid = prose.clean("\n\n".join(STORY[:3] + [notes[1]] + STORY[3:]))
    assert notes[1] not in mid.text and dict((t, k) for k, t in mid.dropped)[notes[1]] == "producer's note"
