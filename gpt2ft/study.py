"""The Optuna study: objectives, the trial loop, derived trials, the pick's wiring (the search space
and its sampler are ``gpt2ft.search``'s).

Two objectives, kept apart: style (``style_score``, the negated distance of ``top100_ratio``
from the book's own value, maximised) and copying (``memorization``, minimised). The Pareto
front and the balanced pick are ``gpt2ft.pick`` applied to the trial table of
``gpt2ft.summary`` after every trial, so the current choice is always visible in Optuna
(``selected`` study attr) and MLflow (``selected=true`` tag, parent-run tags and
``selected_*`` metrics). Storage and the coordination of several workers live in
``gpt2ft.coordination``; checkpoints in ``gpt2ft.checkpoints``.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import sys
import time
import uuid
import warnings
from typing import Any, Optional

import optuna
import yaml
from optuna.trial import TrialState
from optuna.visualization.matplotlib import plot_param_importances
from tqdm.auto import tqdm

from gpt2ft import coordination as C
from gpt2ft import leaders, logops, report
from gpt2ft.assets import Assets, study_bounds
from gpt2ft.checkpoints import Checkpoints, still_needed
from gpt2ft.config import Config, StudyConfig
from gpt2ft.console import trial_end_line
from gpt2ft.errors import UserError
from gpt2ft.search import constraints, make_sampler, suggest
from gpt2ft.summary import (DERIVED, Summary, derived_points, recorded_bounds, study_style, summarize, trained,
                            trajectories)
from gpt2ft.trial import TrialResult, run_trial, trial_ops, trial_train_config
from gpt2ft.trial_writes import TrialWrites
from gpt2ft.urls import mask_url
from gpt2ft.writer import BackgroundWriter, WriterDied, WriterTimeout

# Heartbeats, fail_stale_trials and the matplotlib plots are stable in use here but still
# flagged experimental; the warning would repeat on every trial.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
log = logging.getLogger(__name__)
OBJECTIVES = ("style_score", "memorization")
#: ``study.writer: auto`` starts the writer process for studies of this many trials or more.
WRITER_PROCESS_MIN_TRIALS = 5


def config_yaml(config: Config) -> str:
    """``config`` as the YAML export writes out and retrains with (the storage URL's password masked)."""
    saved = config.to_dict()
    saved["study"]["storage"] = mask_url(saved["study"]["storage"])
    return yaml.safe_dump(saved, sort_keys=False)


def record_setup(study: optuna.Study, config: Config, assets: Assets, checkpoint_root: str) -> dict[str, float]:
    """Write what every worker and export reads from the study (config, corpus, references,
    rule, the copying judges' bounds, the degenerate-text rule, where checkpoints live); returns
    the bounds. Once recorded, these are the study's: a resumed run with other settings keeps them."""
    refs = assets.references.values
    bounds = study_bounds(config, refs).as_attrs()
    study.set_user_attr("judges", list(config.study.judges))
    s = config.study
    for key, value in (("config_yaml", config_yaml(config)), ("corpus", assets.book.source),
                       ("references", refs), ("pick_rule", s.pick_rule), *bounds.items(),
                       ("degenerate_factor", s.degenerate_factor), ("repetition_floor", s.repetition_floor),
                       ("fluency_factor", s.fluency_factor), ("checkpoint_root", checkpoint_root)):
        study.set_user_attr(key, value)
    return bounds


class StudyRunner:
    """Runs trials of one study in this process (one worker of possibly several)."""

    def __init__(self, config: Config, storage_url: str, tracker, assets: Assets, checkpoints: Checkpoints,
                 progress: bool = True, command_id: Optional[str] = None):
        self.config, self.tracker, self.assets = config, tracker, assets
        # One id per `gpt2ft study` command, shared by its workers: its trials' pending writes
        # are its own, so it may redo them without waiting (replay_unlogged).
        self.command_id = command_id or uuid.uuid4().hex
        self.checkpoints, self.progress, self.storage_url = checkpoints, progress, storage_url
        self.n_trials = config.study.n_trials
        self.failures_in_row = 0
        self.gave_up: Optional[str] = None
        """Why this worker stopped before ``n_trials`` were COMPLETE (``study.max_failures``), or None."""
        self.storage = C.open_storage(storage_url, on_failed=self._on_stale_trial,
                                      heartbeat=config.study.heartbeat_interval, grace=config.study.grace_period)
        try:
            self.study = optuna.create_study(storage=self.storage, study_name=config.study.name, load_if_exists=True,
                                             directions=["maximize", "minimize"],
                                             sampler=optuna.samplers.TPESampler(seed=config.train.seed))
        except Exception as exc:
            raise UserError(f"cannot create or load study {config.study.name!r} in {mask_url(storage_url)} "
                            f"({exc.__class__.__name__}); check --storage.") from None
        self.study.set_metric_names(list(OBJECTIVES))
        self.parent = None
        self.writer = BackgroundWriter()
        self.unstored = None  # (number, run id, ops, steps): the final writes, stored after the tell
        writer = config.study.writer
        self.writes = TrialWrites(tracker, self.writer, remote=writer == "process" or (
            writer == "auto" and self.n_trials >= WRITER_PROCESS_MIN_TRIALS))

    def _on_stale_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna failed a trial whose worker stopped beating: close its MLflow run too."""
        self.writes.fail(study.study_name, trial.number, trial.user_attrs.get("mlflow_run_id"),
                         "worker process was killed; trial interrupted")
        self.checkpoints.remove(trial.number)  # saved before the kill, it can never be chosen
        log.warning("trial %d was interrupted earlier and is marked failed", trial.number)

    def objective(self, trial: optuna.Trial) -> tuple[float, float]:
        trial.set_user_attr("command_id", self.command_id)
        _wait_for_slot(self.study, trial, self.n_trials, self.config.study)
        # One seed in every worker (and every resumed run) drew the same parameters in the same
        # order; seeding by trial number keeps a study reproducible and the workers apart.
        self.study.sampler = make_sampler(self.study, self.config.study, self.config.train.seed + trial.number)
        params = suggest(trial, self.config.study, self.config.train.rank)
        print(f"[study {self.study.study_name}] trial {trial.number}: lr={params['lr']:.3g} "
              f"epochs={params['epochs']} batch_size={params['batch_size']}"
              + "".join(f" {k}={params[k]}" for k in ("goldfish_k", "lora_r") if k in params),
              file=sys.stderr, flush=True)
        try:
            return train_and_measure(self, trial, params)
        except BaseException as exc:  # stopped (SIGTERM, Ctrl-C) it is FAIL too, and never chosen
            if isinstance(exc, Exception):
                trial.set_user_attr("fail_reason", f"{exc.__class__.__name__}: {exc}"[:1000])
            # Its checkpoint's save only, not others' plots (minutes; replay_unlogged redoes them).
            _settle_writer(lambda: self.writer.drain(remote=False))
            self.checkpoints.remove(trial.number)  # a failed trial can never be chosen
            raise

    def after_trial(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        unstored, self.unstored = self.unstored, None
        if unstored and unstored[0] == frozen.number and frozen.state == TrialState.COMPLETE:
            self.writes.store(unstored[1], unstored[2], unstored[3], unstored[0])
        if frozen.state == TrialState.FAIL:
            reason = frozen.user_attrs.get("fail_reason") or "see the MLflow run's failure_reason tag"
            print(f"[study] trial {frozen.number} FAILED: {reason}", file=sys.stderr)
        if frozen.state == TrialState.COMPLETE and self.config.study.derived_trials:
            with C.study_lock(study):
                tell_derived(study, frozen, self.config.study)
        summary = self.apply_pick(say=frozen.state != TrialState.COMPLETE)
        if frozen.state == TrialState.COMPLETE:
            print(trial_end_line(summary, frozen.number, study.study_name), file=sys.stderr, flush=True)
        prune_checkpoints(self)

    def stop_when_done(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        """Stop once ``n_trials`` trained trials are COMPLETE (derived trials count for nothing)."""
        if len(trained(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))) >= self.n_trials:
            study.stop()

    def stop_after_failures(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        """Stop this worker once ``study.max_failures`` of its trials failed in a row (a surplus
        trial, PRUNED, neither counts nor breaks the row)."""
        if frozen.state == TrialState.COMPLETE:
            self.failures_in_row = 0
        elif frozen.state == TrialState.FAIL:
            self.failures_in_row += 1
            if self.failures_in_row >= self.config.study.max_failures:
                self.gave_up = give_up_message(study, self.failures_in_row)
                study.stop()

    def apply_pick(self, say: bool = True) -> Summary:
        """Apply the pick to the candidate table and record it in Optuna and MLflow; with no
        eligible candidate nothing is selected, and the reason says which is least bad and why."""
        summary = summarize(self.study)
        if summary.pick is None:
            return summary
        chosen = summary.candidate(*summary.pick.key) if summary.selected else {}
        value = {"trial": summary.pick.number, "step": summary.pick.step} if chosen else None
        if self.study.user_attrs.get("selected") != value:
            self.study.set_user_attr("selected", value)
        if self.parent is not None:
            self.writes.select(self.parent, *_selection(self.study, summary, chosen))
        what = f"trial {summary.pick.number} at step {summary.pick.step}" if chosen else "none"
        if say:
            print(f"[study] current pick: {what} ({summary.pick.reason})", file=sys.stderr, flush=True)
        return summary

    def run(self, timeout: Optional[float]) -> None:
        """Trials until ``n_trials`` are COMPLETE (this run and earlier ones together), then
        the front's re-measure and the final pick."""
        self.run_trials(timeout)
        self.finish()

    def finish(self) -> None:
        """The front's re-measure and the final pick: once per study run, after every worker."""
        _settle_writer(self.writer.drain)
        C.fail_orphans(self.study, self.command_id, self._on_stale_trial)  # every worker has ended
        replay_unlogged(self)
        n, seed = self.config.sample.final_n_samples, self.config.train.seed + 1
        if n > self.config.sample.n_samples:
            leaders.remeasure(self.study, self.assets, self.checkpoints, n, seed, _on_remeasured(self),
                              leaders.retrainer(self.study, self.assets))
            leaders.measure_confidence(self.study, seed)  # the selected point's share, apply_pick logs
        self.apply_pick()

    def run_trials(self, timeout: Optional[float]) -> None:
        """Trials until ``n_trials`` are COMPLETE (this worker and the others together)."""
        optuna.storages.fail_stale_trials(self.study)  # a killed run's trial stops beating
        redo_after_trials(self)
        C.enqueue_once(self.study, self.config.study.designs(self.config.train.goldfish_k, self.config.train.rank))
        done = len(trained(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))))
        if done >= self.n_trials:
            print(f"[study] {done} of {self.n_trials} trials already complete; nothing to run.", file=sys.stderr)
        else:
            # Like the step bar it is silent when stderr is no terminal.
            with tqdm(total=self.n_trials, initial=done, desc="trials", unit="trial",
                      disable=not self.progress or None) as bar:
                def tick(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
                    bar.update(frozen.state == TrialState.COMPLETE)
                self.study.optimize(
                    self.objective, timeout=timeout, catch=(Exception,), gc_after_trial=True,
                    callbacks=[self.stop_when_done,
                               self.after_trial, tick, self.stop_after_failures])
        # Not in a `finally`: a stopped process leaves its pending writes to the next run's replay.
        _settle_writer(self.writer.close)


def open_parent(runner: StudyRunner, tags: dict[str, Any]) -> None:
    """Join the study's MLflow parent run, or create it with the setup (one process, under the lock)."""
    with C.study_lock(runner.study):
        run_id = runner.study.user_attrs.get("mlflow_parent_run_id")
        if run_id:
            runner.parent = runner.tracker.resume(run_id)
            runner.checkpoints = runner.checkpoints.of_study(runner.study.user_attrs.get("study_uid"))
            return
        runner.parent = runner.tracker.start(runner.study.study_name, tags={**tags, "gpt2ft.kind": "study"})
        # This study's own, not its name's: another study of the name (a deleted storage, another
        # --storage) must never find this one's trial N at step S.
        runner.study.set_user_attr("study_uid", uuid.uuid4().hex[:12])
        runner.checkpoints = runner.checkpoints.of_study(runner.study.user_attrs["study_uid"])
        bounds = record_setup(runner.study, runner.config, runner.assets, str(runner.checkpoints.root))
        # Last: a worker that sees the id finds every attribute above already written.
        runner.study.set_user_attr("mlflow_parent_run_id", runner.parent.id)
    runner.parent.log_params({**runner.config.flat(), "optuna.storage": mask_url(runner.storage_url)})
    runner.parent.log_metrics({**runner.assets.references.values, **bounds,
                               **runner.assets.timings, "references_seconds": runner.assets.references.seconds})


def prune_checkpoints(runner: StudyRunner) -> None:
    """Keep what the pick needs now (``leaders.keep_set``), then what a later pick may need
    (``checkpoints.still_needed``), within ``study.checkpoint_budget``; delete the rest and what
    interrupted saves left. Under the study's lock, from a summary read under it: pruners take
    turns, each deciding on every trial finished so far. A running trial's points are its own."""
    with C.study_lock(runner.study):
        summary = summarize(runner.study)
        rule = runner.study.user_attrs.get("pick_rule", runner.config.study.pick_rule)
        finished = summary.table[summary.table["state"].isin(["COMPLETE", "FAIL"])]["number"]
        print(runner.checkpoints.prune(summary.candidates, leaders.keep_set(summary), still_needed(
            summary.candidates, rule), finished, runner.config.study.checkpoint_budget), file=sys.stderr, flush=True)


def redo_after_trials(runner: StudyRunner) -> None:
    """What a process killed between a trial's COMPLETE and its ``after_trial`` left undone: its
    derived trials (told now, once: under the lock ``tell_derived`` skips those told) and its
    checkpoints' pruning."""
    if runner.config.study.derived_trials:
        with C.study_lock(runner.study):
            for t in trained(runner.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))):
                if told := tell_derived(runner.study, t, runner.config.study):
                    print(f"[study] trial {t.number}: {told} derived trial(s) were not told (process stopped "
                          "after the trial); told now", file=sys.stderr)
    prune_checkpoints(runner)


