"""Which renderer writes each generated region, from which committed results files; and which
benchmark renders the report beside each results JSON.

This is the one place that names the JSON behind a README figure. To quote a newer run (say an
engine benchmark on another GPU), point its region's sources here at the new file, then run
`preble bench report`: the headline runs are the first constants below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from . import comparison, cost_models, demo, engine, peer_routers, router_overhead, routing, serving, soak, validation


@dataclass(frozen=True)
class Spec:
    """A region's renderer and the results files (paths from the repository root) it is given,
    in order."""

    render: Callable[..., str]
    sources: tuple[str, ...]


# The runs the top README's engine sentence and the serving README's table quote.
ENGINE_HEADLINE = "results/engine/h200_llama3-8b_4a8cdbb.json"
ENGINE_H200_A9C0070 = "results/engine/h200_llama3-8b_a9c0070.json"  # steps in turn
ENGINE_GEMV = "results/engine/h200_gemv_variants_4a8cdbb.json"  # the decode step's matmuls alone
SERVING_RUNS = ("results/serving/dev_cpu_tiny_base_c72e6e6.json", "results/serving/dev_cpu_tiny.json")  # oldest first
SERVING_GPU = "results/serving/h100_e2e_piecewise_5247459.json"  # the served path beside its engine, on one machine
SERVING_GPU_EAGER = "results/serving/h100_e2e_5247459.json"  # the same lease, prompt steps run eagerly
SERVING_GPU_F9066A3 = "results/serving/h100_e2e_f9066a3.json"  # before piecewise CUDA graphs
SERVING_GPU_038BD89 = "results/serving/h100_e2e_038bd89.json"  # before overlapped engine steps
SERVING_GPU_8EC9FD6 = "results/serving/h100_e2e_8ec9fd6.json"  # before the router's connection and client changes
SERVING_GPU_HTTPTOOLS = "results/serving/h100_e2e_httptools_8ec9fd6.json"  # 8ec9fd6's machine with httptools
SERVING_GPU_SINGLE_CLIENT = "results/serving/h100_single_client_e6734a0.json"  # before the client pool
SOAK = "results/soak/dev_cpu_600s.json"  # the 10-minute chaos soak the soak README quotes

ENGINE = "results/engine/"
ROUTING = "results/routing/"
VALIDATION = "results/validation/"
COMPARISON = "results/comparison/"
COST_MODELS = "results/cost_models/"
DEMO = "results/demo_cpu.json"
ROUTER_DEV = "results/router_overhead_dev_6869a86.json"  # the development machine, newest: the backlog term on
ROUTER_DEV_IDLE = "results/router_overhead_dev_idle_d32dee0.json"  # ... with few requests in flight (idle workers)
ROUTER_DEV_24F80D3 = "results/router_overhead_dev_24f80d3.json"  # with the backlog terms (off)
ROUTER_DEV_E9B8112 = "results/router_overhead_dev_e9b8112.json"  # after the eviction term (off) and E2's shared curve
ROUTER_DEV_9DE29FB = "results/router_overhead_dev.json"  # the headline until 6869a86
ROUTER_DEV_IDLE_9DE29FB = "results/router_overhead_dev_idle.json"
ROUTER_DEV_62E23D5 = "results/router_overhead_dev_62e23d5.json"  # the same host name, a slower day
ROUTER_DEV_IDLE_62E23D5 = "results/router_overhead_dev_idle_62e23d5.json"
ROUTER_AB = "results/router_overhead_ab.json"  # the default now against an earlier commit, one process (router_ab.py)
ROUTER_AB_IDLE = "results/router_overhead_ab_idle.json"  # ... with few requests in flight
ROUTER_DEV_6DB255C = "results/router_overhead_dev_6db255c.json"  # the default with its copy credit, first
ROUTER_DEV_IDLE_6DB255C = "results/router_overhead_dev_idle_6db255c.json"
ROUTER_DEV_049E7FF = "results/router_overhead_dev_049e7ff.json"
ROUTER_DEV_15C9F6B = "results/router_overhead_dev_15c9f6b.json"  # the default before its copy credit, same hour
ROUTER_DEV_6698A2B = "results/router_overhead_dev_6698a2b.json"
ROUTER_DEV_FDDA77A = "results/router_overhead_dev_fdda77a.json"
ROUTER_BOX = "results/router_overhead.json"  # the GPU box's CPU, newest
ROUTER_BOX_6CCBFA4 = "results/router_overhead_6ccbfa4.json"
PEERS = "results/peer_routers/cpu_smollm2-135m_3workers.json"
PEERS_HEALTH5 = "results/peer_routers/cpu_smollm2-135m_3workers_preble_health5.json"
MOONCAKE_BREAKDOWN = ROUTING + "mooncake_breakdown.json"  # the findings, at e51d39b
MOONCAKE_BREAKDOWN_D3150B3 = ROUTING + "mooncake_breakdown_d3150b3.json"  # the same points re-run
MOONCAKE_CAPACITY = ROUTING + "mooncake_capacity.json"
MOONCAKE_REUSE = ROUTING + "mooncake_reuse.json"  # the trace's prompt tokens any placement could reuse
ABLATION_GRID = ROUTING + "grid_paper_ablation.json"
WORST_POINTS = ROUTING + "worst_points.json"
REPLICA_TRIAL = ROUTING + "replica_trial.json"
EVICTION_TRIAL = ROUTING + "eviction_trial.json"
BACKLOG_TRIAL = ROUTING + "backlog_trial.json"
BACKLOG_FLEET_TRIAL = ROUTING + "backlog_fleet_trial.json"
BACKLOG_FLEET_TRIAL_8_SEEDS = ROUTING + "backlog_fleet_trial_8_seeds.json"
SEEDS_GRID = ROUTING + "grid_h200_2_seeds.json"  # the 2-replica grid's loads with 3 seeds
SEEDS_GRID_64 = ROUTING + "grid_h200_64_seeds.json"  # the 64-replica grid's loads with 3 seeds
SEEDS_GRID_32 = ROUTING + "grid_h200_32_seeds.json"  # the 32-replica grid's loads with 3 seeds
SEEDS_GRID_4_16 = ROUTING + "grid_h200_4_16_seeds.json"  # the 4/16-replica grid's loads with 3 seeds
SEEDS_GRID_8 = ROUTING + "grid_8_seeds.json"  # the 8-replica grid's loads (both memories) with 3 seeds
# The routing grids in the order prose quotes them: 4 and 16 replicas, 32, 2, 8 (two memories), then 64.
GRIDS = (ROUTING + "grid_h200_4_16_all.json", ROUTING + "grid_h200_32_all.json", ROUTING + "grid_h200_2.json",
         ABLATION_GRID, ROUTING + "grid_h200_64.json")
GRID_FILES = tuple(ROUTING + f + ".json" for f in (
    "grid_h200_4_16", "grid_h200_4_16_rest", "grid_h200_4_16_all", "grid_h200_32", "grid_h200_32_rest",
    "grid_h200_32_all", "mooncake_capacity", "grid_h200_2", "grid_paper_ablation", "grid_h200_toolbench_agent",
    "grid_h200_2_seeds", "ladders_h200_64", "grid_h200_64", "grid_h200_64_seeds", "grid_h200_32_seeds",
    "grid_h200_4_16_seeds", "grid_8_seeds"))
ENGINE_V2, ENGINE_V3, ENGINE_V4, ENGINE_H100 = (ENGINE + f for f in (
    "h100_llama3-8b_7856821.json", "h100_llama3-8b_4ea0de0.json", "h100_llama3-8b.json", "h100_llama3-8b_c65103c.json"))
# Overlapped steps against steps in turn, one lease: the engine benchmark both ways and the decode profile.
ENGINE_OVERLAP_628C560 = tuple(ENGINE + f for f in (
    "h100_llama3-8b_628c560_in_turn.json", "h100_llama3-8b_628c560.json", "h100_decode_profile_628c560.json"))
H100_COMPARISON = (COMPARISON + "h100_llama3-8b.json", COMPARISON + "h100_llama3-8b_loogle.json")

REGIONS: Mapping[str, Spec] = {
    # README.md
    "demo-duration": Spec(demo.duration, (DEMO,)),
    "engine-headline": Spec(engine.headline, (ENGINE_HEADLINE,)),
    "router-headline": Spec(router_overhead.headline, (ROUTER_DEV,)),
    "routing-headline": Spec(routing.headline, (*GRIDS, MOONCAKE_CAPACITY)),
    # results/README.md
    "cost-models": Spec(cost_models.table, tuple(COST_MODELS + f for f in (
        "h100_llama3-8b.json", "h100_mistral-7b.json", "h200_llama3-8b.json", "cpu_smollm2-135m.json",
        "cpu_smollm2-135m_1thread.json"))),
    "cost-models-h200": Spec(cost_models.against, (COST_MODELS + "h100_llama3-8b.json",
                                                   COST_MODELS + "h200_llama3-8b.json")),
    # results/demo_cpu.md
    "demo-table": Spec(demo.table, (DEMO,)),
    # results/router_overhead.md
    "router-overhead-mix": Spec(router_overhead.mix, (ROUTER_DEV,)),
    "router-overhead-dev": Spec(router_overhead.table, (ROUTER_DEV,)),
    "router-overhead-box": Spec(router_overhead.table, (ROUTER_BOX,)),
    "router-overhead-targets": Spec(router_overhead.targets, (ROUTER_DEV, ROUTER_BOX)),
    "router-overhead-statistics": Spec(router_overhead.statistics_cost, (ROUTER_DEV_FDDA77A, ROUTER_DEV_6698A2B)),
    "router-overhead-arrays": Spec(router_overhead.gain, (ROUTER_BOX_6CCBFA4, ROUTER_BOX)),
    "router-overhead-copy-credit": Spec(router_overhead.copy_credit_cost, (ROUTER_DEV_15C9F6B, ROUTER_DEV_6DB255C,
                                                                           ROUTER_DEV_IDLE_6DB255C)),
    "router-overhead-ab": Spec(router_overhead.side_by_side, (ROUTER_AB, ROUTER_AB_IDLE)),
    "router-overhead-runs": Spec(router_overhead.runs, (ROUTER_DEV, ROUTER_DEV_IDLE, ROUTER_DEV_24F80D3, ROUTER_DEV_E9B8112,
                                                        ROUTER_DEV_9DE29FB, ROUTER_DEV_IDLE_9DE29FB, ROUTER_DEV_62E23D5,
                                                        ROUTER_DEV_IDLE_62E23D5, ROUTER_DEV_6DB255C,
                                                        ROUTER_DEV_IDLE_6DB255C, ROUTER_DEV_15C9F6B,
                                                        ROUTER_DEV_049E7FF,
                                                        ROUTER_DEV_6698A2B, ROUTER_DEV_FDDA77A,
                                                        ROUTER_BOX, ROUTER_BOX_6CCBFA4)),
    # results/engine/NOTES.md
    "engine-runs": Spec(engine.runs_table, (ENGINE_V2, ENGINE_V3, ENGINE_V4, ENGINE_H100, ENGINE_H200_A9C0070,
                                            *ENGINE_OVERLAP_628C560[:2], ENGINE_HEADLINE)),
    "engine-targets": Spec(engine.targets_table, (ENGINE_HEADLINE, ENGINE_OVERLAP_628C560[1], ENGINE_H200_A9C0070,
                                                  ENGINE_H100, ENGINE_V4)),
    "engine-gemv": Spec(engine.gemv, (ENGINE_GEMV, ENGINE_HEADLINE)),
    "engine-overlap-628c560": Spec(engine.overlap, ENGINE_OVERLAP_628C560),
    "engine-split": Spec(engine.split, (ENGINE_V3, ENGINE_V4, ENGINE_H100)),
    "radix-evict": Spec(engine.radix_table, (ENGINE + "radix_evict_e10bfd7.json", ENGINE + "radix_evict.json")),
    # results/routing/README.md
    "routing-files": Spec(routing.files, GRID_FILES),
    "routing-breakdown": Spec(routing.breakdown, (MOONCAKE_BREAKDOWN,)),
    "routing-breakdown-e2": Spec(routing.breakdown_e2, (MOONCAKE_BREAKDOWN,)),
    "routing-breakdown-d3150b3": Spec(routing.breakdown, (MOONCAKE_BREAKDOWN_D3150B3,)),
    "routing-breakdown-e2-d3150b3": Spec(routing.breakdown_e2, (MOONCAKE_BREAKDOWN_D3150B3,)),
    "routing-grids": Spec(routing.grids, GRIDS),
    "routing-peers": Spec(routing.peers, GRIDS),
    "routing-knee": Spec(routing.knee_gains, GRIDS),
    "routing-ablation": Spec(routing.ablation, (ABLATION_GRID,)),
    "routing-worst": Spec(routing.worst_points, (WORST_POINTS,)),
    "routing-replica-trial": Spec(routing.policy_trial, (REPLICA_TRIAL,)),
    "routing-eviction-trial": Spec(routing.policy_trial, (EVICTION_TRIAL,)),
    "routing-backlog-trial": Spec(routing.policy_trial, (BACKLOG_TRIAL,)),
    "routing-backlog-fleet-trial": Spec(routing.policy_trial, (BACKLOG_FLEET_TRIAL,)),
    "routing-backlog-fleet-trial-8-seeds": Spec(routing.policy_trial, (BACKLOG_FLEET_TRIAL_8_SEEDS,)),
    "routing-seeds": Spec(routing.grids, (ROUTING + "grid_h200_2.json", SEEDS_GRID)),
    "routing-seed-spread": Spec(routing.seed_spread, (SEEDS_GRID,)),
    "routing-seeds-64": Spec(routing.grids, (ROUTING + "grid_h200_64.json", SEEDS_GRID_64)),
    "routing-seed-spread-64": Spec(routing.seed_spread, (SEEDS_GRID_64,)),
    "routing-seeds-32": Spec(routing.grids, (ROUTING + "grid_h200_32_all.json", SEEDS_GRID_32)),
    "routing-seed-spread-32": Spec(routing.seed_spread, (SEEDS_GRID_32,)),
    "routing-seeds-4-16": Spec(routing.grids, (ROUTING + "grid_h200_4_16_all.json", SEEDS_GRID_4_16)),
    "routing-seed-spread-4-16": Spec(routing.seed_spread, (SEEDS_GRID_4_16,)),
    "routing-seeds-8": Spec(routing.grids, (ROUTING + "grid_paper_ablation.json", SEEDS_GRID_8)),
    "routing-seed-spread-8": Spec(routing.seed_spread, (SEEDS_GRID_8,)),
    "routing-capacity": Spec(routing.capacity, (MOONCAKE_CAPACITY,)),
    "routing-reuse-bound": Spec(routing.reuse_bound, (MOONCAKE_REUSE, *GRIDS)),
    "routing-shared": Spec(routing.shared_prefixes, (MOONCAKE_CAPACITY, GRIDS[0])),
    # results/comparison/README.md
    "comparison-h100-verdicts": Spec(comparison.verdicts, H100_COMPARISON),
    "comparison-h100-knees": Spec(comparison.knees, H100_COMPARISON),
    "comparison-h200-knees": Spec(comparison.knees, (COMPARISON + "h200_llama3-8b.json",)),
    # results/validation/README.md
    "validation-h100": Spec(validation.by_rate, tuple(VALIDATION + f"h100_llama3-8b_rate{r}.json" for r in (4, 12, 20))),
    "validation-h200": Spec(validation.by_rate, tuple(VALIDATION + f"h200_llama3-8b_rate{r}.json" for r in (12, 20))),
    "validation-cpu": Spec(validation.metrics, (VALIDATION + "cpu_smollm2-135m_2workers_rate1.json",)),
    # results/peer_routers/README.md
    "peer-routers": Spec(peer_routers.mean_latency, (PEERS,)),
    "peer-routers-health5": Spec(peer_routers.mean_latency, (PEERS_HEALTH5, PEERS)),
    "peer-routers-e2": Spec(peer_routers.e2_against, (PEERS, PEERS_HEALTH5)),
    # results/serving/README.md
    "serving-dev-cpu": Spec(serving.table, SERVING_RUNS),
    "serving-dev-cpu-hops": Spec(serving.hops, (SERVING_RUNS[-1],)),
    "serving-gpu": Spec(serving.against_engine, (SERVING_GPU,)),
    "serving-gpu-hops": Spec(serving.hops, (SERVING_GPU,)),
    "serving-gpu-hops-runs": Spec(serving.hops_side_by_side, (SERVING_GPU_8EC9FD6, SERVING_GPU_038BD89,
                                                              SERVING_GPU_F9066A3, SERVING_GPU_EAGER, SERVING_GPU)),
    "serving-gpu-eager": Spec(serving.against_engine, (SERVING_GPU_EAGER,)),
    "serving-gpu-f9066a3": Spec(serving.against_engine, (SERVING_GPU_F9066A3,)),
    "serving-gpu-038bd89": Spec(serving.against_engine, (SERVING_GPU_038BD89,)),
    "serving-gpu-8ec9fd6": Spec(serving.against_engine, (SERVING_GPU_8EC9FD6,)),
    "serving-gpu-httptools": Spec(serving.variant, (SERVING_GPU_8EC9FD6, SERVING_GPU_HTTPTOOLS)),
    "serving-gpu-single-client": Spec(serving.against_engine, (SERVING_GPU_SINGLE_CLIENT,)),
    # results/soak/README.md
    "soak-summary": Spec(soak.summary, (SOAK,)),
}

# A results JSON matching the pattern has its report (the `.md` beside it, where there is one)
# rendered by `preble.bench.<module>.markdown`, the function its benchmark wrote it with.
REPORTS: tuple[tuple[str, str], ...] = (
    ("results/engine/*.json", "engine"),
    ("results/serving/*.json", "serving"),
    ("results/validation/*.json", "validate"),
    ("results/comparison/*.json", "compare_report"),
    ("results/routing/*.json", "grid"),
    ("results/peer_routers/*.json", "peer_routers"),
    ("results/soak/*.json", "soak"),
)
