"""One in-process `LLMEngine` driven by hand: submit requests, step until they finish, time steps.

The one step loop of `bench engine` (`engine.py`), `profile` (`profile.py`) and `bench validate
--in-process` (`validate.py`). What each measures stays with it: the first two time steps on
`clock` (the device synchronised first); validate's replay runs on the engine's own clock,
which stamps the requests' first-token and finish times.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from ..core.sampling_params import SamplingParams

if TYPE_CHECKING:
    from ..core.request import Request
    from ..engine.engine import LLMEngine
    from ..sim.cluster import SimRequestLike


def sync_device(device: torch.device) -> None:
    """Wait for queued device work, so that a host clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EngineDriver:
    """Submits requests to `engine` and steps it. `tokens` draws prompt ids from a generator
    seeded with `seed`, below `vocab_cap`; timings read `clock`."""

    def __init__(self, engine: LLMEngine, seed: int = 0, vocab_cap: int = 30000,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.engine, self.vocab_cap, self.clock = engine, vocab_cap, clock
        self.gen = torch.Generator().manual_seed(seed)

    def tokens(self, n: int) -> list[int]:
        return torch.randint(3, self.vocab_cap, (n,), generator=self.gen).tolist()

    def add(self, prompt: list[int], max_tokens: int, request_id: str | None = None,
            greedy: bool = True) -> Request:
        """Queue a request for exactly `max_tokens` tokens (EOS ignored), greedy or sampled at the
        default temperature."""
        sampling = (SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True) if greedy
                    else SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        return self.engine.add_request(prompt, sampling, request_id)

    def run_until_done(self) -> None:
        while self.engine.has_work:
            self.engine.step()

    def clear_cache(self) -> None:
        """Evict every cached page no request holds."""
        self.engine.cache.evict(self.engine.cache.evictable_pages)

    def timed_first_token(self, prompt: list[int]) -> float:
        """Seconds from submission to the first token (the request is the only one)."""
        req = self.add(prompt, 1)
        sync_device(self.engine.device)
        t = self.clock()
        while not req.is_finished:
            self.engine.step()
        return self.clock() - t

    def decode_batch(self, batch: int, context: int, steps: int) -> list[Request]:
        """`batch` requests of `context`-token prompts, stepped until all decode (every one has its
        first token, then one step more); none finishes within `steps` more steps. The first
        admitted decode while the last ones prefill (their decodes taking part of each step's
        budget), so each asks for as many tokens as the prefill can take steps, plus `steps` and
        a margin."""
        prefill_budget = max(self.engine.scheduler.config.max_num_batched_tokens - batch, 1)
        prefill_steps = -(-batch * context // prefill_budget) + 1
        reqs = [self.add(self.tokens(context), prefill_steps + steps + 2) for _ in range(batch)]
        while any(not r.output_token_ids for r in reqs):
            self.engine.step()
        self.engine.step()
        return reqs

    def timed_steps(self, n: int, until_finished: Sequence[Request] = ()) -> float:
        """Mean seconds of `n` steps, fewer if one of `until_finished` finishes first. The clock
        stops once the device has run every step launched (an overlapping engine's last call
        returns before its step has run)."""
        sync_device(self.engine.device)
        t = self.clock()
        steps = 0
        while steps < n and not any(r.is_finished for r in until_finished):
            self.engine.step()
            steps += 1
        sync_device(self.engine.device)
        return (self.clock() - t) / steps

    def replay(self, requests: Sequence[SimRequestLike], greedy: bool = True,
               sleep: Callable[[float], None] = time.sleep) -> Iterator[tuple[Request, float]]:
        """Open loop, the way a worker's loop runs: each request is added once the engine's clock
        has passed its arrival (seconds from the start), the engine stepped in between; yields
        each request as it finishes, with the start time on the engine's clock."""
        engine = self.engine
        pending = sorted(requests, key=lambda r: r.arrival)
        i, start = 0, engine.clock()
        while i < len(pending) or engine.has_work:
            now = engine.clock() - start
            while i < len(pending) and pending[i].arrival <= now:
                r = pending[i]
                i += 1
                self.add(list(r.prompt_token_ids), r.max_tokens, r.request_id, greedy)
            if not engine.has_work:
                sleep(max(0.0, pending[i].arrival - now))
                continue
            for req in engine.step():
                if req.is_finished:
                    yield req, start
