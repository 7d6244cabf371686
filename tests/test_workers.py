"""``gpt2ft.workers`` on its own: ``study.jobs: auto`` on a faked GPU, stopping workers (SIGINT,
then SIGKILL after the grace) with fake child processes, and what their exit codes mean."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY
from gpt2ft import workers as W
from gpt2ft.errors import UserError

GPT2_124M = 124_439_808


def _gpt2_small():
    """GPT-2 124M's shape without its memory: one parameter tensor on the meta device."""
    config = SimpleNamespace(num_hidden_layers=12, hidden_size=768, vocab_size=50257)
    return SimpleNamespace(config=config, parameters=lambda: [torch.empty(GPT2_124M, device="meta")])


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch sees one CUDA GPU with 80 GB free; the runtime is resolved from train.device auto."""
    from gpt2ft.model import resolve_runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    # resolve_runtime turns TF32 on for CUDA: the process's flags are put back afterwards
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    asked = []

    def mem_get_info(device=None):
        asked.append(device)
        return int(80e9), int(141e9)

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    from gpt2ft.config import load_config

    config = load_config(TINY, ["study.batch_size=[4, 32]", "data.block_size=256"])
    runtime = resolve_runtime(config.train)
    assert runtime.device.type == "cuda" and runtime.precision == "bf16-autocast"
    yield SimpleNamespace(runtime=runtime, config=config, base_model=_gpt2_small()), asked
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def test_auto_jobs_on_a_gpu_plans_for_the_largest_batch(fake_cuda, monkeypatch, capsys):
    assets, asked = fake_cuda
    monkeypatch.setattr(W, "cpu_cores", lambda: 16)
    # 80 GB x 0.85 / 10.6 GB a worker at batch 32 x 256 (at batch 4 it would be 8: the cap)
    assert W.resolve_jobs("auto", assets) == 6
    assert asked == [0]  # every visible GPU is asked, by index
    assert "--jobs auto: 6 workers" in capsys.readouterr().err
    monkeypatch.setattr(W, "cpu_cores", lambda: 3)
    assert W.resolve_jobs("auto", assets) == 2  # one core stays with the supervisor


def test_auto_jobs_without_a_gpu_is_one_and_a_number_is_itself(monkeypatch):
    def no_gpu(*args):
        raise AssertionError("a CPU run must not ask for GPU memory")

    monkeypatch.setattr(torch.cuda, "mem_get_info", no_gpu)
    cpu = SimpleNamespace(runtime=SimpleNamespace(device=torch.device("cpu")))
    assert W.resolve_jobs("auto", cpu) == 1
    assert W.resolve_jobs("4", cpu) == 4


def _child(code: str) -> subprocess.Popen:
    """A fake worker: ``python -c code``, started and past its set-up when this returns."""
    p = subprocess.Popen([sys.executable, "-c", code + "\nprint('ready', flush=True)\nimport time\ntime.sleep(60)"],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_stop_interrupts_then_kills_a_worker_that_does_not_stop(monkeypatch):
    monkeypatch.setattr(W, "STOP_SECONDS", 2.0)  # a loaded machine takes a second to end a Python process
    # Ctrl-C ends it. Its handler is set explicitly: a child of a background job (nohup, `cmd &`)
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt.
    polite = _child("import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)")
    stubborn = _child("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)")
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait(timeout=30)
    procs = [polite, stubborn, finished]
    try:
        t = time.perf_counter()
        W._stop(procs)
        elapsed = time.perf_counter() - t
        assert polite.returncode == -signal.SIGINT  # an uncaught KeyboardInterrupt ends it by SIGINT
        assert stubborn.returncode == -signal.SIGKILL  # after the grace
        assert finished.returncode == 0  # already gone: not signalled
        assert 1.9 <= elapsed < 10
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_exit_codes():
    assert W.check_codes([W.Exit(0, 0), W.Exit(1, 0)]) == W.Outcome(gave_up=False, died=None)
    assert W.check_codes([W.Exit(0, 0), W.Exit(1, 3)]).gave_up  # the study ends, its trials logged
    with pytest.raises(UserError, match="worker 1 stopped on a user error"):
        W.check_codes([W.Exit(0, 0), W.Exit(1, 2), W.Exit(2, 1)])
    out = W.check_codes([W.Exit(1, -9, replaced=True), W.Exit(2, 1), W.Exit(1, 0), W.Exit(0, 3)])
    assert out.gave_up
    assert out.died == ("worker 1 was killed by SIGKILL (as the kernel's out-of-memory killer does), and a "
                        "replacement took its place; worker 2 exited with code 1 (its output is above, prefixed "
                        "with its index)")


FAKE_WORKER = """
import os, signal, sys, time
index, marker = sys.argv[1], sys.argv[2]
if index == "1" and not os.path.exists(marker):  # the first worker 1 is "OOM-killed" mid-way
    open(marker, "w").close()
    print("training", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(3 if index == "0" else 0.5)
print("worker", index, "done", flush=True)
"""


def test_a_killed_worker_is_replaced_once_and_reported(tmp_path, capfd):
    """Issue 25 item 1: worker 1 SIGKILLed while worker 0 still works gets a replacement (the
    same index), both finish, and the outcome names the dead worker and how."""
    marker = tmp_path / "killed-once"
    exits = W.supervise([["0", str(marker)], ["1", str(marker)]], gpus=[],
                        program=(sys.executable, "-c", FAKE_WORKER))
    assert exits == [W.Exit(1, -signal.SIGKILL, replaced=True), W.Exit(1, 0), W.Exit(0, 0)]
    err = capfd.readouterr().err
    assert "gpt2ft: worker 1 was killed by SIGKILL" in err and "starting a replacement" in err
    assert "[w1] worker 1 done" in err and "[w0] worker 0 done" in err
    out = W.check_codes(exits)
    assert not out.gave_up and out.died.startswith("worker 1 was killed by SIGKILL")


def test_a_worker_killed_after_the_others_ended_is_not_replaced(tmp_path):
    marker = tmp_path / "killed-once"
    code = FAKE_WORKER.replace('time.sleep(3 if index == "0" else 0.5)', "")
    slow_kill = code.replace("os.kill(", "time.sleep(2); os.kill(")  # worker 0 has finished by then
    exits = W.supervise([["0", str(marker)], ["1", str(marker)]], gpus=[], program=(sys.executable, "-c", slow_kill))
    assert exits == [W.Exit(0, 0), W.Exit(1, -signal.SIGKILL, replaced=False)]


class _Parent:
    def __init__(self):
        self.tags, self.status = {}, None

    def set_tags(self, tags):
        self.tags.update(tags)

    def end(self, status):
        self.status = status


@pytest.mark.parametrize("complete, status", [(2, "FINISHED"), (1, "FAILED")])
def test_a_dead_workers_study_still_finishes_and_says_so(monkeypatch, complete, status):
    """cli's wiring of item 1: the finish and the artifacts run after a worker died; the parent
    run ends FINISHED when the others completed the study (FAILED when they could not), tagged
    with the sentence the command then exits with."""
    import argparse

    import gpt2ft.study as S
    from gpt2ft import cli

    ran = []
    monkeypatch.setattr(W, "supervise", lambda argvs: [W.Exit(1, -signal.SIGKILL), W.Exit(0, 0)])
    monkeypatch.setattr(S, "log_study_artifacts", lambda runner: ran.append("artifacts"))
    trials = [SimpleNamespace(state=SimpleNamespace(name="COMPLETE"), user_attrs={})] * complete
    runner = SimpleNamespace(n_trials=2, gave_up=None, command_id="c", parent=_Parent(),
                             study=SimpleNamespace(get_trials=lambda deepcopy=False: trials),
                             finish=lambda: ran.append("finish"))
    args = argparse.Namespace(config=None, overrides=[], corpus=None, tracking_uri=None, study_name=None,
                              n_trials=None, timeout=None, storage=None, jobs=None)
    died = cli._run_study(runner, args, 2)
    assert ran == ["finish", "artifacts"]
    assert died.startswith("worker 1 was killed by SIGKILL") and f"{complete} of 2 trials complete" in died
    assert runner.parent.status == status and runner.parent.tags["worker_died"] == died


def test_a_worker_that_dies_twice_is_replaced_once_then_the_others_finish(tmp_path, capfd):
    """Issue 35 item 12: worker 1 is SIGKILLed every time it starts; its replacement dies too and
    is not replaced again, while worker 0 finishes its work."""
    always = FAKE_WORKER.replace('index == "1" and not os.path.exists(marker)', 'index == "1"')
    exits = W.supervise([["0", str(tmp_path / "m")], ["1", str(tmp_path / "m")]], gpus=[],
                        program=(sys.executable, "-c", always))
    assert exits == [W.Exit(1, -signal.SIGKILL, replaced=True), W.Exit(1, -signal.SIGKILL, replaced=False),
                     W.Exit(0, 0)]
    err = capfd.readouterr().err
    assert err.count("starting a replacement") == 1 and "[w0] worker 0 done" in err
    assert W.check_codes(exits).died.count("worker 1 was killed by SIGKILL") == 2


@pytest.mark.parametrize("cores, jobs, each", [(2, 2, 1), (16, 4, 4), (3, 2, 1), (2, 3, 1)])
def test_the_cores_are_split_among_the_workers(cores, jobs, each):
    assert W.threads_per_worker(cores, jobs) == each


def test_each_worker_runs_its_share_of_the_cores(monkeypatch, capfd):
    """Issue 35 item 7: ``--jobs 2`` on 4 cores runs 2 torch threads in each worker, not 4 each."""
    monkeypatch.setattr(W, "cpu_cores", lambda: 4)
    probe = "import torch; from gpt2ft.workers import become_worker; become_worker(); print(torch.get_num_threads())"
    exits = W.supervise([[], []], gpus=[], program=(sys.executable, "-c", probe))
    assert sorted(e.code for e in exits) == [0, 0]
    err = capfd.readouterr().err
    assert "[w0] 2\n" in err and "[w1] 2\n" in err


def test_a_worker_whose_supervisor_died_exits_even_if_its_clean_up_hangs():
    """The parent watch's backstop: SIGTERM first, and when the clean-up it starts never ends (here
    SIGTERM is ignored outright), the worker exits STOP_SECONDS later instead of outliving its
    supervisor (tests/test_jobs.py's killed-then-resumed study saw one alive after 60 s)."""
    code = ("import signal, time\n"
            "from gpt2ft import workers\n"
            "workers.STOP_SECONDS = 1.0\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a clean-up that never ends\n"
            "workers._watch_parent(-1)  # no process has pid -1: the supervisor is gone at once\n"
            "time.sleep(60)\n")
    t = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], timeout=30)
    assert done.returncode == 1 and time.monotonic() - t < 20
