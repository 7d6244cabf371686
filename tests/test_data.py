"""The book: cleaning, the split into training and held-out parts, tokens and windows.

The real-book tests use Gulliver's Travels (skipped when it is absent); the synthetic ones
build small Gutenberg-style files and always run.
"""
from __future__ import annotations

import bisect
import hashlib
import re
from pathlib import Path

import pytest
import torch

from gpt2ft.config import DataConfig, ModelConfig, load_config
from gpt2ft.data import encode, load_book, normalise_ws, split_segments, tokenize_book, windows
from gpt2ft.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[1]
GULLIVER = ROOT / "experiments" / "gulliver.yaml"
# The four voyages' headings as they stand in pg829.txt (whitespace collapsed).
VOYAGES = ("PART I. A VOYAGE TO LILLIPUT.", "PART II. A VOYAGE TO BROBDINGNAG.",
           "PART III. A VOYAGE TO LAPUTA", "PART IV. A VOYAGE TO THE COUNTRY OF THE HOUYHNHNMS.")
LICENCE_PHRASES = ("gutenberg", "literary archive foundation", "www.gutenberg.org",
                   "this ebook is for the use of anyone", "full license", "trademark")


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tokenizer(monkeypatch_module):
    from gpt2ft.model import load_tokenizer

    tok = load_tokenizer(ModelConfig(name="random-gpt2"))
    assert len(tok) == 50257
    return tok


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def data_cfg() -> DataConfig:
    """The real experiment's data settings (block 256, every 10th segment held out)."""
    return load_config(GULLIVER).data


@pytest.fixture(scope="module")
def real(book, data_cfg):
    return load_book(data_cfg, str(book))


@pytest.fixture(scope="module")
def real_tokens(real, tokenizer, data_cfg):
    return tokenize_book(real, tokenizer, data_cfg.block_size)


@pytest.fixture(scope="module")
def flat_body(book) -> str:
    """The book between the markers, footnote markers dropped, whitespace collapsed: an
    independent view of the text to locate passages in."""
    raw = book.read_text(encoding="utf-8-sig")
    start = raw.index("START OF THE PROJECT GUTENBERG EBOOK")
    end = raw.index("END OF THE PROJECT GUTENBERG EBOOK")
    body = raw[raw.index("\n", start):raw.rindex("\n", 0, end)]
    return normalise_ws(re.sub(r"\{\d+[a-z]?\}", "", body))


def long_paragraphs(text: str, min_chars: int = 200) -> list[str]:
    # Short paragraphs ("CHAPTER I.") recur in every voyage, so they prove nothing.
    return [p for p in text.split("\n\n") if len(p) >= min_chars]


# ---------------------------------------------------------------------- the real book

def test_header_and_licence_are_stripped(real):
    for part in (real.train_text, real.heldout_text):
        lower = part.lower()
        for phrase in LICENCE_PHRASES:
            assert phrase not in lower, phrase
        assert "*** start of" not in lower and "*** end of" not in lower
        assert "***" not in part


def test_footnote_markers_are_gone(book, real):
    assert re.search(r"\{\d+\}", book.read_text(encoding="utf-8-sig"))  # the file has them
    for part in (real.train_text, real.heldout_text):
        assert re.search(r"\{\d+\}", part) is None


def test_hard_wraps_are_undone(real):
    # Paragraphs are joined by blank lines; no paragraph keeps the file's ~70-column wraps.
    for part in (real.train_text, real.heldout_text):
        for para in part.split("\n\n"):
            assert "\n" not in para
            assert para == para.strip()


def test_the_body_runs_from_the_story_to_its_end(real, flat_body):
    assert real.n_segments > 100
    assert 0 not in real.heldout_segments  # the opening page trains
    train, held = normalise_ws(real.train_text), normalise_ws(real.heldout_text)
    # The prose starts at the publisher's letter: the transcriber's line and the title page are out.
    opening = flat_body.index("The author of these Travels")
    assert train.startswith(flat_body[opening:opening + 200])
    assert "Transcribed from" not in train and "GULLIVER’S TRAVELS INTO SEVERAL" not in train
    # It ends before the FOOTNOTES section, with the last paragraph of the story.
    tail = flat_body[:flat_body.index("FOOTNOTES:")].rstrip()[-100:]
    assert train.endswith(tail) or held.endswith(tail)
    dropped = real.prose.dropped_chars - real.prose.licence_chars
    assert len(train) + len(held) == pytest.approx(len(flat_body) - dropped, abs=len(real.heldout_segments) + 300)


def test_sha256_is_the_files(book, real):
    assert real.sha256 == hashlib.sha256(book.read_bytes()).hexdigest()
    assert real.source == str(book)
    assert re.fullmatch(r"[0-9a-f]{64}", real.body_sha256)
    assert real.body_sha256 != real.sha256


