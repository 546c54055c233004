"""Which renderer writes each generated region, from which committed results files; and which
benchmark renders the report beside each results JSON.

This is the one place that names the JSON behind a README figure: to quote a newer run (say an
engine benchmark on another GPU), point its region's `sources` at the new file here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from . import engine


@dataclass(frozen=True)
class Spec:
    """A region's renderer and the results files (paths from the repository root) it is given,
    in order."""

    render: Callable[..., str]
    sources: tuple[str, ...]


ENGINE = "results/engine/"

REGIONS: Mapping[str, Spec] = {
    # README.md
    "engine-headline": Spec(engine.headline, (ENGINE + "h100_llama3-8b_c65103c.json",)),
    # results/engine/NOTES.md
    "engine-runs": Spec(engine.runs_table, tuple(ENGINE + f for f in (
        "h100_llama3-8b_7856821.json", "h100_llama3-8b_4ea0de0.json", "h100_llama3-8b.json",
        "h100_llama3-8b_c65103c.json"))),
    "engine-targets": Spec(engine.targets_table, tuple(ENGINE + f for f in (
        "h100_llama3-8b_c65103c.json", "h100_llama3-8b.json", "h100_llama3-8b_4ea0de0.json"))),
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
