#!/usr/bin/env bash
# One run on a GPU machine: one replica (Llama-3-8B shape, random weights) against the simulator
# with this GPU's cost model, at a light, a medium and a heavy rate (`preble bench validate --in-process`).
# TAG names the GPU (default h100); COST_MODEL defaults to results/cost_models/$TAG_llama3-8b.json.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
for rate in ${RATES:-4 12 20}; do
  timeout 280 python3 -m preble.cli bench validate --in-process --device cuda --workers 1 \
    --model random:llama3-8b --cost-model "${COST_MODEL:-results/cost_models/${TAG:-h100}_llama3-8b.json}" --num-pages 0 \
    --max-num-batched-tokens 8192 --param groups=16 --param system_len=2048 --param question_len=128 \
    --param output_len=64 --num-requests "${REQUESTS:-300}" --rate "$rate" \
    --out "$OUT/${TAG:-h100}_llama3-8b_rate$rate.json" 2>&1 | grep -v "^\s*$" | tail -14
done
