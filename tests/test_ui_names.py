"""Metric names in the MLflow UI: every metric under a section, the leading one sorting first."""
from __future__ import annotations

from gpt2ft.ui_names import LEAD, LEADING, plain, plain_name, ui_name

# The metrics a tiny study's trial run logged (2026-12-03, and issue 33's), and the parent run's own kinds.
TRIAL = ["best_epoch", "best_heldout_loss", "best_heldout_step", "checkpoint_seconds", "copy_seconds", "distinct_1",
         "distinct_2", "distinct_3", "epoch", "eval_seconds", "extractable_rate", "extractable_rate_heldout",
         "discoverable_rate", "discoverable_rate_heldout", "extraction_prob", "extraction_log10p", "mia_auc",
         "mia_auc_se", "mia_auc_minkpp", "near_verbatim", "near_verbatim_longest",
         "final_step20_distinct_2", "final_step20_memorization", "final_step20_top100_ratio", "fluency_ppl",
         "fluency_ppl_se", "heldout_loss", "heldout_perplexity", "log_seconds", "longest_copy", "measure_seconds",
         "measure_share", "memorization", "memorization_16", "memorization_4", "memorization_se", "overfit_gap",
         "repetition_4", "step_seconds", "steps", "stopped_for_copying", "style_js", "style_prob", "style_score",
         "tokens_per_second", "top100_ratio", "top100_ratio_se", "train_loss", "trajectory_seconds", "trial_seconds"]
PARENT = ["book_top100_ratio", "base_heldout_loss", "train_memorization", "memorization_bound",
          "selected_p_closer_by_top100",
          "selected_top100_ratio", "selected_trial", "setup_seconds", "setup_cache_hit", "prose_chars"]


def section(name: str) -> str:
    return ui_name(name).split("/", 1)[0]


def test_a_trial_page_leads_with_what_a_researcher_reads() -> None:
    names = [ui_name(k) for k in TRIAL]
    assert all("/" in n for n in names)  # nothing left for the unprefixed section, which MLflow draws last
    first = sorted({n.split("/", 1)[0] for n in names})[0]  # MLflow orders sections by code point
    assert first == LEAD
    assert sorted(k for k in TRIAL if section(k) == LEAD) == sorted(LEADING)
    assert len(LEADING) <= 20
    assert section("step_seconds") == section("trial_seconds") == "timing"
    assert section("final_step20_top100_ratio") == "remeasure"
    assert section("memorization_se") == section("distinct_1") == "detail"


def test_the_study_run_leads_with_the_pick() -> None:
    assert section("selected_p_closer_by_style_prob") == section("selected_top100_ratio") == "Pick"
    assert {section(k) for k in ("book_top100_ratio", "base_heldout_loss", "train_memorization",
                                 "memorization_bound")} == {"refs"}
    assert sorted({section(k) for k in PARENT})[0] == "Pick"


def test_the_leaf_is_the_metric_s_own_name() -> None:
    for k in TRIAL + PARENT:
        assert plain_name(ui_name(k)) == k
    assert plain_name("heldout_loss") == "heldout_loss"  # a store logged before sections
    assert plain_name("a/b") == "a/b"  # not one of ours
    assert plain({ui_name("top100_ratio"): 0.5, "x": 1.0}) == {"top100_ratio": 0.5, "x": 1.0}
