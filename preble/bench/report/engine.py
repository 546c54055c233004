"""Engine benchmark figures (`preble bench engine`, `results/engine/`): the top README's headline,
the table of every committed run and the targets in `results/engine/NOTES.md`, and the radix
cache's eviction benchmark."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .fmt import bare_pct, pct, prose, span
from .results import Result
from .traced import EXEMPT, measured_code

# Prefills shorter than this are kernel-launch bound and vary from machine to machine
# (results/engine/NOTES.md), so the headline quotes MFU only from this length up.
LONG_PREFILL_TOKENS = 2048
BATCH_1, BATCH_64, BATCH_256 = 1, 64, 256  # decode batches the notes quote
LLAMA3_8B_LAYERS = 32  # the matmul benchmark times one layer of each kind


def _decode(run: Result, batch: int) -> dict[str, Any]:
    return next(d for d in run.data["decode"] if d["batch"] == batch)


def _kilo(tokens: int) -> str:
    """Token counts as the prose names sizes: 2048 -> "2k"."""
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else f"{tokens:,}"


def _source(run: Result) -> str:
    """Where the figures come from: the file and the code it measured (and, for a file whose
    commit field names no commit, where that is explained)."""
    exempt = EXEMPT.get(run.path)
    note = f"; its commit field names no commit, see `{exempt.see}`" if exempt and exempt.see else ""
    return f"`{run.path}`, the code of {measured_code(run)}{note}"


def headline(run: Result) -> str:
    """The top README's engine sentence: prefill MFU on long prompts, the cached-prefix TTFT
    against a cold prompt, and decode against the bandwidth roofline."""
    long = [p for p in run.data["prefill"] if p["tokens"] >= LONG_PREFILL_TOKENS]
    t, decode = run.data["ttft"], run.data["decode"]
    return prose(f"On one {run.data['meta']['device']} with `{run.data['config']['model']}` (random weights), one engine prefills {span([p['tokens'] for p in long], _kilo)} tokens at "
            f"{span([p['mfu'] for p in long], bare_pct)}% MFU, answers {t['new_tokens']} new tokens on "
            f"a cached prefix of {t['cached_prefix']:,} tokens in {t['ratio']:.2f}x the time of a cold "
            f"{t['new_tokens']}-token prompt, and decodes at "
            f"{span([d['roofline_fraction'] for d in decode], bare_pct)}% of the bandwidth roofline "
            f"({_decode(run, BATCH_1)['step_ms']:.2f} ms per token at batch {BATCH_1}; {_source(run)}).")


def _steps(run: Result, batches: tuple[int, ...]) -> str:
    return " / ".join(f"{_decode(run, b)['step_ms']:.2f}" for b in batches)


def _mfu(run: Result) -> str:
    return " / ".join(pct(p["mfu"]) for p in run.data["prefill"])


def runs_table(*runs: Result) -> str:
    """Every committed run of the benchmark, one row each: what the versions table predicts
    against what each measured, with the device ceilings that run measured."""
    lengths = " / ".join(_kilo(p["tokens"]) for p in runs[0].data["prefill"])
    t = runs[0].data["ttft"]
    batches = (BATCH_1, BATCH_64, BATCH_256)
    lines = [f"| file | code | prefill MFU {lengths} | TTFT {t['new_tokens']} on {_kilo(t['cached_prefix'])} "
             f"cached / cold | decode ms B={' / '.join(map(str, batches))} | decode of roofline | "
             "shared-prefix batch, tokens/s | ceilings: matmul TFLOP/s, copy GB/s |",
             "|---|---|---|---|---|---|---:|---|"]
    for run in runs:
        d, t, c = run.data, run.data["ttft"], run.data["ceilings"]
        lines.append(
            f"| `{run.name}` | {measured_code(run)} | {_mfu(run)} | {t['with_cached_prefix_s'] * 1e3:.1f} / "
            f"{t['cold_s'] * 1e3:.1f} ms | {_steps(run, batches)} | "
            f"{span([x['roofline_fraction'] for x in d['decode']], bare_pct)}% | "
            f"{d['shared_prefix_offline']['output_tokens_per_s']:,.0f} | "
            f"{c['matmul_tflops']:.0f}, {c['copy_gbps']:.0f} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    """One of the engine's targets: what it asks, the figure a run gives for it, and whether that
    figure meets it."""

    text: str
    measure: Callable[[Result], str]
    met: Callable[[Result], bool]


MFU_TARGET = 0.80  # prefill at 2k and 8k tokens
FLOOR_TARGET = 1.2  # batch-1 decode step over the weight-bandwidth floor
ROOFLINE_TARGETS = {BATCH_64: 0.80, BATCH_256: 0.75}  # decode at 1k context, share of the roofline
TTFT_TARGET = 2.0  # 128 new tokens on an 8k cached prefix, over a cold 128-token prompt


def _long_mfu(run: Result) -> list[float]:
    return [p["mfu"] for p in run.data["prefill"] if p["tokens"] >= LONG_PREFILL_TOKENS]


def _floor_ratio(run: Result) -> float:
    d = _decode(run, BATCH_1)
    return d["step_ms"] / d["floor_ms"]


TARGETS = (
    Target(f"prefill >= {pct(MFU_TARGET)} MFU at 2k and 8k",
           lambda r: " and ".join(pct(x) for x in _long_mfu(r)),
           lambda r: min(_long_mfu(r)) >= MFU_TARGET),
    Target(f"batch-1 decode <= {FLOOR_TARGET}x the weight-bandwidth floor",
           lambda r: f"{_decode(r, BATCH_1)['step_ms']:.2f} ms = {_floor_ratio(r):.2f}x of "
                     f"{_decode(r, BATCH_1)['floor_ms']:.2f} ms",
           lambda r: _floor_ratio(r) <= FLOOR_TARGET),
    *(Target(f"batch-{b} decode at 1k context >= {pct(share)} of roofline",
             lambda r, b=b: pct(_decode(r, b)["roofline_fraction"]),
             lambda r, b=b, share=share: _decode(r, b)["roofline_fraction"] >= share)
      for b, share in ROOFLINE_TARGETS.items()),
    Target(f"8k cached prefix + 128 new: TTFT <= {TTFT_TARGET:g}x cold 128",
           lambda r: f"{r.data['ttft']['ratio']:.2f}x",
           lambda r: r.data["ttft"]["ratio"] <= TTFT_TARGET),
)


def targets_table(*runs: Result) -> str:
    """The targets against each run given (newest first), met or missed in each."""
    lines = ["| target | " + " | ".join(f"{measured_code(r)} (`{r.name}`)" for r in runs) + " |",
             "|---|" + "---|" * len(runs)]
    for t in TARGETS:
        lines.append(f"| {t.text} | "
                     + " | ".join(f"{t.measure(r)}: {'met' if t.met(r) else 'missed'}" for r in runs) + " |")
    return "\n".join(lines)


def radix_table(*runs: Result) -> str:
    """Microseconds per eviction step by tree size, one column per run (by commit); a size a run
    did not finish shows its file's note."""
    sizes = sorted({int(n) for r in runs for n in r.data["us_per_step"]})
    lines = ["| leaves | " + " | ".join(f"{measured_code(r)} (`{r.name}`, {r.data['steps']} steps)" for r in runs)
             + " |", "|---:|" + "---:|" * len(runs)]
    for n in sizes:
        cells = [f"{r.data['us_per_step'][str(n)]:,}" if str(n) in r.data["us_per_step"] else "-" for r in runs]
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    notes = [f"{measured_code(r)}: {r.data['note']}." for r in runs if r.data.get("note")]
    return "\n".join(lines + ([""] + notes if notes else []))


