"""What a stopped or killed process leaves behind is found and finished by the next run (issue 25):
an after-trial cut off (item 2), a trial stopped by SIGTERM (item 3), a study of the same name
elsewhere (item 5), a hung checkpoint save (item 8)."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import TINY
from test_derived import SHORT

# A trial of 3 epochs on 8 windows (2 steps an epoch), measured at its end and epochs 1, 2.
FAST = [x for o in [*SHORT, "study.n_trials=1", "sample.final_n_samples=0"] for x in ("--set", o)]


def _study(workdir: Path):
    import optuna

    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}")


def _derived(study) -> list[int]:
    return sorted(t.params["epochs"] for t in study.get_trials() if "derived_from" in t.user_attrs)


@pytest.mark.usefixtures("shared_setup")
def test_an_after_trial_cut_off_is_done_by_the_next_run_once(workdir, book, monkeypatch):
    """Killed between the trial's COMPLETE and its after-trial work: no derived trials, nothing
    pruned. The same command again tells them and prunes (here a stray checkpoint and a save's
    leftover folder), and a third run tells nothing twice."""
    from gpt2ft import study as S
    from gpt2ft.checkpoints import Checkpoints
    from gpt2ft.cli import main

    monkeypatch.setenv("GPT2FT_CORPUS", str(book))
    with monkeypatch.context() as m:
        m.setattr(S.StudyRunner, "after_trial", lambda self, study, frozen: None)  # "killed" right there
        m.setattr(S, "redo_after_trials", lambda runner: None)  # nor redone in the same run's start
        assert main(["study", "--config", str(TINY), "--quiet", "--yes", *FAST]) == 0
    study = _study(workdir)
    assert _derived(study) == []
    ck = Checkpoints(study.user_attrs["checkpoint_root"])
    stray = ck.path(0, 999)
    stray.mkdir(parents=True)
    leftover = ck.root / ".trial-0-step-6.x1y2.tmp"
    leftover.mkdir()

    assert main(["study", "--config", str(TINY), "--quiet", "--yes", *FAST]) == 0
    assert _derived(_study(workdir)) == [1, 2]
    assert not stray.exists() and not leftover.exists()
    assert main(["study", "--config", str(TINY), "--quiet", "--yes", *FAST]) == 0
    assert _derived(_study(workdir)) == [1, 2]


@pytest.mark.usefixtures("shared_setup")
def test_a_trial_stopped_by_sigterm_loses_its_checkpoints(workdir, book, monkeypatch):
    """SIGTERM in a worker is a KeyboardInterrupt: the trial is FAIL in Optuna, so its checkpoints
    (its end's, saved by the writer thread) can never be chosen and go like a failed trial's."""
    from gpt2ft import study as S
    from gpt2ft.checkpoints import Checkpoints
    from gpt2ft.cli import main

    monkeypatch.setenv("GPT2FT_CORPUS", str(book))
    real = S.run_trial

    def stopped(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt("signal 15")  # after its checkpoints were saved
    monkeypatch.setattr(S, "run_trial", stopped)
    assert main(["study", "--config", str(TINY), "--quiet", "--yes", *FAST]) == 130
    study = _study(workdir)
    assert [t.state.name for t in study.get_trials()] == ["FAIL"]
    assert Checkpoints(study.user_attrs["checkpoint_root"]).saved() == []


@pytest.mark.usefixtures("shared_setup")
def test_a_hung_checkpoint_save_fails_the_trial_and_says_so(workdir, book, monkeypatch):
    """The wait for the end's checkpoint is bounded by the writer's stall limit (here 0.5 s): the
    trial fails with what hung instead of hanging the study."""
    from gpt2ft import study as S
    from gpt2ft.checkpoints import Checkpoints
    from gpt2ft.cli import main
    from gpt2ft.writer import BackgroundWriter

    monkeypatch.setenv("GPT2FT_CORPUS", str(book))
    gate = threading.Event()
    real_save = Checkpoints.save

    def save(self, *args, **kwargs):
        if threading.current_thread().name == "gpt2ft-writer":  # the end's save, on the writer's thread
            gate.wait(60)  # a hung filesystem
        return real_save(self, *args, **kwargs)
    monkeypatch.setattr(Checkpoints, "save", save)
    monkeypatch.setattr(S, "BackgroundWriter", lambda: BackgroundWriter(stall_seconds=0.5))
    t = time.perf_counter()
    try:
        code = main(["study", "--config", str(TINY), "--quiet", "--yes", *FAST, "--set", "study.max_failures=1"])
    finally:
        gate.set()
    assert code == 3 and time.perf_counter() - t < 120
    (trial,) = _study(workdir).get_trials()
    assert trial.state.name == "FAIL"
    assert "WriterTimeout: the checkpoint of trial 0 at step 6 did not finish in 0 s" in trial.user_attrs["fail_reason"]


class _Tracker:
    def start(self, name, tags=None):
        return SimpleNamespace(id="parent-run", log_params=lambda p: None, log_metrics=lambda m: None)

    def resume(self, run_id):
        return SimpleNamespace(id=run_id)


def test_a_study_of_the_same_name_in_a_new_storage_has_other_checkpoints(tmp_path, monkeypatch):
    """Delete optuna.db (or point --storage elsewhere) and start a study of the same name: its
    checkpoint folder is its own, so the old study's trial 0 at step 5 is not taken for its own.
    A worker joining the study finds the same folder; so does export (``checkpoint_root``)."""
    import optuna

    from gpt2ft import coordination as C
    from gpt2ft import study as S
    from gpt2ft.checkpoints import Checkpoints
    from gpt2ft.config import load_config

    monkeypatch.setattr(S, "record_setup", lambda study, config, assets, root: study.set_user_attr(
        "checkpoint_root", root) or {})
    config = load_config(TINY)
    assets = SimpleNamespace(references=SimpleNamespace(values={}, seconds=0.0), timings={})
    base = Checkpoints(tmp_path / "checkpoints" / "tiny")

    def runner(db: str):
        url = f"sqlite:///{tmp_path / db}"
        storage = C.open_storage(url)
        study = optuna.create_study(storage=storage, study_name="tiny", load_if_exists=True,
                                    directions=["maximize", "minimize"])
        r = SimpleNamespace(study=study, storage=storage, storage_url=url, tracker=_Tracker(), config=config,
                            assets=assets, checkpoints=base, parent=None)
        S.open_parent(r, {})
        return r

    first = runner("first.db")
    first.checkpoints.path(0, 5).mkdir(parents=True)
    assert first.checkpoints.root != base.root
    assert first.study.user_attrs["checkpoint_root"] == str(first.checkpoints.root)
    assert runner("first.db").checkpoints.root == first.checkpoints.root  # a joining worker
    second = runner("second.db")
    assert second.checkpoints.root != first.checkpoints.root
    assert second.checkpoints.saved() == [] and first.checkpoints.saved() == [(0, 5)]
