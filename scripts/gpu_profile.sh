#!/usr/bin/env bash
# One run on a GPU machine: fit the cost model of each random-weight preset on this GPU (`preble profile`).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
for preset in ${PRESETS:-llama3-8b mistral-7b}; do
  timeout 280 python3 -m preble.cli profile --model-config "$preset" --device cuda --out "$OUT/h100_$preset.json" \
    2>&1 | tail -3
done
