"""MLflow, and only here: the store, runs, params, metrics, tags and artifacts.

The default store is MLflow's SQLite backend at ``./mlruns/mlflow.db`` with artifacts beside
it under ``./mlruns/`` (MLflow 3 refuses the plain-file store without an opt-in, and with a
database backend it would otherwise put artifacts under whatever directory you run from).
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional
from unittest import mock

import matplotlib.pyplot as plt
import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from gpt2ft.errors import UserError
from gpt2ft.ui_names import ui_name
from gpt2ft.urls import mask_url, unreachable

DEFAULT_STORE = Path("mlruns")
UI_HOST = "http://127.0.0.1:5000"  # where `make ui` serves the store


def resolve_uri(uri: Optional[str] = None) -> str:
    """Option, else $MLFLOW_TRACKING_URI, else ``sqlite:///<cwd>/mlruns/mlflow.db``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(DEFAULT_STORE / 'mlflow.db').resolve()}"


def sqlite_path(uri: str) -> Optional[Path]:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


def store_folder(uri: str) -> Path:
    """The folder of the MLflow store (beside a SQLite file; else ./mlruns): the Optuna
    storage, the checkpoints and the setup cache live there too."""
    db = sqlite_path(uri)
    return db.parent if db is not None else DEFAULT_STORE.resolve()


def _prepare_store(uri: str) -> Optional[str]:
    """Create the folder of a SQLite store; return the artifact root beside it."""
    db = sqlite_path(uri)
    if db is None:
        return None
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the MLflow store folder {db.parent} ({exc.strerror}); "
                        "pass --tracking-uri to a writable place.") from None
    if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise UserError(f"the MLflow store {db} is not writable; fix its permissions or pass "
                        "--tracking-uri to a writable place.")
    return (db.parent / "artifacts").resolve().as_uri()


def client_for(uri: str) -> MlflowClient:
    """A client for a store another process opened and checked (the study's writer process)."""
    return MlflowClient(tracking_uri=uri)


