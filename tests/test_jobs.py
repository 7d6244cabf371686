"""``gpt2ft study --jobs N``: the workers' shared storage under load, auto sizing, and a study
whose supervisor is killed mid-way and then resumed with nothing lost."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY
from gpt2ft.ui_names import ui_name

HAMMER = textwrap.dedent("""
    import sys
    import optuna
    from gpt2ft.coordination import open_storage
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="hammer", storage=open_storage(sys.argv[1], heartbeat=1, grace=5))
    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        for i in range(3):
            trial.set_user_attr(f"a{i}", i)
        return x
    study.optimize(objective, n_trials=int(sys.argv[2]), catch=())
""")


def _env() -> dict[str, str]:
    # Subprocesses import this checkout, whatever is installed.
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_sqlite_rdb_storage_takes_four_writers_without_loss(tmp_path):
    """Why the default storage stays Optuna's RDB storage on SQLite: four processes writing
    trials and user attributes at once lose none, number none twice and never see "database is
    locked" (the 60 s busy timeout of ``open_storage`` waits instead); and only the RDB storage
    has heartbeats, which resume after a killed worker needs (Optuna 5.0's JournalStorage is not
    a BaseHeartbeat, so ``fail_stale_trials`` does nothing on it)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.storages.journal import JournalFileBackend

    from gpt2ft.coordination import open_storage

    assert not issubclass(JournalStorage, BaseHeartbeat), "journal storage gained heartbeats: reconsider"
    assert isinstance(JournalStorage(JournalFileBackend(str(tmp_path / "j.log"))), optuna.storages.BaseStorage)
    url = f"sqlite:///{tmp_path / 'hammer.db'}"
    optuna.create_study(study_name="hammer", storage=open_storage(url))
    n, per = 4, 15
    procs = [subprocess.Popen([sys.executable, "-c", HAMMER, url, str(per)], env=_env(), stderr=subprocess.PIPE,
                              text=True) for _ in range(n)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, errors
    assert not any("locked" in e for e in errors), errors
    trials = optuna.load_study(study_name="hammer", storage=url).trials
    assert len(trials) == n * per
    assert sorted(t.number for t in trials) == list(range(n * per))
    assert all(t.state.name == "COMPLETE" and t.user_attrs == {"a0": 0, "a1": 1, "a2": 2} for t in trials)


def test_auto_jobs_by_memory_and_cores():
    from gpt2ft.workers import CUDA_CONTEXT_BYTES, auto_jobs, worker_bytes

    # GPT-2 124M, batch 32 x 256: 2.5 GB of weights and states, 2.6 GB of activations, 4.9 GB of logits.
    need = worker_bytes(124_439_808, 12, 768, 50257, 32, 256)
    assert 10e9 < need < 11.5e9
    assert worker_bytes(10, 1, 1, 1, 1, 1) == 24 * 10 + 34 + 12 + CUDA_CONTEXT_BYTES
    assert auto_jobs(need, None, 16) == 1  # no GPU
    assert auto_jobs(need, int(80e9), 16) == 6  # memory-bound: 80 GB x 0.85 / 10.6 GB
    assert auto_jobs(need, int(80e9), 3) == 2  # core-bound: one core stays with the supervisor
    assert auto_jobs(need, int(5e9), 16) == 1  # never below one


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _complete(url: str) -> list:
    import optuna

    try:
        return [t for t in optuna.load_study(study_name="tiny", storage=url).trials if t.state.name == "COMPLETE"]
    except Exception:  # the study does not exist yet
        return []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_jobs_2_killed_then_resumed_loses_nothing(workdir, book):
    """``--jobs 2`` killed (SIGKILL to the supervisor's process group) after its first trial:
    the workers die with it; running the same command again loads the setup from the cache,
    keeps every finished trial and its run, and ends with exactly n_trials COMPLETE trials,
    one parent run, one run per trial and one selected."""
    import optuna
    from mlflow.tracking import MlflowClient

    cmd = [sys.executable, "-m", "gpt2ft.cli", "study", "--config", str(TINY), "--quiet", "--jobs", "2",
           "--n-trials", "3", "--corpus", str(book), "--set", "train.max_steps=3", "--set", "train.eval_batches=1",
           "--set", "study.heartbeat_interval=1", "--set", "study.grace_period=2", "--set", "study.writer=process",
           # Issue 36: LoRA searched beside full fine-tuning, and the copying judges told as constraints (on in
           # tiny.yaml), both under two workers and a resume.
           "--set", "study.lora_r=[0, 4]"]
    url = f"sqlite:///{workdir}/mlruns/optuna.db"
    first = subprocess.Popen(cmd, cwd=workdir, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 240
    while not _complete(url) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert first.poll() is None, "the study finished before it could be killed"
    workers = _children(first.pid)
    assert len(workers) == 2
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    deadline = time.monotonic() + 60
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers), "a worker outlived its supervisor"
    before = {t.number: (t.values, t.user_attrs["mlflow_run_id"]) for t in _complete(url)}
    assert before

    second = subprocess.run(cmd, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-4000:]
    workers_now = min(2, 3 - len(before))  # no worker is started for a slot already filled
    assert f"with {workers_now} worker" in second.stdout
    assert ("[w1] " in second.stderr) == (workers_now == 2)
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    done = {t.number: (t.values, t.user_attrs["mlflow_run_id"]) for t in trials if t.state.name == "COMPLETE"}
    assert len(done) == 3
    assert all(done[n] == v for n, v in before.items())
    assert len({t.number for t in trials}) == len(trials)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert all(t.params["lora_r"] in (0, 4) and "memorization" in t.constraints for t in complete)

    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("gpt2ft-tiny").experiment_id])
    parents = [r for r in runs if r.data.tags.get("gpt2ft.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("gpt2ft.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    per_trial = [r.data.tags["optuna.trial"] for r in children]
    assert len(per_trial) == len(set(per_trial))
    assert {r.info.run_id for r in children if r.info.status == "FINISHED"} == {v[1] for v in done.values()}
    assert sum(r.data.tags.get("selected") == "true" for r in children) == 1
    hits = client.get_metric_history(parents[0].info.run_id, ui_name("setup_cache_hit"))
    took = client.get_metric_history(parents[0].info.run_id, ui_name("setup_seconds"))
    assert [m.value for m in sorted(hits, key=lambda m: m.timestamp)] == [0.0, 1.0]
    miss, hit = (m.value for m in sorted(took, key=lambda m: m.timestamp))
    assert hit < miss / 2


def test_study_jobs_is_a_positive_integer_or_auto():
    from gpt2ft.config import ConfigError, load_config

    assert load_config(TINY, ["study.jobs=auto"]).study.jobs == "auto"
    assert load_config(TINY, ["study.jobs=3"]).study.jobs == "3"
    for bad in ("0", "-1", "many", "1.5"):
        with pytest.raises(ConfigError, match="study.jobs"):
            load_config(TINY, [f"study.jobs={bad}"])


def test_study_writer_is_auto_process_or_inline():
    from gpt2ft.config import ConfigError, load_config

    assert load_config(TINY).study.writer == "auto"
    assert load_config(TINY, ["study.writer=inline"]).study.writer == "inline"
    with pytest.raises(ConfigError, match="study.writer"):
        load_config(TINY, ["study.writer=thread"])


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.skipif(os.environ.get("GPT2FT_CRASH") != "1",
                    reason="~90 s on 2 cores: .ci/run runs it (GPT2FT_CRASH=1) beside make multiworker")
@pytest.mark.usefixtures("shared_setup")
def test_jobs_2_one_worker_killed_the_others_finish_the_study(workdir, book):
    """Issue 25 item 1 end to end: ``--jobs 2``, worker 1 SIGKILLed (as the out-of-memory killer
    does) while its trial runs. Its trial is failed once its heartbeat is stale and its slot taken
    (by worker 0, or the replacement the supervisor starts); the study completes n_trials, the
    finish runs (a pick on the parent run, which ends FINISHED), no MLflow run is left RUNNING,
    and the command exits 4 with one line naming the worker and how it died."""
    import threading

    import optuna
    from mlflow.tracking import MlflowClient

    cmd = [sys.executable, "-m", "gpt2ft.cli", "study", "--config", str(TINY), "--quiet", "--jobs", "2",
           "--n-trials", "2", "--corpus", str(book), "--set", "train.max_steps=6", "--set", "train.eval_batches=1",
           "--set", "study.heartbeat_interval=1", "--set", "study.grace_period=3"]
    stdout = open(workdir / "stdout.txt", "w+")
    proc = subprocess.Popen(cmd, cwd=workdir, env=_env(), stdout=stdout, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any(x.startswith("[w1] [study tiny] trial") for x in lines) and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)[-4000:]
            time.sleep(0.1)
        w1 = [p for p in _children(proc.pid) if "--worker-index 1 " in " ".join(_cmdline(p))]
        assert len(w1) == 1, "".join(lines)[-4000:]
        # Killed at once: its trial is RUNNING from the line on, and a tiny trial can end within a
        # second (CI's clean clone saw both trials COMPLETE after a 1 s wait here).
        os.kill(w1[0], signal.SIGKILL)
        started = next(x for x in lines if x.startswith("[w1] [study tiny] trial"))
        victim = int(started.split(" trial ")[1].split(":")[0])
        killed = time.monotonic()
        proc.wait(timeout=400)
        after = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    err, out = "".join(lines), (workdir / "stdout.txt").read_text()
    print(f"the study took {after:.0f} s after the kill")
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 4, err[-6000:]
    assert last.startswith("gpt2ft: error: worker 1 was killed by SIGKILL"), last
    assert "2 of 2 trials complete, picked and logged" in last
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir}/mlruns/optuna.db").trials
    trained = [t for t in trials if "derived_from" not in t.user_attrs]
    states = sorted(t.state.name for t in trained)
    print("trial states:", [(t.number, t.state.name) for t in trained])
    assert states.count("COMPLETE") == 2 and "RUNNING" not in states
    assert next(t.state.name for t in trials if t.number == victim) == "FAIL", err[-4000:]  # the killed trial
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("gpt2ft-tiny").experiment_id])
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    parent = next(r for r in runs if r.data.tags.get("gpt2ft.kind") == "study")
    assert parent.info.status == "FINISHED" and parent.data.tags["selected_trial"] not in ("", "none")
    assert parent.data.tags["worker_died"].startswith("worker 1 was killed by SIGKILL")
    assert sum(r.data.tags.get("selected") == "true" for r in runs) == 1
    assert "selected:" in out  # the outcome was printed: the finish ran
