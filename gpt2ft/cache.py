"""The study's setup, computed once per (corpus bytes, relevant config) and kept on disk.

Setup is the book, its tokens, the n-gram index, the style classifier, the base model's
weights and every reference value (sampling the base model is the expensive part; loading
SmolLM2's GGUF file alone takes ~30 s, a safetensors load ~1 s). It lives under the MLflow
store folder, ``<store>/cache/<key>/``: ``setup.pkl`` (everything but the weights),
``model/`` (the base weights as safetensors) and ``meta.json`` (what the key was made of).

The key hashes :data:`CACHE_VERSION`, the corpus file's sha256, the cleaning's code
(``prose.fingerprint``), the library versions, a fingerprint of the other novels and only the
config fields that change what setup computes (:func:`relevant_config`), with the device and
precision as resolved on this machine (``auto`` is a CPU's fp32 here and a GPU's bf16 there,
and the references differ): a new
``study.n_trials``, search range, tracking URI or trial learning rate reuses the entry. The
pickle is this program's own file in the user's own store, read back only from there.

Several workers share one entry: a worker never replaces an entry another wrote (the later
one's write is dropped with a warning), and deletes one only when it is really bad (a
truncated or foreign file), never on an error of its own such as running out of memory.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import transformers
from safetensors import SafetensorError

from gpt2ft import prose
from gpt2ft.assets import Assets, compute_references, prepare
from gpt2ft.config import Config
from gpt2ft.fsutil import write_json_atomic
from gpt2ft.gutenberg import other_novels_folder, read_bytes, resolve_corpus_path
from gpt2ft.model import Runtime, load_checkpoint, resolve_runtime, seed_everything
from gpt2ft.sampler import resolved_precision

log = logging.getLogger(__name__)

#: Bump when what setup computes, or how it is stored, changes: older entries are then ignored.
# 2: judges on the whole book (held-out windows, top-100, classifier), extraction reference;
# 3: the fluency NLL over flattened rows (the references move in their fifth digit);
# 4: the book and the other novels cleaned to their prose (gpt2ft.prose; Book.prose).
# 5: extraction over every window under the sampler, membership (the base model's window losses), near-verbatim.
CACHE_VERSION = 5
#: train.* fields that setup uses: the seed (classifier, reference sampling), and the held-out
#: loss of the base model (batch, eval batches; device and precision as resolved, see
#: :func:`relevant_config`). The rest shape trials only.
TRAIN_FIELDS = ("seed", "batch_size", "eval_batches")
#: What reading an entry raises when the entry itself is bad (truncated, foreign, half
#: deleted): it is deleted and computed again. Anything else (MemoryError, CUDA out of memory
#: or another device error, EIO or a full disk) says nothing about the entry, which other
#: workers may be reading: it propagates and the entry stays.
CORRUPT = (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError, SafetensorError)
#: OSError numbers that mean a file of the entry is missing; transformers raises its own
#: "no such file / not a valid JSON file" OSErrors with no number at all.
MISSING = (None, errno.ENOENT, errno.ENOTDIR)


@dataclass(frozen=True)
class Setup:
    """The assets (with references) and how they were obtained."""

    assets: Assets
    key: str
    hit: bool
    """True when the assets were read from the cache."""
    seconds: float
    """Wall time of loading (hit) or computing and writing (miss)."""


def relevant_config(config: Config, runtime: Optional[Runtime] = None) -> dict[str, Any]:
    """The config fields whose values change what setup computes (and nothing else), with
    ``train.device`` and ``train.precision`` as ``runtime`` (by default: resolved here) has them."""
    runtime = runtime or resolve_runtime(config.train)
    d = config.to_dict()
    data = {k: v for k, v in d["data"].items() if k not in ("corpus", "cache_dir")}  # bytes count, not paths
    # Sampling settings shape the base model's samples; the final re-measure and the trials'
    # trajectories do not touch the setup.
    sample = {k: v for k, v in d["sample"].items() if k not in ("final_n_samples", "trajectory", "every_steps")}
    sample["precision"] = resolved_precision(config.sample.precision, runtime.device)
    return {"model": d["model"], "data": data, "sample": sample, "metrics": d["metrics"],
            "train": {**{k: d["train"][k] for k in TRAIN_FIELDS}, "device": runtime.device.type,
                      "precision": runtime.precision}}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def others_fingerprint(config: Config, corpus_path: Path) -> str:
    """The other novels the classifier would read (the folder ``assets._fit_classifier``
    finds), as a hash of their names and bytes."""
    if not config.metrics.style_classifier:
        return "off"
    folder = other_novels_folder(config.data.other_corpora, str(corpus_path))
    if folder is None or not folder.is_dir():
        return "download"  # Gutenberg's default novels, fetched once into a cache (or an error)
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.txt")):
        h.update(f.name.encode() + b"\0" + file_sha256(f).encode())
    return h.hexdigest()


def cache_key(config: Config, corpus_sha256: str, others: str) -> str:
    """16 hex digits naming one setup: version, corpus bytes, cleaning, libraries, other novels, config."""
    parts = {"version": CACHE_VERSION, "corpus_sha256": corpus_sha256, "others": others,
             "cleaning": prose.fingerprint(),
             "torch": torch.__version__, "transformers": transformers.__version__,
             "config": relevant_config(config)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def key_for(config: Config, corpus: Optional[str]) -> tuple[str, Path]:
    """The cache key of this config and corpus, and the corpus path it resolved to."""
    path = resolve_corpus_path(config.data, corpus)
    raw = read_bytes(path)
    prose.decode(raw, str(path))  # an empty, binary or unreadable corpus is a UserError here, as in load_book
    digest = hashlib.sha256(raw).hexdigest()
    return cache_key(config, digest, others_fingerprint(config, path)), path


def setup(config: Config, corpus: Optional[str], store: Path,
          before_references: Optional[Callable[[Assets], None]] = None) -> Setup:
    """The study's assets with references, from ``<store>/cache/<key>`` or computed and saved
    there. ``before_references`` sees the assets first (e.g. to refuse a study too long for a
    CPU before the expensive sampling)."""
    t0 = time.perf_counter()
    key, path = key_for(config, corpus)
    folder = Path(store) / "cache" / key
    assets = _load(folder, config, path) if (folder / "meta.json").is_file() else None
    if assets is not None:
        if before_references is not None:
            before_references(assets)
        return Setup(assets, key, True, time.perf_counter() - t0)
    assets = prepare(config, corpus)
    if before_references is not None:
        before_references(assets)
    assets = assets.with_references(compute_references(assets))
    _save(folder, key, assets)
    return Setup(assets, key, False, time.perf_counter() - t0)


def _save(folder: Path, key: str, assets: Assets) -> None:
    """Write the entry aside and move it into place (a crash leaves no half entry)."""
    if (folder / "meta.json").is_file():
        return  # another process wrote the same setup meanwhile
    state = {f.name: getattr(assets, f.name) for f in dataclasses.fields(assets)
             if f.name not in ("config", "base_model", "runtime")}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        with open(tmp / "setup.pkl", "wb") as fh:
            pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)
        assets.base_model.save_pretrained(tmp / "model")
        write_json_atomic({"version": CACHE_VERSION, "key": key, "corpus_sha256": assets.book.sha256,
                           "config": relevant_config(assets.config, assets.runtime), "timings": assets.timings,
                           "references_seconds": assets.references.seconds,
                           "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, tmp / "meta.json")
        # A rename, not a replace: it fails where another worker's entry has landed meanwhile
        # (workers started together compute the same one), and a worker may be reading that.
        os.rename(tmp, folder)
    except OSError as exc:
        # The one that landed is as good as this one, and the study needs neither.
        log.warning("setup cache %s not written (%s); the study goes on without it", folder, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing is left there after the rename


def _corrupt(exc: Exception) -> bool:
    """Whether ``exc``, raised reading an entry, says the entry is bad (see :data:`CORRUPT`)."""
    if isinstance(exc, OSError):
        return exc.errno in MISSING
    return isinstance(exc, CORRUPT)


def _load(folder: Path, config: Config, corpus_path: Path) -> Optional[Assets]:
    """The cached assets, or None (with a warning, the entry deleted) when the entry is bad.
    An error that is not the entry's fault (memory, the device, the disk) propagates."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("version") != CACHE_VERSION:
            return None
        with open(folder / "setup.pkl", "rb") as fh:
            state = pickle.load(fh)
        runtime = resolve_runtime(config.train)
        seed_everything(config.train.seed)  # as prepare() leaves the RNGs
        model = load_checkpoint(folder / "model", runtime)  # where prepare() keeps it: the run's device
    except Exception as exc:
        if not _corrupt(exc):
            raise
        log.warning("setup cache %s is unreadable (%s: %s); computing the setup again",
                    folder, exc.__class__.__name__, exc)
        shutil.rmtree(folder, ignore_errors=True)  # else _save would keep the broken entry
        return None
    # The same bytes may sit at another path now: record where this run read them.
    state["book"] = dataclasses.replace(state["book"], source=str(corpus_path))
    return Assets(config=config, base_model=model, runtime=runtime, **state)
