"""Optuna's storage and the coordination of workers that share one study.

Resume and many workers rest on Optuna's RDB storage: trials live in SQLite by default or in
any database URL; heartbeats let a later run (or another worker) fail a trial whose process
was killed. Workers that start together must also create exactly one MLflow parent run
between them: :class:`ParentClaim` is that lock.
"""
from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Callable, Optional

import optuna
import sqlalchemy.exc

from gpt2ft.errors import UserError
from gpt2ft.urls import mask_url

HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30
PARENT_CLAIM_SECONDS = 120  # how long a worker waits for another to create the MLflow parent run


def default_storage(store_folder: Path) -> str:
    """SQLite beside the MLflow store (``mlruns/optuna.db`` by default)."""
    store_folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store_folder / 'optuna.db'}"


def open_storage(url: str, on_failed: Optional[Callable] = None, heartbeat: int = HEARTBEAT_SECONDS,
                 grace: int = GRACE_SECONDS) -> optuna.storages.RDBStorage:
    """The study's storage, with heartbeats; a bad URL or an unreachable database is a UserError."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    error: Exception = RuntimeError("no attempt")
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
    summaries.sort(key=lambda s: s.datetime_start or dt.datetime.min)
    return summaries[-1].study_name


def load_study(url: str, name: Optional[str]) -> optuna.Study:
    """A finished or running study by name (default: the most recent one in the storage)."""
    storage = open_storage(url)
    name = name or latest_study_name(storage)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UserError(f"no study named {name!r} in {mask_url(url)}; check --study-name.") from None


class ParentClaim:
    """The lock that lets exactly one of several workers create the study's MLflow parent run.

    Optuna has no compare-and-set for study attributes (``set_user_attr`` overwrites, so "first
    id written wins" let two workers each keep a parent), but a study name is unique in the
    storage: creating a marker study is an atomic claim on any database.
    """

    def __init__(self, study: optuna.Study, storage, storage_url: str, attr: str = "mlflow_parent_run_id"):
        self.study, self.storage, self.url, self.attr = study, storage, storage_url, attr
        self.lock = f"{study.study_name}.mlflow-parent-claim"

    def existing_or_claim(self, wait: float = PARENT_CLAIM_SECONDS) -> Optional[str]:
        """The parent run id, or None once this worker holds the claim (then it must create the
        run, write the id to the study, and :meth:`release`)."""
        deadline = time.monotonic() + wait
        while True:
            run_id = self.study.user_attrs.get(self.attr)
            if run_id:
                return run_id
            try:
                self._create_marker()
            except optuna.exceptions.DuplicatedStudyError:
                if time.monotonic() > deadline:
                    raise UserError(f"no MLflow parent run appeared for study {self.study.study_name!r} in "
                                    f"{wait:.0f} s; if no other worker is starting, delete the stale claim: "
                                    f"optuna delete-study --study-name '{self.lock}' --storage "
                                    f"'{mask_url(self.url)}'") from None
                time.sleep(0.5)
                continue
            run_id = self.study.user_attrs.get(self.attr)
            if run_id:  # its creator finished between our read and our claim
                self.release()
            return run_id

    def _create_marker(self) -> None:
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created"
        try:
            self.storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], self.lock)
        finally:
            optuna.logging.set_verbosity(verbosity)

    def release(self) -> None:
        self.storage.delete_study(self.storage.get_study_id_from_name(self.lock))