def test_heldout_paragraphs_are_not_in_training(real):
    held = long_paragraphs(real.heldout_text, 40)
    assert len(held) > 40
    leaked = [p[:60] for p in held if p in real.train_text]
    assert leaked == []


def test_heldout_share_of_the_book(real):
    total = len(real.train_text) + len(real.heldout_text)
    assert 0.07 < len(real.heldout_text) / total < 0.13  # every 10th segment
    assert len(real.heldout_segments) == len(range(5, real.n_segments, 10))


def test_no_heldout_window_is_a_training_window(real, tokenizer):
    data = tokenize_book(real, tokenizer, 64)
    train = {tuple(w) for w in data.train_windows.tolist()}
    assert train
    assert not any(tuple(w) in train for w in data.heldout_windows.tolist())


def test_heldout_16grams_are_almost_never_in_training(real_tokens):
    n = 16
    tr, held = real_tokens.train_ids, real_tokens.heldout_ids
    seen = {hash(tuple(tr[i:i + n])) for i in range(len(tr) - n + 1)}
    grams = [hash(tuple(held[i:i + n])) for i in range(len(held) - n + 1)]
    share = sum(g in seen for g in grams) / len(grams)
    assert share < 0.005, share


def _voyage_of(positions: list[int], flat_body: str, text: str) -> list[int]:
    out = []
    for para in long_paragraphs(text):
        pos = flat_body.find(para)
        assert pos >= 0, f"not book text: {para[:60]!r}"
        out.append(bisect.bisect_right(positions, pos))
    return out


def test_both_parts_cover_all_four_voyages_in_book_order(real, flat_body):
    starts = [flat_body.find(h) for h in VOYAGES]
    assert all(s >= 0 for s in starts), starts
    assert starts == sorted(starts)
    held = _voyage_of(starts, flat_body, real.heldout_text)
    train = _voyage_of(starts, flat_body, real.train_text)
    # 0 is the front matter; 1-4 are the voyages.
    assert {1, 2, 3, 4} <= set(held), set(held)
    assert {1, 2, 3, 4} <= set(train)
    assert held == sorted(held) and train == sorted(train)  # the book's order is kept
    # No voyage dominates the held-out part (a held-out tail would be all Houyhnhnms).
    counts = [held.count(v) for v in (1, 2, 3, 4)]
    assert min(counts) >= 3, counts


def test_token_count_matches_the_readme(real_tokens):
    total = len(real_tokens.train_ids) + len(real_tokens.heldout_ids)
    # ~129,900 since the cleaning drops the headings, the front matter and the FOOTNOTES section.
    assert 125_000 <= total <= 150_000, total


def test_windows_have_the_block_shape(real, real_tokens, tokenizer, data_cfg):
    block = data_cfg.block_size
    tw, hw = real_tokens.train_windows, real_tokens.heldout_windows
    assert real_tokens.block_size == block
    assert tw.dim() == 2 and tw.shape[1] == block and tw.dtype == torch.long
    assert hw.dim() == 2 and hw.shape[1] == block and hw.dtype == torch.long
    # The method's numbers: ~116k training tokens -> ~450 windows of 256; the held-out ~10% of the
    # book gives ~55 windows, of which a fixed sample of data.heldout_windows (32) is evaluated.
    assert 400 <= tw.shape[0] <= 560, tw.shape
    assert hw.shape[0] == data_cfg.heldout_windows == 32, hw.shape
    # Windows are the token stream itself, cut in order: the ragged tail alone is dropped.
    ids = encode(tokenizer, real.train_text)
    assert tw.shape[0] == ids.numel() // block
    assert torch.equal(tw.flatten(), ids[: tw.numel()])
    assert 0 <= int(tw.min()) and int(tw.max()) < len(tokenizer)


