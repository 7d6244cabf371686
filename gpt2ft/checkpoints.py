"""Checkpoints of a study's candidates: where they live, saving them, and keeping only those that
can still be chosen, within ``study.checkpoint_budget`` (disk is finite: a 124M-parameter
checkpoint is 500 MB; a LoRA point's is its adapter alone, ``gpt2ft.lora``).

A candidate is a trial at one measured step, so a checkpoint is ``<root>/trial-N-step-S``, and
``<root>`` is the study's own folder: ``checkpoints/<name>/<study_uid>`` (:meth:`Checkpoints.of_study`).
"""
from __future__ import annotations

import logging
import math
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from gpt2ft.model import Runtime, load_checkpoint, save_model

log = logging.getLogger(__name__)
_NAME = re.compile(r"^trial-(\d+)-step-(\d+)$")
#: What an interrupted save leaves beside the folders (``fsutil.atomic_dir``): the folder being
#: written (``.trial-N-step-S.XXXX.tmp``) and the one being replaced (``.trial-N-step-S.old``).
_LEFTOVER = re.compile(r"^\.trial-(\d+)-step-(\d+)\.(.+\.tmp|old)$")


class Checkpoints:
    """The checkpoint folders of one study, ``<root>/trial-N-step-S``."""

    def __init__(self, root: Path, enabled: bool = True):
        self.root = Path(root)
        self.enabled = enabled

    def of_study(self, uid: Optional[str]) -> "Checkpoints":
        """This study's own folder under the root: another study of the same name (a deleted
        storage, another ``--storage``) has another ``uid``, so its trial N at step S is never
        taken for this one's. None (a study recorded before the uid existed) keeps the root."""
        return Checkpoints(self.root / uid, self.enabled) if uid else self

    def path(self, number: int, step: int) -> Path:
        return self.root / f"trial-{number}-step-{step}"

    def saved(self, number: Optional[int] = None) -> list[tuple[int, int]]:
        """(trial, step) of every checkpoint on disk (of trial ``number`` only, when given)."""
        if not self.root.is_dir():
            return []
        keys = [(int(m[1]), int(m[2])) for p in self.root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
        return sorted(k for k in keys if number is None or k[0] == number)

    def save(self, number: int, step: int, model, tokenizer) -> Optional[Path]:
        """Save a candidate's weights and tokenizer (atomically); None when checkpoints are off."""
        if not self.enabled:
            return None
        return save_model(model, tokenizer, self.path(number, step))

    def load(self, number: int, step: int, runtime: Runtime, base: Optional[Callable[[], Any]] = None):
        """The candidate's model, or None when its folder is gone (another worker pruned it). A
        LoRA point's folder holds its adapter alone, merged onto ``base()`` (a fresh base model)."""
        path = self.path(number, step)
        if not path.is_dir():
            return None
        try:
            return load_checkpoint(path, runtime, base)
        except OSError:
            # Pruned by another worker between the check and the load.
            log.warning("checkpoint of trial %d at step %d disappeared before it could be loaded", number, step)
            return None

    def delete(self, number: int, step: int) -> None:
        shutil.rmtree(self.path(number, step), ignore_errors=True)

    def leftovers(self, numbers: Iterable[int]) -> list[Path]:
        """The folders interrupted saves of trials ``numbers`` left behind (a dead or stopped
        process's: only a running trial's own save may still be writing one)."""
        numbers = set(numbers)
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if (m := _LEFTOVER.match(p.name)) and int(m[1]) in numbers)

    def keep_only(self, keep: Iterable[tuple[int, int]], finished: Iterable[int]) -> list[tuple[int, int]]:
        """Delete the checkpoints of ``finished`` trials whose (trial, step) is not in ``keep``, and
        what their interrupted saves left; a running trial's are left to it. Returns what was deleted."""
        keep, finished = {tuple(k) for k in keep}, set(finished)
        gone = [k for k in self.saved() if k[0] in finished and k not in keep]
        for number, step in gone:
            self.delete(number, step)
        self._sweep(finished)
        return gone

    def prune(self, candidates: Any, first: set, rest: set, finished: Iterable[int], budget: int) -> str:
        """``keep_only`` what :func:`within_budget` keeps of ``first`` and ``rest``; returns the
        console line of what is kept and the disk it holds."""
        keep = within_budget(candidates, first, rest, budget)
        gone = self.keep_only(keep, finished)
        saved = self.saved()
        size = sum(f.stat().st_size for k in saved for f in self.path(*k).rglob("*") if f.is_file())
        return (f"[study] checkpoints: {len(saved)} kept ({size / 2**20:.1f} MiB on disk, "
                f"study.checkpoint_budget={budget} for finished trials), {len(gone)} deleted")

    def remove(self, number: int) -> None:
        """Delete every checkpoint of a trial (a failed trial's can never be chosen), and what its
        interrupted saves left."""
        for key in self.saved(number):
            self.delete(*key)
        self._sweep([number])

    def _sweep(self, numbers: Iterable[int]) -> None:
        for path in self.leftovers(numbers):
            log.warning("removing %s, left by an interrupted checkpoint save", path.name)
            shutil.rmtree(path, ignore_errors=True)


