"""The benchmark scripts import, and their CPU-only parts (arguments, FLOP arithmetic, step
clock, table) work. ``make bench`` itself is not part of the suite: it takes minutes."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str) -> ModuleType:
    """bench/ is a folder of scripts, not a package: import one by path."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flop_formula_by_hand():
    B = load("benchlib")
    # vocab 10, 1 layer, width 4: wte 10*4 = 40; layer: ln_1 8 + c_attn (4*12 + 12) 60 +
    # attn c_proj (4*4 + 4) 20 + ln_2 8 + c_fc (4*16 + 16) 80 + mlp c_proj (16*4 + 4) 68 = 244;
    # ln_f 8. Without positions 292; wpe (8 positions x 4) adds 32.
    assert B.gpt2_params(10, 1, 4) == 292
    assert B.gpt2_params(10, 1, 4, n_positions=8) == 324
    # 6N + 12 * n_layer * n_embd * block = 1752 + 384
    assert B.flops_per_token(292, 1, 4, 8) == 2136
    # GPT-2 small's published parameter count (tied head, 1024 positions)
    assert B.gpt2_params(50257, 12, 768, 1024) == 124_439_808
    assert B.mm_flops(2) == 16
    assert B.gpu_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert B.gpu_peak("NVIDIA H200") == 989e12
    assert B.gpu_peak("NVIDIA H100 PCIe") == 756e12
    assert B.gpu_peak("Some Future Card") is None
    # bench/run.py also asserts gpt2_params against the real model it builds.


def test_step_clock_times_every_optimizer_step():
    torch = pytest.importorskip("torch")
    B = load("benchlib")
    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([w], lr=0.1)
    synced = []
    with B.StepClock(sync=lambda: synced.append(1), sync_at=(1, 3)) as clock:
        for _ in range(3):
            w.grad = torch.ones(3)
            opt.step()
    opt.step()  # after the block: not counted
    assert len(clock.stamps) == 3 and len(synced) == 2
    assert clock.window(1, 3) >= 0
    with pytest.raises(RuntimeError, match="expected 4"):
        clock.window(1, 4)


def test_run_arguments_table_and_schedule():
    run = load("run")
    B = load("benchlib")
    args = run.build_parser().parse_args(["--quick", "--only", "index"])
    assert args.quick and args.only == "index" and args.batch == 4 and args.block == 64
    assert B.rotations(["a", "b", "c"], 3) == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    rows = [B.row("fit vs bare", 10.0, "bare", 10.5, 10 / 10.5, ">= 0.95", B.at_least(10 / 10.5, 0.95)),
            B.row("info only", 1.5)]
    text = B.table(rows)
    assert text.splitlines()[0].split() == ["figure", "value", "peer", "peer", "value", "ratio", "target",
                                            "met?"]
    assert "yes" in text.splitlines()[2] and B.at_most(0.2, 0.15) is False


def test_bare_loop_is_the_one_loop_of_both_benches():
    torch = pytest.importorskip("torch")
    B = load("benchlib")
    seen = []

    class Toy(torch.nn.Module):
        """Stands in for a causal LM: ``model(input_ids=x, labels=x).loss``."""

        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 1)

        def forward(self, input_ids, labels):
            seen.append(input_ids[:, 0].tolist())
            return type("Out", (), {"loss": self.emb(input_ids).pow(2).mean()})()

    model = Toy()
    before = model.emb.weight.detach().clone()
    windows = torch.arange(12).view(6, 2) % 10  # window i starts with token 2i % 10
    with B.StepClock() as clock:
        B.bare_loop(model, windows, torch.tensor([5, 4, 3, 2, 1, 0]), batch=2, steps=3, lr=0.1)
    assert seen == [[0, 8], [6, 4], [2, 0]]  # batches in the given order
    assert len(clock.stamps) == 3 and not torch.equal(before, model.emb.weight)
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none) after each step
    for name in ("gpu", "run", "step"):  # no bench module keeps a loop of its own
        assert "loss.backward()" not in (BENCH / f"{name}.py").read_text()


