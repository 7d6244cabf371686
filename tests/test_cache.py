"""The setup cache: what its key depends on (and what it must not), and a round trip."""
from __future__ import annotations

import dataclasses
import errno
import json
import pickle
import shutil
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY


def _key(path, *overrides):
    from gpt2ft.cache import key_for
    from gpt2ft.config import load_config

    return key_for(load_config(TINY, list(overrides)), str(path))[0]


def test_key_follows_corpus_bytes_and_setup_fields_only(tmp_path, book):
    import gpt2ft.cache as cache

    copy = tmp_path / "elsewhere.txt"
    shutil.copy(book, copy)
    base = _key(book)
    assert _key(copy) == base  # the bytes count, not the path
    for irrelevant in ("study.n_trials=40", "study.lr.high=1e-2", "study.batch_size=[8]", "study.jobs=4",
                       "tracking.experiment=other", "train.lr=1e-5", "train.epochs=9", "train.max_steps=7",
                       "sample.final_n_samples=99", "sample.trajectory=false", "data.cache_dir=/tmp/x",
                       "study.degenerate_factor=2"):
        assert _key(book, irrelevant) == base, irrelevant
    for relevant in ("data.block_size=64", "data.max_chars=50000", "model.n_layer=3", "train.seed=1",
                     "train.batch_size=8", "sample.n_samples=5", "metrics.top_k=50", "metrics.style_classifier=true"):
        assert _key(book, relevant) != base, relevant
    copy.write_bytes(book.read_bytes() + b"\n")
    assert _key(copy) != base
    cache_version = cache.CACHE_VERSION
    try:
        cache.CACHE_VERSION = cache_version + 1
        assert _key(book) != base
    finally:
        cache.CACHE_VERSION = cache_version


def test_key_follows_the_other_novels(tmp_path, book):
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("one novel")
    args = ("metrics.style_classifier=true", f"data.other_corpora={other}")
    before = _key(book, *args)
    assert _key(book, *args) == before
    (other / "a.txt").write_text("one novel, revised")
    assert _key(book, *args) != before


def test_setup_round_trip_and_a_broken_entry(tmp_path, book, monkeypatch):
    """The second setup reads what the first computed (same tokens, references and weights);
    an unreadable entry is computed again, not an error."""
    import gpt2ft.cache as cache
    from gpt2ft.config import load_config

    config = load_config(TINY, ["data.max_chars=20000", "sample.n_samples=2", "sample.new_tokens=8",
                                "metrics.extraction_prompts=0"])
    first = cache.setup(config, str(book), tmp_path)
    seen = []
    second = cache.setup(config, str(book), tmp_path, before_references=seen.append)
    assert (first.hit, second.hit) == (False, True) and first.key == second.key
    assert seen == [second.assets]
    a, b = first.assets, second.assets
    assert torch.equal(a.data.train_windows, b.data.train_windows) and a.data.heldout_ids == b.data.heldout_ids
    assert a.references.values == pytest.approx(b.references.values, nan_ok=True)
    assert a.references.samples == b.references.samples
    assert a.top_ids == b.top_ids and b.index.contains(a.data.train_ids[100:108])
    assert all(torch.equal(p, q) for p, q in zip(a.base_model.state_dict().values(),
                                                 b.base_model.state_dict().values()))
    assert next(b.base_model.parameters()).device == next(a.base_model.parameters()).device
    assert not b.base_model.training
    assert b.book == dataclasses.replace(a.book, source=str(book))
    (tmp_path / "cache" / first.key / "setup.pkl").write_bytes(b"truncated")
    third = cache.setup(config, str(book), tmp_path)
    assert not third.hit and third.assets.references.values == pytest.approx(a.references.values, nan_ok=True)
    assert cache.setup(config, str(book), tmp_path).hit


def _entry(folder):
    """An entry as far as ``_load`` reads before the weights: meta, state, a model folder."""
    import gpt2ft.cache as cache

    (folder / "model").mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"version": cache.CACHE_VERSION}))
    (folder / "setup.pkl").write_bytes(pickle.dumps({}))
    return folder


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   MemoryError(), RuntimeError("CUDA error: an illegal memory access"),
                                   OSError(errno.EIO, "Input/output error")], ids=lambda e: e.__class__.__name__)
def test_a_transient_error_propagates_and_leaves_the_entry(tmp_path, monkeypatch, error):
    """Other workers may be reading the entry: this worker's own trouble must not delete it."""
    import gpt2ft.cache as cache
    from gpt2ft.config import load_config

    folder = _entry(tmp_path / "cache" / "k")

    def load(path, runtime):
        raise error

    monkeypatch.setattr(cache, "load_checkpoint", load)
    with pytest.raises(type(error)):
        cache._load(folder, load_config(TINY), tmp_path / "book.txt")
    assert (folder / "meta.json").is_file() and (folder / "setup.pkl").is_file()