def split(v3: Result, v4: Result, new: Result) -> str:
    """The newest run against v4, set beside the spread between v3 and v4, two runs of decode
    code that did not change: whether a difference is more than run-to-run noise."""
    b1 = _decode(new, BATCH_1)["step_ms"] / _decode(v4, BATCH_1)["step_ms"] - 1
    spreads = [(abs(_decode(v4, d["batch"])["step_ms"] / d["step_ms"] - 1), d["batch"]) for d in v3.data["decode"]]
    spread, batch = max(spreads)
    return prose(f"Batch {BATCH_1} is {abs(b1):.0%} {'slower' if b1 > 0 else 'faster'} than v4 and batch {BATCH_64} at "
                 f"{pct(_decode(new, BATCH_64)['roofline_fraction'])} of roofline, against a spread of up to "
                 f"{spread:.0%} between v3 and v4 on the same decode steps (batch {batch}: "
                 f"{_decode(v3, batch)['step_ms']:.2f} vs {_decode(v4, batch)['step_ms']:.2f} ms).")


def overlap(in_turn: Result, overlapped: Result, profile: Result) -> str:
    """Decode with the engine's steps in turn and overlapped, on one machine: the engine benchmark
    run both ways, then the profile's wall time per step against the time the device was busy
    (the rest is time the device waited: host work, and the gaps between kernels)."""
    lines = [f"`{in_turn.name}` and `{overlapped.name}` ({in_turn.data['meta']['device']}, the code of "
             f"{measured_code(overlapped)}):", "",
             "| decode batch | steps in turn: ms, of roofline | overlapped: ms, of roofline | step time |",
             "|---:|---|---|---:|"]
    for before in in_turn.data["decode"]:
        after = _decode(overlapped, before["batch"])
        lines.append(f"| {before['batch']} | {before['step_ms']:.2f}, {pct(before['roofline_fraction'])} | "
                     f"{after['step_ms']:.2f}, {pct(after['roofline_fraction'])} | "
                     f"{after['step_ms'] / before['step_ms'] - 1:+.0%} |")
    cfg = profile.data["config"]
    lines += ["", f"`{profile.name}` ({profile.data['meta']['device']}, {cfg['context']}-token prompts, "
                  f"{cfg['steps']} steps each way, the code of {measured_code(profile)}):", "",
              "| decode batch | steps | wall ms per step | device busy ms | device waiting ms |",
              "|---:|---|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {'overlapped' if r['overlap'] else 'in turn'} | {r['wall_ms']:.2f} | "
              f"{r['device_busy_ms']:.2f} | {r['host_gap_ms']:.2f} |" for r in profile.data["rows"]]
    return "\n".join(lines)