def test_labels_are_the_inputs(real_tokens):
    """Training and evaluation pass the window as both input and label; the model shifts."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2ft.model import Runtime
    from gpt2ft.train import evaluate

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=256, n_layer=1, n_embd=16,
                                       n_head=2)).eval()
    x = real_tokens.heldout_windows[:2]
    loss = evaluate(model, x, batch_size=2, runtime=Runtime(torch.device("cpu"), None))
    with torch.no_grad():
        logits = model(input_ids=x).logits
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                               x[:, 1:].reshape(-1))
    assert loss == pytest.approx(float(manual), rel=1e-5)


def test_metric_ids_are_whitespace_normalised(real, real_tokens, tokenizer):
    assert real_tokens.heldout_ids == encode(tokenizer, normalise_ws(real.heldout_text)).tolist()
    assert len(real_tokens.train_ids) > 6 * len(real_tokens.heldout_ids)


# ------------------------------------------------------------------------- synthetic

def gutenberg_file(tmp_path: Path, body_paragraphs: list[str], name: str = "book.txt",
                   newline: str = "\n", bom: bool = False) -> Path:
    header = ("The Project Gutenberg EBook of A Test, by Nobody\n\nThis eBook is for the use of "
              "anyone anywhere at no cost.\n\n*** START OF THIS PROJECT GUTENBERG EBOOK A TEST ***\n\n")
    footer = ("\n\n*** END OF THIS PROJECT GUTENBERG EBOOK A TEST ***\n\nSECRET LICENCE TEXT: "
              "the Project Gutenberg Literary Archive Foundation.\n")
    text = header + "\n\n".join(body_paragraphs) + footer
    path = tmp_path / name
    data = text.replace("\n", newline).encode("utf-8")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


def numbered(n: int, chars: int = 120) -> list[str]:
    """``n`` paragraphs, each hard-wrapped over two lines, each about ``chars`` long."""
    out = []
    for i in range(n):
        words = f"Paragraph P{i:02d} begins here and"
        filler = " lorem" * ((chars - len(words)) // 6)
        out.append(f"{words}\n{filler.strip()} end.")
    return out


def test_synthetic_book_splits_every_kth_segment(tmp_path):
    path = gutenberg_file(tmp_path, numbered(10))
    # One paragraph (>= 100 chars) per segment; every 2nd held out, offset by k//2 = 1.
    book = load_book(DataConfig(segment_chars=100, heldout_every=2), str(path))
    assert book.n_segments == 10
    assert book.heldout_segments == (1, 3, 5, 7, 9)
    held = re.findall(r"P(\d\d)", book.heldout_text)
    train = re.findall(r"P(\d\d)", book.train_text)
    assert held == ["01", "03", "05", "07", "09"]
    assert train == ["00", "02", "04", "06", "08"]
    for part in (book.train_text, book.heldout_text):
        assert "Gutenberg" not in part and "SECRET" not in part and "START OF" not in part
        assert "\n\n" in part
        for para in part.split("\n\n"):
            assert "\n" not in para and para.startswith("Paragraph P")
    assert book.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_synthetic_book_with_crlf_bom_and_footnotes(tmp_path):
    paras = numbered(6)
    paras[2] = paras[2].replace("begins", "begins{12}")
    path = gutenberg_file(tmp_path, paras, newline="\r\n", bom=True)
    book = load_book(DataConfig(segment_chars=100, heldout_every=3), str(path))
    assert book.heldout_segments == (1, 4)
    for part in (book.train_text, book.heldout_text):
        assert "\r" not in part and "{12}" not in part and "\ufeff" not in part
    assert "Paragraph P02 begins here" in book.train_text


def test_max_chars_draws_its_slice_from_places_spread_over_the_training_part(tmp_path):
    path = gutenberg_file(tmp_path, numbered(40))
    whole = load_book(DataConfig(segment_chars=100, heldout_every=2), str(path))

    def numbers(text):
        return [int(n) for n in re.findall(r"P(\d\d)", text)]
    trained = numbers(whole.train_text)
    for pieces in (1, 2, 4):
        book = load_book(DataConfig(segment_chars=100, heldout_every=2, max_chars=1000, slice_pieces=pieces),
                         str(path))
        kept = numbers(book.train_text)
        at = [trained.index(n) for n in kept]
        # About max_chars of whole paragraphs (each ~110 characters), in training order...
        assert at == sorted(at) and 8 <= len(kept) <= 10, (pieces, kept)
        runs = [[at[0]]]
        for a, b in zip(at, at[1:]):
            runs[-1].append(b) if b == a + 1 else runs.append([b])
        # ...in `pieces` runs, the i-th inside the i-th equal part, never the training part's opening.
        assert len(runs) == pieces, (pieces, runs)
        for i, run in enumerate(runs):
            assert i * len(trained) / pieces <= run[0] and run[-1] < (i + 1) * len(trained) / pieces, (pieces, runs)
        assert at[0] > 0
        # The rest of the training part is kept apart, and the held-out part is the whole book's.
        assert sorted(kept + numbers(book.unused_text)) == sorted(trained)
        assert book.heldout_text == whole.heldout_text and len(numbers(book.heldout_text)) == 20
    with pytest.raises(ConfigError):
        DataConfig(slice_pieces=0)


def test_a_slice_of_long_paragraphs_stays_near_max_chars():
    from gpt2ft.data import _cut
    # A paragraph of 1,500 characters where each of four runs has a share of 375: the first run
    # takes it whole and the later runs, their shares passed, take nothing more.
    paras = ["a" * 100] * 5 + ["b" * 1500] + ["c" * 100] * 30
    kept, rest = _cut(paras, 1500, 4)
    assert kept == ["b" * 1500] and len(rest) == 35
    # Short paragraphs: about max_chars in all, from four places.
    kept, rest = _cut(["x" * 100] * 100, 2000, 4)
    assert sum(map(len, kept)) == 2000 and len(kept) + len(rest) == 100


def test_text_without_markers_is_taken_whole(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("\n\n".join(numbered(30)))
    book = load_book(DataConfig(segment_chars=100), str(path))
    assert not book.prose.marked
    assert sorted(re.findall(r"P(\d\d)", book.train_text + book.heldout_text)) == [f"{i:02d}" for i in range(30)]


def test_too_short_text_is_a_user_error(tmp_path):
    path = gutenberg_file(tmp_path, ["A few words.", "And a few more."])
    with pytest.raises(UserError, match="too short"):
        load_book(DataConfig(), str(path))


def test_empty_and_missing_files_are_user_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(UserError):
        load_book(DataConfig(), str(empty))
    with pytest.raises(UserError, match="does not exist"):
        load_book(DataConfig(), str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match=r"is a directory, not a file"):
        load_book(DataConfig(), str(tmp_path))  # a folder is not a corpus file


def test_too_few_windows_is_a_user_error(tmp_path, tokenizer):
    path = gutenberg_file(tmp_path, numbered(4))
    book = load_book(DataConfig(segment_chars=100, heldout_every=2), str(path))
    with pytest.raises(UserError, match="too short"):
        tokenize_book(book, tokenizer, 1024)
    data = tokenize_book(book, tokenizer, 8)
    assert data.train_windows.shape[1] == 8 and data.heldout_windows.shape[0] >= 1


def test_normalise_ws():
    assert normalise_ws("  The  cat\n\nsat\ton\r\nthe   mat.  ") == "The cat sat on the mat."
    assert normalise_ws("") == ""
    assert normalise_ws("one") == "one"


def test_split_segments_known_numbers():
    paras = ["a" * 60, "b" * 50, "c" * 120, "d" * 10, "e" * 30]
    segments, held = split_segments(paras, 100, 2)
    # 60+50 >= 100 closes the first segment; 120 the second; the rest is the last one.
    assert segments == [["a" * 60, "b" * 50], ["c" * 120], ["d" * 10, "e" * 30]]
    assert held == [1]

    segments, held = split_segments(["x" * 100] * 10, 100, 4)
    assert len(segments) == 10 and all(len(s) == 1 for s in segments)
    assert held == [2, 6]  # i % 4 == 4 // 2

    segments, held = split_segments(["x" * 100] * 25, 100, 10)
    assert held == [5, 15]

    segments, held = split_segments(["x" * 10] * 3, 100, 10)
    assert segments == [["x" * 10] * 3] and held == []


def test_windows_drop_the_ragged_tail():
    ids = torch.arange(10)
    w = windows(ids, 4)
    assert w.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    w[0, 0] = 99  # a copy, not a view of the token stream
    assert ids[0] == 0
    assert windows(torch.arange(3), 4).shape == (0, 4)


def test_encode_adds_no_special_tokens(tokenizer):
    assert encode(tokenizer, "Hello world").tolist() == [15496, 995]


def test_a_run_takes_the_long_paragraph_at_its_centre_cut_at_a_sentence_end():
    from gpt2ft.data import _cut
    # Issue 34 item 7: a run skipped the paragraph spanning its centre and took whole chapter-sized
    # ones, so eight paragraphs of 20,000 characters sliced to 40,000 gave two runs, not four.
    sentence = "He walked on and on. "
    paras = [f"P{i} " + sentence * 950 for i in range(8)]
    kept, rest = _cut(paras, 40_000, 4)
    # Each part holds two paragraphs; its centre is where the second of them starts.
    assert [p[:3] for p in kept] == ["P1 ", "P3 ", "P5 ", "P7 "]
    assert all(p.endswith("on.") and len(p) <= 10_000 for p in kept)
    assert 0.95 * 40_000 <= sum(map(len, kept)) <= 40_000
    # Nothing is lost: each cut paragraph's tail is left to the rest, in order.
    assert " ".join(kept[0].split() + rest[1].split()) == " ".join(paras[1].split())
    assert len(rest) == 8
    # A single paragraph longer than the share: cut at the sentence end nearest below it.
    kept, _ = _cut(["x" * 10] + ["First one. Second one. Third one. " * 50] * 3, 1001, 1)
    assert kept and kept[0].endswith("one.") and 900 <= len(kept[0]) <= 1001
