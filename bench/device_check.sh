#!/usr/bin/env bash
# The one GPU command, run by the device tool on its bare, offline image (docs/gpu.md):
#   bash bench/device_check.sh OUT_DIR [bench/gpu.py's options, e.g. --cpu-check]
# It installs the carried wheels (.carry/wheels, from make device-pack) into a target folder (--no-index:
# no network; --no-deps: the image holds the rest), checks every import and version floor in seconds
# (bench/device_imports.py: a missing wheel stops it here, not minutes into the study), then runs
# bench/gpu.py's checks on the carried book into OUT_DIR/gpu_check.json, each part printing its seconds.
# GPT2FT_CARRY and GPT2FT_SITE move the carried folder and the install target (bench/rehearse.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ -z "$1" ]; then
  echo "device_check: give the folder for gpu_check.json: bash bench/device_check.sh OUT_DIR" >&2
  exit 2
fi
out=$1; shift
carry=${GPT2FT_CARRY:-.carry}
site=${GPT2FT_SITE:-/tmp/gpt2ft-site}
py=${PYTHON:-python3}
start=$SECONDS
part() { echo "device_check: $1 ($((SECONDS - start)) s so far)" >&2; }

shopt -s nullglob
wheels=("$carry"/wheels/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
  echo "device_check: no wheels in $carry/wheels: run make device-pack here and name $carry in carry" >&2
  exit 2
fi
if [ ! -f "$carry/data/gulliver.txt" ]; then
  echo "device_check: no book at $carry/data/gulliver.txt: run make device-pack here" >&2
  exit 2
fi
t=$SECONDS
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}"
part "installed ${#wheels[@]} wheels into $site in $((SECONDS - t)) s"
export PYTHONPATH="$site:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# the style classifier's novels, next to the book as gpu.study_config looks for them
export GPT2FT_OTHER_CORPORA="$PWD/$carry/data/other"

t=$SECONDS
"$py" bench/device_imports.py
part "imports checked in $((SECONDS - t)) s"

mkdir -p "$out"
t=$SECONDS
rc=0
"$py" bench/gpu.py --corpus "$carry/data/gulliver.txt" --out-dir "$out" "$@" || rc=$?
part "gpu checks ended (exit $rc) in $((SECONDS - t)) s"
exit $rc
