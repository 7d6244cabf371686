"""Issue 27 item 11: one-line changes the suite let through, each caught here. Every test names
the change it catches; each was applied by hand and seen to fail this test."""
from __future__ import annotations

import copy

import torch

from gpt2ft import confidence as K
from gpt2ft import leaders as L
from gpt2ft import pick as P
from gpt2ft.summary import summarize
from test_candidates import FakeStudy, FakeTrial, pt
from test_remeasure import _remeasured


def test_on_front_is_the_eligible_candidates_pareto_front_not_every_eligible_one():
    """Catches ``on_front`` computed over the eligible candidates instead of their front."""
    study = FakeStudy([FakeTrial(0, [pt(0, 0.37), pt(4, 0.54, mem=0.0), pt(8, 0.50, mem=0.01)]),
                       FakeTrial(1, [pt(0, 0.37), pt(4, 0.552, mem=0.015)])])
    c = summarize(study).candidates.set_index(["number", "step"])
    assert c["eligible"].all()
    # 0@8 is dominated by 0@4 (closer to the book, copying less): eligible, not on the front.
    assert c.loc[(0, 4), "on_front"] and c.loc[(1, 4), "on_front"] and not c.loc[(0, 8), "on_front"]


def test_the_degenerate_repetition_line_is_built_from_the_books_repetition_4():
    """Catches the repetition line built from the book's ``distinct_2`` (1.5 x 0.89 = 1.34 > any rate)."""
    study = FakeStudy([FakeTrial(0, [pt(0, 0.37), pt(4, 0.55, distinct_2=0.85, repetition_4=0.2),
                                     pt(8, 0.53, distinct_2=0.85, repetition_4=0.01)])])
    study.user_attrs["references"].update(book_distinct_2=0.89, book_repetition_4=0.004)
    s = summarize(study)
    row = s.candidate(0, 4)
    assert row["degenerate"] and row["degenerate_why"] == "repetition_4 0.2 > 0.15" and s.selected == (0, 8)


def test_the_fluency_judge_is_its_own_copy_of_the_base_model():
    """Catches the fluency judge built on the shared sampling copy, which every measurement
    refreshes with the weights being measured: the judge would then score samples by the model
    that wrote them."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from conftest import TINY
    from gpt2ft.assets import Assets
    from gpt2ft.config import load_config
    from gpt2ft.model import resolve_runtime

    config = load_config(TINY, ["sample.precision=bf16", "train.device=cpu"])
    torch.manual_seed(0)
    small = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
    base = GPT2LMHeadModel(small).eval()
    assets = Assets(config, None, None, None, base, resolve_runtime(config.train), None, frozenset())
    judge = assets.fluency_judge
    before = {k: v.clone() for k, v in judge.state_dict().items()}
    trained = copy.deepcopy(base)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5)
    assets.sampler.weights_of(trained)  # what measuring a trial's model does
    assert all(torch.equal(before[k], v) for k, v in judge.state_dict().items())
    base_bf16 = {k: v.to(torch.bfloat16) for k, v in base.state_dict().items()}
    assert all(torch.equal(base_bf16[k], v) for k, v in judge.state_dict().items())


def test_below_the_threshold_lower_heldout_loss_decides_before_less_copying():
    """Catches memorization ranked before held-out loss when the confidence is low."""
    chosen = P.TrialRow(0, -0.001, 0.010, step=8, heldout_loss=3.60)
    runner = P.TrialRow(2, -0.004, 0.000, step=4, heldout_loss=3.70)
    result = P.PickResult(0, "bounded_style", "trial 0 at step 8 is the best style", True, step=8)
    assert K.settle(result, chosen, runner, 0.5).key == (0, 8)  # lower held-out loss, though it copies more
    assert K.settle(result, runner, chosen, 0.5).key == (0, 8)


def test_the_bootstrap_resamples_both_candidates_with_the_same_indices():
    """Catches the runner-up resampled with indices of its own: B misses the target by twice A's
    miss in every sample, so paired replicates always prefer A; unpaired ones often do not."""
    offsets = [-31, 29, -17, 23, -11, 13, 7, -5, 19, -27]
    a = [55 + d for d in offsets]
    b = [55 + 2 * d for d in offsets]
    lens = [100] * len(offsets)
    assert K.paired_closer(a, lens, b, lens, 0.55, n_boot=2000, seed=0) > 0.97


def test_pick_confidence_is_the_picks_chance_against_the_runner_up_not_the_reverse():
    """Catches the pick and the runner-up swapped: a sure pick would read as a sure loss, and the
    held-out loss (here the runner-up's, lower) would override it."""
    study = FakeStudy([FakeTrial(0, [pt(0, 0.37), pt(4, 0.55, loss=3.8)]),
                       FakeTrial(1, [pt(0, 0.37), pt(4, 0.50, loss=3.5)])])
    study.user_attrs["remeasure_0_4"] = _remeasured(0.55, 0)
    study.user_attrs["remeasure_1_4"] = _remeasured(0.50, 0)
    value = L.measure_confidence(study, 0)
    assert study.user_attrs["pick_confidence"]["selected"] == [0, 4] and value > 0.95
    s = summarize(study)
    assert s.selected == (0, 4) and "selected_p_closer_by_top100 1.00 against trial 1 at step 4" in s.pick.reason


def test_an_exported_degenerate_candidate_names_the_degenerate_guard():
    """Issue 34 item 11: catches ``excluding_judges`` leaving the degenerate guard out of
    ``excluded_by`` (``export --trial/--step`` of a looping candidate would then say nothing)."""
    from gpt2ft.export import excluding_judges

    study = FakeStudy([FakeTrial(0, [pt(0, 0.37), pt(4, 0.55, distinct_2=0.85, repetition_4=0.6),
                                     pt(8, 0.53, mem=0.5)])])
    s = summarize(study)
    looping, copying = s.candidate(0, 4), s.candidate(0, 8)
    assert looping["degenerate"] and not copying["degenerate"]
    assert excluding_judges(looping, s.bounds) == ["degenerate"]
    assert excluding_judges(copying, s.bounds) == ["memorization"]


def test_a_quoted_spoken_line_opens_the_story_by_the_rule_not_by_the_front_matter_cap():
    """Issue 34 item 11: catches ``_opens_story`` refusing every quoted line: with a body long
    enough that the front-matter cap (a quarter of it) does not step in, the opening dialogue
    would then be dropped as front matter."""
    from gpt2ft import prose

    narrative = "The boy had gone out by the back door long before his aunt came down to breakfast."
    text = "\n\n".join(["THE BOY", "By Nobody", "CHAPTER I", "“TOM!”", "No answer.",
                       "“What’s gone with that boy, I wonder? You TOM!”"] + [narrative] * 40)
    out = prose.clean(text)
    assert out.paragraphs[:3] == ("“TOM!”", "No answer.", "“What’s gone with that boy, I wonder? You TOM!”")
    assert dict((t, k) for k, t in out.dropped)["THE BOY"] == "front matter"
