"""What a client of `preble serve` gets, next to what the engine under it gives in-process.

The same requests both ways: time to first token for a cold prompt and for new tokens on a cached
prefix (sequential requests), time per output token at batch 1, and output throughput with 1 to
256 concurrent requests, streamed and not. Prompts are token ids drawn at random, outputs have a
fixed length (EOS ignored), so any model folder serves, random weights included. Served requests
ask for per-hop timing, so the report also says where a first token's time goes between the
client, the router, the worker's frontend and its engine.

The cluster runs in child processes and is stopped before the in-process engine is built, so the
two never share the device.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import httpx

from ..core.percentile import percentile
from ..http.timing import HOPS as SERVER_HOPS
from .local_cluster import LocalCluster
from .process_cpu import ROLES, cpu_by_role, cpu_share
from .provenance import source_revision
from .serving_clients import Client, ClientPool
from .serving_config import ServingBenchConfig

HOPS = ("client_sent", *SERVER_HOPS, "client_first")


class Prompts:
    """Random token-id prompts from a seeded generator."""

    def __init__(self, seed: int, vocab_cap: int) -> None:
        self.rng, self.cap = random.Random(seed), vocab_cap

    def __call__(self, n: int) -> list[int]:
        return [self.rng.randrange(3, self.cap) for _ in range(n)]


def median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1e3


# ---------------------------------------------------------------------------------------- served


def hop_breakdown(results: list[dict]) -> dict[str, float] | None:
    """Median milliseconds between consecutive hops of the first token's path."""
    stamped = [{"client_sent": r["sent"], **r["timing"], "client_first": r.get("first")} for r in results if r["timing"]]
    if not stamped:
        return None
    out = {}
    for a, b in zip(HOPS, HOPS[1:]):
        gaps = [s[b] - s[a] for s in stamped if s.get(a) is not None and s.get(b) is not None]
        if gaps:
            out[f"{a}->{b}"] = median_ms(gaps)
    return out


def _concurrent(pool: ClientPool, prompts: Prompts, cfg: ServingBenchConfig, n: int, stream: bool,
                servers_cpu: Callable[[], dict | None]) -> dict:
    batch = [prompts(cfg.prompt_tokens) for _ in range(n)]
    servers_before = servers_cpu()
    start, answers, client_cpu = pool.run(batch, cfg.output_tokens, stream)
    failures = [a for a in answers if isinstance(a, str)]
    results = [a for a in answers if isinstance(a, dict)]
    if not results:
        raise RuntimeError(f"every request at concurrency {n} failed: {failures[0]}")
    end = max(r["end"] for r in results)
    out_tokens = sum(r["usage"]["completion_tokens"] for r in results)
    row = {"concurrency": n, "stream": stream, "seconds": end - start, "output_tokens": out_tokens,
           "failed": len(failures), "failures": failures,
           "output_tokens_per_s": out_tokens / (end - start),
           "client_cpu_fraction": client_cpu / (end - start),
           "servers_cpu": cpu_share(servers_before, servers_cpu(), end - start, out_tokens),
           "hops_ms": hop_breakdown(results)}
    if stream:
        tpot = [(r["end"] - r["first"]) / (cfg.output_tokens - 1) for r in results]
        row |= {"ttft_ms_median": median_ms([r["first"] - r["sent"] for r in results]),
                "tpot_ms_median": median_ms(tpot), "tpot_ms_p90": percentile(tpot, 90) * 1e3,
                "events_per_request": statistics.mean(r["events"] for r in results)}
    return row


async def _sequential(url: str, model: str, prompts: Prompts, cfg: ServingBenchConfig) -> dict:
    """One request at a time: TTFT cold and on a cached prefix, then one long decode."""
    client = Client(url, model, 1)
    try:
        for _ in range(3):  # warm-up: connections open, first-request paths run
            await client.stream(prompts(cfg.prompt_tokens), 4)
        cold = [await client.stream(prompts(cfg.prompt_tokens), 1) for _ in range(cfg.ttft_repeats)]
        prefix = prompts(cfg.cached_prefix)
        await client.stream(prefix, 1)
        cached = [await client.stream(prefix + prompts(cfg.prompt_tokens), 1) for _ in range(cfg.ttft_repeats)]
        one = await client.stream(prompts(cfg.prompt_tokens), cfg.output_tokens)
    finally:
        await client.aclose()
    return {
        "ttft_cold_ms": median_ms([r["first"] - r["sent"] for r in cold]),
        "ttft_cold_ms_min": min(r["first"] - r["sent"] for r in cold) * 1e3,
        "ttft_cached_ms": median_ms([r["first"] - r["sent"] for r in cached]),
        "cached_tokens": statistics.median(r["usage"]["prompt_tokens_details"]["cached_tokens"] for r in cached),
        "hops_cold_ms": hop_breakdown(cold), "hops_cached_ms": hop_breakdown(cached),
        "decode_batch1_tpot_ms": (one["end"] - one["first"]) / (cfg.output_tokens - 1) * 1e3,
        "decode_batch1_events": one["events"],
    }


