"""The paper's comparison, run in the simulator: workloads x routing policies x rates x replicas.

Every point plays the same requests with the same Poisson arrivals under each policy, on
replicas that run the real local scheduler, radix cache and KV accounting with a measured cost
model (`preble.sim`). Rates climb a geometric ladder from a light load (one where round_robin's
mean latency is within `light_latency` x the unloaded one) until round_robin saturates (its p99
latency passes `saturation_factor` times its light-load value), plus one step beyond. Three further studies reuse the knee rate of each workload: the local queue
policies, an ablation of E2 in the paper's order, and scaling to many replicas at the same
load per replica.

Each run's statistics leave out its first `warmup_fraction` of arrivals: they meet cold caches,
which would otherwise dominate the tail of short runs. Text workloads are tokenised once with the given tokenizer (the demo model's by default); the
cost model, not the tokenizer, sets the model's speed.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..core.cost_model import CostModel
from ..core.pages import DEFAULT_PAGE_SIZE
from ..core.routing import DEFAULT_POLICY, default_config
from ..core.scheduler_config import SchedulerConfig
from ..sim.cluster import SimConfig, SimRequest, simulate
from ..sim.report import summarize
from .provenance import source_revision
from .workloads import Workload, make_workload, poisson_arrivals
from .workloads.report import PREBLE_WORKLOADS, compare_to_paper

# the paper's comparison, and the router's default policy
POLICIES = ("round_robin", "least_load", "cache_aware", "prefix_hash", "e2", DEFAULT_POLICY)
METRICS = ("mean_latency", "p50_latency", "p99_latency", "mean_ttft", "p90_ttft", "p99_ttft", "mean_tpot",
           "throughput", "hit_ratio")


@dataclass(frozen=True)
class Variant:
    """One configuration of the cluster under test: a routing policy, changes to its default
    config, a local queue."""

    label: str
    policy: str
    local_policy: str = "preble"
    overrides: dict = field(default_factory=dict)  # fields of the policy's config


LOCAL_VARIANTS = tuple(Variant(f"e2 + {q}", "e2", q) for q in ("fcfs", "lpm", "preble"))
# The paper's ablation order: E2's exploit/explore alone, + rebalancing and replication,
# + prefill/decode balancing, + the priority-fair local queue (lpm, SGLang's, before it).
_OFF = dict(rebalance=False, replicate=False, pd_balance=False)
ABLATION_VARIANTS = (
    Variant("round_robin + lpm", "round_robin", "lpm"),
    Variant("E2 exploit/explore", "e2", "lpm", _OFF),
    Variant("+ rebalance/replicate", "e2", "lpm", dict(pd_balance=False)),
    Variant("+ P/D balancing", "e2", "lpm"),
    Variant("+ priority-fair queue", "e2", "preble"),
)


@dataclass(frozen=True)
class CompareConfig:
    workloads: tuple[str, ...] = PREBLE_WORKLOADS
    policies: tuple[str, ...] = POLICIES
    replicas: tuple[int, ...] = (2, 4, 8)
    cost_model: str = "results/cost_models/h100_llama3-8b.json"
    tokenizer: str | None = None  # HF folder for text workloads; None: the demo model's
    num_pages: int = 24_000  # KV pages per replica (an H100 80GB holds ~400k Llama-3-8B tokens)
    page_size: int = DEFAULT_PAGE_SIZE
    max_num_batched_tokens: int = 8192  # the local scheduler's token budget per step
    max_model_len: int = 32_768  # context window (Llama-3.1-8B's is longer; longer prompts are cut)
    duration_s: float = 120.0  # span of arrivals of each run
    min_requests: int = 300
    max_requests: int = 6000
    light_load: float = 0.15  # the first rate, as a fraction of the cluster's estimated capacity
    light_latency: float = 2.0  # ... halved until round_robin's mean latency is within this x unloaded
    max_halvings: int = 8
    rate_step: float = 1.5  # each rate is this times the last
    max_rates: int = 8
    saturation_factor: float = 5.0  # round_robin saturates when its p99 passes this x the first
    warmup_fraction: float = 0.2  # the first arrivals of a run, left out of its statistics (cold caches)
    scaling_replicas: tuple[int, ...] = (16, 32, 64)
    scaling_workloads: tuple[str, ...] = ("toolbench", "videoqa", "loogle")
    scaling_policies: tuple[str, ...] = ("round_robin", "least_load", "cache_aware", "e2", DEFAULT_POLICY)
    scaling_max_requests: int = 20_000
    study_replicas: int = 4  # replicas of the local-queue and ablation studies
    seed: int = 0
    jobs: int = 2  # worker processes

    def sim_config(self, replicas: int, variant: Variant) -> SimConfig:
        policy_config = None
        if variant.overrides:
            policy_config = replace(default_config(variant.policy, self.page_size, self.seed), **variant.overrides)
        return SimConfig(replicas=replicas, policy=variant.policy, policy_config=policy_config,
                         page_size=self.page_size, num_pages=self.num_pages, seed=self.seed,
                         scheduler=SchedulerConfig(max_num_batched_tokens=self.max_num_batched_tokens,
                                                   max_model_len=self.max_model_len,
                                                   local_policy=variant.local_policy))


@dataclass
class Prepared:
    """A workload as token ids, with what the rate ladder needs to know of it."""

    name: str
    prompts: list[list[int]]
    max_tokens: list[int]
    stats: dict[str, Any]
    arrivals: list[float] | None = None  # a trace's own arrival times (seconds); None: Poisson at any rate

    @property
    def own_rate(self) -> float | None:
        """A trace's mean arrival rate (requests/s); None for workloads without arrival times."""
        a = self.arrivals
        return (len(a) - 1) / (a[-1] - a[0]) if a and len(a) > 1 and a[-1] > a[0] else None

    def requests(self, n: int, rate: float, seed: int) -> list[SimRequest]:
        """The first `n` requests at mean `rate` (the same for every policy): a trace's own
        arrivals compressed or stretched to that rate (its burstiness kept), else Poisson."""
        n = min(n, len(self.prompts))
        if self.own_rate is not None:
            scale = self.own_rate / rate
            times = [(t - self.arrivals[0]) * scale for t in self.arrivals[:n]]
        else:
            times = poisson_arrivals(n, rate, seed)
        return [SimRequest(f"{self.name}-{i}", times[i], self.prompts[i], self.max_tokens[i]) for i in range(n)]


