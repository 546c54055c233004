"""The continuous-batching scheduler, driven without a model: fake tokens, fake clock."""

from __future__ import annotations

import random

import pytest

from preble.core.pages import PageAllocator
from preble.core.radix_cache import RadixCache
from preble.core.request import Request, Status
from preble.core.sampling_params import SamplingParams
from preble.core.scheduler import RequestTooLong, Scheduler
from preble.core.scheduler_config import SchedulerConfig

from .clocks import ManualClock

EOS = 0



def make_scheduler(num_pages=64, page_size=4, **kw) -> Scheduler:
    alloc = PageAllocator(num_pages, page_size)
    clock = ManualClock()
    config = SchedulerConfig(**{"kv_watermark": 0.0, "local_policy": "fcfs", **kw})
    return Scheduler(config, alloc, RadixCache(alloc, clock), clock)


def request(name: str, prompt: list[int], max_tokens: int = 4, arrival: float = 0.0) -> Request:
    return Request(name, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), arrival,
                   frozenset({EOS}))


def fake_token(req: Request) -> int:
    return 1 + (req.num_tokens * 7 + len(req.request_id)) % 97


def run_step(s: Scheduler):
    out = s.schedule()
    sampled = {c.request: fake_token(c.request) for c in out.chunks if c.samples}
    return out, s.update(out, sampled)


def run_to_completion(s: Scheduler, max_steps: int = 10_000) -> int:
    for step in range(max_steps):
        if not s.has_work:
            return step
        run_step(s)
    raise AssertionError("scheduler did not drain: livelock or deadlock")


def assert_pages_conserved(s: Scheduler) -> None:
    """Every page is free, in the cache, or owned by exactly one running request."""
    owned = [p for r in s.running for p in r.pages[_tree_prefix_len(r):]]
    assert len(owned) == len(set(owned))
    assert s.allocator.num_free + s.cache.total_pages + len(owned) == s.allocator.num_pages


def _tree_prefix_len(req: Request) -> int:
    """How many leading pages of `req` the cache owns: the pages on its locked path."""
    n, node = 0, req.cache_node
    while node is not None and node.parent is not None:
        n += len(node.pages)
        node = node.parent
    return n


def test_decodes_go_first_then_prefill_chunks_within_the_budget():
    s = make_scheduler(max_num_batched_tokens=10)
    for i in range(3):
        s.add_request(request(f"d{i}", [10 + i, 20, 30], max_tokens=50))
    run_step(s)  # three short prefills: 9 tokens
    s.add_request(request("long", list(range(100, 130))))
    out, _ = run_step(s)
    assert [(c.request.request_id, c.num_tokens) for c in out.chunks] == [
        ("d0", 1), ("d1", 1), ("d2", 1), ("long", 7)]
    assert not out.chunks[-1].samples


def test_chunked_prefill_spreads_a_long_prompt_over_steps():
    s = make_scheduler(max_num_batched_tokens=16)
    req = request("r", list(range(1, 51)))
    s.add_request(req)
    chunks = []
    while req.first_token_time is None:
        out, _ = run_step(s)
        chunks += [(c.start, c.num_tokens, c.samples) for c in out.chunks]
    assert chunks == [(0, 16, False), (16, 16, False), (32, 16, False), (48, 2, True)]
    assert len(req.output_token_ids) == 1


def test_max_prefill_chunk_caps_one_request_per_step():
    s = make_scheduler(max_num_batched_tokens=32, max_prefill_chunk=5)
    s.add_request(request("a", list(range(1, 13))))
    s.add_request(request("b", list(range(20, 28))))
    out, _ = run_step(s)
    assert [(c.request.request_id, c.num_tokens) for c in out.chunks] == [("a", 5), ("b", 5)]


def test_admission_waits_for_kv_and_resumes_when_it_frees():
    s = make_scheduler(num_pages=10, page_size=4)
    a, b = request("a", list(range(1, 31)), max_tokens=3), request("b", list(range(40, 60)), max_tokens=3)
    s.add_request(a)
    s.add_request(b)
    run_step(s)
    assert a.status is Status.RUNNING and b.status is Status.WAITING  # a holds 8 of 10 pages
    run_to_completion(s)
    assert a.finish_reason == b.finish_reason == "length"
    assert len(b.output_token_ids) == 3


def test_admission_evicts_unlocked_cache_first():
    s = make_scheduler(num_pages=10, page_size=4)
    s.add_request(request("a", list(range(1, 29)), max_tokens=1))
    run_to_completion(s)
    assert s.cache.evictable_pages == 7  # 28 prompt tokens + 1 output: 7 full pages computed
    s.add_request(request("b", list(range(50, 82)), max_tokens=1))  # needs 8 pages, 3 free
    run_to_completion(s)
    assert s.cache.match_len(list(range(1, 29))) < 28