def measure_served(url: str, cfg: ServingBenchConfig, servers_cpu: Callable[[], dict | None] = lambda: None) -> dict:
    """`servers_cpu`: the serving processes' CPU seconds by role, when they run on this host."""
    model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    prompts = Prompts(cfg.seed, cfg.vocab_cap)
    result = asyncio.run(_sequential(url, model, prompts, cfg))
    pool = ClientPool(url, model, cfg.client_processes, max(cfg.concurrency))
    try:
        result["concurrency"] = [_concurrent(pool, prompts, cfg, n, stream, servers_cpu)
                                 for n in cfg.concurrency for stream in (True, False)]
    finally:
        pool.close()
    return result


# ------------------------------------------------------------------------------------- in-process


def measure_in_process(model: str, load_format: str, cfg: ServingBenchConfig, engine_options: dict) -> dict:
    """The same requests on an engine in this process (wall clock, the device synchronised)."""
    import torch

    from ..core.scheduler_config import SchedulerConfig
    from ..engine.config import EngineConfig
    from ..engine.engine import LLMEngine
    from .engine_driver import EngineDriver, sync_device

    sched = SchedulerConfig(max_running_requests=max(cfg.concurrency))  # the served worker's, too
    engine = LLMEngine(EngineConfig(model=model, device=cfg.device, load_format=load_format, seed=cfg.seed,
                                    scheduler=sched, **engine_options))
    drive = EngineDriver(engine, cfg.seed, cfg.vocab_cap)
    try:
        drive.timed_first_token(drive.tokens(cfg.prompt_tokens))  # warm-up
        cold = [drive.timed_first_token(drive.tokens(cfg.prompt_tokens)) for _ in range(cfg.ttft_repeats)]
        prefix = drive.tokens(cfg.cached_prefix)
        drive.timed_first_token(prefix)
        cached = [drive.timed_first_token(prefix + drive.tokens(cfg.prompt_tokens)) for _ in range(cfg.ttft_repeats)]
        drive.clear_cache()
        rows = [_in_process_batch(drive, cfg, n, sync_device) for n in cfg.concurrency]
    finally:
        engine.close()
        del drive, engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    one = next((r for r in rows if r["concurrency"] == 1), None)
    return {"ttft_cold_ms": median_ms(cold), "ttft_cold_ms_min": min(cold) * 1e3, "ttft_cached_ms": median_ms(cached),
            "decode_batch1_tpot_ms": one["tpot_ms_median"] if one else None, "concurrency": rows}


def _in_process_batch(drive, cfg: ServingBenchConfig, n: int, sync_device) -> dict:
    """n requests added at once and stepped until all finish: throughput and time per token."""
    reqs = [drive.add(drive.tokens(cfg.prompt_tokens), cfg.output_tokens) for _ in range(n)]
    sync_device(drive.engine.device)
    start = time.perf_counter()
    first: dict[str, float] = {}
    end: dict[str, float] = {}
    while drive.engine.has_work:
        for req in drive.engine.step():
            now = time.perf_counter()
            first.setdefault(req.request_id, now)
            if req.is_finished:
                end[req.request_id] = now
    seconds = max(end.values()) - start
    tpot = [(end[r.request_id] - first[r.request_id]) / (cfg.output_tokens - 1) for r in reqs]
    drive.clear_cache()
    return {"concurrency": n, "seconds": seconds, "output_tokens": n * cfg.output_tokens,
            "output_tokens_per_s": n * cfg.output_tokens / seconds,
            "ttft_ms_median": median_ms([first[r.request_id] - start for r in reqs]),
            "tpot_ms_median": median_ms(tpot), "tpot_ms_p90": percentile(tpot, 90) * 1e3}


# ------------------------------------------------------------------------------------------- run


def _engine_options(cfg: ServingBenchConfig) -> dict:
    """The engine options the served worker and the in-process engine share."""
    given = (("kv_cache_gib", cfg.kv_cache_gib), ("num_pages", cfg.num_pages),
             ("piecewise_graph_max_tokens", cfg.piecewise_graph_max_tokens))
    return {name: value for name, value in given if value is not None}


