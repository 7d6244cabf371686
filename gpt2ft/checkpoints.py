"""Trial checkpoints of a study: where they live, saving them, and keeping only those that can
still be chosen (disk is finite: a 124M-parameter checkpoint is 500 MB)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Iterable, Optional

from gpt2ft.model import Runtime, load_checkpoint, save_model

log = logging.getLogger(__name__)


class Checkpoints:
    """The checkpoint folders of one study, ``<root>/trial-N``."""

    def __init__(self, root: Path, enabled: bool = True):
        self.root = Path(root)
        self.enabled = enabled

    def path(self, number: int) -> Path:
        return self.root / f"trial-{number}"

    def save(self, number: int, model, tokenizer) -> Optional[Path]:
        """Save a trial's weights and tokenizer (atomically); None when checkpoints are off."""
        if not self.enabled:
            return None
        return save_model(model, tokenizer, self.path(number))

    def load(self, number: int, runtime: Runtime):
        """The trial's model, or None when its folder is gone (another worker pruned it)."""
        path = self.path(number)
        if not path.is_dir():
            return None
        try:
            return load_checkpoint(path, runtime)
        except OSError:
            # Pruned by another worker between the check and the load.
            log.warning("checkpoint of trial %d disappeared before it could be loaded", number)
            return None

    def keep_only(self, keep: Iterable[int], finished: Iterable[int]) -> None:
        """Delete the checkpoints of finished trials not in ``keep`` (the front and the pick)."""
        keep = set(keep)
        for number in finished:
            path = self.path(number)
            if number not in keep and path.exists():
                shutil.rmtree(path, ignore_errors=True)

    def remove(self, number: int) -> None:
        """Delete a trial's checkpoint, if any (a failed trial's can never be chosen)."""
        shutil.rmtree(self.path(number), ignore_errors=True)
