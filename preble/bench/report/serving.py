"""Serving-path figures (`preble bench serving`, `results/serving/`): the table of
`results/serving/README.md`, one column per run, with the engine in-process beside them."""

from __future__ import annotations

from typing import Any

from .fmt import prose, short
from .results import Result

LATENCIES = (("TTFT cold, {prompt_tokens} tokens", "ttft_cold_ms"),
             ("TTFT, {prompt_tokens} new tokens on a cached {cached_prefix}-token prefix", "ttft_cached_ms"),
             ("time per output token, batch 1", "decode_batch1_tpot_ms"))
SINGLE = 1  # one stream at a time: the time-per-token row covers it
ENGINE_HOP = "engine_admitted->engine_first_token"  # the engine's own time to a first token


def _throughput(side: dict[str, Any], concurrency: int, stream: bool | None) -> float:
    """Output tokens/s at `concurrency` (streamed or not; the in-process engine does not stream)."""
    return next(r["output_tokens_per_s"] for r in side["concurrency"]
                if r["concurrency"] == concurrency and r.get("stream") in (stream, None))


def _served_pair(run: Result, concurrency: int) -> list[dict[str, Any]]:
    """The served rows at `concurrency`: streamed, then not."""
    rows = run.data["served"]["concurrency"]
    return [next(r for r in rows if r["concurrency"] == concurrency and r["stream"] is s) for s in (True, False)]


def _concurrencies(runs: tuple[Result, ...]) -> list[int]:
    """The concurrencies every run measured, beyond one stream."""
    common = set.intersection(*({r["concurrency"] for r in run.data["served"]["concurrency"]} for run in runs))
    return sorted(common - {SINGLE})


