"""Optuna's storage and the coordination of workers that share one study.

Resume and many workers rest on Optuna's RDB storage: trials live in SQLite by default or in
any database URL; heartbeats let a later run (or another worker) fail a trial whose process
was killed. Every read-then-write on the study that must happen once whoever runs it (creating
the MLflow parent run, the fixed design's enqueue, a trial's derived trials, pruning
checkpoints) runs under one lock of the database's own (:func:`study_lock`), shared by every
process and command on the storage.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import filelock
import optuna
import sqlalchemy
import sqlalchemy.exc

from gpt2ft.errors import UserError
from gpt2ft.urls import mask_url

HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30
#: Marker studies that locks of gpt2ft before issue 35 left in a storage when killed.
OLD_MARKER_SUFFIXES = (".lock", ".mlflow-parent-claim")
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
    # Not an old lock's marker study: never what the user means.
    summaries = [s for s in optuna.get_all_study_summaries(storage)
                 if not s.study_name.endswith(OLD_MARKER_SUFFIXES)]
    if not summaries:
        raise UserError("no study found in the storage; run `gpt2ft study` (make study) first.")
    summaries.sort(key=lambda s: s.datetime_start or dt.datetime.min)
    return summaries[-1].study_name


def trials_complete(url: str, name: str) -> int:
    """How many trained (not derived) trials of study ``name`` are COMPLETE; 0 without the study."""
    from gpt2ft.summary import trained  # pandas and the judges: only when asked

    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        return 0
    return len(trained(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))))


def load_study(url: str, name: Optional[str]) -> optuna.Study:
    """A finished or running study by name (default: the most recent one in the storage)."""
    storage = open_storage(url)
    name = name or latest_study_name(storage)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UserError(f"no study named {name!r} in {mask_url(url)}; check --study-name.") from None


@contextmanager
def study_lock(study: optuna.Study) -> Iterator[None]:
    """Hold the lock of ``study``'s read-then-writes (see the module docstring) for the block.

    From the database's own tools, so a holder that dies releases it at once: an OS file lock
    (``filelock``) beside a SQLite file, a session advisory lock on PostgreSQL (``GET_LOCK`` on
    MySQL), held on a connection of its own. An in-memory storage has one process: no lock."""
    rdb = getattr(study._storage, "_backend", study._storage)  # Optuna wraps RDBStorage in a cache
    url = sqlalchemy.engine.make_url(rdb.url) if hasattr(rdb, "url") else None
    name = f"gpt2ft:{study.study_name}"
    if url is None or (url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")):
        yield
    elif url.get_backend_name() == "sqlite":
        with filelock.FileLock(f"{url.database}.{hashlib.sha256(name.encode()).hexdigest()[:12]}.lock"):
            yield
    elif url.get_backend_name() in ("postgresql", "mysql"):
        pg = url.get_backend_name() == "postgresql"
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        take, free = (("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)") if pg
                      else ("SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)"))
        with rdb.engine.connect() as conn:
            conn.execute(sqlalchemy.text(take), {"k": key if pg else name[:64]})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text(free), {"k": key if pg else name[:64]})
    else:
        raise UserError(f"several processes on one study need SQLite, PostgreSQL or MySQL storage, not "
                        f"{url.get_backend_name()}; change --storage.")


def enqueue_once(study: optuna.Study, designs: list[dict]) -> None:
    """Enqueue the fixed design, each point once whoever enqueues it: ``skip_if_exists`` reads
    the trials and then writes, so two workers starting together each added every point."""
    with study_lock(study):
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
