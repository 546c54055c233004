"""`preble bench soak`: a `preble serve` cluster under mixed load while a chaos loop kills and
stops its workers; the report proves that no request went without an outcome.

The load (`soak_load`) and the chaos (`soak_chaos`) run at the same time for `duration_s`; the
router's RSS and the host's load average are sampled meanwhile. The report's checks: every
request sent is completed, errored with a message or cancelled by its client (none lost, none
hung); no 5xx beyond those the router documents; the router's RSS bounded; after every event the
worker recovers and the router's picture of its cache equals the cache. The command exits
non-zero when one fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from .local_cluster import LocalCluster
from .provenance import host_machine, source_revision
from .soak_chaos import ChaosEvent, Cluster, chaos
from .soak_config import DOCUMENTED_5XX, SoakConfig
from .soak_load import LoadRun, Traffic, drive
from .soak_outcomes import Outcome, RequestResult, Tally, tally, undocumented_5xx

KIB_PER_MIB = 1024


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Observed:
    """What one run saw, before it is judged."""

    load: LoadRun
    events: list[ChaosEvent]
    rss_mb: list[tuple[float, float]]  # (seconds from the start, the router's RSS)
    loadavg: list[tuple[float, float, float, float]]  # (seconds, 1-, 5-, 15-minute load average)
    held_s: float  # time new requests were held for KV checks
    wall_s: float


# ---------------------------------------------------------------------------- running


@contextlib.contextmanager
def model_folder(cfg: SoakConfig) -> Iterator[str]:
    """The model to serve: the configured folder, else a tiny random llama in a temporary folder."""
    if cfg.model is not None:
        yield cfg.model
        return
    from ..models.tiny import write_tiny_model

    with tempfile.TemporaryDirectory(prefix="preble-soak-") as tmp:
        yield str(write_tiny_model(Path(tmp) / "tiny-llama", "llama", seed=cfg.seed))


def run(cfg: SoakConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start the cluster, soak it, stop it; the report as a JSON-ready dict."""
    revision = source_revision()  # now: the code that runs is the code of this moment
    key = secrets.token_urlsafe(24)  # the workers' key, so that the KV check can read their caches
    env = {**os.environ, "PREBLE_WORKER_API_KEY": key}
    with model_folder(cfg) as model:
        started = time.monotonic()
        with LocalCluster(model, cfg.workers, cfg.policy, ["--num-pages", str(cfg.num_pages)],
                          startup_timeout_s=cfg.startup_timeout_s, env=env) as cluster:
            startup_s = time.monotonic() - started
            log(f"cluster up in {startup_s:.1f} s at {cluster.url}; soaking for {cfg.duration_s:.0f} s")
            observed = asyncio.run(soak(cfg, cluster.url, cluster.proc.pid, key))
    return document(cfg, observed, startup_s, revision)


async def soak(cfg: SoakConfig, router: str, serve_pid: int, key: str) -> Observed:
    """Load and chaos at once, with the samplers, until the load has ended and the last event recovered."""
    async with httpx.AsyncClient() as client:
        worker_ids = [w["worker_id"] for w in (await client.get(f"{router}/workers")).json()]
    start = time.monotonic()
    traffic, load, events = Traffic(cfg.clients), LoadRun(), []
    rss: list[tuple[float, float]] = []
    loads: list[tuple[float, float, float, float]] = []
    done = asyncio.Event()
    samplers = [asyncio.create_task(sample(lambda: (router_rss_mb(serve_pid),), cfg.rss_interval_s, start, done, rss)),
                asyncio.create_task(sample(os.getloadavg, cfg.loadavg_interval_s, start, done, loads))]
    chaos_task = asyncio.create_task(chaos(Cluster(router, serve_pid, worker_ids, key, start), traffic, cfg, events))
    await drive(router, cfg, traffic, start, load)
    await chaos_task
    done.set()
    await asyncio.gather(*samplers)
    return Observed(load, events, rss, loads, round(traffic.held_s, 3), round(time.monotonic() - start, 1))


async def sample(read: Callable[[], tuple[float, ...]], interval_s: float, start: float, done: asyncio.Event,
                 into: list) -> None:
    """Append (seconds, *read()) every `interval_s` until `done`."""
    while not done.is_set():
        into.append((round(time.monotonic() - start, 2), *(round(v, 2) for v in read())))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), interval_s)


