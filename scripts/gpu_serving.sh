#!/usr/bin/env bash
# One run on a GPU machine for the serving path: the GPU tests, then `preble bench serving`
# (Llama-3-8B shape, random weights: router + worker against the engine in-process), then the
# same with uvloop and httptools when their wheels are in .whl-fast/ (what they buy), then the
# engine benchmark. Results and logs under $OUT; each step has its own time limit.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 300 python3 -m pytest tests/gpu -q -x -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -8
timeout 300 python3 -m preble.cli bench serving --out "$OUT/serving.json" > "$OUT/serving.log" 2>&1
cat "$OUT/serving.md"
if compgen -G ".whl-fast/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-fast .whl-fast/*.whl
  PYTHONPATH=/tmp/site-fast:$PYTHONPATH timeout 200 python3 -m preble.cli bench serving --no-in-process \
    --out "$OUT/serving_uvloop.json" > "$OUT/serving_uvloop.log" 2>&1
  grep -A12 "^| measure" "$OUT/serving_uvloop.md"
fi
timeout 300 python3 -m preble.cli bench engine --out "$OUT/engine.json" > "$OUT/engine.log" 2>&1
cat "$OUT/engine.md"
