"""Which renderer writes each generated region, from which committed results files; and which
benchmark renders the report beside each results JSON.

This is the one place that names the JSON behind a README figure: to quote a newer run (say an
engine benchmark on another GPU), point its region's `sources` at the new file here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from . import comparison, cost_models, demo, engine, peer_routers, router_overhead, routing, serving, validation


@dataclass(frozen=True)
class Spec:
    """A region's renderer and the results files (paths from the repository root) it is given,
    in order."""

    render: Callable[..., str]
    sources: tuple[str, ...]


ENGINE = "results/engine/"
ROUTING = "results/routing/"
ROUTER_DEV = "results/router_overhead_dev.json"
ROUTER_BOX = "results/router_overhead.json"
DEMO = "results/demo_cpu.json"
# The routing grids in the order prose quotes them: 4 and 16 replicas, 32, 2, then 8 (two memories).
GRIDS = tuple(ROUTING + f for f in ("grid_h200_4_16_all.json", "grid_h200_32_all.json", "grid_h200_2.json",
                                    "grid_paper_ablation.json"))

REGIONS: Mapping[str, Spec] = {
    # README.md
    "demo-duration": Spec(demo.duration, (DEMO,)),
    "engine-headline": Spec(engine.headline, (ENGINE + "h100_llama3-8b_c65103c.json",)),
    "router-headline": Spec(router_overhead.headline, (ROUTER_DEV,)),
    "routing-headline": Spec(routing.headline, (*GRIDS, ROUTING + "mooncake_capacity.json")),
    # results/demo_cpu.md
    "demo-table": Spec(demo.table, (DEMO,)),
    # results/router_overhead.md
    "router-overhead-mix": Spec(router_overhead.mix, (ROUTER_DEV,)),
    "router-overhead-dev": Spec(router_overhead.table, (ROUTER_DEV,)),
    "router-overhead-box": Spec(router_overhead.table, (ROUTER_BOX,)),
    "router-overhead-targets": Spec(router_overhead.targets, (ROUTER_DEV, ROUTER_BOX)),
    "router-overhead-runs": Spec(router_overhead.runs, (
        ROUTER_DEV, "results/router_overhead_dev_6698a2b.json", "results/router_overhead_dev_fdda77a.json",
        ROUTER_BOX, "results/router_overhead_6ccbfa4.json")),
    "router-overhead-statistics": Spec(router_overhead.statistics_cost, (
        "results/router_overhead_dev_fdda77a.json", "results/router_overhead_dev_6698a2b.json")),
    "router-overhead-arrays": Spec(router_overhead.gain, ("results/router_overhead_6ccbfa4.json", ROUTER_BOX)),
    # results/routing/README.md
    "routing-breakdown": Spec(routing.breakdown, (ROUTING + "mooncake_breakdown.json",)),
    "routing-breakdown-e2": Spec(routing.breakdown_e2, (ROUTING + "mooncake_breakdown.json",)),
    "routing-files": Spec(routing.files, tuple(ROUTING + f + ".json" for f in (
        "grid_h200_4_16", "grid_h200_4_16_rest", "grid_h200_4_16_all", "grid_h200_32", "grid_h200_32_rest",
        "grid_h200_32_all", "mooncake_capacity", "grid_h200_2", "grid_paper_ablation", "grid_h200_toolbench_agent"))),
    "routing-grids": Spec(routing.grids, GRIDS),
    "routing-peers": Spec(routing.peers, GRIDS),
    "routing-ablation": Spec(routing.ablation, (ROUTING + "grid_paper_ablation.json",)),
    "routing-capacity": Spec(routing.capacity, (ROUTING + "mooncake_capacity.json",)),
    "routing-shared": Spec(routing.shared_prefixes, (ROUTING + "mooncake_capacity.json", GRIDS[0])),
    # results/engine/NOTES.md
    "engine-runs": Spec(engine.runs_table, tuple(ENGINE + f for f in (
        "h100_llama3-8b_7856821.json", "h100_llama3-8b_4ea0de0.json", "h100_llama3-8b.json",
        "h100_llama3-8b_c65103c.json"))),
    "engine-targets": Spec(engine.targets_table, tuple(ENGINE + f for f in (
        "h100_llama3-8b_c65103c.json", "h100_llama3-8b.json", "h100_llama3-8b_4ea0de0.json"))),
    "engine-split": Spec(engine.split, tuple(ENGINE + f for f in (
        "h100_llama3-8b_4ea0de0.json", "h100_llama3-8b.json", "h100_llama3-8b_c65103c.json"))),
    "radix-evict": Spec(engine.radix_table, (ENGINE + "radix_evict_e10bfd7.json", ENGINE + "radix_evict.json")),
}

VALIDATION = "results/validation/"
SERVING = "results/serving/"
COMPARISON = "results/comparison/"
COST_MODELS = "results/cost_models/"
H100_COMPARISON = (COMPARISON + "h100_llama3-8b.json", COMPARISON + "h100_llama3-8b_loogle.json")
PEERS = "results/peer_routers/cpu_smollm2-135m_3workers.json"
PEERS_HEALTH5 = "results/peer_routers/cpu_smollm2-135m_3workers_preble_health5.json"
REGIONS = {**REGIONS,
    # results/validation/README.md
    "validation-h100": Spec(validation.by_rate, tuple(VALIDATION + f"h100_llama3-8b_rate{r}.json" for r in (4, 12, 20))),
    "validation-h200": Spec(validation.by_rate, tuple(VALIDATION + f"h200_llama3-8b_rate{r}.json" for r in (12, 20))),
    "validation-cpu": Spec(validation.metrics, (VALIDATION + "cpu_smollm2-135m_2workers_rate1.json",)),
    # results/peer_routers/README.md
    "peer-routers": Spec(peer_routers.mean_latency, (PEERS,)),
    "peer-routers-health5": Spec(peer_routers.mean_latency, (PEERS_HEALTH5, PEERS)),
    "peer-routers-e2": Spec(peer_routers.e2_against, (PEERS, PEERS_HEALTH5)),
    # results/serving/README.md: the runs side by side, oldest first
    "serving-dev-cpu": Spec(serving.table, (SERVING + "dev_cpu_tiny_base_c72e6e6.json", SERVING + "dev_cpu_tiny.json")),
    # results/README.md
    "cost-models": Spec(cost_models.table, tuple(COST_MODELS + f for f in (
        "h100_llama3-8b.json", "h100_mistral-7b.json", "h200_llama3-8b.json", "cpu_smollm2-135m.json",
        "cpu_smollm2-135m_1thread.json"))),
    "cost-models-h200": Spec(cost_models.against, (COST_MODELS + "h100_llama3-8b.json", COST_MODELS + "h200_llama3-8b.json")),
    # results/comparison/README.md
    "comparison-h100-verdicts": Spec(comparison.verdicts, H100_COMPARISON),
    "comparison-h100-knees": Spec(comparison.knees, H100_COMPARISON),
    "comparison-h200-knees": Spec(comparison.knees, (COMPARISON + "h200_llama3-8b.json",)),
    "serving-dev-cpu-hops": Spec(serving.hops, (SERVING + "dev_cpu_tiny.json",)),
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
)
