"""Workloads made ready for the simulator once, before any run: token ids (text tokenised,
prompts cut to the context), output lengths, statistics and a trace's own arrival times
(`Prepared`), and what the rate ladder estimates from them (`capacity`, `unloaded_latency`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..core.cost_model import CostModel
from ..sim.cluster import SimRequest
from .compare_config import CompareConfig
from .workloads import Workload, make_workload, poisson_arrivals


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
        arrivals compressed or stretched to that rate (its burstiness kept), else Poisson.

        Built from the prepared columns, not `requests.sim_request`: the workload's requests are
        gone, and ids are `<name>-<i>` after this workload's name (the grid's zipf is a renamed
        shared_prefix)."""
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


def load_tokenizer(path: str):
    """The tokenizer of the HF folder `path`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def tokenizer_path(cfg: CompareConfig) -> str:
    """The tokenizer's folder, made here before any worker process starts: the demo model is
    converted (torch, OpenMP threads) in this process only, never in a pool's child."""
    from ..models.demo import ensure_demo_model

    return cfg.tokenizer or str(ensure_demo_model())
