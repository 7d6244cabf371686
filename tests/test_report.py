"""What the researcher reads names the picked point: the samples page's selected column and the
printed before/after table carry the picked step's numbers, not its trial's end."""
from __future__ import annotations

from types import SimpleNamespace

from test_candidates import FakeStudy, FakeTrial, pt

from gpt2ft import report
from gpt2ft.summary import summarize


def _study() -> FakeStudy:
    """Issue 27's case: trial 1 picked at step 8 (top100_ratio 0.531, memorization 0), its end at
    step 12 reading 0.5595 and 0.0017; trial 0 copies most."""
    refs = {"book_top100_ratio": 0.53, "base_heldout_loss": 3.8, "base_top100_ratio": 0.4}
    copier = FakeTrial(0, [pt(0, 0.37), pt(4, 0.60, mem=0.30, longest_copy=40.0)])
    picked = FakeTrial(1, [pt(0, 0.37), pt(8, 0.531, mem=0.0, longest_copy=5.0),
                           pt(12, 0.5595, mem=0.0017, longest_copy=9.0)])
    return FakeStudy([copier, picked], references=refs)


def _assets() -> SimpleNamespace:
    return SimpleNamespace(tokenizer=SimpleNamespace(decode=lambda ids: " ".join(f"w{i}" for i in ids)),
                           index=SimpleNamespace(hit_mask=lambda ids, n: [False] * len(ids)),
                           references=SimpleNamespace(samples={"base": [[1, 2, 3]]}))


def _header(page: str, name: str) -> str:
    return page.split(f"<th>{name}")[1].split("</th>")[0]


def test_the_selected_column_carries_the_picked_steps_numbers():
    summary = summarize(_study())
    assert summary.selected == (1, 8)
    page, named = report.study_samples(summary, _assets(), {0: [[7, 8, 9]], 1: [[4, 5, 6]]})
    head = _header(page, "selected (trial 1, step 8)")
    assert "top100_ratio 0.531" in head and "memorization 0" in head and "longest_copy 5" in head
    assert "0.5595" not in head and "0.0017" not in head
    assert "w4 w5 w6" in page and set(named) == {"selected (trial 1, step 8)", "most copying (trial 0)"}
    assert "memorization 0.3" in _header(page, "most copying (trial 0)")  # its end, whose samples it shows


def test_the_selected_column_exists_for_any_pick_and_says_when_its_samples_were_not_kept():
    summary = summarize(_study())
    page, named = report.study_samples(summary, _assets(), {0: [[7, 8, 9]], 1: None})
    head = _header(page, "selected (trial 1, step 8)")
    assert "top100_ratio 0.531" in head and report.NOT_KEPT in head
    assert "selected (trial 1, step 8)" not in named  # no samples, no novelty curve


def test_the_printed_before_after_table_gives_the_picked_points_numbers(capsys):
    from gpt2ft.cli import print_before_after

    print_before_after(summarize(_study()))
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("top100_ratio"))
    assert "0.5310" in row and "0.5595" not in row
    assert "after (1@8)" in out
