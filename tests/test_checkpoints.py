"""``gpt2ft.checkpoints``: what interrupted saves leave is removed, a study's checkpoints are its
own, and pruning keeps what a later pick may still need (issue 25, items 3, 5 and 6)."""
from __future__ import annotations

from pathlib import Path

from gpt2ft.checkpoints import Checkpoints, still_needed
from gpt2ft.summary import summarize
from test_candidates import FakeStudy, FakeTrial, pt


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_text("weights")
    return path


def test_what_interrupted_saves_left_is_removed_with_the_trials_checkpoints(tmp_path):
    ck = Checkpoints(tmp_path)
    _folder(ck.path(0, 4))
    _folder(ck.path(1, 4))
    left = [_folder(tmp_path / ".trial-0-step-8.a1b2c3.tmp"), _folder(tmp_path / ".trial-0-step-4.old"),
            _folder(tmp_path / ".trial-1-step-8.zz.tmp")]
    running = _folder(tmp_path / ".trial-2-step-4.q9.tmp")  # a live trial's save in progress
    assert ck.saved() == [(0, 4), (1, 4)]  # leftovers are no checkpoints
    assert ck.leftovers([0, 1, 2]) == sorted(left + [running])
    ck.keep_only([(0, 4)], finished=[0])
    assert ck.saved() == [(0, 4), (1, 4)] and not left[0].exists() and not left[1].exists()
    assert left[2].exists() and running.exists()  # not a finished trial's: maybe still being written
    ck.remove(1)
    assert ck.saved() == [(0, 4)] and not left[2].exists() and running.exists()


def test_a_study_of_the_same_name_has_its_own_checkpoints(tmp_path):
    base = Checkpoints(tmp_path / "checkpoints" / "tiny")
    old, new = base.of_study("aaaa"), base.of_study("bbbb")
    _folder(old.path(3, 40))
    assert old.saved() == [(3, 40)]
    assert new.saved() == [] and new.load(3, 40, runtime=None) is None
    assert base.of_study(None).root == base.root  # a study recorded before the uid keeps its folder


def _study(*trials) -> FakeStudy:
    return FakeStudy(list(trials))


def test_pruning_keeps_a_point_a_later_trial_can_make_a_contender(tmp_path):
    """Trial 0 leads (style -0.02, se 0.01); trial 1's end (style -0.05) lies just beyond two
    standard errors of it, so it is no contender now. But a later pick measured as widely as
    trial 2 was (se 0.03) brings it back within reach: trial 3 arrives and makes it a contender.
    Pruned on today's contenders alone, its checkpoint would be gone for good."""
    t0 = FakeTrial(0, [pt(4, 0.53)])
    t1 = FakeTrial(1, [pt(4, 0.50)])
    t2 = FakeTrial(2, [pt(4, 0.55, mem=0.3, top100_ratio_se=0.03)])  # copies: ineligible, but measured widely
    ck = Checkpoints(tmp_path)
    for n in range(3):
        _folder(ck.path(n, 4))
    before = summarize(_study(t0, t1, t2))
    c = before.candidates
    assert before.selected == (0, 4)
    assert set(zip(c[c["contender"]]["number"], c[c["contender"]]["step"])) == {(0, 4)}
    keep = still_needed(c, "bounded_style")
    assert keep == {(0, 4), (1, 4)}
    ck.keep_only(keep, finished=[0, 1, 2])
    assert ck.saved() == [(0, 4), (1, 4)]  # trial 2 copies: no pick can ever want it

    t3 = FakeTrial(3, [pt(4, 0.54, top100_ratio_se=0.03)])
    after = summarize(_study(t0, t1, t2, t3)).candidates
    assert after[after["number"] == 1]["contender"].item()
    assert ck.path(1, 4).is_dir()  # still there to re-measure


def test_far_behind_points_are_pruned_and_knee_keeps_every_eligible_point():
    c = summarize(_study(FakeTrial(0, [pt(4, 0.53)]), FakeTrial(1, [pt(4, 0.40)]),
                         FakeTrial(2, [pt(4, 0.55, mem=0.3)]))).candidates
    assert still_needed(c, "bounded_style") == {(0, 4)}
    assert still_needed(c, "knee") == {(0, 4), (1, 4)}
    assert still_needed(c.iloc[0:0], "bounded_style") == set()


def test_the_checkpoint_budget_keeps_what_the_pick_needs_first_then_the_best_style(tmp_path):
    """Issue 35 item 6: six finished points on disk, two the pick needs now and four a later pick
    might, a budget of three: the two, then the best-style other; the console line says so."""
    import pandas as pd

    from gpt2ft.checkpoints import within_budget

    ck = Checkpoints(tmp_path)
    styles = {(0, 4): -0.30, (0, 8): -0.02, (1, 4): -0.05, (1, 8): -0.01, (2, 4): -0.04, (2, 8): float("nan")}
    for key in styles:
        _folder(ck.path(*key))
    table = pd.DataFrame([{"number": n, "step": s, "style_score": v} for (n, s), v in styles.items()])
    first, rest = {(0, 4), (1, 4)}, {(0, 8), (1, 8), (2, 4), (2, 8), (1, 4)}
    assert within_budget(table, first, rest, 3) == {(0, 4), (1, 4), (1, 8)}
    assert within_budget(table, first, rest, 1) == {(1, 4)}  # the best of what the pick needs
    assert within_budget(table, first, rest, 99) == first | rest
    line = ck.prune(table, first, rest, finished=[0, 1, 2], budget=3)
    assert ck.saved() == [(0, 4), (1, 4), (1, 8)]
    assert line.startswith("[study] checkpoints: 3 kept (") and "study.checkpoint_budget=3" in line
    assert line.endswith(", 3 deleted") and f"{3 * len('weights') / 2**20:.1f} MiB on disk" in line


def test_a_checkpoint_budget_below_one_is_refused_in_one_sentence():
    import pytest

    from conftest import TINY
    from gpt2ft.config import ConfigError, load_config

    assert load_config(TINY).study.checkpoint_budget == 8
    with pytest.raises(ConfigError, match=r"^study.checkpoint_budget must be >= 1 \(checkpoints kept on disk\)\.$"):
        load_config(TINY, ["study.checkpoint_budget=0"])
