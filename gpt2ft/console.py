"""What a run prints besides its own lines: the libraries are made quiet, once, here.

A study loads a model, saves and reloads checkpoints, opens an MLflow store and an Optuna study;
left alone each of those prints: transformers' "Loading weights" and "Writing model shards"
bars, the GGUF loader's conversion bar (a bare tqdm, which transformers' switch does not reach),
Optuna's INFO line per trial under the study's own, MLflow's "Creating initial MLflow database
tables", and the experimental-API warnings of both. On a terminal those bars interleave with the
study's own trial and step bars. :func:`quiet_libraries` turns them off before the libraries are
imported (MLflow and tqdm read environment variables once) and again after (loggers that exist
already); the study's own bars pass ``disable=`` explicitly, so ``TQDM_DISABLE`` leaves them be.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

# Each library's logger and the level below which it says nothing we act on.
_LOGGERS = {"optuna": logging.WARNING, "mlflow": logging.WARNING, "alembic": logging.WARNING,
            "transformers": logging.ERROR, "huggingface_hub": logging.ERROR, "urllib3": logging.WARNING}


def quiet_libraries() -> None:
    """Silence the libraries' bars, INFO lines and experimental warnings for this process (and
    the worker processes it starts, which inherit the environment). A variable the user set
    wins: ``MLFLOW_LOGGING_LEVEL=INFO`` brings MLflow's lines back."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # bars that do not say disable= themselves
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its fork warning, and workers fork
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name, level in _LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    # Optuna marks its newer arguments experimental and MLflow its GenAI-era ones; the study
    # uses them on purpose, and the warning says nothing a researcher can act on.
    warnings.filterwarnings("ignore", message=r".*is experimental.*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\..*")
    if "transformers" in sys.modules:  # imported already: its own switches, not only the variables
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def trial_end_line(summary, number: int, study_name: str) -> str:
    """The one line a finished trial prints: its key numbers beside the book's, and the current pick
    (the trial's start line says its parameters; Optuna's own line is silenced)."""
    row, refs = summary.trial(number), summary.references

    def num(key: str, source: dict) -> str:
        v = source.get(key)
        return "-" if v is None or v != v else f"{v:.3g}"

    stop = ", stopped for copying" if row.get("stopped_for_copying") else ""
    pick = (f"trial {summary.selected[0]} at step {summary.selected[1]}" if summary.selected
            else "none eligible" if summary.pick is not None else "none yet")
    return (f"[study {study_name}] trial {number} done in {num('seconds', row)} s{stop}: top100_ratio "
            f"{num('top100_ratio', row)} (book {num('book_top100_ratio', refs)}), memorization "
            f"{num('memorization', row)}, best heldout_loss {num('best_heldout_loss', row)}; pick: {pick}")