def table(*runs: Result) -> str:
    """Median TTFT cold and on a cached prefix, time per token, and throughput at several
    concurrencies: each run's served path, then the engine in-process of the last run that
    measured it (a run against a server given by URL does not)."""
    local = [r.data["in_process"] for r in runs if r.data.get("in_process")][-1:]
    cfg = runs[-1].data["config"]
    lines = ["| measure (median) | " + " | ".join([*(f"`{r.name}`" for r in runs), *(["in-process engine"] * len(local))])
             + " |", "|---|" + "---|" * (len(runs) + len(local))]
    for name, key in LATENCIES:
        cells = [f"{side[key]:.2f} ms" for side in [*(r.data["served"] for r in runs), *local]]
        lines.append(f"| {name.format(**cfg)} | " + " | ".join(cells) + " |")
    for n in _concurrencies(runs):
        cells = [f"{_throughput(r.data['served'], n, True):,.0f} / {_throughput(r.data['served'], n, False):,.0f}"
                 for r in runs] + [f"{_throughput(side, n, None):,.0f}" for side in local]
        lines.append(f"| {n} streams, tokens/s (streamed / not) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _outside_engine(path: dict[str, float]) -> float:
    """Milliseconds of a first token's path spent outside the engine (every hop but its own)."""
    return sum(ms for hop, ms in path.items() if hop != ENGINE_HOP)


def hops(run: Result) -> str:
    """The first token's path, hop by hop, for a cold prompt."""
    path = run.data["served"]["hops_cold_ms"]
    steps = ", ".join(f"{hop.replace('->', ' -> ').replace('_', ' ')} {ms:.2f}" for hop, ms in path.items())
    outside = _outside_engine(path)
    return prose(f"First token's path at {short(run.data['meta']['commit'])} (cold prompt, median ms per hop; "
                 f"`{run.name}`): {steps}; {outside:.1f} ms outside the engine.")


def hops_side_by_side(*runs: Result) -> str:
    """The first token's path, cold prompt, hop by hop in each run (median ms), and the sum
    outside the engine."""
    paths = [run.data["served"]["hops_cold_ms"] for run in runs]
    lines = ["| hop | " + " | ".join(f"`{run.name}`" for run in runs) + " |", "|---|" + "---:|" * len(runs)]
    for hop in paths[0]:
        lines.append(f"| {hop.replace('->', ' -> ').replace('_', ' ')} | "
                     + " | ".join(f"{path[hop]:.2f}" for path in paths) + " |")
    outside = [_outside_engine(path) for path in paths]
    lines.append("| outside the engine | " + " | ".join(f"{ms:.2f}" for ms in outside) + " |")
    return "\n".join(lines)


def against_engine(run: Result) -> str:
    """One run's served path beside the engine in-process on the same device: TTFT and time per
    token, the served share of the engine's throughput at each concurrency (streamed / not), and
    the CPU each serving process used at the highest one."""
    served, local = run.data["served"], run.data["in_process"]
    meta = run.data["meta"]
    tree = {True: f" with changes (diff {meta.get('diff_sha256')})", None: " (tree unchecked)"}.get(meta.get("dirty"), "")
    lines = [f"`{run.name}`: {meta['device']}, commit {short(meta['commit'])}{tree}, {meta['date'][:10]}.", "",
             "| measure (median) | in-process engine | served | served - in-process |", "|---|---|---|---|"]
    cfg = run.data["config"]
    for name, key in LATENCIES:
        lines.append(f"| {name.format(**cfg)} | {local[key]:.2f} ms | {served[key]:.2f} ms | "
                     f"{served[key] - local[key]:+.2f} ms |")
    lines += ["", "| concurrent streams | in-process tokens/s | served tokens/s (streamed / not) | share | "
                  "failed requests |", "|---|---|---|---|---|"]
    for n in sorted({r["concurrency"] for r in served["concurrency"]}):
        base = _throughput(local, n, None)
        rows = _served_pair(run, n)
        lines.append(f"| {n} | {base:,.0f} | {rows[0]['output_tokens_per_s']:,.0f} / {rows[1]['output_tokens_per_s']:,.0f} | "
                     f"{rows[0]['output_tokens_per_s'] / base:.0%} / {rows[1]['output_tokens_per_s'] / base:.0%} | "
                     f"{rows[0].get('failed', 0)} / {rows[1].get('failed', 0)} |")
    top = max((r for r in served["concurrency"] if r["stream"]), key=lambda r: r["concurrency"])
    if top.get("servers_cpu"):
        busy = ", ".join(f"{role} {use['cores']:.2f}" for role, use in top["servers_cpu"].items())
        lines += ["", prose(f"At {top['concurrency']} streams the serving processes used (cores): {busy}; the "
                            f"busiest client process {top['client_cpu_fraction']:.2f}.")]
    return "\n".join(lines)


def variant(base: Result, other: Result) -> str:
    """A served-only run (`--no-in-process`) on the same machine as `base`, beside it: served
    tokens/s as a share of `base`'s in-process engine, and the serving processes' CPU at the
    highest concurrency."""
    local = base.data["in_process"]
    lines = [f"| concurrent streams | in-process tokens/s (`{base.name}`) | `{base.name}` streamed / not | "
             f"`{other.name}` streamed / not |", "|---|---|---|---|"]

    def cell(run: Result, n: int) -> str:
        rate = [r["output_tokens_per_s"] for r in _served_pair(run, n)]
        base_rate = _throughput(local, n, None)
        return f"{rate[0]:,.0f} / {rate[1]:,.0f} ({rate[0] / base_rate:.0%} / {rate[1] / base_rate:.0%})"

    for n in _concurrencies((base, other)):
        lines.append(f"| {n} | {_throughput(local, n, None):,.0f} | {cell(base, n)} | {cell(other, n)} |")
    tops = [max((r for r in run.data["served"]["concurrency"] if r["stream"]), key=lambda r: r["concurrency"])
            for run in (base, other)]
    if all(t.get("servers_cpu") for t in tops):
        used = "; ".join(f"`{run.name}` router {t['servers_cpu']['router']['cores']:.2f}, frontend "
                         f"{t['servers_cpu']['frontend']['cores']:.2f}" for run, t in zip((base, other), tops))
        lines += ["", prose(f"Cores used at {tops[0]['concurrency']} streams: {used}.")]
    return "\n".join(lines)
