"""The setup cache: what its key depends on (and what it must not), and a round trip."""
from __future__ import annotations

import dataclasses
import shutil

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
