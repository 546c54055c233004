"""vLLM KV events -> the router's tree, without vLLM: batches are encoded as vLLM encodes them
(msgpack; the batch a positional array, each event a map tagged by its class name, or in older
releases a positional array) and the resulting tree is checked against a brute-force model."""

from __future__ import annotations

import asyncio
import hashlib
import random
from typing import Any

import httpx
import msgspec
import pytest
import zmq
import zmq.asyncio

from preble.core.kv_events import CacheCleared, PagesRemoved, PagesStored, chain_hashes
from preble.core.routing.base import RouteRequest
from preble.core.routing.e2 import E2Config, E2Policy
from preble.router.config import WorkerPoolConfig
from preble.router.vllm_events import VllmEventTranslator, follow_vllm_events
from preble.router.workers import WorkerPool

from .clocks import ManualClock

PS = 16  # the router's page size
BS = 32  # vLLM's block size


# ---------------------------------------------------------------------------- vLLM's wire format


def wire_types(array_like: bool) -> tuple[type, type, type]:
    """Structures laid out as vLLM's KV events: fields in its order, defaults omitted."""

    class BlockStored(msgspec.Struct, tag=True, omit_defaults=True, array_like=array_like):
        block_hashes: list[int | bytes]
        parent_block_hash: int | bytes | None
        token_ids: list[int]
        block_size: int
        lora_id: int | None
        medium: str | None
        lora_name: str | None
        extra_keys: list[Any] | None = None
        group_idx: int | None = None
        kv_cache_spec_kind: str | None = None
        kv_cache_spec_sliding_window: int | None = None

    class BlockRemoved(msgspec.Struct, tag=True, omit_defaults=True, array_like=array_like):
        block_hashes: list[int | bytes]
        medium: str | None
        group_idx: int | None = None

    class AllBlocksCleared(msgspec.Struct, tag=True, omit_defaults=True, array_like=array_like):
        pass

    return BlockStored, BlockRemoved, AllBlocksCleared


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


Stored, Removed, Cleared = wire_types(array_like=False)
_encoder = msgspec.msgpack.Encoder()


def encode(events: list, ts: float = 0.0) -> bytes:
    return _encoder.encode(EventBatch(ts, events, 0))


def block_hash(parent: int | None, tokens: list[int]) -> int:
    """A chained 64-bit block hash, as vLLM sends by default (any chained hash serves here)."""
    h = hashlib.sha256(repr((parent, tokens)).encode()).digest()
    return int.from_bytes(h[:8], "big")


def stored(blocks: list[list[int]], parent: int | None = None, cls: type = Stored, **kw) -> tuple[Any, list[int]]:
    """A BlockStored of consecutive blocks under `parent`, and their hashes."""
    hashes, p = [], parent
    for b in blocks:
        p = block_hash(p, b)
        hashes.append(p)
    tokens = [t for b in blocks for t in b]
    fields = dict(lora_id=None, medium="GPU", lora_name=None, extra_keys=[None] * len(blocks), group_idx=0,
                  kv_cache_spec_kind="full_attention")
    fields.update(kw)
    return cls(hashes, parent, tokens, len(blocks[0]) if blocks else BS, **fields), hashes


# ---------------------------------------------------------------------------- the router side



class Router:
    """A translator feeding an E2 policy, as the worker pool wires them."""

    def __init__(self, page_size: int = PS, workers: tuple[str, ...] = ("v",)) -> None:
        self.clock = ManualClock()
        self.policy = E2Policy(self.clock, config=E2Config(page_size=page_size, rebalance=False))
        for w in workers:
            self.policy.add_worker(w)
        self.translator = VllmEventTranslator(page_size, name="v")
        self.seq = 0
        self.out: list = []  # every router event, in order

    def publish(self, events: list, seq: int | None = None, payload: bytes | None = None) -> list:
        self.seq = self.seq if seq is None else seq
        new = self.translator.feed(self.seq, encode(events) if payload is None else payload)
        self.seq += 1
        for e in new:
            self.policy.on_kv_event("v", e)
        self.out.extend(new)
        return new

    def held(self, tokens: list[int]) -> int:
        return self.policy.tree.match(tokens).held.get("v", 0)


def toks(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(3, 50_000) for _ in range(n)]


# ---------------------------------------------------------------------------- brute force


