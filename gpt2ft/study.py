"""The Optuna study, and only here: search space, objectives, resume, workers, the pick.

Two objectives, kept apart: style (closeness of ``top100_ratio`` to the book's own value,
maximised) and copying (``memorization``, minimised). The Pareto front is Optuna's; the
balanced pick (``gpt2ft.pick``) is applied after every trial so the current choice is always
visible in Optuna (``selected`` user attr) and MLflow (``selected=true`` tag, parent-run tags
and ``selected_*`` metrics).

Resume and many workers rest on Optuna's RDB storage: trials live in SQLite by default or
in any database URL; heartbeats let a later run (or another worker) fail a trial whose
process was killed, and a callback then closes its MLflow run as FAILED.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import warnings

import optuna
from optuna.trial import TrialState


from gpt2ft import pick as P
from gpt2ft.config import Config, StudyConfig, load_config
from gpt2ft.errors import UserError
from gpt2ft.urls import mask_url

# Heartbeats, fail_stale_trials and the matplotlib plots are stable in use here but still
# flagged experimental; the warning would repeat on every trial.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
log = logging.getLogger(__name__)
OBJECTIVES = ("style", "memorization")
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30
PARENT_CLAIM_SECONDS = 120  # how long a worker waits for another to create the MLflow parent run


# ----------------------------------------------------------------------- search space

def suggest(trial: optuna.Trial, space: StudyConfig) -> dict[str, Any]:
    """The search space: learning rate (log), epochs, batch size."""
    return {
        "lr": trial.suggest_float("lr", space.lr.low, space.lr.high, log=space.lr.log),
        "epochs": trial.suggest_int("epochs", space.epochs.low, space.epochs.high),
        "batch_size": trial.suggest_categorical("batch_size", list(space.batch_size)),
    }


# ---------------------------------------------------------------------------- storage

def default_storage(tracking_uri: str) -> str:
    """SQLite next to the MLflow store (``mlruns/optuna.db`` by default)."""
    from gpt2ft.tracking import sqlite_path

    db = sqlite_path(tracking_uri)
    folder = db.parent if db is not None else Path("mlruns").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def open_storage(url: str, on_failed=None, heartbeat: int = HEARTBEAT_SECONDS,
                 grace: int = GRACE_SECONDS) -> optuna.storages.RDBStorage:
    import sqlalchemy.exc

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                              grace_period=grace, heartbeat_stale_trial_callback=on_failed)
        except Exception as exc:  # sqlalchemy/driver errors: connection refused, bad URL, no driver
            error = exc
            # Workers starting together on an empty database all create Optuna's tables and the
            # database rejects all but the first CREATE; the tables exist now, so try again.
            if not (isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in str(exc)):
                break
            time.sleep(1 + attempt)
    reason = str(error).splitlines()[0][:160] if str(error) else error.__class__.__name__
    raise UserError(f"cannot open the Optuna storage {mask_url(url)} ({reason}); check --storage "
                    "and that the database is running and reachable.") from None


def latest_study_name(storage) -> str:
    summaries = optuna.get_all_study_summaries(storage)
    if not summaries:
        raise UserError("no study found in the storage; run `gpt2ft study` (make study) first.")
    import datetime as dt

    summaries.sort(key=lambda s: s.datetime_start or dt.datetime.min)
    return summaries[-1].study_name


# ------------------------------------------------------------------------ the pick

def pick_rows(study: optuna.Study) -> list[P.TrialRow]:
    """Trials as pick rows; a trial re-measured with more samples (``final_trial_N`` study user
    attr) is judged by those tighter numbers."""
    rows = []
    finals = study.user_attrs
    for t in study.get_trials(deepcopy=False):
        final = finals.get(f"final_trial_{t.number}")
        if t.state == TrialState.COMPLETE and final:
            rows.append(P.TrialRow(t.number, float(final["style"]), float(final["memorization"]), "COMPLETE"))
        elif t.state == TrialState.COMPLETE and t.values:
            rows.append(P.TrialRow(t.number, float(t.values[0]), float(t.values[1]), "COMPLETE"))
        else:
            rows.append(P.TrialRow(t.number, math.nan, math.nan, t.state.name))
    return rows


def current_pick(study: optuna.Study) -> Optional[P.PickResult]:
    attrs = study.user_attrs
    bound = attrs.get("memorization_bound", 0.02)
    return P.pick(pick_rows(study), attrs.get("pick_rule", "bounded_style"), bound)


# ------------------------------------------------------------------------ the study

class StudyRunner:
    """Runs trials of one study in this process (one worker)."""

    def __init__(self, config: Config, study_name: str, storage_url: str, tracker, assets,
                 n_trials: int, checkpoints: Path, progress: bool = True):
        self.config = config
        self.tracker = tracker
        self.assets = assets
        self.n_trials = n_trials
        self.checkpoints = checkpoints
        self.progress = progress
        self.storage_url = storage_url
        self.storage = open_storage(storage_url, on_failed=self._on_stale_trial,
                                    heartbeat=config.study.heartbeat_interval,
                                    grace=config.study.grace_period)
        try:
            self.study = optuna.create_study(
                storage=self.storage, study_name=study_name, load_if_exists=True,
                directions=["maximize", "minimize"],
                sampler=optuna.samplers.TPESampler(seed=config.train.seed))
        except Exception as exc:
            raise UserError(f"cannot create or load study {study_name!r} in {mask_url(storage_url)} "
                            f"({exc.__class__.__name__}); check --storage.") from None
        self.study.set_metric_names(list(OBJECTIVES))
        self.parent = None
        self.bar = None

    # --- MLflow parent run, shared by every worker and every resume --------------------
    def open_parent(self, refs: dict[str, float], tags: dict[str, Any]) -> None:
        run_id = self._parent_id_or_claim()
        if run_id:
            self.parent = self.tracker.resume(run_id)
            return
        try:
            self.parent = self.tracker.start(self.study.study_name, tags={**tags, "gpt2ft.kind": "study"})
            import yaml
            config = self.config.to_dict()
            config["study"]["storage"] = mask_url(config["study"]["storage"])  # export writes this YAML out
            self.study.set_user_attr("config_yaml", yaml.safe_dump(config, sort_keys=False))
            self.study.set_user_attr("corpus", self.assets.book.source)
            self.study.set_user_attr("references", refs)
            self.study.set_user_attr("pick_rule", self.config.study.pick_rule)
            bound = P.memorization_bound(refs.get("book_memorization", math.nan),
                                         refs.get("base_memorization", math.nan),
                                         self.config.study.memorization_factor,
                                         self.config.study.memorization_floor)
            self.study.set_user_attr("memorization_bound", bound)
            # Last: a worker that sees the id finds every attribute above already written.
            self.study.set_user_attr("mlflow_parent_run_id", self.parent.id)
        finally:
            self._release_parent_claim()
        self.parent.log_params({**self.config.flat(), "optuna.storage": mask_url(self.storage_url)})
        self.parent.log_metrics({**refs, "memorization_bound": bound, **self.assets.timings})

    def _parent_id_or_claim(self) -> Optional[str]:
        """The study's MLflow parent run id, or None once this worker holds the claim to create it.

        Workers that start together must create one parent run between them. Optuna has no
        compare-and-set for study attributes (``set_user_attr`` overwrites, so "first id written
        wins" let two workers each keep a parent), but a study name is unique in the storage:
        creating a marker study is an atomic claim on any database.
        """
        lock = f"{self.study.study_name}.mlflow-parent-claim"
        deadline = time.monotonic() + PARENT_CLAIM_SECONDS
        while True:
            run_id = self.study.user_attrs.get("mlflow_parent_run_id")
            if run_id:
                return run_id
            try:
                verbosity = optuna.logging.get_verbosity()
                optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created"
                try:
                    self.storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], lock)
                finally:
                    optuna.logging.set_verbosity(verbosity)
            except optuna.exceptions.DuplicatedStudyError:
                if time.monotonic() > deadline:
                    raise UserError(f"no MLflow parent run appeared for study {self.study.study_name!r} in "
                                    f"{PARENT_CLAIM_SECONDS} s; if no other worker is starting, delete the "
                                    f"stale claim: optuna delete-study --study-name '{lock}' --storage "
                                    f"'{mask_url(self.storage_url)}'") from None
                time.sleep(0.5)
                continue
            run_id = self.study.user_attrs.get("mlflow_parent_run_id")
            if run_id:  # its creator finished between our read and our claim
                self._release_parent_claim()
            return run_id

    def _release_parent_claim(self) -> None:
        lock = f"{self.study.study_name}.mlflow-parent-claim"
        self.storage.delete_study(self.storage.get_study_id_from_name(lock))

    def _on_stale_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna failed a trial whose worker stopped beating: close its MLflow run too."""
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            self.tracker.fail_run(run_id, "worker process was killed; trial interrupted")
        log.warning("trial %d was interrupted earlier and is marked failed", trial.number)

    def _fail_orphans(self) -> None:
        """A killed worker's trial stops beating; once its heartbeat is older than the grace
        period Optuna marks it FAIL (and ``_on_stale_trial`` closes its MLflow run)."""
        optuna.storages.fail_stale_trials(self.study)

    # --- one trial ---------------------------------------------------------------------
    def complete_count(self, below: Optional[int] = None) -> int:
        states = (TrialState.COMPLETE, TrialState.RUNNING)
        return sum(1 for t in self.study.get_trials(deepcopy=False, states=states)
                   if below is None or t.number < below)

    def objective(self, trial: optuna.Trial) -> tuple[float, float]:
        # With several workers one may ask for a trial after the last slot was taken:
        # such a surplus trial stops before any work and is recorded as pruned.
        # Its worker then stops: the slots are taken by trials that are running elsewhere
        # (or by a killed run's trial whose heartbeat has not yet gone stale).
        if self.complete_count(below=trial.number) >= self.n_trials:
            trial.set_user_attr("surplus", True)
            self.study.stop()
            print(f"[study] trial {trial.number} not run: the remaining slots are held by running "
                  "trials (another worker, or a killed run whose heartbeat is not yet "
                  f"{self.config.study.grace_period} s old); run again later if no other worker runs.",
                  file=sys.stderr)
            raise optuna.TrialPruned("surplus trial: n_trials already reached by other workers")
        # One seed in every worker (and every resumed run) drew the same parameters in the same
        # order; seeding by trial number keeps a study reproducible and the workers apart.
        self.study.sampler = optuna.samplers.TPESampler(seed=self.config.train.seed + trial.number)
        params = suggest(trial, self.config.study)
        patience = self.config.train.early_stop_patience
        if self.config.study.prune and patience == 0:
            patience = 2  # "clearly turned upward": two evaluations in a row
        tcfg = dataclasses.replace(self.config.train, lr=params["lr"], epochs=params["epochs"],
                                   batch_size=params["batch_size"], early_stop_patience=patience)
        k = self.complete_count() + 0
        print(f"[study {self.study.study_name}] trial {trial.number} ({min(k, self.n_trials)} of "
              f"{self.n_trials}): lr={params['lr']:.3g} epochs={params['epochs']} "
              f"batch_size={params['batch_size']}", file=sys.stderr, flush=True)
        tags = {"optuna.trial": trial.number, "optuna.study": self.study.study_name, "selected": "false",
                "gpt2ft.kind": "trial"}
        try:
            return self._run(trial, params, tcfg, tags)
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{exc.__class__.__name__}: {exc}"[:1000])
            raise

    def _run(self, trial: optuna.Trial, params: dict[str, Any], tcfg, tags: dict[str, Any]) -> tuple[float, float]:
        from gpt2ft.trial import run_trial

        with self.tracker.run(f"trial-{trial.number}", parent=self.parent, tags=tags) as run:
            trial.set_user_attr("mlflow_run_id", run.id)
            run.log_params({**{f"trial.{k}": v for k, v in params.items()},
                            **{f"train.{k}": v for k, v in dataclasses.asdict(tcfg).items()}})
            keep = {}

            def save_checkpoint(model, fit_result) -> None:
                keep["path"] = self._save_checkpoint(trial.number, model)

            res = run_trial(self.assets, tcfg, run, progress=self.progress, after_fit=save_checkpoint)
            m = res.metrics
            style = P.style_score(m["top100_ratio"], self.assets.references.get("book_top100_ratio", math.nan))
            trial.set_user_attr("metrics", {k: float(v) for k, v in m.items() if isinstance(v, (int, float))})
            trial.set_user_attr("stopped_early", res.fit.stopped_early)
            trial.set_user_attr("history", res.fit.history)
            trial.set_user_attr("sample_texts", res.texts)
            trial.set_user_attr("sample_ids", res.ids)
            if keep.get("path"):
                trial.set_user_attr("checkpoint", str(keep["path"]))
            run.set_tags({"stopped_early": str(res.fit.stopped_early).lower()})
            run.log_metrics({"style_score": style})
        if not (math.isfinite(style) and math.isfinite(m["memorization"])):
            raise RuntimeError("metrics are not finite (no samples to measure)")
        return style, m["memorization"]

    def _save_checkpoint(self, number: int, model) -> Optional[Path]:
        from gpt2ft.export import save_model

        if not self.config.study.keep_checkpoints:
            return None
        path = self.checkpoints / f"trial-{number}"
        save_model(model, self.assets.tokenizer, path)
        return path

    # --- after each trial --------------------------------------------------------------
    def after_trial(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if self.bar is not None and frozen.state == TrialState.COMPLETE:
            self.bar.update(1)
        if frozen.state == TrialState.FAIL:
            reason = frozen.user_attrs.get("fail_reason") or "see the MLflow run's failure_reason tag"
            print(f"[study] trial {frozen.number} FAILED: {reason}", file=sys.stderr)
        self.apply_pick()
        self._prune_checkpoints()

    def apply_pick(self) -> Optional[P.PickResult]:
        result = current_pick(self.study)
        if result is None:
            return None
        previous = self.study.user_attrs.get("selected")
        trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        chosen = trials[result.number]
        run_id = chosen.user_attrs.get("mlflow_run_id")
        # Workers pick concurrently, each from the trials it has seen, so an older pick can land
        # after a newer one: compare with what MLflow holds, not only with the last pick.
        tagged, parent_says = self._selected_in_mlflow(trials, previous)
        if previous != result.number or tagged != ({run_id} if run_id else set()) or parent_says != run_id:
            for old in tagged - {run_id}:
                self.tracker.client.set_tag(old, "selected", "false")
            if run_id and run_id not in tagged:
                self.tracker.client.set_tag(run_id, "selected", "true")
            self.study.set_user_attr("selected", result.number)
            if self.parent is not None:
                self.parent.set_tags({"selected_trial": result.number, "selected_run_id": run_id or "",
                                      "selected_params": chosen.params, "pick_reason": result.reason,
                                      "pick_within_bound": str(result.within_bound).lower()})
                metrics = chosen.user_attrs.get("metrics", {})
                n_done = len([t for t in self.study.get_trials(deepcopy=False) if t.state.is_finished()])
                self.parent.log_metrics({"selected_trial": float(result.number),
                                         **{f"selected_{k}": v for k, v in metrics.items()}}, n_done)
        print(f"[study] current pick: trial {result.number} ({result.reason})", file=sys.stderr, flush=True)
        return result

    def _selected_in_mlflow(self, trials: dict, previous: Optional[int]) -> tuple[set[str], Optional[str]]:
        """Run ids of the children tagged selected=true, and the parent's selected_run_id tag."""
        if self.parent is None:  # nothing to ask: trust this worker's last pick
            old = trials[previous].user_attrs.get("mlflow_run_id") if previous in trials else None
            return ({old} if old else set()), old
        runs = self.tracker.runs(f"tags.`mlflow.parentRunId` = '{self.parent.id}' and tags.selected = 'true'")
        parent_tags = self.tracker.client.get_run(self.parent.id).data.tags
        return {r.info.run_id for r in runs}, parent_tags.get("selected_run_id") or None

    def _prune_checkpoints(self) -> None:
        """Keep checkpoints of the Pareto front and of the pick only (disk is finite)."""
        front = {r.number for r in P.pareto_front(pick_rows(self.study))}
        front.add(self.study.user_attrs.get("selected", -1))
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            path = t.user_attrs.get("checkpoint")
            if path and t.number not in front and Path(path).exists():
                shutil.rmtree(path, ignore_errors=True)

    # --- the loop ----------------------------------------------------------------------
    def run(self, timeout: Optional[float]) -> None:
        self._fail_orphans()
        done = len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if done >= self.n_trials:
            print(f"[study] {done} of {self.n_trials} trials already complete; nothing to run.",
                  file=sys.stderr)
        else:
            from tqdm.auto import tqdm

            # Trials within the study; like the step bar it is silent when stderr is no terminal.
            self.bar = tqdm(total=self.n_trials, initial=done, desc="trials", unit="trial",
                            disable=not self.progress or None)
            self.study.optimize(
                self.objective, timeout=timeout, catch=(Exception,), gc_after_trial=True,
                callbacks=[optuna.study.MaxTrialsCallback(self.n_trials, states=(TrialState.COMPLETE,)),
                           self.after_trial])
            self.bar.close()
        self.remeasure_front()
        self.apply_pick()

    def remeasure_front(self) -> None:
        """Re-measure the Pareto front's trials with ``sample.final_n_samples`` sequences.

        Ten samples of 100 tokens give standard errors of a few points; the final candidates
        get more samples (from their kept checkpoints) so the pick between them is not noise.
        """
        from transformers import AutoModelForCausalLM

        from gpt2ft.measure import free_accelerator, measure_model

        n = self.config.sample.final_n_samples
        if n <= self.config.sample.n_samples:
            return
        front = {r.number for r in P.pareto_front(pick_rows(self.study))}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            path = t.user_attrs.get("checkpoint")
            key = f"final_trial_{t.number}"
            if t.number not in front or key in self.study.user_attrs or not path or not Path(path).is_dir():
                continue
            try:
                model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
            except OSError:
                # Another worker in the same folder pruned it (no longer on the front) since
                # the check above; its trial keeps its per-trial measurement.
                log.warning("checkpoint of trial %d disappeared; not re-measured", t.number)
                continue
            model.to(self.assets.runtime.device)
            m, _, _ = measure_model(self.assets, model, n, self.config.train.seed + 1)
            del model
            free_accelerator()
            style = P.style_score(m["top100_ratio"], self.assets.references.get("book_top100_ratio", math.nan))
            final = {"style": style, "memorization": m["memorization"], "n_samples": n,
                     **{k: float(v) for k, v in m.items()}}
            # On the study: Optuna refuses to change a finished trial (UpdateFinishedTrialError).
            self.study.set_user_attr(key, final)
            run_id = t.user_attrs.get("mlflow_run_id")
            if run_id:
                from gpt2ft.tracking import Run

                Run(self.tracker.client, run_id).log_metrics({f"final_{k}": v for k, v in m.items()})
            print(f"[study] trial {t.number} re-measured with {n} samples: top100_ratio "
                  f"{m['top100_ratio']:.3f}, memorization {m['memorization']:.4f}", file=sys.stderr)


def study_dataframe(study: optuna.Study) -> Any:
    """One row per trial: number, state, params, the headline metrics, selected."""
    import pandas as pd

    selected = study.user_attrs.get("selected")
    rows = []
    for t in study.get_trials(deepcopy=False):
        m = t.user_attrs.get("metrics", {})
        rows.append({"number": t.number, "state": t.state.name, **t.params,
                     "style": m.get("top100_ratio", math.nan),
                     **{k: m.get(k, math.nan) for k in ("top100_ratio", "memorization", "heldout_loss",
                                                        "train_loss", "style_prob", "longest_copy")},
                     "seconds": (t.duration.total_seconds() if t.duration else math.nan),
                     "stopped_early": t.user_attrs.get("stopped_early", False),
                     "selected": t.number == selected})
    return pd.DataFrame(rows)


def print_trials(study: optuna.Study) -> None:
    df = study_dataframe(study)
    if df.empty:
        print("no trials.")
        return
    cols = [c for c in ("number", "state", "lr", "epochs", "batch_size", "top100_ratio", "memorization",
                        "heldout_loss", "style_prob", "seconds", "selected") if c in df.columns]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def log_study_artifacts(runner: StudyRunner) -> None:
    """Study plots, the trials table and the samples page on the parent run."""
    from gpt2ft import plots, report

    study, parent, assets = runner.study, runner.parent, runner.assets
    df = study_dataframe(study)
    parent.log_text(df.to_csv(index=False), "trials.csv")
    refs = {**study.user_attrs.get("references", {}),
            "memorization_bound": study.user_attrs.get("memorization_bound")}
    front = [r.number for r in P.pareto_front(pick_rows(study))]
    # Until the trial-summary table feeds it: plots reads the front from an on_front column.
    on_front = df.assign(on_front=[n in front for n in df.get("number", [])])
    parent.log_figure(plots.style_vs_copying(on_front, refs), "plots/style_vs_copying.png")
    done = df[df.state == "COMPLETE"]
    if len(done):
        parent.log_figure(plots.params_vs_objectives(done, references=refs), "plots/params_vs_objectives.png")
    _log_optuna_plots(study, parent)
    # Samples side by side: base model, selected trial, most-copying trial (from checkpoints' runs).
    selected = study.user_attrs.get("selected")
    columns = {"base model": assets.reference_samples.get("base", [])}
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    named = {}
    if selected is not None:
        ids = by_number[selected].user_attrs.get("sample_ids")
        if ids:
            columns[f"selected (trial {selected})"] = ids
            named[f"selected (trial {selected})"] = ids
    if len(done):
        worst = int(done.sort_values("memorization").iloc[-1]["number"])
        ids = by_number[worst].user_attrs.get("sample_ids")
        if ids and worst != selected:
            columns[f"most copying (trial {worst})"] = ids
            named[f"most copying (trial {worst})"] = ids
    parent.log_text(report.samples_page(assets, columns), "samples.html")
    parent.log_dict(report.novelty_table(assets, named), "novelty_curve.json")
    parent.log_figure(report.novelty_figure(assets, named), "plots/novelty.png")


def _log_optuna_plots(study: optuna.Study, parent) -> None:
    """Optuna's own importance plot (matplotlib backend), when there are enough trials."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 3:
        return
    try:
        from optuna.visualization.matplotlib import plot_param_importances

        warnings.filterwarnings("ignore", module="optuna.importance")

        ax = plot_param_importances(study, target=lambda t: t.values[1], target_name="memorization")
        parent.log_figure(ax.figure, "plots/importance_memorization.png")
        ax = plot_param_importances(study, target=lambda t: t.values[0], target_name="style")
        parent.log_figure(ax.figure, "plots/importance_style.png")
    except Exception as exc:  # importance needs variance in params; a plot is not worth a crash
        log.warning("optuna importance plot skipped: %s", exc)


# ----------------------------------------------------------------------------- the CLI

def estimate_cpu_hours(assets, config: Config, n_trials: int) -> float:
    """Time one training step on a copy of the model and extrapolate to the whole study."""
    from gpt2ft.train import make_optimizer

    model = assets.fresh_model()
    opt = make_optimizer(model, config.train, assets.runtime)
    x = assets.data.train_windows[: config.train.batch_size]
    t = time.perf_counter()
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    step = time.perf_counter() - t
    del model, opt
    n = assets.data.train_windows.shape[0]
    space = config.study
    mean_epochs = (space.epochs.low + space.epochs.high) / 2
    steps = 0.0
    for b in space.batch_size:
        # per-step time grows roughly with the batch; steps per epoch shrink with it
        steps += math.ceil(n / b) * mean_epochs * (b / config.train.batch_size)
    steps /= len(space.batch_size)
    return step * steps * n_trials / 3600


def run_study_cli(args) -> int:
    from gpt2ft.measure import compute_references, freeze_long_lived, prepare
    from gpt2ft.model import describe, n_params
    from gpt2ft.tracking import Tracker

    overrides = list(args.overrides)
    if args.study_name:
        overrides.append(f"study.name={args.study_name}")
    if args.n_trials is not None:
        overrides.append(f"study.n_trials={args.n_trials}")
    if args.timeout is not None:
        overrides.append(f"study.timeout={args.timeout}")
    if args.storage:
        overrides.append(f"study.storage={args.storage}")
    config = load_config(args.config, overrides)
    tracker = Tracker(args.tracking_uri or config.tracking.uri, config.tracking.experiment)
    storage_url = config.study.storage or default_storage(tracker.uri)
    open_storage(storage_url)  # fail fast on a bad URL, before the expensive loading
    assets = prepare(config, args.corpus)
    if assets.runtime.device.type == "cpu" and config.model.name not in ("random-gpt2", "smollm2"):
        hours = estimate_cpu_hours(assets, config, config.study.n_trials)
        msg = (f"no GPU: this study ({config.study.n_trials} trials of {config.model.name}) would take "
               f"about {hours:.1f} hours on this CPU (timed from one step); try "
               "`make study-cpu` (experiments/cpu_small.yaml) for a run of minutes")
        if hours > 1 and not args.yes:
            raise UserError(msg + ", or pass --yes to run it anyway.")
        print(f"gpt2ft: warning: {msg}.", file=sys.stderr)
    refs = compute_references(assets)
    freeze_long_lived()
    tags = {**describe(config, assets.runtime), "corpus_sha256": assets.book.sha256,
            "corpus_body_sha256": assets.book.body_sha256, "corpus_source": assets.book.source,
            "n_params": n_params(assets.base_model)}
    checkpoints = _checkpoint_root(tracker.uri) / config.study.name
    runner = StudyRunner(config, config.study.name, storage_url, tracker, assets, config.study.n_trials,
                         checkpoints, progress=not args.quiet)
    runner.open_parent(refs, tags)
    t = time.perf_counter()
    try:
        runner.run(config.study.timeout)
        log_study_artifacts(runner)
    except KeyboardInterrupt:
        runner.parent.end("KILLED")
        raise
    except BaseException:
        runner.parent.end("FAILED")
        raise
    runner.parent.end("FINISHED")
    print(f"\nstudy {config.study.name!r}: {time.perf_counter() - t:.0f} s in this run; "
          f"storage {mask_url(storage_url)}; MLflow {mask_url(tracker.uri)}")
    print_trials(runner.study)
    result = current_pick(runner.study)
    if result is not None:
        print(f"\nselected: trial {result.number} — {result.reason}")
        print_before_after(runner.study, result.number)
    return 0


def print_before_after(study: optuna.Study, number: int) -> None:
    """Base model (before) against the selected trial (after), beside the book itself."""
    refs = study.user_attrs.get("references", {})
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    after = trial.user_attrs.get("metrics", {})
    print(f"\n{'metric':<18}{'before (base)':>15}{'after (trial ' + str(number) + ')':>18}{'book (held-out)':>17}")
    for k in ("top100_ratio", "heldout_loss", "memorization", "style_js", "style_prob"):
        if k in after or f"base_{k}" in refs:
            print(f"{k:<18}{refs.get('base_' + k, math.nan):>15.4f}{after.get(k, math.nan):>18.4f}"
                  f"{refs.get('book_' + k, math.nan):>17.4f}")


def _checkpoint_root(tracking_uri: str) -> Path:
    from gpt2ft.tracking import sqlite_path

    db = sqlite_path(tracking_uri)
    return (db.parent if db is not None else Path("mlruns").resolve()) / "checkpoints"


# ----------------------------------------------------------------------- for export

def load_selected(storage_url: Optional[str], study_name: Optional[str], tracking_uri: str) -> dict[str, Any]:
    """What export needs about the selected trial: params, metrics, config, checkpoint."""
    url = storage_url or default_storage(tracking_uri)
    storage = open_storage(url)
    name = study_name or latest_study_name(storage)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UserError(f"no study named {name!r} in {mask_url(url)}; check --study-name.") from None
    result = current_pick(study)
    if result is None:
        raise UserError(f"study {name!r} has no completed trial yet; run `gpt2ft study` until one "
                        "completes, then export.")
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == result.number)
    return {"study_name": name, "number": trial.number, "params": trial.params,
            "metrics": trial.user_attrs.get("metrics", {}), "checkpoint": trial.user_attrs.get("checkpoint"),
            "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"),
            "references": study.user_attrs.get("references", {}),
            "config_yaml": study.user_attrs.get("config_yaml"), "corpus": study.user_attrs.get("corpus"),
            "reason": result.reason, "texts": trial.user_attrs.get("sample_texts", [])}
