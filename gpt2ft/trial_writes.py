"""Every write to a trial's MLflow run once the trial's training is done, and only here.

A trial's run is created with its params when the trial starts (``study``), and its step
metrics stream while it trains (``trial``). Everything after that goes through
:class:`TrialWrites`:

* ``store``: the trial's final writes (metrics, samples, tables, plots, its end) as
  ``gpt2ft.logops`` ops, in the writer process while the next trial trains, or here;
* ``replay``: the same ops again for a COMPLETE trial whose run a dead process left RUNNING;
* ``remeasured``: the contenders' re-measured metrics (``final_step<S>_*``) at the study's end;
* ``select``: the ``selected`` tag on the study's trial runs, and the pick on the parent run;
* ``fail``: a killed trial's run, closed FAILED with the reason;
* ``write_now``: a lone ``gpt2ft train`` run's final writes, made inside the trial;
* ``log_model``: ``gpt2ft export``'s model, logged on its trial's run.

How an op list is applied, in this process or in the writer process, is ``gpt2ft.logops``';
talking to MLflow is ``gpt2ft.tracking``'s.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

from gpt2ft import logops
from gpt2ft.writer import BackgroundWriter, WriterDied

log = logging.getLogger(__name__)


def write_now(run, ops: list[logops.Op], steps: int) -> float:
    """Apply ``ops`` to ``run`` (a ``tracking.Run``) in this process; returns ``log_seconds``."""
    return logops.apply(run, ops, steps)


def log_model(tracking_uri: str, run_id: Optional[str], folder, name: str, alias: Optional[str]) -> str:
    """``gpt2ft export``'s write: the exported model logged on its trial's run and registered, with
    ``alias`` pointed at it (None: no alias moves)."""
    from gpt2ft.tracking import log_pipeline_model  # MLflow's model flavours load slowly: only here

    return log_pipeline_model(tracking_uri, run_id, folder, name, alias)


class TrialWrites:
    """The post-training writes of one study process's trials (see the module docstring)."""

    def __init__(self, tracker, writer: Optional[BackgroundWriter] = None, remote: bool = False):
        self.tracker = tracker
        self.writer = writer
        self.remote = remote and writer is not None
        """Whether ``store`` sends its ops to the writer process (until that process dies)."""

    def store(self, run_id: str, ops: list[logops.Op], steps: int, number: int) -> None:
        """A trial's final writes, in the writer process (while the next trial trains) or here.

        Neither a dead writer process nor a failed write fails the trial, whose result Optuna
        already holds: the writes are made here from then on, and what was lost (jobs the dead
        process had, a write that raised) is redone by ``replay`` at the study's end."""
        if self.remote:
            try:
                self.writer.submit_remote(logops.apply_remote, self.tracker.uri, run_id, ops, steps,
                                          name=f"trial {number}")
                return
            except WriterDied as exc:
                self.remote = False
                log.warning("the writer process has died (%s); trial %d's writes and the rest of this study's "
                            "are made in this process", exc, number)
        try:
            self.replay(run_id, ops, steps)
        except Exception as exc:
            log.warning("trial %d's writes failed (%s: %s); they are redone at the study's end", number,
                        exc.__class__.__name__, str(exc).splitlines()[0] if str(exc) else "")

    def replay(self, run_id: str, ops: list[logops.Op], steps: int) -> None:
        """Apply ``ops`` to the run here (``gpt2ft train``, a dead writer, the study's replay)."""
        write_now(self.tracker.handle(run_id), ops, steps)

    def unfinished(self, run_id: str) -> bool:
        """Whether the run is still RUNNING (its final writes not all stored)."""
        return self.tracker.status(run_id) == "RUNNING"

    def remeasured(self, run_id: str, metrics: dict[str, float]) -> None:
        self.tracker.handle(run_id).log_metrics(metrics)

    def select(self, parent, run_id: Optional[str], tags: dict[str, Any], metrics: dict[str, float],
               step: int) -> None:
        """Make ``run_id`` the one child of ``parent`` tagged ``selected=true`` and record the
        pick on the parent (``tags``, and ``selected_*`` ``metrics`` at ``step``).

        Workers pick concurrently, each from the trials it has seen, so an older pick can land
        after a newer one: the children's tags are compared with what MLflow holds, not with
        this worker's last pick. The parent's tags are written every time: the same trial can
        stay selected for a new reason (more trials, a re-measure)."""
        tagged = {r.info.run_id for r in self.tracker.runs(
            f"tags.`mlflow.parentRunId` = '{parent.id}' and tags.selected = 'true'")}
        for old in tagged - {run_id}:
            self.tracker.handle(old).set_tags({"selected": "false"})
        if run_id and run_id not in tagged:
            self.tracker.handle(run_id).set_tags({"selected": "true"})
        parent.set_tags({**tags, "selected_run_id": run_id or ""})
        parent.log_metrics(metrics, step)

    def fail(self, study_name: str, number: int, run_id: Optional[str], reason: str) -> None:
        """Close trial ``number``'s run FAILED with ``reason`` if it is still RUNNING. Without
        ``run_id`` (killed between creating its run and recording the run's id) it is found by
        its tags."""
        for rid in [run_id] if run_id else self.tracker.open_trial_runs(study_name, number):
            if self.unfinished(rid):
                run = self.tracker.handle(rid)
                run.set_tags({"failure_reason": reason})
                run.end("FAILED")