def train_and_measure(runner: StudyRunner, trial: optuna.Trial, params: dict[str, Any]) -> tuple[float, float]:
    """One trial of the study: its MLflow run, training with the pick's checkpoints and bounds, its
    record in Optuna (durable before any deferred write), then its final writes queued."""
    tcfg = trial_train_config(runner.config, params)
    tags = {"optuna.trial": trial.number, "optuna.study": runner.study.study_name, "selected": "false",
            "gpt2ft.kind": "trial"}
    # The run stays RUNNING until the background writer has stored the trial's samples,
    # tables and plots; FINISHED then means "everything logged" (see replay_unlogged).
    with runner.tracker.run(f"trial-{trial.number}", parent=runner.parent, tags=tags, end_on_success=False) as run:
        trial.set_user_attr("mlflow_run_id", run.id)
        trial.set_user_attr("command_id", runner.command_id)
        # The config it trains with (a resumed study's --set values may differ from the recorded
        # one): export retrains the trial with it.
        trial.set_user_attr("config_yaml", config_yaml(runner.config))
        run.log_params({**{f"trial.{k}": v for k, v in params.items()},
                        **{f"train.{k}": v for k, v in dataclasses.asdict(tcfg).items()}})

        saving = []

        def keep(model, fit) -> None:
            # Saved by the writer while this thread samples and measures the same weights
            # (sampling only reads them); waited for below, before Optuna records the trial.
            saving.append(runner.writer.submit(lambda: runner.checkpoints.save(trial.number, fit.steps, model,
                                                                               runner.assets.tokenizer),
                                               name=f"checkpoint {trial.number}"))

        points = leaders.keeper(runner.study, trial.number, runner.checkpoints, runner.assets.tokenizer,
                                runner.config.study.checkpoints_per_trial)
        res = run_trial(runner.assets, tcfg, run, progress=runner.progress, after_fit=keep, defer_log=True,
                        on_candidate=points, bounds=recorded_bounds(runner.study.user_attrs))
        for future in saving:  # a checkpoint not written (or not in writer.STALL_SECONDS) fails the trial
            runner.writer.result(future, f"the checkpoint of trial {trial.number} at step {res.fit.steps}")
        m = res.metrics
        style = study_style(runner.study.user_attrs, m["top100_ratio"])
        if not (math.isfinite(style) and math.isfinite(m["memorization"])):
            # Before any write is queued, so the run ends FAILED with this reason and stays so.
            raise RuntimeError("metrics are not finite (no samples to measure)")
        for key, value in res.record().items():  # durable before any deferred write
            trial.set_user_attr(key, value)
        for key, value in constraints(runner.study.user_attrs, m, runner.config.study).items():
            trial.set_constraint(key, value)  # study.constrained: each copying judge's value minus its bound
    # Stored in after_trial, once COMPLETE: queued before the tell, a killed trial's run ended FINISHED.
    runner.unstored = (trial.number, run.id, res.log_ops + _run_end(res, style), res.fit.steps)
    return style, m["memorization"]


