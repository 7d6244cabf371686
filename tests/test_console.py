"""The console: after console.quiet_libraries() the libraries a study uses print no bars, INFO
lines or experimental warnings (each was seen in `make demo`'s output before)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# Each library call that printed during a study, in a fresh process (the switches act at import).
SCRIPT = textwrap.dedent("""
    import sys
    if sys.argv[1] == "quiet":
        from gpt2ft.console import quiet_libraries
        quiet_libraries()
        import gpt2ft.coordination  # the study's way into Optuna: its verbosity is set there
    import logging
    logging.basicConfig(level=logging.WARNING)
    import mlflow, optuna, torch
    from transformers import GPT2Config, GPT2LMHeadModel
    out = sys.argv[2]
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")  # "Creating initial MLflow database tables"
    mlflow.search_experiments()
    study = optuna.create_study(storage=f"sqlite:///{out}/optuna.db")  # "A new study created"
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)  # "Trial 0 finished"
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=1, vocab_size=50))
    model.save_pretrained(f"{out}/ckpt")  # "Writing model shards"
    GPT2LMHeadModel.from_pretrained(f"{out}/ckpt")  # "Loading weights"
    from tqdm.auto import tqdm
    for _ in tqdm(range(3), desc="a library's own bar"):  # as the GGUF loader's conversion bar
        pass
""")

NOISE = ("Creating initial MLflow database tables", "A new study created", "Trial 0 finished",
         "Writing model shards", "Loading weights", "a library's own bar")


def _run(mode: str, tmp_path: Path) -> str:
    out = tmp_path / mode
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(out)], capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH":
                                            str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def test_the_libraries_say_nothing_once_quieted(tmp_path: Path) -> None:
    loud = _run("loud", tmp_path)
    assert sum(n in loud for n in NOISE) >= 4  # the noise is there to silence (tqdm bars need a file)
    quiet = _run("quiet", tmp_path)
    assert [n for n in NOISE if n in quiet] == []


# --- the end-of-study tables and the cost estimate ------------------------------------------

import math  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from gpt2ft import cli  # noqa: E402
from gpt2ft.config import load_config  # noqa: E402
from gpt2ft.errors import UserError  # noqa: E402
from gpt2ft.judges import Bounds  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def wide_summary() -> SimpleNamespace:
    """A study's tables with every column the summary has, and long reasons."""
    n = 6
    table = pd.DataFrame({c: [0.123456789] * n for c in (
        "lr", "top100_ratio", "memorization", "longest_copy", "best_heldout_loss", "best_heldout_epoch",
        "copying_onset_epoch", "heldout_up_before_copying", "style_prob", "distinct_2", "repetition_4",
        "fluency_ppl", "seconds")}).assign(number=range(n), state="COMPLETE", epochs=10, batch_size=16,
                                           stopped_for_copying=False, eligible=True, degenerate=False, selected=False)
    cands = pd.DataFrame({c: [0.123456789] * n for c in (
        "epoch", "top100_ratio", "memorization", "extractable_rate", "heldout_loss", "fluency_ppl", "distinct_2")})
    cands = cands.assign(number=range(n), step=[1200] * n, n_samples=50, eligible=[True, False] * 3,
                         selected=[True] + [False] * 5,
                         why_not=["", "memorization 0.0287 > 0.02; extractable_rate 0.25 > 0.05; heldout_loss 4.88 > "
                                  "4.15", "", "degenerate: distinct_2 0.3 < 0.59", "", "heldout_loss 4.3 > 4.1"])
    bounds = Bounds(memorization=0.02, extraction=0.05, heldout_loss=4.145)
    return SimpleNamespace(table=table, candidates=cands, bounds=bounds)


def test_the_end_of_study_tables_fit_120_columns(capsys) -> None:
    summary = wide_summary()
    cli.print_trials(summary)
    cli.print_candidates(summary)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 120, out
    assert "mem,ext,loss" in out and "degen" in out  # which judges exclude each
    assert "candidates.csv" in out


