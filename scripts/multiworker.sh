#!/usr/bin/env bash
# Two `gpt2ft study` workers on one study at once, the way several machines would run it:
# Optuna's trials in PostgreSQL, MLflow behind a tracking server (backed by PostgreSQL too,
# artifacts uploaded through the server). Then scripts/multiworker_check.py checks that the
# workers shared the study cleanly (n_trials COMPLETE, one parent run, one child run per
# trial, one selected run, no RUNNING leftovers, no password anywhere).
#
# Idempotent, and self-installing for CI (root on a fresh Debian): PostgreSQL from Debian,
# psycopg2-binary into .venv. The role and both databases persist between runs (each run
# uses a new random study name and sets a new random password). The MLflow server, the
# workers and the temporary folder are removed on exit; PostgreSQL is left as it was found
# (stopped again if this script started it; MW_KEEP_PG=1 leaves it running).
#
# Environment: MW_TRIALS (default 4), MW_WORKERS (default 2), MW_CONFIG (default
# experiments/tiny.yaml), GPT2FT_CORPUS (default ../shared/data/gulliver.txt), MW_KEEP=1
# keeps the temporary folder (logs) even on success.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
N_TRIALS="${MW_TRIALS:-4}"
N_WORKERS="${MW_WORKERS:-2}"
CONFIG="${MW_CONFIG:-$ROOT/experiments/tiny.yaml}"
PG_ROLE=gpt2ft_mw
OPTUNA_DB=gpt2ft_mw_optuna
MLFLOW_DB=gpt2ft_mw_mlflow
T0=$SECONDS

