"""Command line: ``gpt2ft train | study | export | references | generate | book``.

Errors a user can cause are caught here, at the edge, and reported as one sentence with
exit code 2; a study whose trials keep failing ends with one sentence and exit code 3 (see
``STUDY_EXIT_CODES``); anything else is a bug and keeps its traceback.

Each command imports what it needs when it runs: torch, transformers and MLflow take several
seconds to import, and ``gpt2ft --help`` or a mistyped option should answer at once.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from typing import Any, Optional, Sequence

from gpt2ft.console import quiet_libraries
from gpt2ft.errors import TrialsFailing, UserError, WorkerDied
from gpt2ft.fmt import duration, fmt

STUDY_EXIT_CODES = ("exit codes: 0 the study reached n_trials (or its timeout); 2 a user error, one sentence; "
                    f"{TrialsFailing.exit_code} stopped after study.max_failures trials failed in a row, one "
                    "sentence naming the last failure (what completed is logged and picked); 130 interrupted.")


def _common(p: argparse.ArgumentParser, config_required: bool = True) -> None:
    p.add_argument("--config", required=config_required, help="experiments/NAME.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=3e-5 (repeatable)")
    p.add_argument("--corpus", help="path of the book (else $GPT2FT_CORPUS, else download)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (else $MLFLOW_TRACKING_URI, "
                   "else sqlite in ./mlruns/mlflow.db)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt2ft", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune once, measure, log one MLflow run")
    _common(p)
    p.add_argument("--save", metavar="DIR", help="also save the fine-tuned model to DIR")

    p = sub.add_parser("study", help="run (or continue) the Optuna study", epilog=STUDY_EXIT_CODES)
    _common(p)
    p.add_argument("--storage", help="Optuna storage URL (default sqlite next to the MLflow store)")
    p.add_argument("--study-name", help="Optuna study name (default study.name)")
    p.add_argument("--n-trials", type=int, help="total trials to reach (default study.n_trials)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--yes", action="store_true", help="do not ask before a long CPU study")
    p.add_argument("--jobs", help="worker processes running trials at once: N or auto (default study.jobs)")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the supervisor of --jobs N
    p.add_argument("--command-id", help=argparse.SUPPRESS)  # the supervisor's, shared by its workers

    p = sub.add_parser("export", help="write the selected candidate's model (a trial at one step) to a folder")
    p.add_argument("--study-name", help="default: the most recent study in the storage")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite next to the MLflow store)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("--corpus", help="path of the book, for retraining")
    p.add_argument("--trial", type=int, help="export this trial instead of the selected candidate")
    p.add_argument("--step", type=int, help="with --trial: the candidate's step (default: the trial's end)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--no-register", action="store_true", help="skip the MLflow model registry")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("references", help="print every metric on the reference texts and base model")
    _common(p)
    p.add_argument("--no-base", action="store_true", help="skip the base model (no sampling)")

    p = sub.add_parser("generate", help="sample from a checkpoint with the metrics' settings")
    p.add_argument("--model", required=True, help="checkpoint folder or Hugging Face id")
    p.add_argument("--prompt", default="", help="text to continue (default: the BOS token)")
    p.add_argument("--n", type=int, default=3, help="number of samples")
    p.add_argument("--new-tokens", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=50)

    p = sub.add_parser("book", help="what of a book the study trains on: its prose kept, the rest dropped by kind")
    p.add_argument("--corpus", help="path of the book (else $GPT2FT_CORPUS, else download)")
    p.add_argument("--out", metavar="CLEAN.txt", help="write the prose as the study splits it")
    return parser


def print_table(rows: list[tuple[str, Any]], title: str) -> None:
    width = max(len(k) for k, _ in rows) if rows else 10
    print(f"\n{title}")
    print("-" * (width + 14))
    for k, v in rows:
        print(f"{k:<{width}}  {fmt(v):>12}")


def _config(args: argparse.Namespace, overrides: list[str]):
    """The config and the corpus checked before the seconds of importing torch, transformers and
    MLflow: a mistyped key, range or path gets its one sentence at once."""
    from gpt2ft.config import load_config
    from gpt2ft.gutenberg import read_bytes, resolve_corpus_path
    from gpt2ft.prose import decode

    config = load_config(args.config, overrides)
    path = resolve_corpus_path(config.data, args.corpus)
    decode(read_bytes(path), str(path))  # missing, a folder, unreadable, binary or empty: a UserError
    return config


def cmd_train(args: argparse.Namespace) -> int:
    config = _config(args, args.overrides)
    from gpt2ft.assets import compute_references, freeze_long_lived, prepare, run_tags
    from gpt2ft.lora import merged
    from gpt2ft.measure import SAMPLE_METRICS
    from gpt2ft.model import save_model
    from gpt2ft.tracking import Tracker
    from gpt2ft.trial import run_trial

    tracker = Tracker(args.tracking_uri or config.tracking.uri, config.tracking.experiment)
    assets = prepare(config, args.corpus)
    _banner(assets)
    assets = assets.with_references(compute_references(assets))
    refs = assets.references.values
    freeze_long_lived()
    t = time.perf_counter()
    with tracker.run(f"train-{time.strftime('%Y%m%d-%H%M%S')}", tags={**run_tags(assets), "kind": "train"}) as run:
        run.log_params(config.flat())
        run.log_metrics({**refs, **assets.timings, "references_seconds": assets.references.seconds})
        res = run_trial(assets, config.train, run, keep_model=bool(args.save), progress=not args.quiet)
        if args.save:  # a LoRA model's adapters merged, so the folder loads with plain transformers
            save_model(merged(res.model), assets.tokenizer, args.save)
    rows = [("train_loss", res.metrics["train_loss"]), ("heldout_loss", res.metrics["heldout_loss"]),
            ("heldout_perplexity", res.metrics["heldout_perplexity"])]
    rows += [(k, res.metrics[k]) for k in SAMPLE_METRICS if k in res.metrics]
    rows += [(k, res.metrics[k]) for k in ("extractable_rate", "extractable_rate_heldout") if k in res.metrics]
    rows += [(k, v) for k, v in refs.items() if k.split("_", 1)[1] in ("top100_ratio", "memorization")
             or k == "style_classifier_accuracy"]
    print_table(rows, f"run {run.id} ({time.perf_counter() - t:.1f} s, {res.fit.steps} steps) "
                f"in {tracker.uri}")
    return 0


def _banner(assets) -> None:
    """The effective numbers, once, before any work (after run_clm_no_trainer)."""
    c, d = assets.config, assets.data
    per_epoch = -(-d.train_windows.shape[0] // c.train.batch_size)
    print(f"gpt2ft: model={c.model.name} device={assets.runtime.device} precision={assets.runtime.precision} "
          f"| train windows={d.train_windows.shape[0]}x{d.block_size} held-out={d.heldout_windows.shape[0]} "
          f"| batch={c.train.batch_size} steps/epoch={per_epoch} epochs={c.train.epochs} "
          f"max_steps={c.train.max_steps} | corpus sha256={assets.book.sha256[:12]}", file=sys.stderr)


def cmd_study(args: argparse.Namespace) -> int:
    """Set up once (or load the setup cache), then run the trials here (``--jobs 1``), or in N
    worker processes that load the same cache; the final re-measure, the artifacts and the
    parent run's end happen here, once, after every worker."""
    config = _config(args, _study_overrides(args))
    from gpt2ft.assets import freeze_long_lived, run_tags
    from gpt2ft.cache import setup
    from gpt2ft.checkpoints import Checkpoints
    from gpt2ft.coordination import default_storage, open_storage, trials_complete
    from gpt2ft.study import StudyRunner, open_parent
    from gpt2ft.summary import trained
    from gpt2ft.tracking import Tracker, store_folder
    from gpt2ft.urls import mask_url
    from gpt2ft.workers import become_worker, resolve_jobs

    worker = args.worker_index is not None
    if worker:
        become_worker()
    tracker = Tracker(args.tracking_uri or config.tracking.uri, config.tracking.experiment)
    folder = store_folder(tracker.uri)
    storage_url = config.study.storage or default_storage(folder)
    open_storage(storage_url)  # fail fast on a bad URL, before the expensive loading
    done = 0 if worker else trials_complete(storage_url, config.study.name)  # a resume pays for the rest only
    check = None if worker else (lambda a: _refuse_long_cpu_study(a, args.yes, done))  # asked once, not per worker
    ready = setup(config, args.corpus, folder, before_references=check)
    print(f"gpt2ft: setup {ready.seconds:.1f} s ({'cache hit' if ready.hit else 'computed and cached'}: "
          f"{folder / 'cache' / ready.key})", file=sys.stderr, flush=True)
    assets = ready.assets
    if not worker:
        _banner(assets)
    freeze_long_lived()
    checkpoints = Checkpoints(folder / "checkpoints" / config.study.name, config.study.keep_checkpoints)
    runner = StudyRunner(config, storage_url, tracker, assets, checkpoints, progress=not args.quiet,
                         command_id=args.command_id)
    open_parent(runner, run_tags(assets))
    if worker:
        runner.run_trials(config.study.timeout)  # the parent run and the pick stay the supervisor's
        if runner.gave_up:
            raise TrialsFailing(runner.gave_up)
        return 0
    _log_setup(runner.parent, ready)
    done = sum(t.state.name == "COMPLETE" for t in trained(runner.study.get_trials(deepcopy=False)))
    # A worker costs a process start (imports: seconds): none for slots that are already filled.
    jobs = max(1, min(resolve_jobs(config.study.jobs, assets), config.study.n_trials - done))
    t = time.perf_counter()
    died = _run_study(runner, args, jobs)
    print(f"\nstudy {config.study.name!r}: {time.perf_counter() - t:.0f} s in this run with {jobs} "
          f"worker{'s' if jobs > 1 else ''}; setup {ready.seconds:.1f} s; "
          f"storage {mask_url(storage_url)}; MLflow {mask_url(tracker.uri)}")
    _print_outcome(runner.study)
    print(f"\nbrowse it: `make ui`, then {tracker.ui_url()}")
    if runner.gave_up:
        raise TrialsFailing(runner.gave_up)
    if died:
        raise WorkerDied(died)
    return 0