def prepare(name: str, n: int, tokenizer, seed: int, max_prompt: int, stats_requests: int = 1000,
            params: dict | None = None, trace_arrivals: bool = False) -> Prepared:
    """The workload as token ids (each distinct text tokenised once: prompts repeat a lot), with
    the statistics of its first `stats_requests` requests; `trace_arrivals` keeps its own
    arrival times (traces)."""
    wl = make_workload(name, num_requests=n, seed=seed, tokenizer=tokenizer, **(params or {}))
    encoded: dict[str, list[int]] = {}  # one list per distinct text: copies to worker processes stay small
    prompts = []
    for r in wl.requests:
        if r.prompt_token_ids is not None:
            ids = list(r.prompt_token_ids[:max_prompt])
        else:
            ids = encoded.get(r.prompt)
            if ids is None:
                ids = encoded[r.prompt] = tokenizer.encode(r.prompt, add_special_tokens=False)[:max_prompt]
        prompts.append(ids)
    head = [replace(r, prompt=None, prompt_token_ids=ids)
            for r, ids in zip(wl.requests[:stats_requests], prompts)]
    stats = Workload(name, head, wl.params).stats()
    arrivals = [r.arrival for r in wl.requests] if trace_arrivals else None
    return Prepared(name, prompts, [r.max_tokens for r in wl.requests], stats, arrivals)