def _settle_writer(wait) -> None:
    """Wait for the writer (``drain`` or ``close``); a writer that died or stalled is reported, not
    raised: Optuna holds every trial's result, and ``replay_unlogged`` redoes the lost writes."""
    try:
        wait()
    except (WriterDied, WriterTimeout) as exc:
        log.warning("the background writer failed (%s); its lost writes are redone from Optuna's records", exc)


def _on_remeasured(runner: StudyRunner):
    """``leaders.remeasure``'s callback: a re-measured trial's metrics onto its run."""
    def on_metrics(number: int, metrics: dict[str, float]) -> None:
        trial = next(t for t in runner.study.get_trials(deepcopy=False) if t.number == number)
        if trial.user_attrs.get("mlflow_run_id"):
            runner.writes.remeasured(trial.user_attrs["mlflow_run_id"], metrics)
    return on_metrics


def _run_end(res: TrialResult, style: float) -> list[logops.Op]:
    """After a trial's own writes: its study tags and objective, then the run's end (FINISHED
    only once everything before it is stored)."""
    return [("tags", {"stopped_early": str(res.fit.stopped_early).lower()}),
            ("metrics", {"style_score": style}, 0), ("end", "FINISHED")]


def give_up_message(study: optuna.Study, in_row: int) -> str:
    """The one sentence of a study stopped by ``study.max_failures``: the last failure's reason."""
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if "fail_reason" in t.user_attrs]
    done = len(trained(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))))
    last = max(failed, key=lambda t: (t.datetime_complete or datetime.datetime.min, t.number), default=None)
    what = (f"the last (trial {last.number}) with {last.user_attrs['fail_reason'].splitlines()[0][:300].rstrip('.')}"
            if last is not None else "see the trials' fail_reason")
    return (f"{in_row} trials failed in a row, {what}, so the study stopped (study.max_failures); its {done} "
            "completed trial(s) are logged and picked from: fix the cause and run the same command again.")