def _log_setup(parent, ready) -> None:
    """The setup's cost and what of the book was not trained on, on the study's parent run."""
    from gpt2ft.prose import dropped_text

    prose = ready.assets.book.prose
    parent.log_metrics({"setup_seconds": ready.seconds, "setup_cache_hit": float(ready.hit),
                        "prose_chars": prose.prose_chars, "dropped_chars": prose.dropped_chars})
    parent.log_text(dropped_text(prose), "dropped.txt")


def _run_study(runner, args: argparse.Namespace, jobs: int) -> Optional[str]:
    """The trials (here, or in ``jobs`` workers), the final pick and artifacts; the parent run
    ends FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED (also, with its ``failure_reason``, when
    the trials kept failing: ``runner.gave_up``). Returns one sentence naming the workers that
    died, if any: the others took their slots, and the finish ran all the same."""
    from gpt2ft.study import give_up_message, log_study_artifacts
    from gpt2ft.summary import trained
    from gpt2ft.workers import check_codes, supervise

    died, short = None, False
    try:
        if jobs == 1:
            runner.run(runner.config.study.timeout)
        else:
            outcome = check_codes(supervise([_worker_argv(args, i, runner.command_id) for i in range(jobs)]))
            done = sum(t.state.name == "COMPLETE" for t in trained(runner.study.get_trials(deepcopy=False)))
            if outcome.died:
                short = done < runner.n_trials  # the others could not fill its slots: the parent run FAILED
                died = (f"{outcome.died}; the study has {done} of {runner.n_trials} trials complete, "
                        + ("run the same command again" if short else "picked and logged"))
            if outcome.gave_up and done < runner.n_trials:  # no other worker filled the slots
                runner.gave_up = give_up_message(runner.study, runner.config.study.max_failures)
            runner.finish()
        log_study_artifacts(runner)
    except KeyboardInterrupt:
        runner.parent.end("KILLED")
        raise
    except BaseException:
        runner.parent.end("FAILED")
        raise
    if died:
        runner.parent.set_tags({"worker_died": died})
    if runner.gave_up:
        runner.parent.set_tags({"failure_reason": runner.gave_up})
    runner.parent.end("FAILED" if runner.gave_up or short else "FINISHED")
    return died