say() { printf '[multiworker %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { say "FAIL: $*"; exit 1; }

# --- what this run started, for the trap ------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/gpt2ft-mw.XXXXXX")"
SERVER_PID=""
WORKER_PIDS=()
STARTED_PG=""
PG_VER=""
RESULT=1

# A process that exited but was not yet waited for (a zombie) still answers kill -0.
alive() { local state; read -r _ _ state _ 2>/dev/null <"/proc/$1/stat" && [[ "$state" != Z ]]; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    for pid in "${WORKER_PIDS[@]}"; do
        if alive "$pid"; then say "stopping worker $pid"; kill -TERM "$pid"; fi
    done
    if [[ -n "$SERVER_PID" ]]; then
        # The server runs in its own process group (setsid): end it and its uvicorn workers.
        kill -TERM -- "-$SERVER_PID" 2>/dev/null
        for _ in $(seq 75); do alive "$SERVER_PID" || break; sleep 0.2; done
        kill -KILL -- "-$SERVER_PID" 2>/dev/null  # whatever is left of its group after 15 s
        wait "$SERVER_PID" 2>/dev/null
        say "mlflow server stopped"
    fi
    wait 2>/dev/null
    if [[ -n "$STARTED_PG" && "${MW_KEEP_PG:-0}" != 1 ]]; then
        as_root pg_ctlcluster "$PG_VER" main stop && say "PostgreSQL $PG_VER/main stopped again (this run started it)"
    fi
    if [[ "$RESULT" == 0 && "${MW_KEEP:-0}" != 1 ]]; then
        rm -rf "$TMP"
    else
        say "logs kept in $TMP"
    fi
    if [[ "$RESULT" == 0 ]]; then
        say "PASS ($((SECONDS - T0)) s)"
    else
        say "FAIL ($((SECONDS - T0)) s)"
        [[ $rc == 0 ]] && rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_root() {
    if [[ $EUID == 0 ]]; then "$@"; else sudo -n "$@"; fi
}
as_postgres() {
    if [[ $EUID == 0 ]]; then runuser -u postgres -- "$@"; else sudo -n -u postgres "$@"; fi
}

# --- 1. PostgreSQL from Debian, psycopg2 in the venv ------------------------------------
[[ -x "$PY" ]] || die "$VENV is missing: run \`make install\` first."
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    say "installing PostgreSQL from Debian"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y -q postgresql >"$TMP/apt.log" 2>&1 \
        || { as_root apt-get update -q >>"$TMP/apt.log" 2>&1 && as_root apt-get install -y -q postgresql >>"$TMP/apt.log" 2>&1; } \
        || { tail -20 "$TMP/apt.log"; die "apt-get install postgresql failed"; }
fi
if ! "$PY" -c "import psycopg2" 2>/dev/null; then
    say "installing psycopg2-binary into $VENV"
    "$VENV/bin/pip" install -q psycopg2-binary || die "pip install psycopg2-binary failed"
fi

# The cluster called main of the newest installed version; create it if the package did not.
PG_VER="$(pg_lsclusters -h 2>/dev/null | awk '$2 == "main" {print $1}' | sort -V | tail -1)"
if [[ -z "$PG_VER" ]]; then
    PG_VER="$(ls /usr/lib/postgresql | sort -V | tail -1)"
    [[ -n "$PG_VER" ]] || die "no PostgreSQL server under /usr/lib/postgresql"
    say "creating cluster $PG_VER/main"
    as_root pg_createcluster "$PG_VER" main >/dev/null
fi
if [[ "$(pg_lsclusters -h | awk -v v="$PG_VER" '$1 == v && $2 == "main" {print $4}')" != online ]]; then
    say "starting PostgreSQL $PG_VER/main"
    as_root pg_ctlcluster "$PG_VER" main start || die "pg_ctlcluster $PG_VER main start failed"
    STARTED_PG=1
fi
PG_PORT="$(pg_lsclusters -h | awk -v v="$PG_VER" '$1 == v && $2 == "main" {print $3}')"
for _ in $(seq 30); do
    as_postgres pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break
    sleep 1
done
as_postgres pg_isready -q -h 127.0.0.1 -p "$PG_PORT" || die "PostgreSQL does not answer on 127.0.0.1:$PG_PORT"

# A fresh random password each run (hex: no quoting or URL escaping needed); it goes to
# psql on stdin and to the workers in their environment, never on a command line.
PG_PASS="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
as_postgres psql -q -X -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres >/dev/null <<SQL \
    || die "creating the role and databases failed"
SELECT 'CREATE ROLE $PG_ROLE LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') \gexec
ALTER ROLE $PG_ROLE WITH LOGIN PASSWORD '$PG_PASS';
SELECT 'CREATE DATABASE $OPTUNA_DB OWNER $PG_ROLE' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$OPTUNA_DB') \gexec
SELECT 'CREATE DATABASE $MLFLOW_DB OWNER $PG_ROLE' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$MLFLOW_DB') \gexec
SQL
OPTUNA_URL="postgresql+psycopg2://$PG_ROLE:$PG_PASS@127.0.0.1:$PG_PORT/$OPTUNA_DB"
MLFLOW_DB_URL="postgresql+psycopg2://$PG_ROLE:$PG_PASS@127.0.0.1:$PG_PORT/$MLFLOW_DB"
say "PostgreSQL $PG_VER/main on 127.0.0.1:$PG_PORT: role $PG_ROLE, databases $OPTUNA_DB and $MLFLOW_DB"

# --- 2. the MLflow tracking server ------------------------------------------------------
MLFLOW_PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
TRACKING="http://127.0.0.1:$MLFLOW_PORT"
mkdir -p "$TMP/artifacts" "$TMP/work"
# The store URI travels in MLFLOW_BACKEND_STORE_URI (the option's environment variable) so
# that the password does not show in `ps`. --artifacts-destination: clients upload and read
# artifacts through the server (mlflow-artifacts:/), no shared folder needed. Job execution
# (GenAI jobs, unused here) would start seven more Python processes on these two cores.
# setsid: the server and its uvicorn workers get a process group of their own, whose id
# the pid file records (setsid forks first when the caller already leads a group).
MLFLOW_BACKEND_STORE_URI="$MLFLOW_DB_URL" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' - "$TMP/mlflow-server.pid" \
    "$VENV/bin/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 2 \
    --artifacts-destination "$TMP/artifacts" >"$TMP/mlflow-server.log" 2>&1 &
for _ in $(seq 50); do [[ -s "$TMP/mlflow-server.pid" ]] && break; sleep 0.1; done
SERVER_PID="$(cat "$TMP/mlflow-server.pid")"
say "mlflow server starting on $TRACKING (pid $SERVER_PID)"
for _ in $(seq 180); do
    alive "$SERVER_PID" || { tail -30 "$TMP/mlflow-server.log"; die "mlflow server exited"; }
    if "$PY" - "$TRACKING/health" 2>/dev/null <<'PYEOF'
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
PYEOF
    then break; fi
    sleep 1
done
"$PY" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" "$TRACKING/health" 2>/dev/null \
    || { tail -30 "$TMP/mlflow-server.log"; die "mlflow server not healthy after 180 s"; }
say "mlflow server healthy"

# --- 3. the workers ---------------------------------------------------------------------
CORPUS="${GPT2FT_CORPUS:-$ROOT/../shared/data/gulliver.txt}"
[[ -f "$CORPUS" ]] || die "the book is missing: set GPT2FT_CORPUS (looked at $CORPUS)"
CORPUS="$(cd "$(dirname "$CORPUS")" && pwd)/$(basename "$CORPUS")"
STUDY="mw-$(date +%Y%m%d-%H%M%S)-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
say "study $STUDY: $N_WORKERS workers x up to $N_TRIALS trials of $(basename "$CONFIG")"
W0=$SECONDS
for i in $(seq "$N_WORKERS"); do
    # Each worker runs in the temporary folder, so its ./mlruns (checkpoints) lands there;
    # exec, so that the pid we hold (and may have to stop) is gpt2ft's own.
    (cd "$TMP/work" && exec env -u MLFLOW_TRACKING_URI GPT2FT_CORPUS="$CORPUS" HF_HUB_OFFLINE=1 \
        "$VENV/bin/gpt2ft" study --config "$CONFIG" --yes --quiet \
        --storage "$OPTUNA_URL" --tracking-uri "$TRACKING" \
        --study-name "$STUDY" --n-trials "$N_TRIALS" >"$TMP/worker-$i.log" 2>&1) &
    WORKER_PIDS+=($!)
done
FAILED_WORKERS=0
for i in $(seq "$N_WORKERS"); do
    rc=0
    wait "${WORKER_PIDS[$((i - 1))]}" || rc=$?
    say "worker $i exited with $rc after $((SECONDS - W0)) s"
    if [[ $rc != 0 ]]; then
        FAILED_WORKERS=$((FAILED_WORKERS + 1))
        echo "----- worker $i log (last 40 lines)"; tail -40 "$TMP/worker-$i.log"; echo "-----"
    fi
done
WORKERS_S=$((SECONDS - W0))

# --- 4. the check -----------------------------------------------------------------------
CHECK_RC=0
MW_SECRET="$PG_PASS" MW_OPTUNA_URL="$OPTUNA_URL" "$PY" "$ROOT/scripts/multiworker_check.py" \
    --storage-env MW_OPTUNA_URL --tracking-uri "$TRACKING" --study-name "$STUDY" \
    --n-trials "$N_TRIALS" --config "$CONFIG" --secret-env MW_SECRET \
    --log "$TMP"/worker-*.log --server-log "$TMP/mlflow-server.log" \
    || CHECK_RC=$?

say "workers: $N_WORKERS ran for $WORKERS_S s, $FAILED_WORKERS exited non-zero; check exit $CHECK_RC"
if [[ $FAILED_WORKERS == 0 && $CHECK_RC == 0 ]]; then RESULT=0; fi