def replay_unlogged(runner: StudyRunner) -> int:
    """Redo the writes of COMPLETE trials whose MLflow run is still RUNNING: their process died
    (or their write failed) after the trial was recorded in Optuna and before its samples,
    tables and plots were stored. Called after this command's workers are done; a run of another
    command (a second machine on the same storage) is left alone while that command may still
    be writing it: completed less than ``study.grace_period`` seconds ago. Each trial stands
    alone: one whose writes fail again is reported and left RUNNING for the next run.
    Returns how many runs were redone."""
    now, redone = datetime.datetime.now(), 0
    for t in runner.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        try:
            redone += _replay_one(runner, t, now)
        except Exception as exc:  # the others, the re-measure and the pick still happen
            log.warning("trial %d: its samples, tables and plots could not be written now (%s: %s); the next run "
                        "tries again", t.number, exc.__class__.__name__, str(exc).splitlines()[0] if str(exc) else "")
    return redone


def _replay_one(runner: StudyRunner, t: optuna.trial.FrozenTrial, now: datetime.datetime) -> bool:
    """Redo one trial's writes if its run is unfinished and no other command may still write it."""
    run_id = t.user_attrs.get("mlflow_run_id")
    if not run_id or not runner.writes.unfinished(run_id):
        return False
    age = (now - t.datetime_complete).total_seconds() if t.datetime_complete else math.inf
    if age < runner.config.study.grace_period and t.user_attrs.get("command_id") != runner.command_id:
        return False
    res = TrialResult.from_record(t.user_attrs)
    style = study_style(runner.study.user_attrs, res.metrics.get("top100_ratio", math.nan))
    runner.writes.replay(run_id, trial_ops(runner.assets, res) + _run_end(res, style), res.fit.steps)
    print(f"[study] trial {t.number}: its samples, tables and plots were not stored (process "
          "stopped or write failed); written now", file=sys.stderr)
    return True


