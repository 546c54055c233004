#!/usr/bin/env bash
# One run on a GPU machine: GPU tests, then the engine benchmark (Llama-3-8B shape, random weights).
# Wheels in .whl/ (e.g. msgspec, for a machine without network) are installed first.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 240 python3 -m pytest tests/gpu -q -x -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
timeout 300 python3 - <<'PY' 2>&1 | tee "$OUT/engine_bench.log" | tail -40
import json, os
from preble.bench.engine import EngineBenchConfig, run, markdown
res = run(EngineBenchConfig())
out = os.environ["OUT"]
open(f"{out}/engine_bench.json", "w").write(json.dumps(res, indent=1))
open(f"{out}/engine_bench.md", "w").write(markdown(res))
print(markdown(res))
PY
timeout 200 python3 scripts/profile_decode.py 2>&1 | tee "$OUT/profile_decode.log" | grep -E "^batch|Self CUDA time total" 