def _worker_argv(args: argparse.Namespace, index: int, command_id: str) -> list[str]:
    """The command line of worker ``index``: this study's options, one job, no questions."""
    argv = ["study", "--jobs", "1", "--worker-index", str(index), "--command-id", command_id, "--yes", "--quiet",
            "--config", args.config]  # required by the study command
    for item in _study_overrides(args):
        argv += ["--set", item]
    for option in ("corpus", "tracking_uri"):
        if getattr(args, option):
            argv += [f"--{option.replace('_', '-')}", getattr(args, option)]
    return argv


def _print_outcome(study) -> None:
    from gpt2ft.summary import summarize

    summary = summarize(study)
    print_trials(summary)
    print_candidates(summary)
    if summary.selected is not None:
        conf = "".join(f", selected_p_closer_by_{by} {p:.2f}" for by, p in (("top100", summary.p_closer_by_top100),
                       ("style_prob", summary.p_closer_by_style_prob)) if math.isfinite(p))
        conf = f" ({conf[2:]})" if conf else ""
        print(f"\nselected: trial {summary.pick.number} at step {summary.pick.step}{conf} — {summary.pick.reason}")
        print_before_after(summary)
    elif summary.pick is not None:
        print(f"\nselected: none — {summary.pick.reason}")


def _study_overrides(args: argparse.Namespace) -> list[str]:
    """The study options as config overrides, so the config stays the one source."""
    overrides = list(args.overrides)
    for option, key in (("study_name", "name"), ("n_trials", "n_trials"), ("timeout", "timeout"),
                        ("storage", "storage"), ("jobs", "jobs")):
        if getattr(args, option) not in (None, ""):
            overrides.append(f"study.{key}={getattr(args, option)}")
    return overrides


