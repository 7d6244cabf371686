"""Check one study that several workers ran at once (scripts/multiworker.sh runs this).

Optuna: exactly ``--n-trials`` COMPLETE trials, no trial number twice, nothing left RUNNING
or FAILED (a PRUNED trial flagged ``surplus`` is a worker that lost the race for the last
slot: counted, not an error). MLflow: exactly one live parent run for the study (the one in
the study's ``mlflow_parent_run_id``), one FINISHED child run per COMPLETE trial (the one in
its ``mlflow_run_id``), no run left RUNNING, exactly one child tagged ``selected=true`` and
it is the study's ``selected`` trial. The database password (read from an environment
variable, never from the command line) must not appear in any run's params, tags or
artifacts, nor in the workers' logs.

Prints one line per check and a summary; exits 1 if any check failed.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from pathlib import Path

import optuna
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from gpt2ft.config import load_config

FAILURES: list[str] = []


def check(ok: bool, what: str, detail: str = "") -> bool:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}" + (f": {detail}" if detail else ""))
    if not ok:
        FAILURES.append(what)
    return ok


def note(what: str) -> None:
    print(f"  [info] {what}")


def scan_artifacts(client: MlflowClient, run_id: str, secret: bytes, dest: Path) -> tuple[int, list[str]]:
    """Download a run's artifacts; return (files scanned, paths containing the secret)."""
    local = Path(client.download_artifacts(run_id, "", str(dest / run_id)))
    files = [p for p in local.rglob("*") if p.is_file()]
    return len(files), [str(p.relative_to(local)) for p in files if secret in p.read_bytes()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage-env", required=True, help="environment variable holding the Optuna storage URL")
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--study-name", required=True)
    ap.add_argument("--n-trials", type=int, required=True)
    ap.add_argument("--config", required=True, help="the workers' config (for the MLflow experiment name)")
    ap.add_argument("--secret-env", required=True, help="environment variable holding the password")
    ap.add_argument("--log", nargs="*", default=[], help="worker logs to scan for the password")
    ap.add_argument("--server-log", help="MLflow server log, scanned for information only")
    args = ap.parse_args(argv)
    secret = os.environ[args.secret_env]
    assert len(secret) >= 8, "the secret must be long enough not to match by chance"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"

    print(f"check study {args.study_name!r}")
    print("Optuna")
    study = optuna.load_study(study_name=args.study_name, storage=os.environ[args.storage_env])
    trials = study.get_trials(deepcopy=False)
    states = collections.Counter(t.state.name for t in trials)
    note("trials by state: " + ", ".join(f"{k}={v}" for k, v in sorted(states.items())))
    # Derived trials (a trained trial's interior epochs, told to Optuna) have no run and no slot.
    complete = [t for t in trials
                if t.state == optuna.trial.TrialState.COMPLETE and "derived_from" not in t.user_attrs]
    check(len(complete) == args.n_trials, f"exactly {args.n_trials} COMPLETE trials", f"{len(complete)}")
    numbers = [t.number for t in trials]
    dup = sorted(n for n, c in collections.Counter(numbers).items() if c > 1)
    check(not dup, "no trial number twice", f"duplicates {dup}" if dup else f"numbers {sorted(numbers)}")
    surplus = [t.number for t in trials if t.user_attrs.get("surplus")]
    note(f"surplus trials (pruned race losers): {len(surplus)}" + (f" {surplus}" if surplus else ""))
    others = [t for t in trials if t.state != optuna.trial.TrialState.COMPLETE and not t.user_attrs.get("surplus")]
    for t in others:
        reason = t.user_attrs.get("fail_reason", "")
        print(f"  [info] trial {t.number} is {t.state.name}" + (f": {reason}" if reason else ""))
    for t in sorted(trials, key=lambda t: t.number):
        values = ", ".join(f"{v:.4g}" for v in t.values) if t.values else "-"
        note(f"trial {t.number}: {t.state.name:8} params {t.params} (style, memorization) = ({values})")
    bad = [t.number for t in others if t.state != optuna.trial.TrialState.PRUNED]
    check(not bad, "no trial RUNNING, WAITING or FAILED", f"{bad}" if bad else "")
    surplus_ok = all(t.state == optuna.trial.TrialState.PRUNED for t in trials if t.user_attrs.get("surplus"))
    check(surplus_ok, "every surplus trial is PRUNED")
    drawn = collections.Counter(tuple(sorted(t.params.items())) for t in trials if t.params)
    same = [dict(k) for k, c in drawn.items() if c > 1]
    check(not same, "no two trials drew the same parameters (workers' samplers differ)", f"{same}" if same else "")
    attrs = study.user_attrs
    claims = [s.study_name for s in optuna.get_all_study_summaries(os.environ[args.storage_env])
              if s.study_name.startswith(args.study_name + ".")]
    check(not claims, "no study beside it (the lock is the database's, not a marker study)",
          f"{claims}" if claims else "")

    print("MLflow")
    client = MlflowClient(tracking_uri=args.tracking_uri)
    experiment = load_config(args.config).tracking.experiment
    exp = client.get_experiment_by_name(experiment)
    if not check(exp is not None, f"experiment {experiment!r} exists"):
        return summary()
    parents = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000,
                                 filter_string=f"tags.`gpt2ft.kind` = 'study' and "
                                               f"attributes.run_name = '{args.study_name}'")
    live = [r for r in parents if r.info.lifecycle_stage == "active"]
    deleted = [r for r in parents if r.info.lifecycle_stage != "active"]
    check(len(live) == 1, "exactly one parent run", f"{len(live)} live, {len(deleted)} deleted")
    if deleted:
        note(f"deleted parent runs (race losers): {[r.info.run_id for r in deleted]}")
    parent = live[0] if live else None
    if parent is not None:
        check(parent.info.run_id == attrs.get("mlflow_parent_run_id"), "the parent is the study's mlflow_parent_run_id")
        check(parent.info.status == "FINISHED", "the parent run is FINISHED", parent.info.status)
    children = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000,
                                  filter_string=f"tags.`gpt2ft.kind` = 'trial' and "
                                                f"tags.`optuna.study` = '{args.study_name}'")
    note(f"child runs: {len(children)} "
         f"({', '.join(f'{k}={v}' for k, v in sorted(collections.Counter(r.info.status for r in children).items()))})")
    by_id = {r.info.run_id: r for r in children}
    check(len(children) == len(complete), "one child run per COMPLETE trial",
          f"{len(children)} runs for {len(complete)} trials")
    mismatched = []
    for t in complete:
        run = by_id.get(t.user_attrs.get("mlflow_run_id"))
        if (run is None or run.data.tags.get("optuna.trial") != str(t.number)
                or run.info.status != "FINISHED" or run.info.lifecycle_stage != "active"
                or parent is None or run.data.tags.get("mlflow.parentRunId") != parent.info.run_id):
            mismatched.append(t.number)
    check(not mismatched, "each COMPLETE trial's mlflow_run_id is a FINISHED child of the parent",
          f"not so for trials {mismatched}" if mismatched else "")
    orphans = sorted(set(by_id) - {t.user_attrs.get("mlflow_run_id") for t in complete})
    check(not orphans, "no child run without a COMPLETE trial", f"{orphans}" if orphans else "")
    running = [r.info.run_id for r in list(parents) + list(children) if r.info.status == "RUNNING"]
    check(not running, "no run left RUNNING", f"{running}" if running else "")
    selected = [r for r in children if r.data.tags.get("selected") == "true"]
    check(len(selected) == 1, "exactly one child tagged selected=true",
          f"trials {[r.data.tags.get('optuna.trial') for r in selected]}")
    if len(selected) == 1:
        check(selected[0].data.tags.get("optuna.trial") == str((attrs.get("selected") or {}).get("trial")),
              "the selected child is the study's selected trial",
              f"trial {attrs.get('selected')}, run {selected[0].info.run_id}")
        if parent is not None:
            check(parent.data.tags.get("selected_run_id") == selected[0].info.run_id,
                  "the parent's selected_run_id tag names it")

    print("Password")
    leaks = []
    for r in list(parents) + list(children):
        for kind, items in (("param", r.data.params), ("tag", r.data.tags)):
            leaks += [f"{r.info.run_id} {kind} {k}" for k, v in items.items() if secret in str(v) or secret in k]
        if secret in (r.info.run_name or ""):
            leaks.append(f"{r.info.run_id} run name")
    check(not leaks, "not in any param or tag of the study's runs", "; ".join(leaks[:5]))
    attr_leaks = [k for k, v in attrs.items() if secret in str(v)]
    check(not attr_leaks, "not in the study's user attrs (export writes config_yaml out)", " ".join(attr_leaks))
    with tempfile.TemporaryDirectory() as tmp:
        n_files, art_leaks = 0, []
        for r in list(live) + [c for c in children if c.info.lifecycle_stage == "active"]:
            n, found = scan_artifacts(client, r.info.run_id, secret.encode(), Path(tmp))
            n_files += n
            art_leaks += [f"{r.info.run_id}/{p}" for p in found]
    check(not art_leaks, f"not in any artifact ({n_files} files)", "; ".join(art_leaks[:5]))
    log_leaks = [p for p in args.log if secret in Path(p).read_text(errors="replace")]
    check(not log_leaks, f"not in the workers' logs ({len(args.log)} files)", " ".join(log_leaks))
    if args.server_log:
        found = secret in Path(args.server_log).read_text(errors="replace")
        note(f"MLflow server log {'CONTAINS' if found else 'does not contain'} the password")
    return summary()


def summary() -> int:
    if FAILURES:
        print(f"check: FAIL ({len(FAILURES)}): " + "; ".join(FAILURES))
        return 1
    print("check: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