def router_rss_mb(pid: int) -> float:
    """The resident memory of `preble serve`'s process, which runs the router (VmRSS in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / KIB_PER_MIB
    raise RuntimeError(f"no VmRSS for process {pid}")


# ---------------------------------------------------------------------------- judging


def rss_windows(samples: list[tuple[float, float]], warmup_s: float) -> tuple[float, float] | None:
    """(max RSS of the first quarter after warm-up, max of the last quarter); None if too few samples."""
    kept = [(t, mb) for t, mb in samples if t >= warmup_s]
    if len(kept) < 2:
        return None
    first_t, last_t = kept[0][0], kept[-1][0]
    quarter = (last_t - first_t) / 4
    first = [mb for t, mb in kept if t <= first_t + quarter]
    last = [mb for t, mb in kept if t >= last_t - quarter]
    return max(first), max(last)


def rss_check(samples: list[tuple[float, float]], cfg: SoakConfig) -> Check:
    windows = rss_windows(samples, cfg.rss_warmup_s)
    if windows is None:
        return Check("rss_bounded", False, "too few RSS samples after warm-up")
    first, last = windows
    return Check("rss_bounded", last <= cfg.rss_growth_factor * first,
                 f"router RSS max {last:.1f} MB in the last quarter, {first:.1f} MB in the first after "
                 f"{cfg.rss_warmup_s:.0f} s of warm-up ({last / first:.3f}x; at most {cfg.rss_growth_factor}x)")


def chaos_checks(events: list[ChaosEvent]) -> list[Check]:
    """Both kinds of event happened, every worker came back (after a kill: a new process), and
    every KV check agreed."""
    kinds = Counter(e.action for e in events)
    unrecovered = [e for e in events if e.recovered_s is None or (e.action == "kill" and e.new_pid is None)]
    inconsistent = [e for e in events if not e.kv or not all(k.ok for k in e.kv)]
    return [
        Check("chaos_happened", all(kinds[a] for a in ("kill", "stop")),
              f"kills: {kinds['kill']}, stops: {kinds['stop']}"),
        Check("workers_recovered", bool(events) and not unrecovered,
              f"{len(events) - len(unrecovered)} of {len(events)} events recovered"
              + "".join(f"; {e.worker} {e.action} at {e.at_s} s did not" for e in unrecovered)),
        Check("kv_consistent", bool(events) and not inconsistent,
              f"after {len(events) - len(inconsistent)} of {len(events)} events every worker's cache and the "
              f"router's picture of it agreed" + "".join(f"; after {e.worker}'s {e.action} at {e.at_s} s: {_kv(e)}"
                                                         for e in inconsistent)),
    ]


def _kv(e: ChaosEvent) -> str:
    if not e.kv:
        return "not checked"
    return ", ".join(f"{k.worker}: router {k.router_pages} pages, worker {k.worker_pages}" for k in e.kv if not k.ok)


def request_checks(t: Tally) -> list[Check]:
    counts = {o: t.count(o) for o in Outcome}
    return [
        Check("accounted", t.accounted, f"sent {t.sent} = completed {counts[Outcome.COMPLETED]} + errored "
              f"{counts[Outcome.ERRORED]} + cancelled {counts[Outcome.CANCELLED]}"
              + ("" if t.accounted else f" does not hold (lost {counts[Outcome.LOST]}, hung {counts[Outcome.HUNG]})")),
        Check("no_lost", counts[Outcome.LOST] == 0, f"{counts[Outcome.LOST]} lost"),
        Check("no_hung", counts[Outcome.HUNG] == 0, f"{counts[Outcome.HUNG]} hung"),
        Check("no_undocumented_5xx", t.undocumented_5xx == 0, f"{t.undocumented_5xx} undocumented 5xx"),
    ]


def by_kind(results: list[RequestResult]) -> dict[str, dict[str, int]]:
    """Outcomes per endpoint and mode ("chat stream", "completions whole", ...)."""
    out: dict[str, Counter] = {}
    for r in results:
        out.setdefault(f"{r.endpoint} {'stream' if r.stream else 'whole'}", Counter())[r.verdict.outcome.value] += 1
    return {k: {o.value: c.get(o.value, 0) for o in Outcome} for k, c in sorted(out.items())}


def problems(results: list[RequestResult], keep: int) -> list[dict]:
    """The first `keep` requests that fail a check (lost, hung, undocumented 5xx), in full."""
    bad = [r for r in results if r.verdict.outcome in (Outcome.LOST, Outcome.HUNG)
           or undocumented_5xx(r.verdict, DOCUMENTED_5XX)]
    return [asdict(r) for r in sorted(bad, key=lambda r: r.sent_s)[:keep]]


def host_memory_gib() -> float | None:
    with contextlib.suppress(OSError, StopIteration, ValueError):
        line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal:"))
        return round(int(line.split()[1]) / KIB_PER_MIB ** 2, 1)
    return None


def document(cfg: SoakConfig, seen: Observed, startup_s: float, revision: dict[str, Any]) -> dict[str, Any]:
    """The results file: what was sent and what came of it, the chaos, the samples and the checks;
    `revision`: the source's commit and state when the run started."""
    results = sorted(seen.load.results, key=lambda r: r.index)
    t = tally(seen.load.sent, results, DOCUMENTED_5XX)
    checks = [*request_checks(t), rss_check(seen.rss_mb, cfg), *chaos_checks(seen.events)]
    windows = rss_windows(seen.rss_mb, cfg.rss_warmup_s)
    return {
        "benchmark": "soak", **revision, "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": {**host_machine(), "memory_gib": host_memory_gib()},
        "config": asdict(cfg), "documented_5xx": [asdict(d) for d in DOCUMENTED_5XX],
        "startup_s": round(startup_s, 1), "wall_s": seen.wall_s,
        "load": {"sent": seen.load.sent, "offered_rate": cfg.rate, "sent_rate": round(seen.load.sent / cfg.duration_s, 3),
                 "most_late_s": round(seen.load.late_s, 3), "held_for_kv_checks_s": seen.held_s},
        "outcomes": {**t.outcomes, "sent": t.sent, "undocumented_5xx": t.undocumented_5xx},
        "by_kind": by_kind(results), "statuses": t.statuses, "errors": t.errors,
        "problems": problems(results, cfg.examples_kept),
        "chaos": [asdict(e) for e in seen.events],
        "rss_mb": {"first_quarter_max": windows[0] if windows else None,
                   "last_quarter_max": windows[1] if windows else None, "samples": seen.rss_mb},
        "loadavg": seen.loadavg,
        "checks": [asdict(c) for c in checks], "passed": all(c.ok for c in checks),
    }