def test_decode_out_of_kv_preempts_the_latest_and_recomputes_it():
    s = make_scheduler(num_pages=6, page_size=4)
    a = request("a", list(range(1, 9)), max_tokens=12)
    b = request("b", list(range(20, 28)), max_tokens=12)
    s.add_request(a)
    s.add_request(b)
    preempted = []
    for _ in range(200):
        if not s.has_work:
            break
        out, _ = run_step(s)
        preempted += out.preempted
        assert_pages_conserved(s)
    assert preempted and preempted[0] is b
    assert a.finish_reason == b.finish_reason == "length"
    assert len(a.output_token_ids) == len(b.output_token_ids) == 12
    assert b.num_preemptions >= 1


def test_running_cap_limits_admissions():
    s = make_scheduler(max_running_requests=2)
    for i in range(5):
        s.add_request(request(f"r{i}", [i + 1] * 5, max_tokens=2))
    out, _ = run_step(s)
    assert len(out.chunks) == 2 and len(s.running) == 2


def test_cached_tokens_equal_the_shared_prefix_to_page_granularity():
    s = make_scheduler(page_size=4)
    shared = list(range(1, 31))
    s.add_request(request("first", shared + [90, 91]))
    run_to_completion(s)
    second = request("second", shared + [70, 71, 72])
    s.add_request(second)
    run_to_completion(s)
    assert second.num_cached_tokens == 28


def test_a_prompt_beyond_the_window_is_refused_up_front():
    s = make_scheduler(num_pages=8, page_size=4)
    with pytest.raises(RequestTooLong):
        s.add_request(request("big", list(range(1, 40))))
    with pytest.raises(RequestTooLong):
        s.add_request(request("empty", []))
    assert not s.has_work


def test_abort_frees_everything():
    s = make_scheduler()
    a = request("a", list(range(1, 20)), max_tokens=100)
    s.add_request(a)
    run_step(s)
    s.abort(a)
    assert a.finish_reason == "abort" and not s.has_work
    assert s.cache.locked_pages == 0
    assert s.allocator.num_free + s.cache.evictable_pages == s.allocator.num_pages


@pytest.mark.parametrize("policy", ["fcfs", "lpm", "preble"])
@pytest.mark.parametrize("seed", range(4))
def test_random_load_under_kv_pressure_drains_with_every_request_finished_once(policy, seed):
    rng = random.Random(seed)
    page_size = rng.choice([1, 2, 4])
    s = make_scheduler(num_pages=64 // page_size, page_size=page_size, local_policy=policy,
                       max_num_batched_tokens=rng.choice([8, 32]), max_running_requests=6)
    prefixes = [[rng.randrange(1, 50) for _ in range(rng.randint(4, 20))] for _ in range(3)]
    reqs = []
    for i in range(30):
        prompt = rng.choice(prefixes) + [rng.randrange(1, 50) for _ in range(rng.randint(1, 10))]
        reqs.append(request(f"r{i}", prompt, max_tokens=rng.randint(1, 16)))
    finished: list[Request] = []
    for _ in range(20_000):
        if reqs and rng.random() < 0.3:
            s.add_request(reqs.pop())
        if not s.has_work and not reqs:
            break
        out = s.schedule()
        finished += s.update(out, {c.request: fake_token(c.request) for c in out.chunks if c.samples})
        assert_pages_conserved(s)
        assert s.cache.locked_pages <= s.allocator.num_pages
    assert len(finished) == 30 and len({id(r) for r in finished}) == 30
    assert s.num_preemptions > 0  # the pool is small enough that this load must preempt
    for r in finished:
        assert len(r.output_token_ids) == r.sampling.max_tokens
    assert s.cache.locked_pages == 0
    assert s.allocator.num_free + s.cache.evictable_pages == s.allocator.num_pages


# --------------------------------------------------------------------------- steps launched ahead

def token_at(req: Request, position: int) -> int:
    """A fake model whose token depends only on the request and the position it fills (so a
    step launched before the last one's tokens are known samples what a waiting step would);
    about one position in twelve is EOS."""
    h = hash((req.request_id, position)) % 1200
    return EOS if h < 100 else 1 + h % 97


def random_requests(rng: random.Random, n: int) -> list[Request]:
    prefixes = [[rng.randrange(1, 50) for _ in range(rng.randint(4, 20))] for _ in range(3)]
    reqs = []
    for i in range(n):
        prompt = rng.choice(prefixes) + [rng.randrange(1, 50) for _ in range(rng.randint(1, 10))]
        sampling = SamplingParams(max_tokens=rng.randint(1, 16), ignore_eos=rng.random() < 0.5)
        reqs.append(Request(f"r{i}", prompt, sampling, 0.0, frozenset({EOS})))
    return reqs