class VllmModel:
    """A vLLM-like prefix cache of whole blocks, keyed by chained block hashes; it also knows which
    blocks the router should know: those stored since the last clear or gap whose parent it knew."""

    def __init__(self) -> None:
        self.cached: dict[int, tuple[int | None, tuple[int, ...]]] = {}  # hash -> (parent, prefix tokens)
        self.known: dict[int, tuple[int, ...]] = {}  # what the router should know: hash -> prefix tokens

    def store(self, prompt: list[int]) -> Any | None:
        """Cache the prompt's full blocks; the event for the blocks it did not hold."""
        n_blocks = len(prompt) // BS
        parent, start = None, 0
        while start < n_blocks:
            h = block_hash(parent, prompt[start * BS:(start + 1) * BS])
            if h not in self.cached:
                break
            parent, start = h, start + 1
        if start == n_blocks:
            return None
        ev, hashes = stored([prompt[i * BS:(i + 1) * BS] for i in range(start, n_blocks)], parent)
        for i, h in enumerate(hashes):
            self.cached[h] = (parent if i == 0 else hashes[i - 1], tuple(prompt[:(start + i + 1) * BS]))
        if parent is None or parent in self.known:
            for i, h in enumerate(hashes):
                self.known[h] = tuple(prompt[:(start + i + 1) * BS])
        return ev

    def evict(self, rng: random.Random, leaf_only: bool) -> Any | None:
        if not self.cached:
            return None
        parents = {p for p, _ in self.cached.values()}
        pool = [h for h in self.cached if h not in parents] if leaf_only else list(self.cached)
        gone = rng.sample(pool, min(len(pool), rng.randint(1, 3)))
        for h in gone:
            del self.cached[h]
            self.known.pop(h, None)
        return Removed(gone, "GPU", 0)

    def clear(self) -> Any:
        self.cached.clear()
        self.known.clear()
        return Cleared()

    def expected_held(self, query: list[int]) -> int:
        """Tokens of `query` the router should believe vLLM holds: whole router pages along known
        blocks, up to the first page it does not know."""
        prefixes = {p[:k] for p in self.known.values() for k in range(len(p) - BS + PS, len(p) + 1, PS)}
        k = 0
        while k + PS <= len(query) and tuple(query[:k + PS]) in prefixes:
            k += PS
        return k


@pytest.mark.parametrize("seed", range(6))
def test_tree_mirrors_stored_removed_and_cleared_blocks(seed):
    """Random stores (of prompts sharing prefixes), evictions (of leaves, sometimes of inner
    blocks), clears and lost batches: after every batch, what the tree says vLLM holds equals the
    brute-force answer, for every prompt seen."""
    rng = random.Random(seed)
    segments = [toks(rng, BS) for _ in range(6)]
    prompts = [[t for s in rng.choices(segments, k=rng.randint(1, 5)) for t in s] + toks(rng, rng.randrange(BS))
               for _ in range(40)]
    vllm, router = VllmModel(), Router()
    for _ in range(150):
        batch = []
        for _ in range(rng.randint(1, 4)):
            r = rng.random()
            ev = (vllm.store(rng.choice(prompts)) if r < 0.7 else vllm.evict(rng, leaf_only=r < 0.95)
                  if r < 0.98 else vllm.clear())
            if ev is not None:
                batch.append(ev)
        if rng.random() < 0.05:  # this batch is lost: the router must start over
            router.seq += 1
            vllm.known.clear()
            continue
        router.publish(batch)
        for p in prompts:
            assert router.held(p) == vllm.expected_held(p)
    assert any(isinstance(e, PagesRemoved) for e in router.out)
    assert sum(isinstance(e, CacheCleared) for e in router.out) > 1
    info = router.policy.worker_info("v")
    assert (info.kv_events, info.kv_events_note) == ("live", None)


def test_a_block_of_two_router_pages_is_split():
    rng = random.Random(1)
    blocks = [toks(rng, BS), toks(rng, BS)]
    router = Router()
    ev, hashes = stored(blocks)
    out = router.publish([ev])
    tokens = blocks[0] + blocks[1]
    assert out == [CacheCleared(), PagesStored(0, chain_hashes(tokens, PS), tokens)]
    assert router.held(tokens) == 2 * BS
    # The next block continues the router's hash chain from the last page of its parent block.
    more = toks(rng, BS)
    ev2, _ = stored([more], parent=hashes[1])
    (st,) = router.publish([ev2])
    assert st == PagesStored(chain_hashes(tokens, PS)[-1], chain_hashes(tokens + more, PS)[4:], more)
    # Removing the middle block removes its two pages: the prefix held ends before it.
    router.publish([Removed([hashes[1]], "GPU")])
    assert router.held(tokens + more) == BS


