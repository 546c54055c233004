"""`preble demo`: a 2-worker cluster of the demo model, the default policy against round_robin.

The workload is a small Preble-style one: groups of requests share a long system prompt, and the
workers' KV pools are sized so that one worker holds about half of the groups' prefixes. A
prefix-aware policy keeps each group on one worker, so every prefix stays cached; round robin
spreads every group over both workers, which then evict each other's prefixes and recompute them.
Both runs send the same requests at the same Poisson arrival times.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..core.pages import DEFAULT_PAGE_SIZE
from ..core.percentile import percentile
from ..core.routing import DEFAULT_POLICY
from ..sim.report import summarize
from .loadgen import LoadConfig, LoadRequest, RequestRecord, run_load
from .local_cluster import LocalCluster
from .provenance import host_machine, source_revision
from .requests import load_request
from .workloads import make_workload


@dataclass(frozen=True)
class DemoConfig:
    policies: tuple[str, ...] = (DEFAULT_POLICY, "round_robin")
    workers: int = 2
    params: dict = field(default_factory=lambda: dict(groups=8, system_len=384, question_len=32,
                                                      output_len=16, popularity="uniform"))
    num_requests: int = 96
    rate: float = 1.6  # requests/s
    page_size: int = DEFAULT_PAGE_SIZE
    num_pages: int = 160  # per worker: about 5 of the 8 group prefixes
    max_num_batched_tokens: int = 512
    seed: int = 0

    def worker_args(self) -> list[str]:
        return ["--page-size", str(self.page_size), "--num-pages", str(self.num_pages),
                "--max-num-batched-tokens", str(self.max_num_batched_tokens)]


def requests(cfg: DemoConfig) -> list[LoadRequest]:
    wl = make_workload("shared_prefix", num_requests=cfg.num_requests, seed=cfg.seed, **cfg.params)
    return [load_request(r) for r in wl.requests]


def run_policy(model: str, policy: str, cfg: DemoConfig,
               on_done: Callable[[RequestRecord], None] | None = None) -> list[RequestRecord]:
    with LocalCluster(model, cfg.workers, policy, cfg.worker_args()) as cluster:
        return asyncio.run(run_load(requests(cfg), LoadConfig(cluster.url, rate=cfg.rate, seed=cfg.seed),
                                    on_done=on_done))


def summary(records: list[RequestRecord]) -> dict[str, Any]:
    ok = [r for r in records if r.error is None]
    return {**summarize(ok), "errors": len(records) - len(ok)}


def document(cfg: DemoConfig, sums: dict[str, dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """The demo's results file: the summaries, the configuration, and where and from what they came."""
    return {"benchmark": "demo", **source_revision(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "device": host_machine(),
            "wall_s": round(wall_s, 1), "config": asdict(cfg), "summaries": sums}


# (summary key, header): two-line headers keep the table whole on an 80-column terminal.
TABLE_COLUMNS = (("mean_latency", "mean\nlatency"), ("p50_latency", "p50\nlatency"),
                 ("p99_latency", "p99\nlatency"), ("mean_ttft", "mean\nTTFT"), ("p99_ttft", "p99\nTTFT"),
                 ("hit_ratio", "hit\nratio"), ("errors", "errors"))


def summary_table(sums: dict[str, dict[str, Any]]):
    """The policies' summaries as a rich Table, one row per policy."""
    from rich import box
    from rich.table import Table

    table = Table(title="Preble demo: the same requests, two routing policies (seconds)", box=box.SIMPLE_HEAD)
    table.add_column("policy", no_wrap=True)
    for _, header in TABLE_COLUMNS:
        table.add_column(header, justify="right", no_wrap=True)
    for policy, s in sums.items():
        table.add_row(policy, *(f"{s[k]:.2f}" if isinstance(s[k], float) else str(s[k]) for k, _ in TABLE_COLUMNS))
    return table


def plot(results: dict[str, list[RequestRecord]], path: Path) -> Path:
    """Latency CDF per policy, and mean / p99 latency bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cdf, bars) = plt.subplots(1, 2, figsize=(10, 4))
    for policy, records in results.items():
        lat = sorted(r.latency for r in records if r.error is None)
        cdf.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], label=policy)
    cdf.set_xlabel("request latency (s)")
    cdf.set_ylabel("fraction of requests")
    cdf.legend()
    cdf.set_title("latency CDF")
    names = list(results)
    for k, (label, q) in enumerate((("mean", None), ("p99", 99))):
        values = []
        for p in names:
            lat = [r.latency for r in results[p] if r.error is None]
            values.append(sum(lat) / len(lat) if q is None else percentile(lat, q))
        xs = [i + 0.4 * k for i in range(len(names))]
        bars.bar(xs, values, width=0.4, label=label)
    bars.set_xticks([i + 0.2 for i in range(len(names))], names)
    bars.set_ylabel("seconds")
    bars.legend()
    bars.set_title("latency")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
