"""`preble bench ...`: the benchmark commands (mounted by the main CLI)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

bench_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, help="Benchmarks.")

from ..core.routing import DEFAULT_POLICY
from ..engine.config import EngineConfig
from ..router.config import RouterServerConfig
from .compare_config import CompareConfig
from .grid import GridConfig
from .peer_routers_config import Climb, PeerBenchConfig, RouterSpec, select_workloads
from .router_overhead import IN_FLIGHT
from .serving_config import ServingBenchConfig
from .soak_config import SoakConfig
from .workloads.report import PREBLE_WORKLOADS
from .workloads.trace import BLOCK

console = Console()
SUMMARY_KEYS = ("p50_ms", "p99_ms", "decisions_per_s", "rss_mb")


@bench_app.callback()
def bench() -> None:
    """Benchmarks (a group even with one command, so that `bench router` keeps its name)."""


@bench_app.command("router")
def router(
    workers: int = typer.Option(64, help="Simulated workers."),
    prefixes: int = typer.Option(100_000, help="Shared prefixes cached across the workers."),
    requests: int = typer.Option(60_000, help="Timed routing decisions per policy."),
    policies: str = typer.Option(f"{DEFAULT_POLICY},e2,cache_aware", help="Comma-separated policy names."),
    rate: float = typer.Option(320.0, help="Simulated arrivals per second (the clock is simulated)."),
    in_flight: int = typer.Option(IN_FLIGHT, help="Requests routed and not yet done (few: most workers idle, "
                                  "where the default prices copies of hot prefixes)."),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    out: Path | None = typer.Option(None, help="Also write the full results (device, commit, date) here."),
) -> None:
    """Time the router's policies per decision on one core, with memory, at cluster scale."""
    from .router_overhead import document, run

    names = tuple(p.strip() for p in policies.split(",") if p.strip())
    results = run(workers=workers, prefixes=prefixes, requests=requests, policies=names,
                  seed=seed, rate=rate, in_flight=in_flight)
    if out is not None:
        doc = document(results, workers=workers, prefixes=prefixes, requests=requests,
                       policies=list(names), rate=rate, seed=seed, in_flight=in_flight)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
    if as_json:
        print(json.dumps({p: {k: r[k] for k in SUMMARY_KEYS} for p, r in results.items()}))
        return
    table = Table(title=f"Router overhead: {workers} workers, {prefixes} prefixes, {requests} decisions")
    for col in ("policy", "p50 ms", "p99 ms", "decisions/s", "peak RSS MB"):
        table.add_column(col, justify="right")
    for p, r in results.items():
        table.add_row(p, f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['decisions_per_s']:.0f}",
                      f"{r['rss_mb']:.0f}")
    Console().print(table)


@bench_app.command("engine")
def engine(
    model: str = typer.Option("random:llama3-8b", help="HF folder or random:PRESET."),
    device: str = typer.Option("cuda"),
    dtype: str | None = typer.Option(None),
    quick: bool = typer.Option(False, help="Small sizes: a smoke run that fits a CPU."),
    as_json: bool = typer.Option(False, "--json", help="Print the full JSON result instead of the table."),
    overlap: bool = typer.Option(EngineConfig.overlap, help="Launch each step before reading the last one's "
                                 "tokens (--no-overlap: steps in turn)."),
    out: Path | None = typer.Option(None, help="Write JSON here and Markdown next to it (.md)."),
) -> None:
    """One engine against the device's own ceilings: prefill MFU, cached-prefix TTFT, decode roofline."""
    from .engine import QUICK, EngineBenchConfig, markdown, run

    sizes = dict(QUICK if quick else {})
    sizes["extra"] = {**sizes.get("extra", {}), "overlap": overlap}
    cfg = EngineBenchConfig(model=model, device=device, dtype=dtype, **sizes)
    result = run(cfg)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(result))
    print(json.dumps(result, indent=2) if as_json else markdown(result))