def _refuse_long_cpu_study(assets, yes: bool, done: int = 0) -> None:
    """On a CPU, time one training step, say what the study's training will cost, and refuse more
    than an hour unless --yes. Decided by the estimate whatever the model: SmolLM2 on the whole
    book is a day here, the tiny test configs are seconds. A resumed study with ``done`` trials
    complete counts only the trials left."""
    from gpt2ft.train import seconds_per_step

    config = assets.config
    left = config.study.n_trials - done
    if assets.runtime.device.type != "cpu" or left <= 0:
        return
    step = seconds_per_step(assets.fresh_model(), config.train, assets.data.train_windows, assets.runtime)
    hours = step * study_steps(assets.data.train_windows.shape[0], config) * left / config.study.n_trials / 3600
    trials = f"{left} of {config.study.n_trials} trials left" if done else f"{config.study.n_trials} trials"
    msg = (f"no GPU: this study's training ({trials} of {config.model.name}) takes about "
           f"{duration(hours * 3600)} on this CPU (one step timed: {step:.2g} s; measurements add to it)")
    if hours > 1 and not yes:
        raise UserError(msg + "; try `make study-cpu` (experiments/cpu_small.yaml) for a run of minutes, or pass "
                        "--yes to run it anyway.")
    print(f"gpt2ft: {msg}.", file=sys.stderr)


