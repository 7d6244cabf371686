"""``--jobs N|auto`` over several GPUs, on the CPU with a faked device list: worker i sees only
GPU i round the list (``CUDA_VISIBLE_DEVICES``), a user's own list is respected, ``auto`` counts
workers per GPU, and without a GPU nothing is set."""
from __future__ import annotations

import io
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

import gpt2ft.workers as W

NEED = W.worker_bytes(124_439_808, 12, 768, 50257, 32, 256)  # GPT-2 124M at batch 32 x 256: ~10.6 GB


@pytest.fixture
def gpus(monkeypatch):
    """``gpus(n, free)`` fakes n visible GPUs with ``free`` bytes free each."""
    def fake(n: int, free: float = 80e9) -> None:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (int(free), int(141e9)))
    return fake


def _visible(envs):
    return [e.get("CUDA_VISIBLE_DEVICES") for e in envs]


def test_eight_gpus_eight_workers_each_its_own(gpus):
    gpus(8)
    env = {"PATH": "/bin"}
    assert _visible(W.worker_envs(8, env, W.visible_gpus(env))) == [str(i) for i in range(8)]


def test_sixteen_workers_two_on_each_gpu(gpus):
    gpus(8)
    env = {"PATH": "/bin"}
    assert Counter(_visible(W.worker_envs(16, env, W.visible_gpus(env)))) == {str(i): 2 for i in range(8)}


def test_a_users_list_is_spread_over_and_nothing_else(gpus):
    gpus(2)
    env = {"CUDA_VISIBLE_DEVICES": "3,5"}
    assert _visible(W.worker_envs(5, env, W.visible_gpus(env))) == ["3", "5", "3", "5", "3"]
    assert W.visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb"}) == ["GPU-aa", "GPU-bb"]  # UUIDs
    assert W.visible_gpus({"CUDA_VISIBLE_DEVICES": "3,5,-1,7"}) == ["3", "5"]  # CUDA stops at -1


def test_without_a_gpu_nothing_sets_cuda_visible_devices(gpus):
    gpus(0)
    assert W.visible_gpus({}) == []
    assert all("CUDA_VISIBLE_DEVICES" not in e for e in W.worker_envs(3, {"PATH": "/bin"}, []))
    hidden = {"CUDA_VISIBLE_DEVICES": "-1"}  # the user's own way of hiding the GPUs stays as it is
    assert _visible(W.worker_envs(2, hidden, W.visible_gpus(hidden))) == ["-1", "-1"]


def test_auto_counts_workers_per_gpu():
    assert [W.auto_jobs(NEED, [int(80e9)] * k, 128) for k in (1, 2, 4, 8)] == [6, 12, 24, 48]
    assert W.auto_jobs(NEED, [int(80e9)] * 8, 16) == 15  # still one core each, one for the supervisor
    assert W.auto_jobs(NEED, [int(80e9), int(30e9)], 128) == 4  # even spread: the fullest GPU sets it
    assert W.auto_jobs(int(1e9), [int(80e9)] * 2, 128) == 2 * W.MAX_AUTO_JOBS  # the cap is per GPU
    assert W.auto_jobs(NEED, [], 16) == 1


@pytest.mark.parametrize("n_gpus", [1, 8])
def test_resolve_jobs_auto_sizes_for_every_gpu(gpus, monkeypatch, capsys, n_gpus):
    gpus(n_gpus)
    monkeypatch.setattr(W, "cpu_cores", lambda: 128)
    model = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=12, hidden_size=768, vocab_size=50257),
                            parameters=lambda: [torch.empty(1).expand(124_439_808)])
    assets = SimpleNamespace(runtime=SimpleNamespace(device=torch.device("cuda")), base_model=model,
                             config=SimpleNamespace(study=SimpleNamespace(batch_size=[8, 32]),
                                                    data=SimpleNamespace(block_size=256)))
    assert W.resolve_jobs("auto", assets) == 6 * n_gpus
    assert f"{6 * n_gpus} workers over {n_gpus} GPU" in capsys.readouterr().err
    assert W.resolve_jobs("3", assets) == 3


class _FakePopen:
    started: list[dict] = []
    returncode = 0

    def __init__(self, cmd, env, **kwargs):
        self.stdout = io.BytesIO(b"")
        _FakePopen.started.append(env)

    def wait(self, timeout=None):
        return 0

    def poll(self):
        return 0


@pytest.mark.parametrize("n_gpus, listed, expect", [(2, "3,5", ["3", "5", "3"]), (0, None, [None] * 3)])
def test_supervise_starts_each_worker_on_its_gpu(gpus, monkeypatch, capsys, n_gpus, listed, expect):
    gpus(n_gpus)
    monkeypatch.setattr(W.subprocess, "Popen", _FakePopen)
    _FakePopen.started = []
    env = {"PATH": "/bin"} | ({"CUDA_VISIBLE_DEVICES": listed} if listed else {})
    assert W.supervise([["a"], ["b"], ["c"]], env=env) == [W.Exit(0, 0), W.Exit(1, 0), W.Exit(2, 0)]
    assert _visible(_FakePopen.started) == expect
    err = capsys.readouterr().err
    assert ("w0=3, w1=5, w2=3" in err) == bool(n_gpus)