def capacity(prep: Prepared, cost: CostModel, batch: int = 64) -> float:
    """Requests/s one replica could serve if every shared token hit its cache: the workload's
    unshared prefill plus its share of decode steps at `batch` sequences."""
    shared = prep.stats["shared_fraction"]
    total = 0.0
    for p, out in zip(prep.prompts, prep.max_tokens):
        n = len(p)
        cached = int(n * shared)
        per_token = cost.decode_step_time(batch, batch * (n + out // 2)) / batch
        total += cost.prefill_time(n - cached, cached) + out * per_token
    return len(prep.prompts) / total


def unloaded_latency(prep: Prepared, cost: CostModel) -> float:
    """Mean latency of the workload's requests alone on a replica with an empty cache."""
    total = sum(cost.prefill_time(len(p)) + out * cost.decode_step_time(1, len(p) + out // 2)
                for p, out in zip(prep.prompts, prep.max_tokens))
    return total / len(prep.prompts)


def _summary(records) -> dict[str, Any]:
    s = summarize(records)
    return {**{k: s[k] for k in METRICS}, "requests": s["requests"], "branches": s["branches"]}


class Runner:
    """Runs points of one workload; sized and seeded by the config."""

    def __init__(self, cfg: CompareConfig, prep: Prepared, cost: CostModel) -> None:
        self.cfg, self.prep, self.cost = cfg, prep, cost

    def size(self, rate: float) -> int:
        """Requests of a run: `duration_s` of arrivals within the bounds; a trace whole (to the bound)."""
        cfg = self.cfg
        if self.prep.arrivals is not None:
            return min(cfg.max_requests, len(self.prep.prompts))
        return max(cfg.min_requests, min(cfg.max_requests, round(rate * cfg.duration_s)))

    def point(self, replicas: int, rate: float, variant: Variant, n: int | None = None) -> dict[str, Any]:
        reqs = self.prep.requests(n or self.size(rate), rate, self.cfg.seed)
        records = simulate(reqs, self.cfg.sim_config(replicas, variant), self.cost)
        steady = records[int(len(records) * self.cfg.warmup_fraction):]  # records come in arrival order
        return {"workload": self.prep.name, "replicas": replicas, "rate": rate,
                "policy": variant.label, **_summary(steady)}

    def light_rate(self, replicas: int) -> float:
        """`light_load` of the estimated capacity, halved while round_robin is far from unloaded
        there (the estimate assumes every shared token hits; a cache that thrashes serves less)."""
        cfg = self.cfg
        rate = cfg.light_load * replicas * capacity(self.prep, self.cost)
        limit = cfg.light_latency * unloaded_latency(self.prep, self.cost)
        for _ in range(cfg.max_halvings):
            if self.point(replicas, rate, Variant("round_robin", "round_robin"))["mean_latency"] <= limit:
                break
            rate /= 2
        return rate

    def climb(self, replicas: int, log: Callable[[str], None]) -> tuple[list[dict[str, Any]], float | None]:
        """round_robin up the rate ladder: its rows (one per rate) and the knee (None: never)."""
        cfg = self.cfg
        rate = self.light_rate(replicas)
        rows, knee = [], None
        for _ in range(cfg.max_rates):
            rows.append(self.point(replicas, rate, Variant("round_robin", "round_robin")))
            log(f"{self.prep.name} x{replicas} {rate:.3g}/s round_robin: mean {rows[-1]['mean_latency']:.3g} s "
                f"p99 {rows[-1]['p99_latency']:.3g} s")
            if knee is not None:
                break
            if rows[-1]["p99_latency"] > cfg.saturation_factor * rows[0]["p99_latency"]:
                knee = rate
            rate *= cfg.rate_step
        return rows, knee

    def ladder(self, replicas: int, policies: Sequence[str],
               log: Callable[[str], None]) -> tuple[list[dict[str, Any]], float | None]:
        """Every policy at every rate of round_robin's ladder: the rows and the knee."""
        rr, knee = self.climb(replicas, log)
        rows = [row if p == "round_robin" else self.point(replicas, row["rate"], Variant(p, p))
                for row in rr for p in policies]
        return rows, knee


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _tokenizer_path(cfg: CompareConfig) -> str:
    """The tokenizer's folder, made here before any worker process starts: the demo model is
    converted (torch, OpenMP threads) in this process only, never in a pool's child."""
    from ..models.demo import ensure_demo_model

    return cfg.tokenizer or str(ensure_demo_model())


def _pool(jobs: int, prepared: dict[str, Prepared] | None = None) -> ProcessPoolExecutor:
    """Worker processes started fresh ("spawn"): a child forked from a process whose torch or
    tokenizer threads are running can deadlock in their locks. `prepared` is copied to each
    child once (prompts that repeat are one object, so the copy stays small)."""
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_install if prepared else None,
                               initargs=(prepared,) if prepared else ())


_PREPARED: dict[str, Prepared] = {}  # in each simulation process: the workloads, set by `_pool`


def _install(prepared: dict[str, Prepared]) -> None:
    _PREPARED.update(prepared)


def _prepare_task(cfg: CompareConfig, name: str, tokenizer: str) -> Prepared:
    scaling = name in cfg.scaling_workloads and bool(cfg.scaling_replicas)
    n = max(cfg.max_requests, cfg.scaling_max_requests if scaling else 0)
    return prepare(name, n, _tokenizer(tokenizer), cfg.seed, cfg.max_model_len - 1024)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _climb_task(cfg: CompareConfig, name: str, replicas: int) -> tuple[list[dict[str, Any]], float | None]:
    return Runner(cfg, _PREPARED[name], CostModel.load(cfg.cost_model)).climb(replicas, _log)


def _point_task(cfg: CompareConfig, name: str, study: str, replicas: int, rate: float, variant: Variant,
                n: int | None) -> dict[str, Any]:
    row = Runner(cfg, _PREPARED[name], CostModel.load(cfg.cost_model)).point(replicas, rate, variant, n)
    _log(f"{name} {study} x{replicas} {variant.label}: mean {row['mean_latency']:.3g} s "
         f"p99 {row['p99_latency']:.3g} s")
    return {"study": study, **row}


def _studies(cfg: CompareConfig, name: str, knees: dict[int, float | None]) -> list[tuple]:
    """The study points of one workload: (study, replicas, rate, variant, requests)."""
    out = []
    knee = knees.get(cfg.study_replicas)
    if knee is not None:
        out += [("local", cfg.study_replicas, knee, v, None) for v in LOCAL_VARIANTS]
        out += [("ablation", cfg.study_replicas, knee, v, None) for v in ABLATION_VARIANTS]
    top = max(cfg.replicas)
    if name in cfg.scaling_workloads and knees.get(top) is not None:
        per_replica = knees[top] / top
        for r in cfg.scaling_replicas:
            n = min(cfg.scaling_max_requests, round(per_replica * r * cfg.duration_s))
            out += [("scaling", r, per_replica * r, Variant(p, p), n) for p in cfg.scaling_policies]
    return out


def run(cfg: CompareConfig) -> dict[str, Any]:
    """Prepare the workloads, run every ladder, then every study point, `jobs` processes at a time."""
    tokenizer = _tokenizer_path(cfg)
    with _pool(cfg.jobs) as pool:
        names = cfg.workloads
        prepared = dict(zip(names, pool.map(_prepare_task, [cfg] * len(names), names, [tokenizer] * len(names))))
    ladders = [(w, r) for w in cfg.workloads for r in cfg.replicas]
    others = [p for p in cfg.policies if p != "round_robin"]
    with _pool(cfg.jobs, prepared) as pool:
        climbs = dict(zip(ladders, pool.map(_climb_task, *zip(*[(cfg, w, r) for w, r in ladders]))))
        knees = {w: {r: climbs[w, r][1] for r in cfg.replicas} for w in cfg.workloads}
        grid = [(cfg, w, "ladder", r, row["rate"], Variant(p, p), None)
                for (w, r), (rows, _) in climbs.items() for row in rows for p in others]
        points = [(cfg, w, *pt) for w in cfg.workloads for pt in _studies(cfg, w, knees[w])]
        done = list(pool.map(_point_task, *zip(*(grid + points)))) if grid or points else []
    ladder_rows, studied = done[:len(grid)], done[len(grid):]
    cost = CostModel.load(cfg.cost_model)
    parts = []
    for w in cfg.workloads:
        prep = prepared[w]
        part = {"workload": w, "stats": prep.stats, "capacity_per_replica": capacity(prep, cost),
                "unloaded_latency": unloaded_latency(prep, cost), "knees": knees[w],
                "rows": [row for r in cfg.replicas for row in climbs[w, r][0]]
                + [{k: v for k, v in row.items() if k != "study"}
                   for row, pt in zip(ladder_rows, grid) if pt[1] == w]}
        for study in ("local", "ablation", "scaling"):
            part[study] = [{k: v for k, v in row.items() if k != "study"}
                           for row, pt in zip(studied, points) if pt[1] == w and row["study"] == study]
        parts.append(part)
    meta = {**source_revision(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "device": f"simulated from {Path(cfg.cost_model).name}", "cost_model": cost.to_dict()}
    return {"meta": meta, "config": asdict(cfg), "workloads": parts}


def merged(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs of one configuration over different workloads (e.g. on several
    machines); the first run's metadata, with every run's commit and date."""
    first = docs[0]
    ignore = {"workloads", "jobs"}
    for d in docs[1:]:
        a = {k: v for k, v in first["config"].items() if k not in ignore}
        b = {k: v for k, v in d["config"].items() if k not in ignore}
        if a != b:
            raise ValueError("the runs to merge have different configurations")
    parts = [w for d in docs for w in d["workloads"]]
    config = {**first["config"], "workloads": [w["workload"] for w in parts]}
    meta = {**first["meta"], "runs": [{k: d["meta"][k] for k in ("commit", "date")} for d in docs]}
    return {"meta": meta, "config": config, "workloads": parts}


# ------------------------------------------------------------------------------ the targets


def _at(rows: list[dict], rate: float, policy: str) -> dict | None:
    return next((r for r in rows if r["rate"] == rate and r["policy"] == policy), None)


def targets(doc: dict[str, Any]) -> dict[str, Any]:
    """The issue's three targets, per replica count, from the comparison's rows.

    - at the knee (round_robin's p99 past saturation_factor x light load), e2's mean and p99
      latency are >= 2x lower than round_robin's on at least 4 of the 5 workloads;
    - at every rate, e2's mean latency is within 5% of the best baseline's;
    - on toolbench (Zipf tool popularity) at the knee, e2's p99 is >= 1.3x lower than
      cache_aware's."""
    out: dict[str, Any] = {}
    replicas = sorted({r["replicas"] for w in doc["workloads"] for r in w["rows"]})
    for n in replicas:
        knee_gain, worst, toolbench = {}, {}, None
        for w in doc["workloads"]:
            rows = [r for r in w["rows"] if r["replicas"] == n]
            knee = w["knees"].get(n, w["knees"].get(str(n)))
            if knee is not None:
                e2, rr = _at(rows, knee, "e2"), _at(rows, knee, "round_robin")
                if e2 and rr:
                    knee_gain[w["workload"]] = {"rate": knee,
                                                "mean": rr["mean_latency"] / e2["mean_latency"],
                                                "p99": rr["p99_latency"] / e2["p99_latency"]}
                ca = _at(rows, knee, "cache_aware")
                if w["workload"] == "toolbench" and e2 and ca:
                    toolbench = ca["p99_latency"] / e2["p99_latency"]
            ratios = []
            for rate in sorted({r["rate"] for r in rows}):
                e2 = _at(rows, rate, "e2")
                base = [r["mean_latency"] for r in rows if r["rate"] == rate and r["policy"] != "e2"]
                if e2 and base:
                    ratios.append((e2["mean_latency"] / min(base), rate))
            if ratios:
                worst[w["workload"]] = dict(zip(("ratio", "rate"), max(ratios)))
        wins = [k for k, g in knee_gain.items() if g["mean"] >= 2 and g["p99"] >= 2]
        out[str(n)] = {
            "knee_gain": knee_gain, "workloads_2x": wins, "met_2x_on_4": len(wins) >= 4,
            "worst_vs_best_baseline": worst,
            "met_within_5pct": all(v["ratio"] <= 1.05 for v in worst.values()) if worst else False,
            "toolbench_p99_vs_cache_aware": toolbench,
            "met_toolbench_1_3x": toolbench is not None and toolbench >= 1.3,
        }
    return out


# ------------------------------------------------------------------------------ reporting


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def markdown(doc: dict[str, Any]) -> str:
    meta, cfg = doc["meta"], doc["config"]
    lines = [f"# Policy comparison ({meta['device']})", "",
             f"commit {meta['commit']}, {meta['date']}. Each replica: {cfg['num_pages']} KV pages of "
             f"{cfg['page_size']} tokens, a {cfg['max_num_batched_tokens']}-token step budget; "
             f"arrivals Poisson over {cfg['duration_s']:.0f} s ({cfg['min_requests']}-"
             f"{cfg['max_requests']} requests a run). Latencies in seconds.", "", "## Workloads", "",
             compare_to_paper({w["workload"]: w["stats"] for w in doc["workloads"] if "stats" in w})]
    for w in doc["workloads"]:
        lines += [f"## {w['workload']}", ""]
        for n in sorted({r["replicas"] for r in w["rows"]}):
            rows = [r for r in w["rows"] if r["replicas"] == n]
            knee = w["knees"].get(n, w["knees"].get(str(n)))
            pols = list(dict.fromkeys(r["policy"] for r in rows))
            lines += [f"{n} replicas (knee: {_fmt(knee)}/s). Mean / p99 latency:", "",
                      "| rate/s | " + " | ".join(pols) + " |", "|---:|" + "---:|" * len(pols)]
            for rate in sorted({r["rate"] for r in rows}):
                cells = []
                for p in pols:
                    r = _at(rows, rate, p)
                    cells.append(f"{_fmt(r['mean_latency'])} / {_fmt(r['p99_latency'])}" if r else "-")
                mark = " (knee)" if knee == rate else ""
                lines.append(f"| {rate:.3g}{mark} | " + " | ".join(cells) + " |")
            lines.append("")
        for key, title in (("local", "Local queue policies"), ("ablation", "Ablation"),
                           ("scaling", "Scaling")):
            if not w.get(key):
                continue
            lines += [f"{title}:", "", "| replicas | rate/s | variant | mean | p99 | mean TTFT | hit ratio |",
                      "|---:|---:|---|---:|---:|---:|---:|"]
            lines += [f"| {r['replicas']} | {r['rate']:.3g} | {r['policy']} | {_fmt(r['mean_latency'])} | "
                      f"{_fmt(r['p99_latency'])} | {_fmt(r['mean_ttft'])} | {r['hit_ratio']:.2f} |"
                      for r in w[key]]
            lines.append("")
    t = targets(doc)
    lines += ["## Targets", ""]
    for n, v in t.items():
        gains = ", ".join(f"{k} {g['mean']:.2f}x / {g['p99']:.2f}x" for k, g in v["knee_gain"].items())
        worst = ", ".join(f"{k} {x['ratio']:.2f} at {x['rate']:.3g}/s" for k, x in v["worst_vs_best_baseline"].items())
        lines += [f"- {n} replicas: e2 over round_robin at the knee (mean / p99): {gains}; "
                  f">= 2x on {len(v['workloads_2x'])} of {len(v['knee_gain'])} "
                  f"({'met' if v['met_2x_on_4'] else 'missed'}).",
                  f"  e2 mean / best baseline mean, worst rate: {worst} "
                  f"({'met' if v['met_within_5pct'] else 'missed'}).",
                  f"  toolbench p99, cache_aware / e2 at the knee: {_fmt(v['toolbench_p99_vs_cache_aware'])} "
                  f"({'met' if v['met_toolbench_1_3x'] else 'missed'})."]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], out: Path) -> list[Path]:
    """Mean and p99 latency vs rate: one PNG per replica count, a column per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    replicas = sorted({r["replicas"] for w in doc["workloads"] for r in w["rows"]})
    for n in replicas:
        ws = doc["workloads"]
        fig, axes = plt.subplots(2, len(ws), figsize=(3.2 * len(ws), 5.6), squeeze=False)
        for j, w in enumerate(ws):
            rows = [r for r in w["rows"] if r["replicas"] == n]
            for i, metric in enumerate(("mean_latency", "p99_latency")):
                ax = axes[i][j]
                for p in dict.fromkeys(r["policy"] for r in rows):
                    pts = sorted((r["rate"], r[metric]) for r in rows if r["policy"] == p)
                    ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", ms=3, label=p)
                ax.set_yscale("log")
                ax.set_title(f"{w['workload']}" if i == 0 else "")
                ax.set_xlabel("requests/s" if i == 1 else "")
                ax.set_ylabel(f"{metric.replace('_', ' ')} (s)" if j == 0 else "")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{n} replicas, {doc['meta']['device']}")
        fig.tight_layout()
        path = out.with_name(f"{out.stem}_{n}r.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written

