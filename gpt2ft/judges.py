"""Who may be picked: the judges of copying and the degenerate-text guard, as pure rules.

A *candidate* is one measured point of a trial (an epoch end, a ``sample.every_steps`` point or
the trial's end). It is **eligible** only when every judge the study uses (``study.judges``; by default
:data:`DEFAULT_JUDGES`: memorization, extraction and held-out loss) lets it through:

* **memorization** -- sampled 8-gram overlap with the training text at most
  :func:`reference_bound` of the held-out book's and the base model's overlap (a floor under it);
* **near-verbatim** -- the same for word 8-grams with case and punctuation stripped
  (``gpt2ft.words``): a copy with its punctuation changed is still a copy;
* **extraction** -- ``extractable_rate`` (greedy continuations of training prefixes that
  reproduce the training text exactly) at most the same kind of bound, built from the
  held-out book's chance rate and the base model's rate;
* **sampled extraction** -- ``discoverable_rate``: the same prompts, scored by the probability that
  the study's own sampler reproduces the suffix (``gpt2ft.extraction``), same kind of bound;
* **membership** -- ``mia_auc`` (``gpt2ft.membership``) at most 0.5 plus ``study.mia_margin``;
* **held-out loss** -- the loss on the book's held-out windows at most the base model's plus a
  margin: a model that predicts unseen text of the book *worse* than before fine-tuning has
  learned its training text, not the style;

and its samples are not **degenerate** (:func:`degenerate_reason`: loops by diversity,
incoherence by the judge model's perplexity). Ten samples of 100 tokens can miss copying that
extraction and the held-out loss see at once, hence several judges and not one.

Plain functions over numbers, importing nothing heavier than the standard library.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping

__all__ = ["Bounds", "DEFAULT_JUDGES", "DEGENERATE_FACTOR", "FLUENCY_FACTOR", "REPETITION_FLOOR", "JUDGES",
           "JUDGE_METRICS", "constraint_values", "copying_failures", "degenerate_reason", "heldout_bound",
           "judged_values", "reference_bound"]

#: Default tolerance of :func:`degenerate_reason` (see its docstring for the numbers).
DEGENERATE_FACTOR = 1.5
#: Default absolute ``repetition_4`` above which text is degenerate whatever the book does.
REPETITION_FLOOR = 0.15
#: Default factor over the held-out book's perplexity under the judge model above which
#: samples are incoherent (see :func:`degenerate_reason`).
FLUENCY_FACTOR = 2.0
#: Each copying judge, in the order a reason names them, and the metric it reads.
JUDGE_METRICS = {"memorization": "memorization", "near-verbatim": "near_verbatim", "extraction": "extractable_rate",
                 "sampled extraction": "discoverable_rate", "membership": "mia_auc", "held-out loss": "heldout_loss"}
JUDGES = tuple(JUDGE_METRICS)
#: The judges a study uses unless ``study.judges`` says otherwise. The other three are measured and
#: reported at every point, switchable on: on all seven novels (docs/pick.md) every point that
#: near-verbatim or sampled extraction fails is already out by these three, and membership fails
#: every fine-tuned point of the demo's slice (AUC 0.94-1.00), the picks included.
DEFAULT_JUDGES = ("memorization", "extraction", "held-out loss")
#: The study's user attribute (and parent-run param) that records each judge's bound.
BOUND_ATTRS = {"memorization": "memorization_bound", "near-verbatim": "near_verbatim_bound",
               "extraction": "extraction_bound", "sampled extraction": "discoverable_bound",
               "membership": "membership_bound", "held-out loss": "heldout_bound"}
#: The judges' metrics beyond the three a ``pick.TrialRow`` names as fields.
EXTRA_METRICS = ("near_verbatim", "discoverable_rate", "mia_auc")
#: Bounds' field of each judge.
_FIELDS = {"memorization": "memorization", "near-verbatim": "near_verbatim", "extraction": "extraction",
           "sampled extraction": "discoverable", "membership": "membership", "held-out loss": "heldout_loss"}


@dataclass(frozen=True)
class Bounds:
    """The most a candidate may show of each kind of copying and still be eligible (inclusive);
    ``inf``: that judge is off."""

    memorization: float = 0.02
    """Share of sampled 8-grams found in the training text."""
    extraction: float = math.inf
    """``extractable_rate``: share of training prefixes whose continuation greedy decoding reproduces."""
    heldout_loss: float = math.inf
    """Mean loss on the book's held-out windows (nats per token)."""
    discoverable: float = math.inf
    """``discoverable_rate``: share of training prefixes whose suffix the study's sampler reproduces
    at least once in ``metrics.discoverable_n`` draws with probability ``metrics.discoverable_p``."""
    near_verbatim: float = math.inf
    """Share of sampled word 8-grams (case, punctuation and spacing stripped) found in the training text."""
    membership: float = math.inf
    """``mia_auc``: how well the base-calibrated loss tells training windows from held-out ones."""

    def by_judge(self) -> dict[str, float]:
        """``{judge: bound}`` in :data:`JUDGES`' order."""
        return {judge: float(getattr(self, _FIELDS[judge])) for judge in JUDGES}

    def as_attrs(self) -> dict[str, float]:
        """``{"memorization_bound": ..., ...}``: how a study records its bounds (:data:`BOUND_ATTRS`)."""
        return {BOUND_ATTRS[j]: b for j, b in self.by_judge().items()}

    @classmethod
    def from_attrs(cls, attrs: Mapping) -> "Bounds":
        """The bounds a study recorded (a judge an older study lacks is off; memorization NaN admits none)."""
        return cls(**{_FIELDS[j]: float(attrs.get(a, math.nan if j == "memorization" else math.inf))
                      for j, a in BOUND_ATTRS.items()})

    def only(self, judges) -> "Bounds":
        """These bounds with every judge not in ``judges`` switched off (memorization excepted: it
        ranks the candidates, so it is always judged)."""
        off = {_FIELDS[j]: math.inf for j in JUDGES if j not in judges and j != "memorization"}
        return dataclasses.replace(self, **off)


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