def _truncate_weights(folder):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=8, n_layer=1, n_embd=8, n_head=2,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(folder / "model")
    weights = folder / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


@pytest.mark.parametrize("damage, raised", [
    (lambda f: (f / "setup.pkl").write_bytes(b"truncated"), "UnpicklingError"),
    (lambda f: (f / "setup.pkl").write_bytes(b""), "EOFError"),
    (lambda f: (f / "setup.pkl").write_bytes(pickle.dumps({})[:-1]), "EOFError"),  # cut inside
    (lambda f: (f / "meta.json").write_text("{not json"), "JSONDecodeError"),
    (lambda f: (f / "setup.pkl").unlink(), "FileNotFoundError"),  # half deleted
    (lambda f: shutil.rmtree(f / "model"), "OSError"),  # transformers' own, without an errno
    (_truncate_weights, "SafetensorError"),
], ids=["pickle", "empty", "cut", "meta", "no-state", "no-model", "weights"])
def test_a_bad_entry_is_deleted(tmp_path, damage, raised, caplog):
    import gpt2ft.cache as cache
    from gpt2ft.config import load_config

    folder = _entry(tmp_path / "cache" / "k")
    damage(folder)
    assert cache._load(folder, load_config(TINY), tmp_path / "book.txt") is None
    assert not folder.exists()
    assert f"is unreadable ({raised}:" in caplog.text


def test_key_holds_the_resolved_device_and_precision(book, monkeypatch):
    """``auto`` is fp32 on a CPU and bf16 on a GPU, and the references differ: the key must
    follow what the machine resolves, not the words in the config."""
    import gpt2ft.cache as cache
    from gpt2ft.model import Runtime

    assert _key(book, "train.device=cpu", "train.precision=fp32") == _key(book)  # what auto is here
    seen = {}
    for name, runtime in {"cpu": Runtime(torch.device("cpu"), None),
                          "cpu-bf16": Runtime(torch.device("cpu"), torch.bfloat16),
                          "cuda-bf16": Runtime(torch.device("cuda"), torch.bfloat16)}.items():
        monkeypatch.setattr(cache, "resolve_runtime", lambda train, runtime=runtime: runtime)
        seen[name] = _key(book)
    assert len(set(seen.values())) == 3, seen


@dataclasses.dataclass
class _Assets:
    """What ``_save`` reads of the assets."""

    config: object
    base_model: object
    runtime: object
    book: object
    timings: dict
    references: object


class _Weights:
    def save_pretrained(self, path):
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"weights")


def test_a_write_that_collides_with_another_workers_is_a_warning(tmp_path, monkeypatch, caplog):
    """Workers started together compute the same entry; the one whose entry lands first wins,
    the other's is dropped with a warning, and nothing it wrote is left behind."""
    import gpt2ft.cache as cache
    from gpt2ft.config import load_config
    from gpt2ft.model import Runtime

    folder = tmp_path / "cache" / "k"
    write = cache.write_json_atomic

    def other_worker_lands_first(data, path):
        folder.mkdir()
        (folder / "meta.json").write_text('{"by": "the other worker"}')
        write(data, path)

    monkeypatch.setattr(cache, "write_json_atomic", other_worker_lands_first)
    assets = _Assets(load_config(TINY), _Weights(), Runtime(torch.device("cpu"), None),
                     SimpleNamespace(sha256="0" * 64), {}, SimpleNamespace(seconds=1.0))
    cache._save(folder, "k", assets)  # no exception
    assert "not written" in caplog.text
    assert json.loads((folder / "meta.json").read_text()) == {"by": "the other worker"}
    assert sorted(p.name for p in folder.parent.iterdir()) == ["k"]  # no temporary folder left
    monkeypatch.setattr(cache, "write_json_atomic", write)
    shutil.rmtree(folder)
    cache._save(folder, "k", assets)  # without a collision the entry lands
    assert json.loads((folder / "meta.json").read_text())["key"] == "k"
    assert (folder / "model" / "model.safetensors").is_file() and (folder / "setup.pkl").is_file()


def test_key_holds_the_resolved_sampling_precision(book, monkeypatch):
    """The base model's references are sampled at ``sample.precision`` as resolved: ``auto`` is
    bf16 on a CPU that multiplies bf16 natively and fp32 on one that does not."""
    import gpt2ft.sampler as sampler

    assert _key(book, "sample.precision=fp32") != _key(book, "sample.precision=bf16")
    monkeypatch.setattr(sampler, "bf16_is_native", lambda device: True)
    assert _key(book) == _key(book, "sample.precision=bf16")
    monkeypatch.setattr(sampler, "bf16_is_native", lambda device: False)
    assert _key(book) == _key(book, "sample.precision=fp32")