# ---------------------------------------------------------------------------- the report


def markdown(doc: dict[str, Any]) -> str:
    cfg, dev = doc["config"], doc["device"]
    verdict = "every check passed" if doc["passed"] else "FAILED: " + ", ".join(
        c["name"] for c in doc["checks"] if not c["ok"])
    lines = [f"# Soak: {cfg['workers']} workers and the router, {cfg['duration_s']:.0f} s of load and chaos", "",
             f"{dev['cpu']}, {dev['cpus']} cores, {dev['memory_gib']} GiB; commit {doc['commit']}"
             f"{' (uncommitted changes)' if doc.get('dirty') else ''}, {doc['date']}. Policy {cfg['policy']}, "
             f"{cfg['rate']} requests/s offered by at most {cfg['clients']} clients; {verdict}.", "",
             "| check | passed | detail |", "|---|---|---|"]
    lines += [f"| {c['name']} | {'yes' if c['ok'] else 'NO'} | {c['detail']} |" for c in doc["checks"]]
    lines += ["", *_outcome_table(doc), "", *_error_lines(doc), *_chaos_table(doc), "", *_samples_lines(doc)]
    return "\n".join(lines) + "\n"


def _outcome_table(doc: dict[str, Any]) -> list[str]:
    names = [o.value for o in Outcome]
    rows = ["| requests | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    rows += [f"| {kind} | " + " | ".join(str(c[o]) for o in names) + " |" for kind, c in doc["by_kind"].items()]
    rows.append("| all | " + " | ".join(str(doc["outcomes"][o]) for o in names) + " |")
    load = doc["load"]
    return [f"{load['sent']} requests sent ({load['sent_rate']}/s); new requests were held "
            f"{load['held_for_kv_checks_s']} s in all for the KV checks.", "", *rows]


def _error_lines(doc: dict[str, Any]) -> list[str]:
    if not doc["errors"]:
        return []
    return ["Errors (status or event code, message):", "",
            *[f"- {n} x `{msg}`" for msg, n in sorted(doc["errors"].items(), key=lambda x: -x[1])], ""]


def _chaos_table(doc: dict[str, Any]) -> list[str]:
    rows = ["Chaos events; KV: pages the router believes each worker holds = pages in its cache, the "
            "event's worker first, with the cluster idle.", "",
            "| at (s) | worker | event | seen down (s) | recovered (s) | KV |", "|---:|---|---|---:|---:|---|"]
    for e in doc["chaos"]:
        kv = ", ".join(f"{k['router_pages']}{' = ' if k['ok'] else ' != '}{k['worker_pages']}" for k in e["kv"])
        rows.append(f"| {e['at_s']:.1f} | {e['worker']} | {e['action']} | {_num(e['down_seen_s'])} | "
                    f"{_num(e['recovered_s'])} | {kv or 'not checked'} |")
    return rows


def _num(v) -> str:
    return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)


def _samples_lines(doc: dict[str, Any]) -> list[str]:
    rss, loads, cpus = doc["rss_mb"], doc["loadavg"], doc["device"]["cpus"]
    peak = max((x[1] for x in loads), default=None)
    mean = sum(x[1] for x in loads) / len(loads) if loads else None
    return [f"Router RSS: {len(rss['samples'])} samples; max {_num(rss['first_quarter_max'])} MB in the first "
            f"quarter after warm-up, {_num(rss['last_quarter_max'])} MB in the last.",
            f"Host load average (1 min): mean {_num(mean)}, max {_num(peak)} on {cpus} cores "
            f"({len(loads)} samples); the cluster, the clients and any other process share them."]


def write(doc: dict[str, Any], out: Path) -> Path:
    """The JSON at `out` and the Markdown next to it; returns the Markdown's path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown(doc))
    return md