def _wait_for_slot(study: optuna.Study, trial: optuna.Trial, n_trials: int, cfg: StudyConfig) -> None:
    """Return once ``trial`` holds one of the ``n_trials`` slots: fewer than that many trials
    numbered before it are COMPLETE or RUNNING.

    While they hold every slot it waits, failing each RUNNING trial whose heartbeat has stopped
    (a killed run's, once it is ``grace_period`` seconds old: a live worker's keeps beating), and
    takes the first slot a failed trial frees. Once ``n_trials`` are COMPLETE it is a surplus
    trial: recorded as pruned before any work, and its worker stops."""
    waiting = False
    while True:
        trials = trained(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)))
        if sum(t.state == TrialState.COMPLETE for t in trials) >= n_trials:
            trial.set_user_attr("surplus", True)
            study.stop()
            print(f"[study] trial {trial.number} not run: {n_trials} trials are complete.", file=sys.stderr)
            raise optuna.TrialPruned("surplus trial: n_trials already reached by other workers")
        if sum(t.number < trial.number for t in trials) < n_trials:
            return
        if not waiting:
            waiting = True
            print(f"[study] trial {trial.number} waits for a slot: the others are held by running trials (other "
                  f"workers', or a killed run's until its heartbeat is {cfg.grace_period} s old).", file=sys.stderr)
        time.sleep(cfg.heartbeat_interval)
        optuna.storages.fail_stale_trials(study)