def test_blocks_under_an_unknown_parent_are_dropped_with_their_descendants():
    rng = random.Random(2)
    a, b, c = toks(rng, BS), toks(rng, BS), toks(rng, BS)
    router = Router()
    _, (ha,) = stored([a])  # never published: the router missed it
    ev_b, (hb,) = stored([b], parent=ha)
    ev_c, _ = stored([c], parent=hb)
    assert router.publish([ev_b, ev_c]) == [CacheCleared()]
    assert router.held(a + b + c) == 0
    # Removing a block the router never learnt of is no event either.
    assert router.publish([Removed([hb], "GPU")]) == []


def test_a_seq_gap_clears_and_the_stream_goes_on():
    rng = random.Random(3)
    a, b = toks(rng, BS), toks(rng, BS)
    router = Router()
    ev_a, (ha,) = stored([a])
    router.publish([ev_a])
    assert router.held(a) == BS
    ev_b, _ = stored([b], parent=ha)
    out = router.publish([ev_b], seq=router.seq + 1)  # one batch lost
    assert out == [CacheCleared()]  # its blocks' parent is forgotten with everything else
    assert router.held(a + b) == 0
    ev_root, _ = stored([b])
    router.publish([ev_root])
    assert router.held(b) == BS
    info = router.policy.worker_info("v")
    assert (info.kv_events, info.kv_events_note) == ("live", None)
    # A restarted engine counts from 0 again: also a gap.
    assert router.publish([], seq=0) == [CacheCleared()]
    assert router.held(b) == 0


def test_an_unreadable_batch_starts_over():
    rng = random.Random(4)
    a = toks(rng, BS)
    router = Router()
    router.publish([stored([a])[0]])
    router.publish([], payload=b"\xc1not msgpack")
    assert router.publish([]) == [CacheCleared()]
    assert router.held(a) == 0


def test_block_size_not_a_multiple_of_the_page_size_is_incompatible():
    """vLLM blocks of 24 tokens cannot be tiled by 16-token pages: the worker is tracked by the
    prompts routed to it instead, as a worker that sends no events."""
    rng = random.Random(5)
    router = Router(workers=("v", "w"))
    doc = toks(rng, 48)
    router.publish([stored([doc[:24], doc[24:]])[0]])
    info = router.policy.worker_info("v")
    state, note = info.kv_events, info.kv_events_note
    assert state == "incompatible" and "48 tokens in 2 pages" in note
    assert router.held(doc) == 0
    first = router.policy.route(RouteRequest("r1", doc + [7], 4))
    router.clock.t = 100.0  # past pending_ttl_s: only a routed-only worker's holding lasts
    second = router.policy.route(RouteRequest("r2", doc + [8], 4))
    assert (second.worker_id, second.branch, second.matched_tokens) == (first.worker_id, "exploit", 48)


def test_live_worker_is_trusted_like_a_worker_with_events():
    """Once its events are live, a prompt routed to a vLLM engine counts as held only until its
    events would have told (pending_ttl_s), not for routed_ttl_s."""
    rng = random.Random(6)
    router = Router(workers=("v",))
    router.publish([])
    info = router.policy.worker_info("v")
    assert (info.kv_events, info.kv_events_note) == ("live", None)
    doc = toks(rng, 64)
    router.policy.route(RouteRequest("r1", doc, 4))
    assert router.held(doc) == 64
    router.clock.t = E2Config.pending_ttl_s + 1.0
    router.policy.tree.gc(1_000)
    assert router.held(doc) == 0


def test_adapter_offloaded_other_group_and_salted_blocks_are_not_followed():
    rng = random.Random(7)
    a, b = toks(rng, BS), toks(rng, BS)
    router = Router()
    router.publish([])
    for kw in (dict(lora_id=1, lora_name="x"), dict(medium="CPU"), dict(group_idx=1),
               dict(extra_keys=[("salt",)])):
        assert router.publish([stored([a], **kw)[0]]) == []
    # Blocks before the first one whose hash covers more than tokens are followed.
    ev, _ = stored([a, b], extra_keys=[None, ("mm", 0)])
    assert router.publish([ev]) == [PagesStored(0, chain_hashes(a, PS), a)]


def test_positional_events_of_older_releases_read_the_same():
    rng = random.Random(8)
    blocks = [toks(rng, BS), toks(rng, BS)]
    old = wire_types(array_like=True)
    ev_old, hashes = stored(blocks, cls=old[0], extra_keys=None, group_idx=None, kv_cache_spec_kind=None)
    ev_new, _ = stored(blocks)
    new_router, old_router = Router(), Router()
    assert old_router.publish([ev_old, old[1](hashes[1:], "GPU"), old[2]()]) == \
        new_router.publish([ev_new, Removed(hashes[1:], "GPU"), Cleared()])
    assert old_router.out[1] == PagesStored(0, chain_hashes(blocks[0] + blocks[1], PS), blocks[0] + blocks[1])