def test_gpu_study_targets_and_outside_share():
    G = load("gpu")
    trials = [{"number": n, "tokens": 100, "step_seconds": s, "trial_seconds": w,
               **{k: 1.0 for k in G.TIMES if k not in ("step_seconds", "trial_seconds")}}
              for n, s, w in ((0, 9.0, 10.0), (1, 7.0, 10.0), (2, 1.0, 10.0))]
    res = {"trials": trials, "wall_seconds": 120.0, "workers": 4, "gpu_busy_share": 0.85,
           "n_params": 1000, "peak_mib_by_pid": {}}
    fig = G.summarize(res, None, {0, 1})  # trial 2 is not common to both studies: left out
    assert fig["outside_steps_share"] == pytest.approx(0.2)
    lines = G.verdicts(fig).splitlines()
    assert [line.split()[0] for line in lines] == list(G.TARGETS)
    assert lines[0].endswith("met") and lines[1].endswith("met")
    assert lines[2].endswith("not measured")  # no peak: no MFU
    assert lines[3].endswith("MISSED")        # 0.2 > 0.10


def test_gpu_study_writes_each_study_as_it_ends_within_one_budget(tmp_path, monkeypatch):
    """A device command cut off at its limit must keep the study that finished: the JSON holds
    the --jobs N study before the --jobs 1 study starts. Both studies, each run to its kill
    limit here, end within --budget (one 600-s device command)."""
    from types import SimpleNamespace

    G = load("gpu")
    clock = [100.0]  # the setup took 100 s
    monkeypatch.setattr(G, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    out = tmp_path / "gpu_study.json"
    calls = []

    def run_study(jobs, n_trials, config, sets, corpus, store, cache, timeout, limit):
        on_disk = json.loads(out.read_text()) if out.exists() else {}
        calls.append({"jobs": jobs, "timeout": timeout, "limit": limit, "on_disk": on_disk})
        clock[0] += limit  # it ran until it was killed
        trials = [{"number": n, "tokens": 10, "step_seconds": 1.0, "trial_seconds": 2.0,
                   **{k: 0.5 for k in G.TIMES if k not in ("step_seconds", "trial_seconds")}}
                  for n in range(6 if jobs == "4" else 2)]
        return {"workers": int(jobs), "wall_seconds": limit, "killed_at_limit": True, "gpu_busy_share": None,
                "peak_mib_by_pid": {}, "n_params": 1000, "gpu": "NVIDIA H200", "trials": trials}

    monkeypatch.setattr(G, "run_study", run_study)
    args = G.parse(["--study", "--out-dir", str(tmp_path), "--peak-tflops", "1"])
    results = {"n_trials": 30}
    G.run_both(args, "4", 30, "c.yaml", [], Path("book.txt"), tmp_path, results, 0.0)
    parallel, serial = calls
    assert parallel["limit"] == pytest.approx((560 - 100) * G.MANY_SHARE)
    assert serial["limit"] == pytest.approx(560 - 100 - parallel["limit"])
    assert 100 + parallel["limit"] + serial["limit"] <= args.budget
    assert all(c["timeout"] == pytest.approx(c["limit"] - G.FINISH_MARGIN) for c in calls)
    # written before the second study started: the first study's figures, nothing of the second
    first = serial["on_disk"]
    assert first["studies"] == {"parallel": "jobs_4"} and first["jobs_4"]["trials_complete"] == 6
    assert first["jobs_4"]["killed_at_limit"] is True
    final = json.loads(out.read_text())
    assert final["studies"] == {"parallel": "jobs_4", "serial": "jobs_1"} and final == json.loads(json.dumps(results))
    assert final["common_trials"] == [0, 1] and final["jobs_1"]["trials_complete"] == 2
    assert not list(tmp_path.glob(".gpu_study.json.*"))  # atomic: no temporary file left


def test_step_bench_rounds_ratios_and_the_masks_share():
    """bench/step.py: a variant's rounds give medians of the times and the largest peak, ratios to
    the plain step, the goldfish mask's share of a step, and a compile variant its cost and saving."""
    S = load("step")
    base = {"batch": 16, "trainable": 10, "state_mib": 1.0, "checkpoint_mib": 4.0}
    plain = S.combine([{**base, "variant": "plain", "first_s": 0.2, "second_s": 0.06, "step_s": s, "peak_mib": p}
                       for s, p in ((0.03, 100.0), (0.05, 120.0), (0.04, 90.0))], None, 4)
    assert plain["step_s"] == 0.04 and plain["peak_mib"] == 120.0 and plain["step_ratio"] == 1.0
    fish = S.combine([{**base, "variant": "goldfish", "first_s": 0.2, "step_s": 0.02, "peak_mib": 60.0,
                       "mask_batch_ms": 0.2, "mask_fit_ms": 29.0, "index_ms": 0.01}], plain, 4)
    assert fish["step_ratio"] == pytest.approx(0.5) and fish["peak_ratio"] == pytest.approx(0.5)
    assert fish["mask_batch_share"] == pytest.approx(0.01)  # 0.2 ms of a 20 ms step
    assert fish["fit_share_per_step"] == pytest.approx((29.0 / 29 + 0.01) / 20)  # 454 windows: 29 steps an epoch
    comp = S.combine([{**base, "variant": "compile-default", "first_s": 20.06, "second_s": 0.07, "step_s": 0.02,
                       "peak_mib": 130.0}], plain, 4)
    assert comp["compile_s"] == pytest.approx(20.0) and comp["break_even_steps"] == pytest.approx(1000)
    assert "compile_s" in S.report([plain, fish, comp]).split("\n\n")[-1]


def test_compile_bench_arithmetic():
    c = load("step")
    # gulliver at batch 16: 29 steps an epoch, 5.5 epochs on average, 30 trials over 4 batch sizes.
    assert c.study_steps(16, 4) == (29 * 5.5, 29 * 5.5 * 30 / 4)
    eager = {"step_s": 0.030, "second_s": 0.06}
    r = c.derive({"first_s": 20.06, "second_s": 0.07, "step_s": 0.020}, eager, 16, 4)
    assert r["compile_s"] == pytest.approx(20.0) and r["reuse_s"] == pytest.approx(0.01)
    assert r["break_even_steps"] == pytest.approx(2000)
    assert r["study_saving_s"] == pytest.approx(29 * 5.5 * 7.5 * 0.01 - 20.0)
    slower = c.derive({"first_s": 20.0, "second_s": 0.1, "step_s": 0.031}, eager, 16, 4)
    assert slower["break_even_steps"] == float("inf")


def test_measure_bench_times_outer_parts_and_puts_the_functions_back():
    """bench/measure.py's sections: a part called inside another (the memorization inside the
    bootstrap) counts for the outer one, and the patched functions are restored afterwards."""
    from gpt2ft import metrics as M
    from gpt2ft.ngram_index import NgramIndex

    bench = load("measure")
    original = M.bootstrap_se
    index, samples = NgramIndex([1, 2, 3, 4]), [[1, 2, 3], [2, 3, 9], [9, 9]]
    with bench.Sections().active() as sec:
        M.bootstrap_se(samples, lambda s: M.memorization(s, index, 2), 20, 0)
        M.memorization(samples, index, 2)
    assert sec.calls == {"bootstrap": 1, "memorization 4/8/16": 1}
    assert M.bootstrap_se is original
    runs = [(2.0, {"sampling": 1.5, "other": 0.5}, {"sampling": 1}, {}),
            (4.0, {"sampling": 3.0, "other": 1.0}, {"sampling": 1}, {}),
            (3.0, {"sampling": 1.5, "other": 1.5}, {"sampling": 1}, {})]
    b = bench.breakdown(runs)
    assert b["seconds"] == 3.0 and b["parts"]["sampling"] == {"seconds": 1.5, "share": 0.75, "calls": 1}
    assert list(b["parts"]) == ["sampling", "other"]


def test_gpu_check_device_checks_pass_on_the_cpu():
    """make gpu-check's in-process checks (the sampling copy refreshed across trials, the step
    timer, the copying stop in fit) run on the CPU too; on CUDA they take the GPU paths."""
    import torch

    C = load("gpu")
    cpu = torch.device("cpu")
    assert "refreshed in place across two trials" in C.sampler_refresh(cpu)
    assert C.step_timer(cpu).startswith("StepTimer")
    assert C.copying_stop(cpu) == "stopped at step 8, the second point"
    assert C.goldfish_fit(cpu).startswith("labels equal the CPU's")


def test_gpu_check_writes_its_figures_and_fails_on_any_failed_check(tmp_path, monkeypatch, capsys):
    """The JSON has device, trials_per_minute, gpu_busy_share, mfu, measure_share and pick (GPU
    figures null on the CPU), every check's verdict, and the exit code says whether all passed.
    The study itself is faked here: ``make gpu-check ARGS=--cpu-check`` runs it for real."""
    C = load("gpu")
    figures = {"trials_per_minute": 2.5, "gpu_busy_share": None, "mfu": None, "measure_share": 0.3,
               "pick": {"trial": 0, "step": 4, "eligible": True}}

    def study(args, results, device, t0, ok=True):
        results.update(figures)
        C.check(results, "study", lambda: "2 trials")
        C.check(results, "export", (lambda: "loaded") if ok else (lambda: 1 / 0))

    out = tmp_path / "gpu_check.json"
    monkeypatch.delenv("OUT", raising=False)
    monkeypatch.setattr(C, "run_study_checks", study)
    assert C.main(["--cpu-check", "--out-dir", str(tmp_path)]) == 0
    saved = json.loads(out.read_text())
    assert {k: saved[k] for k in figures} == figures and saved["device"] == "cpu"
    assert set(saved["checks"]) == {"sampler_refresh", "step_timer", "copying_stop", "goldfish_labels", "study",
                                    "export"}
    assert set(saved["parts"]) == set(saved["checks"]) and all(s >= 0 for s in saved["parts"].values())
    monkeypatch.setattr(C, "run_study_checks", lambda *a: study(*a, ok=False))
    assert C.main(["--cpu-check", "--out-dir", str(tmp_path)]) == 1
    failed = json.loads(out.read_text())["checks"]["export"]
    assert failed == {"ok": False, "detail": "ZeroDivisionError: division by zero"}
    assert "FAILED: export" in capsys.readouterr().out


def test_gpu_check_jobs_auto_reads_what_each_trial_recorded_not_nvidia_smi(monkeypatch):
    """--jobs auto passes on what the trials recorded of their process (pid, device, peak memory):
    inside the device's sandbox nvidia-smi may list no process; one worker or a CPU trial fails it."""
    from types import SimpleNamespace

    import torch

    C = load("gpu")
    cuda = torch.device("cuda")

    def trial(pid, device="cuda", peak=3 << 30):
        return SimpleNamespace(user_attrs={"worker": {"pid": pid, "device": device, "device_name": "NVIDIA H100",
                                                      "peak_memory_bytes": peak}})

    def verdict(trials, workers=3):
        results = {"checks": {}}
        f = {"trials_complete": len(trials), "pick": None, "wall_seconds": 60.0, "workers": workers,
             "trial_workers": C.trial_workers(trials), "derived_trials": 1, "stop_recorded": len(trials),
             "stopped_for_copying": []}
        C._study_verdicts(results, f, len(trials), cuda, None)
        return results["checks"]["jobs_auto"]

    ok = verdict([trial(11), trial(12), trial(11), trial(13)])
    assert ok["ok"] and "trials ran in 3 processes on cuda" in ok["detail"], ok
    assert not verdict([trial(11), trial(11)])["ok"]  # one process did every trial
    assert "off the cuda" in verdict([trial(11), trial(12, device="cpu")])["detail"]
    assert "peak is 0" in verdict([trial(11), trial(12, peak=0)])["detail"]
    unrecorded = SimpleNamespace(user_attrs={})
    assert "recorded their worker" in verdict([trial(11), trial(12), unrecorded])["detail"]


def test_peak_memory_on_the_cpu_is_this_process_and_its_peak_rss():
    import os

    import torch

    from gpt2ft.model import peak_memory, reset_peak_memory
    from gpt2ft.trial import TrialResult

    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    seen = peak_memory(cpu)
    assert seen["pid"] == os.getpid() and seen["device"] == "cpu"
    assert seen["peak_memory_bytes"] > 50 << 20  # torch alone is more than 50 MiB resident
    from gpt2ft.train import FitResult

    res = TrialResult({}, FitResult(history=[], steps=0), [], [], worker=seen)
    assert TrialResult.from_record(res.record()).worker == seen
