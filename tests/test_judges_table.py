"""scripts/judges_table.py: each judge's first failing epoch, read from the study with the bounds it recorded."""
from __future__ import annotations

import math
import sys
from pathlib import Path

from gpt2ft.summary import summarize
from test_candidates import FakeStudy, copying_trial

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import judges_table  # noqa: E402


def test_each_judge_names_the_first_epoch_it_fails_even_when_the_pick_does_not_use_it():
    trial = copying_trial(0)
    for point, auc, words in zip(trial.trajectory, (0.5, 0.8, 0.9, 1.0), (0, 0, 0.05, 0.4)):
        point.update(mia_auc=auc, near_verbatim=words)
    study = FakeStudy([trial], near_verbatim_bound=0.02, membership_bound=0.6,
                      judges=["memorization", "near-verbatim", "extraction", "held-out loss"])
    s = summarize(study)
    fails = judges_table.first_failures(s.candidates, judges_table.J.Bounds.from_attrs(study.user_attrs))[0]
    assert fails["membership"] == 1 and fails["near-verbatim"] == 2 and fails["memorization"] == 3
    assert fails["held-out loss"] == 3 and math.isnan(fails["sampled extraction"])
    lines = judges_table.table("demo", s, study.user_attrs)
    assert "membership (off)" in lines[0] and "near-verbatim |" in lines[0]
    assert lines[2].startswith("| demo | 0 (the pick's trial) |") and lines[2].endswith("| 3 | 2 | 3 | - | 1 | 3 |")
    # Near-verbatim (on) moves the pick from epoch 2 to epoch 1; membership (off) would exclude that too.
    assert s.selected == (0, 4) and "near-verbatim: 0@8" in s.pick.reason


def test_points_show_every_measured_point_with_its_copying_numbers():
    trial = copying_trial(0)
    for point in trial.trajectory:
        point.update(mia_auc=0.9, near_verbatim=0.0)
    lines = judges_table.points("demo", summarize(FakeStudy([trial])))
    assert len(lines) == 2 + 3 and "| near_verbatim |" in lines[0] and "mia_auc" in lines[0]
    assert lines[-1].startswith("| demo | 0 | 3 | 0.3 | 0 |")


def test_method_table_compares_each_method_with_full_fine_tuning_by_its_best_and_its_pick():
    import method_table
    from test_candidates import FakeTrial, pt
    full = copying_trial(0)
    full.params = {**full.params, "lora_r": 0}
    lora = FakeTrial(1, [pt(0, 0.37, loss=3.8), pt(4, 0.45), pt(8, 0.552, loss=3.65)],
                     params={"lr": 1e-3, "epochs": 2, "batch_size": 4, "lora_r": 8})
    study = FakeStudy([full, lora], judges=["memorization", "extraction", "held-out loss"])
    s = summarize(study)
    lines = method_table.rows(s, "lora_r", study.user_attrs)
    assert "near-verbatim (off)" in lines[0] and len(lines) == 4
    assert lines[2].startswith("| full fine-tuning | 0.0001 | trial 0, epoch 2 (step 8) | 0.540 ± 0.010 | 0.010 |")
    assert lines[2].endswith("| 2 | 3 / none by 3 / 3 / none by 3 / none by 3 / 3 |")  # copies at epoch 3
    assert lines[3].startswith("| LoRA r 8 | 0.001 | trial 1, epoch 2 (step 8) | 0.552 ± 0.010 | 0.002 |")
    picks = method_table.picks(s, "lora_r")
    assert "LoRA r 8 closer to the book than full fine-tuning by +0.008" in picks[2] and "+0.6 se" in picks[2]
    assert picks[3] == "* the study's pick: LoRA r 8, trial 1 (lr 0.001) at epoch 2"
    assert method_table.heldout_cost(s, "lora_r") == ["* no rate was trained by more than one method"]