def study_steps(n_windows: int, config) -> float:
    """Optimizer steps of a whole study, in steps of ``train.batch_size`` (the one timed): the
    mean epoch count of the search, each batch size alike, capped at ``train.max_steps``."""
    space = config.study
    mean_epochs = (space.epochs.low + space.epochs.high) / 2
    per_trial = []
    for b in space.batch_size:
        steps = -(-n_windows // b) * mean_epochs
        if config.train.max_steps is not None:
            steps = min(steps, config.train.max_steps)
        per_trial.append(steps * b / config.train.batch_size)  # a step's time grows with its batch
    return space.n_trials * sum(per_trial) / len(per_trial)


# A terminal is 120 columns: the printed tables keep the columns a pick is read by; trials.csv
# and candidates.csv on the study's run hold every column.
_TRIAL_COLUMNS = ("number", "state", "lr", "epochs", "batch_size", "goldfish_k", "lora_r", "top100_ratio",
                  "memorization", "best_heldout_loss", "style_prob", "selected")
_CANDIDATE_COLUMNS = ("number", "step", "epoch", "goldfish_k", "lora_r", "top100_ratio", "memorization",
                      "near_verbatim", "extractable_rate", "discoverable_rate", "mia_auc", "heldout_loss", "n_samples",
                      "pick", "out_by")
# why_not's judges, as the short word the table has room for (said under the table).
_JUDGE_WORDS = {"memorization": "mem", "near_verbatim": "words", "extractable_rate": "ext",
                "discoverable_rate": "disc", "mia_auc": "mia", "heldout_loss": "loss", "degenerate": "degen"}


def print_trials(summary) -> None:
    """The trial table as a person reads it (every column: trials.csv)."""
    df = summary.table
    if df.empty:
        print("no trials.")
        return
    cols = [c for c in _TRIAL_COLUMNS if c in df.columns]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def print_candidates(summary) -> None:
    """Every measured point: its numbers, whether it is eligible and which judges exclude it."""
    c = summary.candidates
    if c.empty:
        return
    c = c.assign(pick=["selected" if s else "eligible" if e else "out" for s, e in zip(c["selected"], c["eligible"])],
                 out_by=[_judges(w) for w in c.get("why_not", [""] * len(c))])
    cols = [k for k in _CANDIDATE_COLUMNS if k in c.columns]
    from gpt2ft.judges import JUDGE_METRICS
    bounds = ", ".join(f"{JUDGE_METRICS[j]} <= {b:.4g}" for j, b in summary.bounds.by_judge().items()
                       if math.isfinite(b))
    print(f"\ncandidates (bounds: {bounds}; all columns: candidates.csv)")
    print(c[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if c["out_by"].astype(bool).any():
        print("out_by: mem = memorization, words = near_verbatim, ext = extractable_rate, disc = discoverable_rate,\n"
              "        mia = mia_auc, loss = heldout_loss over its bound; degen = degenerate samples")


def _judges(why_not) -> str:
    """'memorization 0.03 > 0.02; heldout_loss 4.9 > 4.1' -> 'mem,loss'."""
    if not isinstance(why_not, str) or not why_not.strip():
        return ""
    words = [part.strip().split(" ")[0] for part in why_not.split(";") if part.strip()]
    return ",".join(_JUDGE_WORDS.get(w.rstrip(":"), w.rstrip(":")) for w in words)


def print_before_after(summary) -> None:
    """Base model (before) against the selected candidate (after), beside the book itself."""
    refs, (number, step) = summary.references, summary.selected
    after = summary.candidate(number, step)
    head = f"after ({number}@{step})"
    print(f"\n{'metric':<18}{'before (base)':>15}{head:>18}{'book (held-out)':>17}")
    for k in ("top100_ratio", "heldout_loss", "memorization", "near_verbatim", "extractable_rate",
              "discoverable_rate", "extraction_log10p", "mia_auc", "fluency_ppl", "style_js", "style_prob"):
        if k in after or f"base_{k}" in refs:
            print(f"{k:<18}{refs.get('base_' + k, math.nan):>15.4f}{after.get(k, math.nan):>18.4f}"
                  f"{refs.get('book_' + k, math.nan):>17.4f}")


def cmd_export(args: argparse.Namespace) -> int:
    from gpt2ft.export import export_cli
    return export_cli(args)


def cmd_references(args: argparse.Namespace) -> int:
    config = _config(args, args.overrides)
    from gpt2ft.assets import REFERENCE_SOURCES, compute_references, prepare
    from gpt2ft.measure import MODEL_METRICS, SAMPLE_METRICS

    assets = prepare(config, args.corpus)
    refs = compute_references(assets, with_base=not args.no_base).values
    names = list(SAMPLE_METRICS + MODEL_METRICS)
    header = f"{'metric':<26}" + "".join(f"{p:>12}" for p in REFERENCE_SOURCES)
    print(header)
    for m in names:
        print(f"{m:<26}" + "".join(f"{fmt(refs.get(f'{p}_{m}', float('nan'))):>12}" for p in REFERENCE_SOURCES))
    if "style_classifier_accuracy" in refs:
        print(f"\nstyle classifier held-out accuracy: {refs['style_classifier_accuracy']:.3f}")
    for p, what in REFERENCE_SOURCES.items():
        print(f"  {p}: {what}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from gpt2ft.config import ModelConfig, TrainConfig
    from gpt2ft.data import encode
    from gpt2ft.generate import sample
    from gpt2ft.model import load_model, load_tokenizer, resolve_runtime

    mc = ModelConfig(name=args.model)
    tok = load_tokenizer(mc)
    model = load_model(mc, tok)
    runtime = resolve_runtime(TrainConfig())
    model.to(runtime.device)
    # The metrics' own sampling function, so a person reads what the metrics measured.
    prompt = encode(tok, args.prompt).tolist() if args.prompt else None
    for i, row in enumerate(sample(model, tok, runtime, args.n, args.new_tokens, args.seed,
                                   args.top_k, prompt_ids=prompt)):
        print(f"--- sample {i + 1}\n{args.prompt}{tok.decode(row, skip_special_tokens=True)}\n")
    return 0


def cmd_book(args: argparse.Namespace) -> int:
    """The cleaning alone (no torch): what is kept, what is dropped by kind, where the prose starts."""
    from pathlib import Path

    from gpt2ft.config import DataConfig
    from gpt2ft.gutenberg import resolve_corpus_path
    from gpt2ft.prose import read, summary

    path = resolve_corpus_path(DataConfig(), args.corpus)
    prose, _ = read(path)
    print(summary(prose, str(path)))
    print(f"\nthe prose starts: {prose.text[:200]!r}")
    if args.out:
        Path(args.out).write_text(prose.text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


COMMANDS = {"train": cmd_train, "study": cmd_study, "export": cmd_export,
            "references": cmd_references, "generate": cmd_generate, "book": cmd_book}


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="gpt2ft: %(message)s")
    quiet_libraries()  # before the libraries load: their bars and INFO lines are not ours
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"gpt2ft: error: {exc}", file=sys.stderr)
        return 2
    except (TrialsFailing, WorkerDied) as exc:
        print(f"gpt2ft: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("gpt2ft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
