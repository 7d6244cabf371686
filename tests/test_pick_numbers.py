"""Issue 34 items 8-10: the numbers the pick reports say what they are (constructed tables)."""
from __future__ import annotations

import re

from gpt2ft.judges import Bounds, copying_failures, degenerate_reason


def test_a_reason_prints_enough_digits_to_show_the_difference():
    # Item 10: `heldout_loss 4.29 > 4.29` for 4.291 against a bound of 4.287.
    values = {"memorization": 0.0, "extractable_rate": 0.0, "heldout_loss": 4.291}
    (judge, text), = copying_failures(values, Bounds(0.02, 0.1, heldout_loss=4.287))
    assert judge == "held-out loss" and text == "heldout_loss 4.291 > 4.287"
    assert degenerate_reason(0.9, 0.1501, 0.9, 0.0, floor=0.15) == "repetition_4 0.1501 > 0.15"
    # Where three digits already differ, three it stays; every reason's two numbers read apart.
    assert copying_failures({"memorization": 0.031, "heldout_loss": 0.0}, Bounds(0.02, 0.1, 5.0)) == [
        ("memorization", "memorization 0.031 > 0.02")]
    for value, bound in ((4.2871, 4.287), (0.600001, 0.6), (1e-5 + 1e-9, 1e-5)):
        (_, text), = copying_failures({"heldout_loss": value}, Bounds(1, 1, bound))
        a, b = re.fullmatch(r"heldout_loss (\S+) > (\S+)", text).groups()
        assert a != b and float(a) > float(b)
