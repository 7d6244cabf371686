"""Optuna's storage and the coordination of workers that share one study.

Resume and many workers rest on Optuna's RDB storage: trials live in SQLite by default or in
any database URL; heartbeats let a later run (or another worker) fail a trial whose process
was killed. Workers that start together must also create exactly one MLflow parent run
between them (:class:`ParentClaim`), and every read-then-write on the study that must happen
once whoever runs it (the fixed design's enqueue, a trial's derived trials, pruning
checkpoints) runs under one short lock (:class:`Claim`).
"""
from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import optuna
import sqlalchemy.exc

from gpt2ft.errors import UserError
from gpt2ft.urls import mask_url

HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30
PARENT_CLAIM_SECONDS = 120  # how long a worker waits for another to create the MLflow parent run
#: How long one holder may keep a :class:`Claim` before its waiters take it as a dead process's.
#: What runs under it (an enqueue, telling a trial's derived trials, a summary and a few folder
#: deletions) takes well under a second to a few seconds; a holder killed with it costs its
#: waiters this long once.
CLAIM_STALE_SECONDS = 120
LOCK_SUFFIXES = (".lock", ".mlflow-parent-claim")
log = logging.getLogger(__name__)
# Optuna's INFO line per trial ("Trial 0 finished with values ...") repeats the study's own line;
# set here because Optuna sets its logger to INFO when it is imported (gpt2ft.console).
optuna.logging.set_verbosity(optuna.logging.WARNING)


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
    # Not a lock's marker study (Claim, ParentClaim): those are never what the user means.
    summaries = [s for s in optuna.get_all_study_summaries(storage) if not s.study_name.endswith(LOCK_SUFFIXES)]
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
        self.lock = f"{study.study_name}{LOCK_SUFFIXES[1]}"

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
        _create_quietly(self.storage, self.lock)

    def release(self) -> None:
        self.storage.delete_study(self.storage.get_study_id_from_name(self.lock))


class Claim:
    """A short lock shared by every process on one storage: a marker study named ``name``.

    Optuna has no compare-and-set, but creating a study of a taken name fails on any database,
    so creating the marker is an atomic claim and deleting it the release. Each claim writes a
    token of its own on its marker (a database may give a new marker a deleted one's id), and a
    holder deletes only a marker bearing its token. A holder killed with the claim leaves the
    marker behind: a waiter that has seen the same marker for ``stale`` seconds deletes it and
    claims again.
    """

    def __init__(self, storage, name: str, stale: float = CLAIM_STALE_SECONDS, poll: float = 0.1):
        self.storage, self.name, self.stale, self.poll = storage, name, stale, poll
        self.token: Optional[str] = None

    @contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def acquire(self) -> None:
        seen: dict[tuple, float] = {}  # a holder's marker (id, token) -> when this waiter first saw it
        while True:
            try:
                marker = _create_quietly(self.storage, self.name)
            except optuna.exceptions.DuplicatedStudyError:
                pass
            else:
                self.token = uuid.uuid4().hex
                self.storage.set_study_user_attr(marker, "token", self.token)
                return
            holder = self._holder()
            if holder is None:  # released between our attempt and this look
                continue
            first = seen.setdefault(holder, time.monotonic())
            if time.monotonic() - first < self.stale:
                time.sleep(self.poll)
                continue
            log.warning("the lock %r was held for over %.0f s, by a process that died: taken over", self.name,
                        self.stale)
            try:
                self.storage.delete_study(holder[0])
            except KeyError:  # another waiter broke it first
                pass

    def _holder(self) -> Optional[tuple]:
        """(id, token) of the marker now, None when there is none (token None while being written)."""
        try:
            marker = self.storage.get_study_id_from_name(self.name)
            return marker, self.storage.get_study_user_attrs(marker).get("token")
        except KeyError:
            return None

    def release(self) -> None:
        token, self.token = self.token, None
        holder = self._holder()
        # Only our own: a waiter may have taken over a claim this process held too long.
        if token is not None and holder is not None and holder[1] == token:
            try:
                self.storage.delete_study(holder[0])
            except KeyError:
                pass


def _create_quietly(storage, name: str) -> int:
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created"
    try:
        return storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
    finally:
        optuna.logging.set_verbosity(verbosity)


def study_claim(study: optuna.Study) -> Claim:
    """The lock of ``study``'s read-then-writes (see the module docstring)."""
    return Claim(study._storage, f"{study.study_name}{LOCK_SUFFIXES[0]}")


def enqueue_once(study: optuna.Study, designs: list[dict]) -> None:
    """Enqueue the fixed design, each point once whoever enqueues it: ``skip_if_exists`` reads
    the trials and then writes, so two workers starting together each added every point."""
    with study_claim(study).held():
        for params in designs:
            study.enqueue_trial(params, skip_if_exists=True)


def fail_orphans(study: optuna.Study, command_id: str, on_failed: Callable) -> list[int]:
    """Fail the trials still RUNNING that this command's processes started (``command_id`` user
    attr), once every one of them has ended: they belong to a worker that died, and nothing
    will ever finish them. A stale heartbeat would fail them too, ``grace_period`` later, in
    some later run. ``on_failed(study, frozen)`` closes the rest (as Optuna's stale-trial
    callback does). Returns their numbers."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("command_id") != command_id:
            continue
        # Another process finished it meanwhile (Optuna raises, or returns False): its to close.
        try:
            if not study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        on_failed(study, t)
        failed.append(t.number)
    return failed