def copying_failures(values: Mapping[str, float], bounds: Bounds) -> list[tuple[str, str]]:
    """``[(judge, "memorization 0.031 > 0.02"), ...]`` for each copying judge the metric ``values``
    (``{"memorization": ..., "extractable_rate": ..., ...}``, :data:`JUDGE_METRICS`) fail.

    Every bound is inclusive. A NaN or missing value is no evidence and fails nothing (an extraction
    that was switched off, a held-out loss that was not evaluated), except ``memorization``, which a
    candidate must have to be ranked at all (:func:`gpt2ft.pick.pick` drops such rows first).
    """
    out = []
    for judge, bound in bounds.by_judge().items():
        name = JUDGE_METRICS[judge]
        v = float(values.get(name, math.nan))
        if math.isfinite(v) and not v <= bound:  # `not <=`: a NaN bound admits nothing
            out.append((judge, f"{name} {_vs(v, '>', bound)}"))
    return out


def constraint_values(values: Mapping[str, float], bounds: Bounds) -> dict[str, float]:
    """``{"memorization": value - bound, ...}``: each copying judge's value minus its bound, by metric
    name, for the judges that are on (a finite bound) and have a value. Optuna's constraints (a
    study's ``study.constrained``): above 0 the judge fails the point, at or below 0 it passes,
    exactly as :func:`copying_failures` decides; a judge without evidence is left out, as it fails
    nothing there."""
    out = {}
    for judge, bound in bounds.by_judge().items():
        name = JUDGE_METRICS[judge]
        v = float(values.get(name, math.nan))
        if math.isfinite(v) and math.isfinite(bound):
            out[name] = v - bound
    return out


def judged_values(row: Mapping) -> dict[str, float]:
    """The metrics the copying judges read, from any mapping of a candidate's values (NaN where missing)."""
    out = {}
    for name in JUDGE_METRICS.values():
        try:
            out[name] = float(row.get(name, math.nan))
        except (TypeError, ValueError):
            out[name] = math.nan
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
