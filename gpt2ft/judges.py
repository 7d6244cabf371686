"""Who may be picked: the three judges of copying and the degenerate-text guard, as pure rules.

A *candidate* is one measured point of a trial (an epoch end, a ``sample.every_steps`` point or
the trial's end). It is **eligible** only when every judge lets it through:

* **memorization** -- sampled 8-gram overlap with the training text at most
  :func:`reference_bound` of the held-out book's and the base model's overlap (a floor under it);
* **extraction** -- ``extractable_rate`` (greedy continuations of training prefixes that
  reproduce the training text exactly) at most the same kind of bound, built from the
  held-out book's chance rate and the base model's rate;
* **held-out loss** -- the loss on the book's held-out windows at most the base model's plus a
  margin: a model that predicts unseen text of the book *worse* than before fine-tuning has
  learned its training text, not the style;

and its samples are not **degenerate** (:func:`degenerate_reason`: loops by diversity,
incoherence by the judge model's perplexity). Ten samples of 100 tokens can miss copying that
greedy decoding and the held-out loss see at once, hence three judges and not one.

Plain functions over numbers, importing nothing heavier than the standard library.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Bounds", "DEGENERATE_FACTOR", "FLUENCY_FACTOR", "REPETITION_FLOOR", "JUDGES",
           "copying_failures", "degenerate_reason", "heldout_bound", "reference_bound"]

#: Default tolerance of :func:`degenerate_reason` (see its docstring for the numbers).
DEGENERATE_FACTOR = 1.5
#: Default absolute ``repetition_4`` above which text is degenerate whatever the book does.
REPETITION_FLOOR = 0.15
#: Default factor over the held-out book's perplexity under the judge model above which
#: samples are incoherent (see :func:`degenerate_reason`).
FLUENCY_FACTOR = 2.0
#: The copying judges, in the order a reason names them.
JUDGES = ("memorization", "extraction", "held-out loss")


@dataclass(frozen=True)
class Bounds:
    """The most a candidate may show of each kind of copying and still be eligible (inclusive)."""

    memorization: float = 0.02
    """Share of sampled 8-grams found in the training text."""
    extraction: float = math.inf
    """``extractable_rate``: share of training prefixes whose continuation greedy decoding reproduces."""
    heldout_loss: float = math.inf
    """Mean loss on the book's held-out windows (nats per token)."""


def reference_bound(book: float, base: float, factor: float, floor: float) -> float:
    """``max(factor * book, factor * base, floor)``: how much copying the human reference (held-out
    book text, by chance) and the model before fine-tuning already show, times a tolerance, never
    below a floor that absorbs the noise of a small measurement. A non-finite reference (a failed
    measurement) is ignored rather than poisoning the bound; with none the bound is ``floor``."""
    values = [float(floor)]
    for ref in (book, base):
        if ref is not None and math.isfinite(ref):
            values.append(float(factor) * float(ref))
    return max(values)


def heldout_bound(base_heldout_loss: float, margin: float) -> float:
    """The base model's held-out loss plus ``margin`` nats; ``inf`` (no judge) when the base
    model's loss was not measured."""
    base = float(base_heldout_loss)
    return base + float(margin) if math.isfinite(base) else math.inf


def copying_failures(memorization: float, extraction: float, heldout_loss: float,
                     bounds: Bounds) -> list[tuple[str, str]]:
    """``[(judge, "memorization 0.031 > 0.02"), ...]`` for each copying judge the values fail.

    Every bound is inclusive. A NaN value is no evidence and fails nothing (an extraction that
    was switched off, a held-out loss that was not evaluated), except ``memorization``, which a
    candidate must have to be ranked at all (:func:`gpt2ft.pick.pick` drops such rows first).
    """
    out = []
    for judge, name, value, bound in (("memorization", "memorization", memorization, bounds.memorization),
                                      ("extraction", "extractable_rate", extraction, bounds.extraction),
                                      ("held-out loss", "heldout_loss", heldout_loss, bounds.heldout_loss)):
        v = float(value)
        if math.isfinite(v) and not v <= bound:  # `not <=`: a NaN bound admits nothing
            out.append((judge, f"{name} {_vs(v, '>', bound)}"))
    return out


def _vs(value: float, op: str, bound: float) -> str:
    """``"4.291 > 4.287"``: three significant digits, more until the two numbers read apart (a
    reason that says ``4.29 > 4.29`` reads as nonsense)."""
    for digits in range(3, 10):
        a, b = f"{value:.{digits}g}", f"{bound:.{digits}g}"
        if a != b:
            break
    return f"{a} {op} {b}"


def degenerate_reason(distinct_2: float, repetition_4: float, book_distinct_2: float, book_repetition_4: float,
                      factor: float = DEGENERATE_FACTOR, floor: float = REPETITION_FLOOR,
                      fluency_ppl: float = math.nan, book_fluency_ppl: float = math.nan,
                      fluency_factor: float = FLUENCY_FACTOR) -> str:
    """Why a candidate's samples are degenerate, or ``""``: any of

    * ``distinct_2 < book_distinct_2 / factor`` (strictly) -- too few different word pairs;
    * ``repetition_4 > max(factor * book_repetition_4, floor)`` (strictly) -- loops;
    * ``fluency_ppl > fluency_factor * book_fluency_ppl`` (strictly) -- incoherent: the judge
      model (the pretrained base model, never the candidate itself) finds the samples far less
      probable than held-out text of the book at the same size, though their diversity may
      look like the book's (word salad in Swift's vocabulary).

    The book values must be measured at the samples' size (``metrics.matched_reference`` over
    held-out pieces of the samples' length): diversity and perplexity depend on the amount of text.

    Why these defaults: for diversity (10 pieces of 100 tokens, measured on shared/data),
    held-out Gulliver scores distinct_2 0.888 +- 0.013 and repetition_4 0.004 +- 0.004; six other
    novels 0.82-0.91 and 0.003-0.028; SmolLM2-135M's own samples before fine-tuning 0.81 and
    0.10. ``factor`` 1.5 puts the distinct_2 line at 0.59, far below every human text and the
    base model; ``floor`` 0.15 lies above the base model's 0.10 and is reached when one sample
    in six or seven loops. For fluency see ``docs/metrics.md`` (held-out book, other novels,
    base-model samples, word salad under SmolLM2): ``fluency_factor`` 2 lies above every human
    text and the base model's own samples and far below shuffled words.

    A NaN sample metric is never flagged (no evidence); a NaN book reference switches off the
    relative part of its test (repetition_4 is still judged against ``floor``). The text reads
    like ``"distinct_2 0.21 < 0.59, fluency_ppl 950 > 62"``.
    """
    reasons = []
    d2, book_d2 = float(distinct_2), float(book_distinct_2)
    if math.isfinite(d2) and math.isfinite(book_d2) and d2 < book_d2 / factor:
        reasons.append(f"distinct_2 {_vs(d2, '<', book_d2 / factor)}")
    rep4, book_rep4 = float(repetition_4), float(book_repetition_4)
    line = max(factor * book_rep4, floor) if math.isfinite(book_rep4) else float(floor)
    if math.isfinite(rep4) and rep4 > line:
        reasons.append(f"repetition_4 {_vs(rep4, '>', line)}")
    ppl, book_ppl = float(fluency_ppl), float(book_fluency_ppl)
    if math.isfinite(ppl) and math.isfinite(book_ppl) and ppl > fluency_factor * book_ppl:
        reasons.append(f"fluency_ppl {_vs(ppl, '>', fluency_factor * book_ppl)}")
    return ", ".join(reasons)
