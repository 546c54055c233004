"""Which renderer writes each generated region, from which committed results files; and which
benchmark renders the report beside each results JSON.

This is the one place that names the JSON behind a README figure: to quote a newer run (say an
engine benchmark on another GPU), point its region's `sources` at the new file here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from . import demo, engine, router_overhead, routing


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