def run(cfg: ServingBenchConfig) -> dict:
    result: dict = {"config": asdict(cfg)}
    with tempfile.TemporaryDirectory(prefix="preble-serving-bench-") as tmp:
        model, load_format = cfg.model, "auto"
        if model is None and cfg.url is None:
            from ..models.random_folder import write_random_model_folder

            model = str(write_random_model_folder(Path(tmp) / cfg.preset, cfg.preset, cfg.seed,
                                                  **cfg.preset_overrides))
            load_format = "dummy"
        if cfg.url is not None:
            result["served"] = measure_served(cfg.url, cfg)
        else:
            options = [word for name, value in _engine_options(cfg).items()
                       for word in (f"--{name.replace('_', '-')}", str(value))]
            args = ("--load-format", load_format, "--max-running-requests", str(max(cfg.concurrency)),
                    *options, *cfg.worker_args)
            with LocalCluster(model, workers=1, device=cfg.device, worker_args=args,
                              startup_timeout_s=cfg.startup_timeout_s,
                              keep_log=Path(cfg.server_log) if cfg.server_log else None) as cluster:
                launcher = cluster.proc.pid
                result["served"] = measure_served(cluster.url, cfg, lambda: cpu_by_role(launcher))
        if cfg.in_process and model is not None:
            result["in_process"] = measure_in_process(model, load_format, cfg, _engine_options(cfg))
    result["meta"] = environment(cfg.device)
    return result


def environment(device: str) -> dict:
    import torch  # only here: measuring a server by --url needs no torch until the report

    name = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else (
        platform.processor() or "cpu")
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return {"device": name, "torch": torch.__version__, "event_loop": loop, **source_revision(),
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


def markdown(result: dict) -> str:
    """The served path next to the in-process engine, then where a first token's time goes."""
    served, local, m = result["served"], result.get("in_process"), result["meta"]
    lines = [f"# Serving benchmark on {m['device']}", "",
             f"commit {m['commit']}{' (dirty)' if m.get('dirty') else ''}, {m['date']}, torch {m['torch']}, "
             f"event loop {m['event_loop']}", "",
             "| measure | in-process engine | through router + worker | served / in-process |", "|---|---|---|---|"]

    def row(name: str, key: str, unit: str) -> None:
        a, b = (local or {}).get(key), served.get(key)
        ratio = f"{b / a:.2f}x" if a and b else "-"
        lines.append(f"| {name} | {_fmt(a, unit)} | {_fmt(b, unit)} | {ratio} |")

    row("TTFT, cold prompt (median)", "ttft_cold_ms", "ms")
    row("TTFT, new tokens on a cached prefix (median)", "ttft_cached_ms", "ms")
    row("time per output token, batch 1", "decode_batch1_tpot_ms", "ms")
    local_rows = {r["concurrency"]: r for r in (local or {}).get("concurrency", [])}
    lines += ["", "| concurrent requests | streamed | in-process tok/s | served tok/s | share | served TPOT p50 / p90 ms "
                  "| events per request | client CPU |", "|---|---|---|---|---|---|---|---|"]
    for r in served["concurrency"]:
        base = local_rows.get(r["concurrency"], {}).get("output_tokens_per_s")
        share = f"{r['output_tokens_per_s'] / base:.0%}" if base else "-"
        tpot = f"{r['tpot_ms_median']:.2f} / {r['tpot_ms_p90']:.2f}" if r["stream"] else "-"
        events = f"{r['events_per_request']:.0f}" if r["stream"] else "-"
        lines.append(f"| {r['concurrency']} | {'yes' if r['stream'] else 'no'} | {_fmt(base, 'tok/s')} | "
                     f"{r['output_tokens_per_s']:.0f} | {share} | {tpot} | {events} | {r['client_cpu_fraction']:.0%} |")
    lines += [f"\n{r['failed']} of {r['concurrency']} requests failed at concurrency {r['concurrency']} "
              f"({'streamed' if r['stream'] else 'not streamed'}): {'; '.join(r['failures'])}"
              for r in served["concurrency"] if r.get("failed")]
    lines += _cpu_table(served["concurrency"])
    for label, key in (("cold prompt", "hops_cold_ms"), ("cached prefix", "hops_cached_ms")):
        if served.get(key):
            lines += ["", f"First token's path, {label} (median ms per hop):", "",
                      "| hop | ms |", "|---|---|"] + [f"| {hop} | {ms:.2f} |" for hop, ms in served[key].items()]
    return "\n".join(lines) + "\n"


def _cpu_table(rows: list[dict]) -> list[str]:
    """Each serving process role's CPU per concurrency row: a role near one core is the bottleneck."""
    rows = [r for r in rows if r.get("servers_cpu")]
    if not rows:
        return []
    head = " | ".join(f"{role} cores / us per token" for role in ROLES)
    lines = ["", "CPU of the serving processes (all frontends together, all engines together):", "",
             f"| concurrent requests | streamed | {head} |", "|---|---|" + "---|" * len(ROLES)]
    for r in rows:
        cells = " | ".join(f"{r['servers_cpu'][role]['cores']:.2f} / {r['servers_cpu'][role]['us_per_token']:.0f}"
                           for role in ROLES)
        lines.append(f"| {r['concurrency']} | {'yes' if r['stream'] else 'no'} | {cells} |")
    return lines


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if unit == "tok/s" else f"{value:.2f} {unit}"
