"""`preble bench ...`: the benchmark commands (mounted by the main CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

bench_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmarks.")

SUMMARY_KEYS = ("p50_ms", "p99_ms", "decisions_per_s", "rss_mb")


@bench_app.callback()
def bench() -> None:
    """Benchmarks (a group even with one command, so that `bench router` keeps its name)."""


@bench_app.command("router")
def router(
    workers: int = typer.Option(64, help="Simulated workers."),
    prefixes: int = typer.Option(100_000, help="Shared prefixes cached across the workers."),
    requests: int = typer.Option(60_000, help="Timed routing decisions per policy."),
    policies: str = typer.Option("e2,cache_aware", help="Comma-separated policy names."),
    rate: float = typer.Option(320.0, help="Simulated arrivals per second (the clock is simulated)."),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    out: Path | None = typer.Option(None, help="Also write the full results (device, commit, date) here."),
) -> None:
    """Time the router's policies per decision on one core, with memory, at cluster scale."""
    from .router_overhead import document, run

    names = tuple(p.strip() for p in policies.split(",") if p.strip())
    results = run(workers=workers, prefixes=prefixes, requests=requests, policies=names,
                  seed=seed, rate=rate)
    if out is not None:
        doc = document(results, workers=workers, prefixes=prefixes, requests=requests,
                       policies=list(names), rate=rate, seed=seed)
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
    out: Path | None = typer.Option(None, help="Write JSON here and Markdown next to it (.md)."),
) -> None:
    """One engine against the device's own ceilings: prefill MFU, cached-prefix TTFT, decode roofline."""
    from .engine import QUICK, EngineBenchConfig, markdown, run

    cfg = EngineBenchConfig(model=model, device=device, dtype=dtype, **(QUICK if quick else {}))
    result = run(cfg)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(result))
    print(json.dumps(result, indent=2) if as_json else markdown(result))
