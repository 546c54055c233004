#!/usr/bin/env bash
# One run on a GPU machine for the serving path. Steps (STEPS, in order; default all):
#   serving   `preble bench serving` (Llama-3-8B shape, random weights: router + worker against
#             the engine in-process)
#   serving-eager  the same with prompt steps run eagerly (no piecewise CUDA graphs) in both halves
#   tests     the GPU tests (GPU_TESTS: which files; default all of tests/gpu)
#   asyncio   the served half again with uvloop hidden (uvicorn falls back to asyncio): what
#             uvloop, which the GPU image has, buys
#   h11       the served half again with httptools hidden (uvicorn falls back to h11): what httptools,
#             a dependency (carried in .whl/), buys
#   engine    the engine benchmark
#   engine-in-turn  the engine benchmark with steps in turn (--no-overlap): what overlap buys
#   profile   wall time against device busy time per decode step, both ways, and the top kernels
#   gemv      the decode step's matmuls alone, as the engine runs them and in two other forms
#   prefill-profile  a lone request's first token: host phases, device busy time, kernel launches,
#             and its forward pass eager against a CUDA graph replay
# Results and logs under $OUT; each step has its own time limit.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
STEPS=${STEPS:-serving tests asyncio h11 engine engine-in-turn profile gemv}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import uvloop; print('uvloop', uvloop.__version__)" 2>&1 | tail -1

report() {  # a step's report, or the end of its log when it wrote none
  if [ -f "$1" ]; then cat "$1"; else echo "no $1; end of $2:"; tail -40 "$2"; fi
}

served_only() {  # name, extra PYTHONPATH: the served half of the benchmark only
  PYTHONPATH=$2:$PYTHONPATH timeout 150 python3 -m preble.cli bench serving --no-in-process \
    --out "$OUT/serving_$1.json" > "$OUT/serving_$1.log" 2>&1
  report "$OUT/serving_$1.md" "$OUT/serving_$1.log"
}

for step in $STEPS; do
  echo "== $step $(date +%T)"
  case $step in
    serving)
      timeout 300 python3 -m preble.cli bench serving --out "$OUT/serving.json" --server-log "$OUT/serve.log" \
        > "$OUT/serving.log" 2>&1
      report "$OUT/serving.md" "$OUT/serving.log" ;;
    serving-eager)
      timeout 300 python3 -m preble.cli bench serving --piecewise-graph-max-tokens 0 \
        --out "$OUT/serving_eager.json" > "$OUT/serving_eager.log" 2>&1
      report "$OUT/serving_eager.md" "$OUT/serving_eager.log" ;;
    tests)
      timeout 420 python3 -m pytest ${GPU_TESTS:-tests/gpu} -q -x -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -8 ;;
    asyncio|h11)
      hidden=$([ "$step" = asyncio ] && echo uvloop || echo httptools)
      mkdir -p "/tmp/no-$hidden"
      echo "raise ImportError('$hidden hidden for this measurement')" > "/tmp/no-$hidden/$hidden.py"
      served_only "$step" "/tmp/no-$hidden" ;;
    engine|engine-in-turn)
      flag=$([ "$step" = engine ] && echo --overlap || echo --no-overlap)
      timeout 300 python3 -m preble.cli bench engine $flag --out "$OUT/$step.json" > "$OUT/$step.log" 2>&1
      report "$OUT/$step.md" "$OUT/$step.log" ;;
    gemv)
      timeout 240 python3 scripts/gemv_variants.py --out "$OUT/gemv_variants.json" 2>&1 | tail -25 ;;
    prefill-profile)
      timeout 300 python3 scripts/profile_prefill.py --out "$OUT/prefill_profile.json" > "$OUT/prefill_profile.log" 2>&1
      head -12 "$OUT/prefill_profile.log"; grep -A20 "top host operators" "$OUT/prefill_profile.log" ;;
    profile)
      timeout 300 python3 scripts/profile_decode.py --out "$OUT/decode_profile.json" > "$OUT/profile.log" 2>&1
      head -8 "$OUT/profile.log" ;;
  esac
done
echo "== done $(date +%T)"
