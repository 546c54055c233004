#!/usr/bin/env bash
# Preble's routers against sglang-router and vllm-router in front of the same Preble workers, on a
# GPU machine's cores: WORKERS workers of a random-weight model (PRESET) share its GPU, each pinned
# to cores of its own; the routers and the load generator run on the cores left. Every workload is
# compared at round_robin's knee (climbed first), REPEATS times, REQUESTS requests a run. One
# workload fits a 600 s call (WORKLOADS, default toolbench); `preble bench routers --merge` joins
# the files of several calls.
# The peer routers come from .peer-whl/ (scripts/pack_peer_routers.sh packs sglang-router and
# vllm-router there); without them only Preble's routers run. Results and logs under $OUT.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
if [ -f .peer-whl/peer-routers.tar.xz ]; then
  mkdir -p /tmp/peer/bin && tar -xJf .peer-whl/peer-routers.tar.xz -C /tmp/peer || exit 1
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/peer .peer-whl/*.whl || exit 1
  py=$(command -v python3)
  printf '#!%s\nimport sys\nfrom sglang_router.cli import main\nsys.exit(main())\n' "$py" > /tmp/peer/bin/sglang-router
  printf '#!%s\nimport sys\nfrom vllm_router.launch_router import main\nsys.exit(main())\n' "$py" > /tmp/peer/bin/vllm-router
  chmod +x /tmp/peer/bin/*
  export PYTHONPATH=$PYTHONPATH:/tmp/peer PREBLE_SGLANG_ROUTER=/tmp/peer/bin/sglang-router \
    PREBLE_VLLM_ROUTER=/tmp/peer/bin/vllm-router
fi
name=$(echo "${WORKLOADS:-toolbench}" | tr ',' '_')
python3 -m preble.cli random-model --out /tmp/peer-model --preset "${PRESET:-qwen2.5-0.5b}" || exit 1
timeout "${LIMIT:-540}" python3 -m preble.cli bench routers --model /tmp/peer-model --load-format dummy \
  --device "${DEVICE:-cuda}" --workers "${WORKERS:-4}" --pin-cores --router-cores "${ROUTER_CORES:-4}" \
  --num-pages "${NUM_PAGES:-8192}" --climb-requests "${CLIMB_REQUESTS:-100}" \
  --max-num-batched-tokens 2048 --prefix-cap 0 --max-output-tokens 0 --workloads "${WORKLOADS:-toolbench}" \
  --num-requests "${REQUESTS:-300}" --rate "${RATE:-8}" --climb preble:round_robin --repeats "${REPEATS:-3}" \
  --routers "${ROUTERS:-preble:latency,preble:e2,preble:round_robin,sglang:cache_aware,vllm:cache_aware}" \
  --out "$OUT/peer_routers_$name.json" --log-dir /tmp/peer_routers_logs > "$OUT/peer_routers_$name.log" 2>&1
tar -C /tmp -czf "$OUT/peer_routers_logs_$name.tar.gz" peer_routers_logs  # one file: the machine returns few
tail -60 "$OUT/peer_routers_$name.log"
