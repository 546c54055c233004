"""Which commit each results file names, and the one list of files that cannot meet the rule.

The rule (tests/test_report.py checks it on every JSON under `results/`): a file that records its
source names a commit of this repository, and either `dirty: false`, or `dirty: true` with the
hash of the differences (`diff_sha256`), as `preble.bench.provenance.source_revision` writes it.
Files written before the benchmarks recorded that, or whose commit field names no commit, are
listed in `EXEMPT` with the reason; nothing else may break the rule, and their JSON is kept as it
was measured rather than edited to look traced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .fmt import short
from .results import Result


@dataclass(frozen=True)
class Exempt:
    """Why a results file does not meet the rule; `code`: what it measured, where its commit
    field does not name it; `see`: the README that explains it."""

    why: str
    code: str | None = None
    see: str | None = None


# The tree's state was first recorded with the commit (0337428, 2026-12-04; for the engine and
# peer-router benchmarks e9b9ac2, 2026-12-05).
BEFORE_DIRTY_FLAG = ("written before results recorded whether the tree was clean: its commit is "
                     "real, whether the tree matched it is not recorded")

ENGINE_NOTES = "results/engine/NOTES.md"

EXEMPT: Mapping[str, Exempt] = {
    "results/engine/h100_llama3-8b_7856821.json": Exempt(
        "`meta.commit` is `HEAD`, not a commit id: the benchmark stored what `git rev-parse HEAD` "
        "printed on a copy of the tree without its history",
        code="7856821 plus a configuration fix", see=ENGINE_NOTES),
    "results/engine/h100_llama3-8b_c65103c.json": Exempt(
        "`meta.commit` is `6c744d4-fix2`, a working tree: 6c744d4 plus the two fixes committed "
        "right after the run as e80ffa3 and c65103c",
        code="c65103c", see=ENGINE_NOTES),
    **{path: Exempt(BEFORE_DIRTY_FLAG) for path in (
        "results/comparison/h100_llama3-8b.json",
        "results/comparison/h100_llama3-8b_loogle.json",
        "results/comparison/h200_llama3-8b.json",
        "results/cost_models/cpu_smollm2-135m.json",
        "results/cost_models/cpu_smollm2-135m_1thread.json",
        "results/cost_models/h100_llama3-8b.json",
        "results/cost_models/h100_mistral-7b.json",
        "results/cost_models/h200_llama3-8b.json",
        "results/engine/h100_llama3-8b.json",
        "results/engine/h100_llama3-8b_4ea0de0.json",
        "results/peer_routers/cpu_smollm2-135m_3workers.json",
        "results/peer_routers/cpu_smollm2-135m_3workers_preble_health5.json",
        "results/validation/cpu_smollm2-135m_2workers_rate1.json",
        "results/validation/h100_llama3-8b_rate12.json",
        "results/validation/h100_llama3-8b_rate20.json",
        "results/validation/h100_llama3-8b_rate4.json",
        "results/validation/h200_llama3-8b_rate12.json",
        "results/validation/h200_llama3-8b_rate20.json",
    )},
}


def provenance(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The part of a results file that names its source (`meta`, or the top level in the
    benchmarks that keep it there), or None for a file that records none."""
    for part in (data.get("meta"), data):
        if isinstance(part, Mapping) and "commit" in part:
            return part
    return None


def named_commits(data: Mapping[str, Any]) -> list[str]:
    """Every commit a results file names: its own, those of the runs it was merged from, and
    those of the file a grid re-run carried rows over from."""
    source = provenance(data)
    if source is None:
        return []
    carried = (source.get("rerun") or {}).get("carried_from")
    sources = [source, *([carried] if carried else [])]
    runs = source.get("runs")  # a grid counts its runs, a merged comparison lists their sources
    named = [*sources, *(m for s in sources for m in s.get("merged_from") or []),
             *(runs if isinstance(runs, list) else [])]
    return list(dict.fromkeys(r["commit"] for r in named if isinstance(r, Mapping) and "commit" in r))


def breaks_rule(data: Mapping[str, Any]) -> str | None:
    """Why the file's recorded state of the tree breaks the rule (commits aside), or None."""
    source = provenance(data)
    if source is None:
        return None
    dirty = source.get("dirty")
    if dirty is False:
        return None
    if dirty is True:
        return None if source.get("diff_sha256") else "`dirty: true` without `diff_sha256`"
    return "no `dirty` flag" if "dirty" not in source else "`dirty` unknown (a copy not checked against its commit)"


def measured_code(result: Result) -> str:
    """The code a results file measured, as a sentence quotes it: its commit, shortened, or what
    the exemption says where the commit field names none."""
    exempt = EXEMPT.get(result.path)
    if exempt is not None and exempt.code is not None:
        return exempt.code
    return short(provenance(result.data)["commit"])