def test_byte_block_hashes_are_followed():
    rng = random.Random(9)
    a, b = toks(rng, BS), toks(rng, BS)
    router = Router()
    ha, hb = b"\x01" * 32, b"\x02" * 32  # vLLM sends raw digests when told not to fold them to ints
    router.publish([Stored([ha], None, a, BS, None, "GPU", None), Stored([hb], ha, b, BS, None, "GPU", None)])
    assert router.held(a + b) == 2 * BS
    router.publish([Removed([hb], "GPU")])
    assert router.held(a + b) == BS


# ---------------------------------------------------------------------------- over ZMQ


class Publisher:
    """A vLLM-like publisher on loopback: an XPUB socket, so the test sees subscriptions come
    and go (a plain PUB drops what it sends before a subscriber joins)."""

    def __init__(self) -> None:
        self.sock = zmq.asyncio.Context.instance().socket(zmq.XPUB)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"

    async def subscription(self) -> bool:
        """True when a subscriber joined, False when one left."""
        msg = await asyncio.wait_for(self.sock.recv(), 10)
        return msg[:1] == b"\x01"

    async def send(self, seq: int, events: list, frames: list[bytes] | None = None) -> None:
        await self.sock.send_multipart(frames or [b"", seq.to_bytes(8, "big"), encode(events)])

    def close(self) -> None:
        self.sock.close(linger=0)


async def settle(predicate, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


def test_subscriber_follows_a_publisher_over_zmq():
    rng = random.Random(10)
    a, b = toks(rng, BS), toks(rng, BS)
    ev_a, (ha,) = stored([a])
    ev_b, _ = stored([b], parent=ha)

    async def main() -> list:
        pub, got = Publisher(), []
        task = asyncio.create_task(follow_vllm_events(pub.endpoint, VllmEventTranslator(PS), got.append))
        try:
            assert await pub.subscription()
            await pub.send(5, [ev_a])
            await pub.send(0, [], frames=[b"only one frame"])  # not vLLM's: start over
            await pub.send(6, [ev_b])  # its parent was forgotten
            await pub.send(8, [stored([b])[0]])  # a gap (7 lost), then a block from the root
            await settle(lambda: len(got) == 5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert not await pub.subscription()  # the socket was closed
            pub.close()
        return got

    got = asyncio.run(main())
    assert got == [CacheCleared(), PagesStored(0, chain_hashes(a, PS), a), CacheCleared(), CacheCleared(),
                   PagesStored(0, chain_hashes(b, PS), b)]


def test_worker_pool_follows_a_vllm_worker_and_stops_when_it_is_down():
    """--worker-kind vllm with --kv-events: the pool subscribes once the engine is healthy, feeds
    the policy, and unsubscribes when the engine stops answering."""
    rng = random.Random(11)
    doc = toks(rng, 2 * BS)
    up = {"ok": True}

    def engine(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/models"
        return httpx.Response(200 if up["ok"] else 500, json={"data": [{"id": "m"}]})

    async def main() -> None:
        pub = Publisher()
        policy = E2Policy(ManualClock(), config=E2Config(page_size=PS))
        cfg = WorkerPoolConfig(worker_kind="openai", kv_events=(pub.endpoint,), page_size=PS,
                               load_interval_s=0.02, unhealthy_after_s=0.1)
        pool = WorkerPool(["http://vllm-0"], policy, cfg)
        await pool.client.aclose()
        pool.client = httpx.AsyncClient(transport=httpx.MockTransport(engine))
        await pool.start()
        try:
            assert await pub.subscription()
            await pub.send(0, [stored([doc[:BS], doc[BS:]])[0]])
            await settle(lambda: policy.tree.match(doc).held == {"http://vllm-0": 2 * BS})
            info = policy.worker_info("http://vllm-0")
            assert (info.kv_events, info.kv_events_note) == ("live", None)
            up["ok"] = False
            assert not await pub.subscription()
            assert policy.worker_info("http://vllm-0").kv_events is None  # removed from the policy
            up["ok"] = True
            assert await pub.subscription()  # re-admitted: a fresh subscription
        finally:
            await pool.stop()
            pub.close()

    asyncio.run(main())


def test_pool_rejects_endpoints_that_do_not_pair_with_workers():
    with pytest.raises(ValueError, match="2 KV event endpoints for 1 workers"):
        WorkerPool(["http://a"], E2Policy(ManualClock()), WorkerPoolConfig(kv_events=("tcp://x:1", "tcp://x:2")))