@bench_app.command("serving")
def serving(
    model: Path | None = typer.Option(None, help="HF folder; default: a random-weight folder of --preset."),
    preset: str = typer.Option(ServingBenchConfig.preset, help="Architecture of the random-weight folder."),
    url: str | None = typer.Option(None, help="Measure this running server instead of starting one."),
    device: str = typer.Option(ServingBenchConfig.device),
    worker_arg: list[str] = typer.Option([], "--worker-arg", help="A further `preble worker` option; repeat."),
    kv_cache_gib: float | None = typer.Option(None, help="KV memory of the worker and the in-process engine."),
    num_pages: int | None = typer.Option(None, help="KV pages of the worker and the in-process engine."),
    piecewise_graph_max_tokens: int = typer.Option(
        ServingBenchConfig.piecewise_graph_max_tokens, min=0,
        help="The worker's and the in-process engine's piecewise CUDA graphs (0: eager prompt steps)."),
    concurrency: str = typer.Option(",".join(map(str, ServingBenchConfig.concurrency)),
                                    help="Concurrent requests, comma-separated."),
    in_process: bool = typer.Option(ServingBenchConfig.in_process, help="Also measure the engine in-process."),
    quick: bool = typer.Option(False, help="Small sizes on a tiny model: a smoke run that fits a CPU."),
    out: Path | None = typer.Option(None, help="Write JSON here and Markdown next to it (.md)."),
    server_log: Path | None = typer.Option(None, help="Keep the `preble serve` log of the served half here."),
) -> None:
    """`preble serve` against its own engine: TTFT, time per token, throughput at 1-256 streams."""
    from .serving import markdown, run
    from .serving_config import QUICK

    given = dict(QUICK) if quick else {}
    given.update(model=str(model) if model else None, url=url, server_log=str(server_log) if server_log else None)
    if not quick:
        given.update(preset=preset, device=device, concurrency=tuple(int(c) for c in concurrency.split(",")))
    if worker_arg:
        given["worker_args"] = tuple(worker_arg)
    given.update({k: v for k, v in (("kv_cache_gib", kv_cache_gib), ("num_pages", num_pages)) if v is not None},
                 piecewise_graph_max_tokens=piecewise_graph_max_tokens)
    result = run(ServingBenchConfig(in_process=in_process, **given))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


@bench_app.command("soak")
def soak(
    duration: float = typer.Option(SoakConfig.duration_s, help="Seconds of load and chaos."),
    workers: int = typer.Option(SoakConfig.workers),
    policy: str = typer.Option(SoakConfig.policy),
    model: Path | None = typer.Option(None, help="HF folder; default: a tiny random llama."),
    rate: float = typer.Option(SoakConfig.rate, help="Requests/s offered (Poisson)."),
    clients: int = typer.Option(SoakConfig.clients, help="Requests in flight at most."),
    seed: int = typer.Option(SoakConfig.seed),
    out: Path | None = typer.Option(None, help="Write JSON here and Markdown next to it (.md)."),
) -> None:
    """A local cluster under mixed load while workers are killed and stopped; exits 1 unless every
    request got an outcome, no undocumented 5xx came, the router's memory stayed bounded and its
    picture of every cache was exact after each event (docs/cli/bench-soak.md)."""
    from .soak import markdown, run, write

    doc = run(SoakConfig(duration_s=duration, workers=workers, policy=policy, model=str(model) if model else None,
                         rate=rate, clients=clients, seed=seed))
    if out is not None:
        print(f"wrote {out} and {write(doc, out)}")
    print(markdown(doc))
    if not doc["passed"]:
        raise typer.Exit(1)


def parse_param(value: str) -> tuple[str, object]:
    """`key=value` with the value as int, float or string, whichever parses first."""
    key, _, raw = value.partition("=")
    for cast in (int, float):
        try:
            return key, cast(raw)
        except ValueError:
            pass
    return key, raw


def trace_workload(ctx: typer.Context, trace: Path, block_size: int, num_requests: int, seed: int,
                   tokenizer=None):
    """The workload of `--trace FILE`: the whole file unless --num-requests is given. A file that
    cannot be replayed ends the command with its one-line reason and exit code 2 (a usage error's)."""
    from .workloads.trace_file import TraceError, load_trace

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name).name != "DEFAULT"

    if given("workload"):
        raise typer.BadParameter("give --trace or --workload, not both", param_hint="--trace")
    if ctx.params.get("param"):
        raise typer.BadParameter("--param sets a --workload's parameters; a --trace takes none", param_hint="--param")
    try:
        return load_trace(trace, block_size=block_size, seed=seed,
                          num_requests=num_requests if given("num_requests") else None, tokenizer=tokenizer)
    except TraceError as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(2) from None


