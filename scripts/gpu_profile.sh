#!/usr/bin/env bash
# One run on a GPU machine: fit the cost model of each random-weight preset on this GPU (`preble profile`).
# TAG names the GPU in the output files (default h100).
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
for preset in ${PRESETS:-llama3-8b mistral-7b}; do
  timeout 280 python3 -m preble.cli profile --model-config "$preset" --device cuda --out "$OUT/${TAG:-h100}_$preset.json" \
    2>&1 | tail -3
done