def tell_derived(study: optuna.Study, frozen: optuna.trial.FrozenTrial, space: StudyConfig) -> int:
    """Tell Optuna each interior whole-epoch point of a finished trial as a COMPLETE trial of that
    many epochs (``summary.derived_points``), marked ``derived_from``, so the sampler learns from
    every measurement instead of re-buying what it has measured. No MLflow run, no slot, no row
    of its own in the tables. Once: the caller holds the study's lock, and epochs already told
    (a resumed run redoing an interrupted after-trial) are skipped. Returns how many were told."""
    told = {t.params.get("epochs") for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(DERIVED) == frozen.number}
    points = [p for p in derived_points(frozen, space.epochs.low, space.epochs.high) if int(p["epoch"]) not in told]
    for p in points:
        params = {**frozen.params, "epochs": int(p["epoch"])}
        values = [study_style(study.user_attrs, p["top100_ratio"]), float(p["memorization"])]
        study.add_trial(optuna.trial.create_trial(params=params, distributions=frozen.distributions, values=values,
                                                  user_attrs={DERIVED: frozen.number, "step": int(p["step"])},
                                                  constraints=constraints(study.user_attrs, p, space)))
    return len(points)


def _selection(study: optuna.Study, summary: Summary, chosen: dict[str, Any]) -> tuple:
    """``TrialWrites.select``'s arguments: the selected trial's run (None: no champion), the
    parent's tags and the ``selected_*`` metrics."""
    finished = int(summary.table["state"].isin(["COMPLETE", "FAIL", "PRUNED"]).sum())
    pick = summary.pick
    tags = {"pick_reason": pick.reason, "pick_eligible": str(pick.eligible).lower(),
            "pick_within_bound": str(pick.within_bound).lower(), "pick_degenerate": str(pick.degenerate).lower()}
    if not chosen:
        none = {"selected_trial": "none", "selected_step": "none", "selected_params": "none"}
        return None, {**tags, **none}, {}, finished
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == pick.number)
    # Epoch e of an E-epoch trial is an e-epoch model: the parameters that train the pick say e.
    epoch = float(chosen.get("epoch", math.nan))
    epochs = (int(epoch) if epoch.is_integer() else round(epoch, 3)) if math.isfinite(epoch) else trial.params["epochs"]
    chosen = {**chosen, "epochs": epochs}
    tags.update({"selected_trial": pick.number, "selected_step": pick.step,
                 "selected_params": {**trial.params, "epochs": epochs}})
    metrics = {"selected_trial": float(pick.number), "selected_step": float(pick.step), "selected_epoch": epoch,
               **{f"selected_{k}": float(v) for k, v in chosen.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("number", "step", "epoch")}}
    for key in ("p_closer_by_top100", "p_closer_by_style_prob"):
        if math.isfinite(getattr(summary, key)):
            metrics[f"selected_{key}"] = getattr(summary, key)
    return trial.user_attrs.get("mlflow_run_id"), tags, metrics, finished