@bench_app.command("serve")
def serve(
    ctx: typer.Context,
    url: str = typer.Option(f"http://{RouterServerConfig.host}:{RouterServerConfig.port}",
                            help="Router or server base URL (OpenAI API)."),
    workload: str = typer.Option("shared_prefix", help="A workload name (see preble.bench.workloads)."),
    trace: Path | None = typer.Option(None, help="A JSONL trace to replay instead of --workload: Mooncake-style "
                                                 "or token ids (docs/cli/sim.md); all of it unless --num-requests."),
    trace_block_size: int = typer.Option(BLOCK, min=1, help="Tokens per hash id of a Mooncake-style --trace."),
    num_requests: int = typer.Option(200),
    rate: list[float] = typer.Option([], help="Poisson arrivals per second; repeat for a sweep. "
                                              "None: the workload's own times."),
    duration: float | None = typer.Option(None, help="Stop sending after this many seconds."),
    model: str | None = typer.Option(None, help="Model name to send, if the server wants one."),
    param: list[str] = typer.Option([], help="Workload parameter key=value; repeatable."),
    seed: int = typer.Option(0),
    jsonl: Path | None = typer.Option(None, help="Write one record per request here (the rate is appended "
                                                 "to the name in a sweep)."),
    summaries: Path | None = typer.Option(None, help="Append each run's summary here as a JSON line."),
    label: str | None = typer.Option(None, help="Name of this server in summaries and plots; "
                                                "default: the router's policy."),
    plot: Path | None = typer.Option(None, help="PNG of latency vs rate for every label in --summaries."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Open-loop load from a workload against a live server; per-request records and a summary."""
    import asyncio

    import httpx
    from rich.progress import Progress

    from ..sim.report import summarize
    from .loadgen import LoadConfig, run_load, write_jsonl
    from .plots import latency_vs_rate, read_summaries
    from .requests import load_request
    from .workloads import make_workload

    if plot is not None and summaries is None:
        raise typer.BadParameter("--plot draws from --summaries: give both", param_hint="--plot")
    if trace is not None:
        wl = trace_workload(ctx, trace, trace_block_size, num_requests, seed)
        workload = wl.name
    else:
        wl = make_workload(workload, num_requests=num_requests, seed=seed, **dict(map(parse_param, param)))
    if label is None:
        try:
            label = httpx.get(f"{url.rstrip('/')}/health", timeout=5).json().get("policy")
        except (httpx.HTTPError, ValueError):
            label = None
        label = label or url
    reqs = [load_request(r) for r in wl.requests]
    for r in rate or [None]:
        cfg = LoadConfig(url=url, model=model, rate=r, duration=duration, seed=seed)
        with Progress(disable=as_json) as progress:
            task = progress.add_task(f"{workload} at {r or 'trace'}/s -> {url}", total=len(reqs))
            records = asyncio.run(run_load(reqs, cfg, on_done=lambda _, t=task, p=progress: p.advance(t)))
        if jsonl is not None:
            write_jsonl(records, jsonl if len(rate) <= 1 else jsonl.with_stem(f"{jsonl.stem}_{r:g}"))
        ok = [x for x in records if x.error is None]
        summary = {**summarize(ok), "errors": len(records) - len(ok), "workload": workload, "rate": r,
                   "label": label}
        if summaries is not None:
            with summaries.open("a") as f:
                f.write(json.dumps(summary) + "\n")
        if as_json:
            print(json.dumps(summary))
            continue
        table = Table(title=f"{workload} at {r or 'trace'}/s ({label}): {len(ok)} of {len(records)} answered")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in ("mean_latency", "p50_latency", "p90_latency", "p99_latency", "mean_ttft", "p99_ttft",
                    "mean_tpot", "throughput", "hit_ratio", "errors"):
            value = summary[key]
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        table.add_row("branches", json.dumps(summary["branches"]))
        Console().print(table)
    if plot is not None:
        latency_vs_rate(read_summaries(summaries), plot, title=workload)
        if not as_json:
            print(f"plot written to {plot}")


def _csv(values) -> str:
    return ",".join(map(str, values))


def _names(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


_COMPARE = CompareConfig()


@bench_app.command("compare")
def compare(
    workloads: str = typer.Option(_csv(_COMPARE.workloads), help="Comma-separated workload names."),
    policies: str = typer.Option(_csv(_COMPARE.policies)),
    replicas: str = typer.Option(_csv(_COMPARE.replicas), help="Comma-separated replica counts of the main comparison."),
    scaling_replicas: str = typer.Option(_csv(_COMPARE.scaling_replicas),
                                         help="Replica counts of the scaling study; '' skips it."),
    cost_model: Path = typer.Option(Path(_COMPARE.cost_model)),
    tokenizer: Path | None = typer.Option(None, help="HF folder for text workloads; default: the demo model's."),
    num_pages: int = typer.Option(_COMPARE.num_pages, help="KV pages per replica."),
    duration: float = typer.Option(_COMPARE.duration_s, help="Seconds of arrivals per run."),
    max_requests: int = typer.Option(_COMPARE.max_requests, help="Requests per run at most (main comparison)."),
    max_rates: int = typer.Option(_COMPARE.max_rates, help="Rates per ladder at most."),
    min_requests: int = typer.Option(_COMPARE.min_requests, help="Requests per run at least."),
    jobs: int = typer.Option(_COMPARE.jobs, help="Worker processes."),
    seed: int = typer.Option(_COMPARE.seed),
    plots: bool = typer.Option(True, help="Write the PNG plots (needs matplotlib)."),
    merge: list[Path] = typer.Option([], help="Run nothing: merge these results (runs of the same config "
                                             "over different workloads) and write their report."),
    out: Path = typer.Option(Path("comparison.json"), help="JSON here; Markdown and PNG plots next to it."),
) -> None:
    """The paper's comparison in the simulator: workloads x policies x rates x replicas, plus the
    local-queue, ablation and scaling studies."""
    from .compare import merged, run
    from .compare_report import markdown, plot

    cfg = replace(_COMPARE, workloads=_names(workloads), policies=_names(policies),
                  replicas=tuple(map(int, _names(replicas))),
                  scaling_replicas=tuple(map(int, _names(scaling_replicas))),
                  cost_model=str(cost_model), tokenizer=str(tokenizer) if tokenizer else None,
                  num_pages=num_pages, duration_s=duration, max_requests=max_requests,
                  min_requests=min_requests, max_rates=max_rates, jobs=jobs, seed=seed)
    doc = merged([json.loads(p.read_text()) for p in merge]) if merge else run(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    text = markdown(doc)
    out.with_suffix(".md").write_text(text)
    for path in plot(doc, out) if plots else []:
        print(f"wrote {path}")
    print(text)


_GRID = GridConfig()


@bench_app.command("grid")
def grid(
    workloads: str = typer.Option(_csv(_GRID.workloads),
                                  help="Comma-separated workloads (zipf: the Zipf shared-prefix synthetic)."),
    replicas: str = typer.Option(_csv(_GRID.replicas), help="Comma-separated replica counts of the grid's points."),
    memories: str = typer.Option(_csv(_GRID.memories), help="KV memory regimes: h200 (44,000 pages), paper (15,200)."),
    policies: str = typer.Option("", help="Comma-separated policies; default: every peer and the default policy."),
    ablations: bool = typer.Option(True, help="Also run the default policy with each of its terms off."),
    seeds: str = typer.Option(_csv(_GRID.seeds), help="Comma-separated seeds (each point's arrivals)."),
    capacity_replicas: str = typer.Option(_csv(_GRID.capacity_replicas),
                                          help="Replica counts of the capacity search ('' skips it); they need "
                                               "a ladder, not points, so --replicas need not list them."),
    cost_model: Path = typer.Option(Path(_GRID.base.cost_model)),
    tokenizer: Path | None = typer.Option(None, help="HF folder for text workloads; default: the demo model's."),
    duration: float = typer.Option(_GRID.base.duration_s, help="Seconds of Poisson arrivals per run."),
    max_requests: int = typer.Option(_GRID.base.max_requests,
                                     help="Requests per run at most (a trace is replayed up to this)."),
    max_rates: int = typer.Option(_GRID.base.max_rates, help="Rates per ladder at most."),
    jobs: int = typer.Option(os.cpu_count() or _GRID.jobs, help="Worker processes (default: one per core)."),
    deadline: float | None = typer.Option(None, help="Seconds after which no more runs start (partial grids "
                                          "keep whole points; the report says how many ran)."),
    report: Path | None = typer.Option(None, help="Run nothing: render this grid JSON's report."),
    merge: list[Path] = typer.Option([], help="Run nothing: merge these grid JSONs (repeat the option) into "
                                     "--out, with its report: same configuration, and one commit or runs in "
                                     "common that agree."),
    loads_from: Path | None = typer.Option(None, help="Take the loads of the points this grid JSON has "
                                           "(its climbed ladders) instead of climbing them again."),
    rerun: Path | None = typer.Option(None, help="Run the default policy and its ablations again at every point "
                                      "and capacity cell of this grid JSON; the other policies' rows are carried "
                                      "over once a peer's re-runs reproduce them (--jobs applies)."),
    out: Path = typer.Option(Path("grid.json"), help="JSON here; the Markdown report next to it."),
) -> None:
    """Every routing policy at every point of workloads x replicas x loads x memory x seeds in the
    simulator, with a leaderboard against the best policy at each point."""
    from .grid import ABLATIONS, PEERS, GridMismatch, ladders, markdown, run
    from .grid import merge as merge_grids

    def write_grid(doc: dict) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        out.with_suffix(".md").write_text(markdown(doc))
        console.print(f"written {out} and {out.with_suffix('.md')}")

    if report is not None:
        doc = json.loads(report.read_text())
        report.with_suffix(".md").write_text(markdown(doc))
        return
    if merge:
        try:
            write_grid(merge_grids([json.loads(p.read_text()) for p in merge]))
        except GridMismatch as err:
            raise typer.BadParameter(str(err), param_hint="--merge") from None
        return
    if rerun is not None:
        from .grid_rerun import rerun as rerun_grid
        try:
            write_grid(rerun_grid(json.loads(rerun.read_text()), jobs, log=lambda m: console.print(m)))
        except GridMismatch as err:
            raise typer.BadParameter(str(err), param_hint="--rerun") from None
        return
    cfg = replace(_GRID, workloads=_names(workloads), replicas=tuple(map(int, _names(replicas))),
                  memories=_names(memories), policies=_names(policies) or PEERS + (DEFAULT_POLICY,),
                  ablations=ABLATIONS if ablations else (), seeds=tuple(map(int, _names(seeds))),
                  capacity_replicas=tuple(map(int, _names(capacity_replicas))),
                  base=replace(_GRID.base, cost_model=str(cost_model), duration_s=duration,
                               tokenizer=str(tokenizer) if tokenizer else None,
                               max_requests=max_requests, max_rates=max_rates), jobs=jobs,
                  deadline_s=deadline,
                  known_rates=ladders(json.loads(loads_from.read_text())) if loads_from else ())

    write_grid(run(cfg, log=lambda m: console.print(m), checkpoint=write_grid))


@bench_app.command("validate")
def validate(
    cost_model: Path = typer.Option(..., help="Cost model profiled on this device with the workers' threads."),
    model: Path | None = typer.Option(None, help="HF model folder; default: the demo model."),
    device: str = typer.Option("cpu"),
    workers: int = typer.Option(2),
    policy: str = typer.Option(DEFAULT_POLICY),
    workload: str = typer.Option("shared_prefix", help="A token-id workload."),
    param: list[str] = typer.Option([], help="Workload parameter key=value; repeatable (replaces the defaults)."),
    num_requests: int = typer.Option(150),
    rate: float = typer.Option(1.0),
    num_pages: int | None = typer.Option(256, help="KV pages per worker (0: what memory holds; in-process only)."),
    max_num_batched_tokens: int = typer.Option(512),
    in_process: bool = typer.Option(False, help="One engine stepped in this process instead of a live "
                                                "cluster (for models without a tokenizer, e.g. random:PRESET)."),
    seed: int = typer.Option(0),
    out: Path | None = typer.Option(None, help="Write the JSON result here and Markdown next to it."),
) -> None:
    """Run a workload for real, then in the simulator, and report the simulator's error."""
    from rich.progress import Progress

    from .validate import ValidateConfig, markdown, run

    kw = dict(params=dict(map(parse_param, param))) if param else {}
    cfg = ValidateConfig(cost_model=str(cost_model), model=str(model) if model else None, device=device,
                         workers=workers, policy=policy, workload=workload, num_requests=num_requests,
                         rate=rate, num_pages=num_pages or None, max_num_batched_tokens=max_num_batched_tokens,
                         seed=seed, **kw)
    with Progress() as progress:
        task = progress.add_task(f"{workload} on {workers} workers", total=num_requests)
        result = run(cfg, on_done=lambda _: progress.advance(task), in_process=in_process)
    text = markdown(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(text)
    print(text)


@bench_app.command("routers")
def routers(
    routers_: str | None = typer.Option(None, "--routers", help="Comma-separated KIND:POLICY, KIND one of "
                                        "preble, sglang, vllm; default: preble:e2, preble:round_robin, "
                                        "sglang:cache_aware, vllm:cache_aware."),
    workloads: str = typer.Option(",".join(PREBLE_WORKLOADS), help="Comma-separated workloads (each with "
                                  "its CPU preset: requests, rate, parameters)."),
    rate: float | None = typer.Option(None, help="Poisson arrivals per second for every workload "
                                                 "(default: each workload's preset rate)."),
    num_requests: int | None = typer.Option(None, help="Requests per run (default: the preset's)."),
    rate_scale: float = typer.Option(1.0, help="Multiply every rate, and the preset's request counts (runs "
                                               "last as long), e.g. to meet a faster machine's saturation."),
    param: list[str] = typer.Option([], help="Workload parameter WORKLOAD:key=value, or key=value for "
                                             "every workload; repeatable."),
    model: Path | None = typer.Option(None, help="HF model folder; default: the demo model."),
    workers: int | None = typer.Option(None, help="Preble workers (default: 3)."),
    num_pages: int | None = typer.Option(None, help="KV pages per worker (default: 384)."),
    max_num_batched_tokens: int | None = typer.Option(None, help="Token budget of a worker's step (default: 512)."),
    prefix_cap: int | None = typer.Option(None, help="Shared-prefix tokens kept per prompt (default: 1024; "
                                                     "0: all)."),
    max_output_tokens: int | None = typer.Option(None, help="Output tokens per request at most (default: 32; "
                                                            "0: the workload's)."),
    sglang_router: Path | None = typer.Option(None, envvar="PREBLE_SGLANG_ROUTER",
                                              help="sglang-router executable (default: on PATH)."),
    vllm_router: Path | None = typer.Option(None, envvar="PREBLE_VLLM_ROUTER",
                                            help="vllm-router executable (default: on PATH)."),
    cost_model: Path | None = typer.Option(None, help="Cost model for Preble's e2 (a `preble profile` JSON for "
                                                     "the workers' device); default: built-in."),
    health_timeout: float | None = typer.Option(None, help="Preble router's --health-timeout (default: its own)."),
    device: str | None = typer.Option(None, help="The workers' device, e.g. cuda (several may share one GPU; "
                                               "default: cpu)."),
    load_format: str | None = typer.Option(None, help="The workers' --load-format (dummy: random weights)."),
    repeats: int | None = typer.Option(None, min=1, help="Runs of each router on each workload; repeat k draws "
                                                         "its arrivals with seed + k (default: 1)."),
    pin_cores: bool | None = typer.Option(None, "--pin-cores/--no-pin-cores", help="Pin each worker to cores of "
                                          "its own, the routers and the load generator to the rest (Linux)."),
    router_cores: int | None = typer.Option(None, min=1, help="Cores left to the routers and the load generator "
                                                              "when pinning (default: 4)."),
    climb: str | None = typer.Option(None, help="KIND:POLICY: first climb each workload's rate ladder with this "
                                                "router, from its rate by 1.5x, and compare at the rung where its "
                                                "p99 latency passes 5x the lightest rung's (its knee)."),
    climb_requests: int = typer.Option(Climb.requests, min=1, help="Requests per rung of the climb."),
    seed: int = typer.Option(0),
    log_dir: Path | None = typer.Option(None, help="Keep the workers' and routers' logs here."),
    merge: list[Path] = typer.Option([], help="Run nothing: merge these results files (same code, machine "
                                             "and options, workloads of their own) into --out; repeat."),
    out: Path | None = typer.Option(None, help="Write JSON here and Markdown next to it."),
) -> None:
    """Preble's router, sglang-router and vllm-router in front of the same Preble workers: the
    same workload at the same arrivals through each, every router starting on cold caches."""
    from rich.progress import Progress

    from .peer_routers import markdown, run, write
    from .peer_routers import merge as merge_docs

    if merge:
        if out is None:
            raise typer.BadParameter("--merge needs --out", param_hint="--merge")
        try:
            doc = merge_docs([json.loads(path.read_text()) for path in merge])
        except (ValueError, KeyError) as err:
            raise typer.BadParameter(f"cannot merge: {err}", param_hint="--merge") from None
        print(f"wrote {out} and {write(doc, out)}")
        print(markdown(doc))
        return

    overrides = []
    for p in param:
        head, sep, value = p.partition("=")
        target, _, key = head.rpartition(":")
        overrides.append((target or None, *parse_param(f"{key}{sep}{value}")))
    try:
        chosen = select_workloads([x.strip() for x in workloads.split(",") if x.strip()], overrides, rate,
                                  num_requests, rate_scale)
    except KeyError as err:
        raise typer.BadParameter(str(err), param_hint="--workloads") from None
    for hint, spec in (("--climb", climb), *(("--routers", r) for r in (routers_ or "").split(",") if r.strip())):
        if spec:
            try:
                RouterSpec.parse(spec)
            except ValueError as err:
                raise typer.BadParameter(str(err), param_hint=hint) from None
    given = {k: v for k, v in dict(
        workers=workers, num_pages=num_pages, max_num_batched_tokens=max_num_batched_tokens,
        routers=tuple(r.strip() for r in routers_.split(",") if r.strip()) if routers_ else None,
        model=str(model) if model else None, sglang_router=str(sglang_router) if sglang_router else None,
        vllm_router=str(vllm_router) if vllm_router else None, log_dir=str(log_dir) if log_dir else None,
        cost_model=str(cost_model) if cost_model else None, health_timeout_s=health_timeout, device=device,
        load_format=load_format, repeats=repeats, pin_cores=pin_cores, router_cores=router_cores,
        climb=Climb(climb, requests=climb_requests) if climb else None).items()
        if v is not None}
    for key, value in (("prefix_cap", prefix_cap), ("max_output_tokens", max_output_tokens)):
        if value is not None:
            given[key] = value or None  # 0: no cap
    cfg = PeerBenchConfig(workloads=chosen, seed=seed, **given)
    with Progress() as progress:
        task = None

        def start(workload: str, router: str, n: int) -> None:
            nonlocal task
            if task is not None:
                progress.remove_task(task)
            task = progress.add_task(f"{workload} via {router}", total=n)

        doc = run(cfg, on_start=start, on_done=lambda _: progress.advance(task), log=progress.console.print,
                  checkpoint=None if out is None else (lambda partial: write(partial, out)))
    if out is not None:
        print(f"wrote {out} and {write(doc, out)}")
    print(markdown(doc))


@bench_app.command("report")
def report_cmd(
    check: bool = typer.Option(False, "--check", help="Write nothing: print a diff of every generated figure "
                               "that differs from what the committed JSON renders, and exit 1 if any does."),
    root: Path = typer.Option(Path("."), help="The repository's root."),
) -> None:
    """Render every README figure and results report from the committed results JSON
    (docs/cli/bench-report.md)."""
    from .report import report
    from .report.regions import RegionError

    try:
        changes = report(root, write=not check)
    except RegionError as err:
        raise typer.BadParameter(str(err)) from None
    for change in changes:
        print(change.diff() if check else f"rewrote {change.path} [{change.part}]")
    if check and changes:
        raise typer.Exit(1)
    if not changes:
        print("every generated figure matches the committed results")