def still_needed(candidates: Any, rule: str, k: float = 2.0) -> set[tuple[int, int]]:
    """The (trial, step) points of the candidate table whose checkpoint no summary of this study,
    now or after any number of further trials, may need: every other one may be deleted.

    Now: the pick's contenders (column ``contender``). Later: workers finish trials while others
    prune, and a newer trial can make an old point a contender; a deleted checkpoint can never
    be re-measured. Under ``bounded_style`` the pick is the best eligible style, which further
    trials can only raise (bounds and judges are the study's, recorded once), and a point is a
    contender when ``style >= pick_style - k * hypot(se_pick, se_point)``. So a point that a
    future pick could still reach is one within ``k * hypot(widest, se_point)`` of today's best,
    ``widest`` being the widest standard error measured in the study so far (a later trial is
    measured the same way: same sample count and bootstrap). Those are kept too. Under ``knee``
    the pick can move anywhere along a front that later trials reshape, so every eligible point
    is kept (the keeper already saved no more than ``study.checkpoints_per_trial`` per trial).
    Re-measuring at the study's end changes styles only of points kept here."""
    c = candidates
    if not len(c):
        return set()
    keep = set(zip(c[c["contender"]]["number"], c[c["contender"]]["step"]))
    eligible = c[c["eligible"]]
    if rule != "bounded_style":
        return keep | set(zip(eligible["number"], eligible["step"]))
    se = c["top100_ratio_se"].where(c["top100_ratio_se"].map(math.isfinite), 0.0)
    if eligible.empty:
        return keep
    best, widest = float(eligible["style_score"].max()), float(se.max())
    reach = [best - k * math.hypot(widest, float(s)) for s in se[c["eligible"]]]
    rows = zip(eligible["number"], eligible["step"], eligible["style_score"], reach)
    return keep | {(int(n), int(step)) for n, step, style, r in rows if style >= r}


def within_budget(candidates: Any, first: set, rest: set, budget: int) -> set[tuple[int, int]]:
    """At most ``budget`` of the points a finished trial's pruning would keep: ``first`` (what the
    pick and its re-measure need now, ``leaders.keep_set``) before ``rest`` (what a later pick may
    need, :func:`still_needed`), each by style, best first. Without a budget the tolerance of
    ``still_needed`` keeps nearly every eligible point (gigabytes of GPT-2 checkpoints). A point
    past it is no longer re-measured from disk (the pick and its runner-up are retrained,
    ``leaders.remeasure``), and ``gpt2ft export`` retrains it."""
    c = candidates
    style = {(int(n), int(s)): float(v) for n, s, v in zip(c["number"], c["step"], c["style_score"])} if len(c) else {}

    def score(k: tuple[int, int]) -> tuple:
        v = style.get(k, math.nan)
        return (0, -v, k) if math.isfinite(v) else (1, 0.0, k)
    first = {tuple(k) for k in first}
    return set((sorted(first, key=score) + sorted({tuple(k) for k in rest} - first, key=score))[:budget])