class Draws:
    """A fake seeded sampler: a request's n-th draw gives its n-th token of a fixed sequence,
    whichever position it fills, and a draw whose token is dropped is spent all the same (as a
    seeded generator's is)."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    def __call__(self, req: Request, position: int) -> int:
        n = self.count.get(req.request_id, 0)
        self.count[req.request_id] = n + 1
        return token_at(req, -1 - n)


def drive(s: Scheduler, reqs: list[Request], rng: random.Random, launch_ahead: bool,
          abort_every: int = 0, sample=token_at) -> list[Request]:
    """Step `s` until every request is done, adding them at random steps; `launch_ahead` schedules
    and launches each step before resolving the one before, as an overlapping engine does.
    Aborts the newest running request every `abort_every` steps (0: never). `sample(request,
    position)` gives each sampling chunk's token when its step is launched."""
    queue, finished, in_flight = list(reqs), [], None
    for step in range(20_000):
        if queue and rng.random() < 0.3:
            s.add_request(queue.pop())
        if not (queue or s.has_work or in_flight):
            return finished
        if abort_every and step % abort_every == abort_every - 1 and s.running:
            victim = s.running[-1]
            s.abort(victim)
            finished.append(victim)
        out = s.schedule()
        launched = None
        if out.chunks:
            s.advance(out)
            launched = (out, {c.request: sample(c.request, c.end) for c in out.chunks if c.samples})
        if not launch_ahead:
            in_flight, launched = launched, None
        if in_flight is not None:
            finished += [r for r in s.resolve(*in_flight) if r.is_finished]
        in_flight = launched
        assert_pages_conserved(s)
    raise AssertionError("scheduler did not drain")


@pytest.mark.parametrize("policy", ["fcfs", "lpm", "preble"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sampler", ["by position", "seeded draws"])
def test_steps_launched_ahead_finish_every_request_as_steps_in_turn_do(policy, seed, sampler):
    """Against the same requests stepped in turn: the same tokens and finish reasons, each request
    finished once, no page lost or left locked, under KV pressure (preemption) and EOS stops. With
    seeded draws, a request preempted while its token is pending keeps that token, as it keeps
    it when steps run in turn (dropping it would spend a draw the run in turn does not)."""
    results = []
    for launch_ahead in (False, True):
        rng = random.Random(seed)
        page_size = rng.choice([1, 2, 4])
        s = make_scheduler(num_pages=64 // page_size, page_size=page_size, local_policy=policy,
                           max_num_batched_tokens=rng.choice([8, 32]), max_running_requests=6)
        sample = token_at if sampler == "by position" else Draws()
        finished = drive(s, random_requests(rng, 30), rng, launch_ahead, sample=sample)
        assert len({id(r) for r in finished}) == len(finished) == 30
        assert s.cache.locked_pages == 0
        assert s.allocator.num_free + s.cache.evictable_pages == s.allocator.num_pages
        results.append({r.request_id: (r.output_token_ids, r.finish_reason) for r in finished})
        preemptions = s.num_preemptions
    assert results[0] == results[1]
    assert preemptions > 0
    assert {reason for _, reason in results[1].values()} == {"stop", "length"}


def test_a_request_ending_on_a_pending_token_is_not_scheduled_past_its_length():
    s = make_scheduler()
    a = request("a", [5, 6, 7], max_tokens=2)
    s.add_request(a)
    first = s.schedule()  # prefill: samples token 1
    s.advance(first)
    second = s.schedule()  # decode of the pending token 1: samples token 2, the last
    s.advance(second)
    assert s.schedule().is_empty  # token 2 ends it by length: nothing to run
    assert a.num_pending_tokens == 2 and a.num_tokens == 5 and a.num_resolved_tokens == 3
    s.resolve(first, {a: 11})
    assert a.output_token_ids == [11] and not a.is_finished
    s.resolve(second, {a: 12})
    assert a.output_token_ids == [11, 12] and a.finish_reason == "length"
    assert not s.has_work and s.cache.locked_pages == 0


def test_a_stop_token_voids_the_step_launched_after_it():
    """The step after an EOS already ran for the request: its token is dropped; the K/V it
    computes for the EOS itself is kept, the pending position's is not."""
    s = make_scheduler(page_size=1)
    a = Request("a", [5, 6, 7], SamplingParams(max_tokens=10), 0.0, frozenset({EOS}))
    s.add_request(a)
    first = s.schedule()
    s.advance(first)
    second = s.schedule()
    s.advance(second)
    assert a.num_computed_tokens == 4
    assert s.resolve(first, {a: EOS}) == [a]
    assert a.finish_reason == "stop" and a.output_token_ids == [EOS]
    assert s.resolve(second, {a: 9}) == []
    assert a.output_token_ids == [EOS] and a.num_pending_tokens == 0
    assert s.cache.match_len([5, 6, 7, EOS, 9]) == 4


@pytest.mark.parametrize("seed", range(3))
def test_aborts_between_launched_steps_lose_no_page(seed):
    rng = random.Random(seed)
    s = make_scheduler(num_pages=32, page_size=2, max_num_batched_tokens=16, max_running_requests=6)
    finished = drive(s, random_requests(rng, 25), rng, launch_ahead=True, abort_every=7)
    assert len({id(r) for r in finished}) == len(finished) == 25
    assert "abort" in {r.finish_reason for r in finished}
    assert s.cache.locked_pages == 0
    assert s.allocator.num_free + s.cache.evictable_pages == s.allocator.num_pages
