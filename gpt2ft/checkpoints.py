"""Checkpoints of a study's candidates: where they live, saving them, and keeping only those that
can still be chosen (disk is finite: a 124M-parameter checkpoint is 500 MB).

A candidate is a trial at one measured step, so a checkpoint is ``<root>/trial-N-step-S``.
"""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Iterable, Optional

from gpt2ft.model import Runtime, load_checkpoint, save_model

log = logging.getLogger(__name__)
_NAME = re.compile(r"^trial-(\d+)-step-(\d+)$")


class Checkpoints:
    """The checkpoint folders of one study, ``<root>/trial-N-step-S``."""

    def __init__(self, root: Path, enabled: bool = True):
        self.root = Path(root)
        self.enabled = enabled

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

    def load(self, number: int, step: int, runtime: Runtime):
        """The candidate's model, or None when its folder is gone (another worker pruned it)."""
        path = self.path(number, step)
        if not path.is_dir():
            return None
        try:
            return load_checkpoint(path, runtime)
        except OSError:
            # Pruned by another worker between the check and the load.
            log.warning("checkpoint of trial %d at step %d disappeared before it could be loaded", number, step)
            return None

    def delete(self, number: int, step: int) -> None:
        shutil.rmtree(self.path(number, step), ignore_errors=True)

    def keep_only(self, keep: Iterable[tuple[int, int]], finished: Iterable[int]) -> list[tuple[int, int]]:
        """Delete the checkpoints of ``finished`` trials whose (trial, step) is not in ``keep`` (the
        pick's contenders); a running trial's are left to it. Returns what was deleted."""
        keep, finished = {tuple(k) for k in keep}, set(finished)
        gone = [k for k in self.saved() if k[0] in finished and k not in keep]
        for number, step in gone:
            self.delete(number, step)
        return gone

    def remove(self, number: int) -> None:
        """Delete every checkpoint of a trial (a failed trial's can never be chosen)."""
        for key in self.saved(number):
            self.delete(*key)