def cost_assets(config_file: str, model: str, windows: int) -> SimpleNamespace:
    config = load_config(str(ROOT / "experiments" / config_file), [f"model.name={model}"])
    return SimpleNamespace(config=config, runtime=SimpleNamespace(device=torch.device("cpu")),
                           data=SimpleNamespace(train_windows=torch.zeros(windows, 8)), fresh_model=lambda: None)


def test_a_long_cpu_study_is_refused_whatever_the_model(monkeypatch, capsys) -> None:
    # SmolLM2 at gulliver.yaml's batch 16 x 256 on the whole book (~570 windows): ~20 s a step here.
    monkeypatch.setattr("gpt2ft.train.seconds_per_step", lambda *a: 20.0)
    with pytest.raises(UserError, match="hours on this CPU"):
        cli._refuse_long_cpu_study(cost_assets("gulliver.yaml", "smollm2", 570), yes=False)
    cli._refuse_long_cpu_study(cost_assets("gulliver.yaml", "smollm2", 570), yes=True)  # --yes runs it, said
    assert "hours on this CPU" in capsys.readouterr().err
    # The demo (15 windows, 4 trials of 1-8 epochs, ~4 s a step) and the tiny config (20 steps of ms) run,
    # and say what they cost.
    monkeypatch.setattr("gpt2ft.train.seconds_per_step", lambda *a: 4.0)
    cli._refuse_long_cpu_study(cost_assets("demo.yaml", "smollm2", 15), yes=False)
    monkeypatch.setattr("gpt2ft.train.seconds_per_step", lambda *a: 0.01)
    cli._refuse_long_cpu_study(cost_assets("tiny.yaml", "random-gpt2", 425), yes=False)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "min on this CPU" in err[0] and " s on this CPU" in err[1]


def test_study_steps_counts_epochs_batches_and_the_step_cap() -> None:
    config = load_config(str(ROOT / "experiments" / "tiny.yaml"), [])
    sizes = config.study.batch_size  # each capped at train.max_steps, in steps of the timed batch size
    expected = config.study.n_trials * sum(20 * b / config.train.batch_size for b in sizes) / len(sizes)
    assert cli.study_steps(425, config) == pytest.approx(expected)
    demo = load_config(str(ROOT / "experiments" / "demo.yaml"), [])
    assert cli.study_steps(15, demo) == pytest.approx(4 * math.ceil(15 / 4) * 4.5)


def test_a_finished_trial_says_its_numbers_and_the_pick_in_one_line() -> None:
    from gpt2ft.console import trial_end_line

    rows = {2: {"seconds": 58.4, "top100_ratio": 0.5501, "memorization": 0.0287, "best_heldout_loss": 3.879,
                "stopped_for_copying": True}}
    summary = SimpleNamespace(trial=rows.get, references={"book_top100_ratio": 0.554}, selected=(1, 8),
                              pick=SimpleNamespace())
    line = trial_end_line(summary, 2, "demo")
    assert line == ("[study demo] trial 2 done in 58.4 s, stopped for copying: top100_ratio 0.55 (book 0.554), "
                    "memorization 0.0287, best heldout_loss 3.88; pick: trial 1 at step 8")
    summary.selected = None
    assert trial_end_line(summary, 2, "demo").endswith("pick: none eligible")


def test_the_training_bar_says_when_it_measures(monkeypatch) -> None:
    from gpt2ft import train
    from test_gpu_timing import _fit, _Scalar

    said: list[str] = []

    class Bar:  # tqdm's surface that fit uses, recording what the bar shows beside the steps
        def __init__(self, *a, **k):
            self.postfix = ""

        def set_postfix_str(self, s="", refresh=True):
            self.postfix = s

        def set_postfix(self, **k):
            pass

        def update(self, n=1):
            pass

        def close(self):
            pass

    bar_of = {}
    monkeypatch.setattr(train, "tqdm", lambda *a, **k: bar_of.setdefault("bar", Bar()))
    _fit(6, _Scalar(), on_point=lambda step, epoch: said.append(bar_of["bar"].postfix), point_every=3)
    assert said == ["measuring"]  # the one interior point (step 3; step 6 is the end)
    assert bar_of["bar"].postfix == ""  # cleared once it is done
