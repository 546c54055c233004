#!/usr/bin/env bash
# One run on a GPU machine: fit the cost model of each random-weight preset on this GPU (`preble profile`).
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
for preset in ${PRESETS:-llama3-8b mistral-7b}; do
  timeout 280 python3 -m preble.cli profile --model-config "$preset" --device cuda --out "$OUT/h100_$preset.json" \
    2>&1 | tail -3
done