class Run:
    """One MLflow run, written through the client (no global active-run state)."""

    def __init__(self, client, run_id: str):
        self._client = client
        self.id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, str(mask_url(str(v)) if v is not None else "None")[:6000])
                 for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        # MLflow stores NaN, but a metric that is NaN because it does not apply (e.g. no
        # classifier) is clearer absent than NaN in the UI.
        # Each under its section of the run page (gpt2ft.ui_names): the key charts lead.
        items = [Metric(ui_name(k), float(v), now, step) for k, v in metrics.items()
                 if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if items:
            self._client.log_batch(self.id, metrics=items)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self._client.set_tag(self.id, k, mask_url(str(v)))

    def log_text(self, text: str, path: str) -> None:
        self._client.log_text(self.id, text, path)

    def log_dict(self, data: Any, path: str) -> None:
        self.log_text(json.dumps(data, indent=2, default=str), path)

    def log_figure(self, fig, path: str) -> None:
        self._client.log_figure(self.id, fig, path)
        plt.close(fig)

    def end(self, status: str = "FINISHED") -> None:
        self._client.set_terminated(self.id, status)


class Tracker:
    """An MLflow experiment in a resolved store."""

    def __init__(self, uri: Optional[str], experiment: str):
        self.uri = resolve_uri(uri)
        # MLflow retries a dead HTTP server with backoff for minutes; a TCP connect says
        # "nothing is listening" within 3 s, before any MLflow call or local write.
        reason = unreachable(self.uri, timeout=3.0)
        if reason is not None:
            raise UserError(f"cannot reach the MLflow tracking server at {mask_url(self.uri)} ({reason}); "
                            "start it, or pass --tracking-uri to a running server or a sqlite:/// store.")
        artifact_root = _prepare_store(self.uri)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        # A server that accepts connections but never answers would still hang: the calls below
        # get one try of 5 s each; later calls keep MLflow's patient defaults (stop() restores them).
        fast_fail = mock.patch.dict(os.environ, {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                                                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
        fast_fail.start()
        try:
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                location = f"{artifact_root}/{experiment}" if artifact_root else None
                try:
                    self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
                except Exception:  # another worker created it first
                    exp = self.client.get_experiment_by_name(experiment)
                    if exp is None:
                        raise
                    self.experiment_id = exp.experiment_id
            else:
                self.experiment_id = exp.experiment_id
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"cannot open the MLflow store {mask_url(self.uri)} "
                            f"({exc.__class__.__name__}); check --tracking-uri and that the "
                            "server or database is reachable.") from None
        finally:
            fast_fail.stop()

    def ui_url(self, host: str = UI_HOST, run_id: Optional[str] = None) -> str:
        """Where a researcher looks: the experiment's runs table in MLflow's model-training mode
        (MLflow 3 otherwise opens a GenAI traces page), or one run's page."""
        page = f"runs/{run_id}" if run_id else "runs"
        return f"{host}/#/experiments/{self.experiment_id}/{page}?workflowType=machine_learning"

    def start(self, name: str, parent: Optional[Run] = None, tags: Optional[dict[str, Any]] = None) -> Run:
        all_tags = {"mlflow.runName": name, **(tags or {})}
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent.id
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={k: mask_url(str(v)) for k, v in all_tags.items()})
        return Run(self.client, run.info.run_id)

    def handle(self, run_id: str) -> Run:
        """A run already created (by this or another worker), to log more to it."""
        return Run(self.client, run_id)

    def resume(self, run_id: str) -> Run:
        self.client.update_run(run_id, status="RUNNING")
        return Run(self.client, run_id)

    @contextmanager
    def run(self, name: str, parent: Optional[Run] = None, tags: Optional[dict[str, Any]] = None,
            end_on_success: bool = True) -> Iterator[Run]:
        """A run that always ends: FINISHED, FAILED with the reason as a tag, or KILLED.

        With ``end_on_success=False`` a run whose block succeeded stays RUNNING: the caller
        ends it once its deferred writes are stored, so FINISHED means "everything logged"."""
        r = self.start(name, parent, tags)
        try:
            yield r
        except KeyboardInterrupt:
            r.set_tags({"failure_reason": "interrupted"})
            r.end("KILLED")
            raise
        except BaseException as exc:
            status = getattr(exc, "mlflow_status", "FAILED")
            r.set_tags({"failure_reason": f"{exc.__class__.__name__}: {exc}"[:5000]})
            r.end(status)
            raise
        else:
            if end_on_success:
                r.end("FINISHED")

    def runs(self, filter_string: str = "", max_results: int = 1000) -> list[Any]:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                       max_results=max_results)

    def status(self, run_id: str) -> str:
        """RUNNING, FINISHED, FAILED or KILLED."""
        return self.client.get_run(run_id).info.status

    def open_trial_runs(self, study_name: str, number: int) -> list[str]:
        """The ids of a study's trial runs still RUNNING for trial ``number``."""
        return [r.info.run_id for r in self.runs(
            f"tags.`optuna.study` = '{study_name}' and tags.`optuna.trial` = '{number}' "
            "and attributes.status = 'RUNNING'")]


def log_pipeline_model(tracking_uri: str, run_id: str | None, folder: Path, name: str,
                       alias: Optional[str] = "champion") -> str:
    """Log ``folder`` as an MLflow transformers model on ``run_id``, register it as ``name``
    and point ``alias`` at the new version (None: the aliases stay where they are). Returns the
    version."""
    # Imported here: the study's writer process loads this module to log, not to export.
    import torch
    import transformers
    from transformers import pipeline

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    pipe = pipeline("text-generation", model=str(folder))
    # Requirement inference imports torchvision (absent beside the CPU torch build): name them.
    reqs = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]
    kwargs = {"transformers_model": pipe, "name": "model", "pip_requirements": reqs, "registered_model_name": name}
    if run_id:
        # Not in `mlflow.start_run(run_id)`: its end would make the trial's run FINISHED, and a run
        # a killed study left RUNNING (its writes pending) would then be skipped by the replay.
        # Logged by id, the run keeps its status, whatever it is.
        info = mlflow.transformers.log_model(**kwargs, run_id=run_id)
    else:
        with mlflow.start_run(run_name=f"export-{name}"):
            info = mlflow.transformers.log_model(**kwargs)
    version = str(info.registered_model_version)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version