def gemv(variants: Result, run: Result) -> str:
    """The decode step's matmuls alone (`scripts/gemv_variants.py`): each layer as the engine runs
    it and the best of the other forms, against the weight-read floor; then a whole step's matmuls
    at batch 1 and 256 beside the engine's step on the same kind of device."""
    rows = variants.data["rows"]
    lines = [f"`{variants.name}` ({variants.data['meta']['device']}, the code of {measured_code(variants)}; "
             "microseconds per call, replayed from a CUDA graph):", "",
             "| layer | batch | weight-read floor | as the engine runs it (`F.linear`) | best other form |",
             "|---|---:|---:|---:|---|"]
    for r in rows:
        other = min(("matmul_in_out", "linear_cublaslt"), key=lambda k: r[k])
        lines.append(f"| {r['layer']} | {r['batch']} | {r['floor_us']:.1f} | {r['linear']:.1f} | "
                     f"{r[other]:.1f} (`{other}`) |")
    lines.append("")
    for batch in (BATCH_1, BATCH_256):
        matmul_ms, weights_ms = (_step_sum(rows, batch, key) / 1e3 for key in ("linear", "floor_us"))
        step = _decode(run, batch)
        kv_ms = step["floor_ms"] - weights_ms
        lines.append(f"- Batch {batch}: one step's matmuls ({LLAMA3_8B_LAYERS} layers and the output head) take "
                     f"{matmul_ms:.2f} ms against {weights_ms:.2f} ms to read their weights; with the K/V read at "
                     f"the copy bandwidth ({kv_ms:.2f} ms, the rest of the roofline) that is "
                     f"{matmul_ms + kv_ms:.2f} ms, and the engine's whole step takes {step['step_ms']:.2f} ms "
                     f"(`{run.name}`).")
    return "\n".join(lines)


def _step_sum(rows: list[dict], batch: int, key: str) -> float:
    """One decode step's sum of `key` over the matmul rows of `batch`: every layer kind times the
    number of layers, plus the output head."""
    per = {r["layer"]: r[key] for r in rows if r["batch"] == batch}
    return sum(v for k, v in per.items() if k != "lm_head") * LLAMA3_8B_LAYERS + per["lm_head"]
