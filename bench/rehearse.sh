#!/usr/bin/env bash
# The GPU machine's command rehearsed on this CPU (make device-rehearse; docs/gpu.md): a fresh virtualenv
# holding only what the device image holds that the study touches, plus the carried wheels installed as the
# device installs them, then bench/device_check.sh --cpu-check; nothing of .venv is used, so a wheel that
# make device-pack forgot fails here first. Here Python is 3.11 and torch 2.13's CPU build (the device:
# 3.12, torch 2.11), so the wheels are fetched for 3.11; device_imports.py checks the device's torch there.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
dir=.rehearse
start=$SECONDS
part() { echo "rehearse: $1 ($((SECONDS - start)) s so far)" >&2; }

"$py" bench/device_pack.py --python-version "$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
  --dest "$dir/carry" >&2
part "wheels and books packed into $dir/carry"
rm -rf "$dir/venv" "$dir/site" "$dir/out"
"$py" -m venv "$dir/venv"
# the image's packages the study reaches (setup.cfg's requirements the wheels do not bring)
"$dir/venv/bin/pip" install -q torch==2.13.0 transformers==5.17.0 packaging tokenizers safetensors \
  scikit-learn seaborn matplotlib pandas numpy pyyaml tqdm peft==0.22.0 $(cat "$dir/carry/from-image.txt")
part "fresh venv with the image's packages ($("$dir/venv/bin/pip" list 2>/dev/null | tail -n +3 | wc -l) installed)"
PYTHON="$dir/venv/bin/python" GPT2FT_CARRY="$dir/carry" GPT2FT_SITE="$dir/site" \
  bash bench/device_check.sh "$dir/out" --cpu-check "$@"
part "done: $dir/out/gpu_check.json"