def log_study_artifacts(runner: StudyRunner) -> None:
    """Study plots, the trials table and the samples page on the parent run."""
    summary = summarize(runner.study)
    trials = {t.number: t for t in runner.study.get_trials(deepcopy=False)}
    sample_ids = {n: t.user_attrs.get("sample_ids") for n, t in trials.items()}
    if summary.selected:  # the selected candidate's own samples, when it was re-measured
        again = runner.study.user_attrs.get(f"remeasure_{summary.selected[0]}_{summary.selected[1]}") or {}
        if again.get("sample_ids") or not summary.candidate(*summary.selected).get("is_end", False):
            sample_ids[summary.selected[0]] = again.get("sample_ids")
    report.log_study_report(runner.parent, summary, trajectories(runner.study), runner.assets, sample_ids)
    _log_optuna_plots(runner.study, runner.parent)


def _log_optuna_plots(study: optuna.Study, parent) -> None:
    """Optuna's own importance plots (matplotlib backend), when there are enough trials."""
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 3:
        return
    warnings.filterwarnings("ignore", module="optuna.importance")
    try:
        for i, name in enumerate(OBJECTIVES):
            ax = plot_param_importances(study, target=lambda t, i=i: t.values[i], target_name=name)
            parent.log_figure(ax.figure, f"plots/importance_{name}.png")
    except Exception as exc:  # importance needs variance in params; a plot is not worth a crash
        log.warning("optuna importance plot skipped: %s", exc)
