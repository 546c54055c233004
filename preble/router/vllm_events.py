"""Follow a vLLM engine's KV cache events and restate them as the router's own page events.

vLLM started with `--kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq",
"endpoint": "tcp://*:5557"}'` publishes, per scheduler step, a ZMQ multipart message of three
frames: topic, sequence number (8 bytes, big-endian) and a msgpack batch `[ts, events, dp_rank]`.
Each event is `BlockStored`, `BlockRemoved` or `AllBlocksCleared`: a map keyed by field name with
its class name under "type", or, from releases before that layout, a positional array that
starts with the class name.

vLLM names blocks by its own chained hashes, which the router cannot recompute; the router names
pages by `page_hash`. The translator therefore keeps, per vLLM block hash, the router hashes of
that block's pages, so that a stored block continuing a known block gets the right parent and a
removed block removes the right pages. A block whose size is a multiple of the router's page size
is split into pages; any other size is passed on as pages of the block's size, which the
policy's tree rejects (it then tracks the engine by the prompts it routed). A seq gap or a
fresh subscription means the history is incomplete: the translator forgets every block and
starts the worker over with `CacheCleared`; a stored block whose parent it does not know is
dropped (its tokens' position in the prefix tree is unknown), and so are its descendants. Only
blocks a plain token prompt can hit are followed: not a LoRA adapter's, not those of an offload
tier, and not those whose hash covers more than tokens (images, cache salts).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from ..core.kv_events import ROOT_HASH, CacheCleared, KVEvent, PagesRemoved, PagesStored, chain_hashes

log = logging.getLogger(__name__)

BlockHash = int | bytes  # vLLM sends 64-bit ints by default, raw digests when told to


def _event_types(array_like: bool) -> Any:
    """vLLM's three event kinds, with the fields the router reads, in either wire layout."""

    class Stored(msgspec.Struct, tag="BlockStored", array_like=array_like):
        block_hashes: list[BlockHash]
        parent_block_hash: BlockHash | None
        token_ids: list[int]
        block_size: int
        lora_id: int | None = None
        medium: str | None = None
        lora_name: str | None = None
        extra_keys: list[Any] | None = None  # per block; set where the hash covers more than tokens
        group_idx: int | None = None

    class Removed(msgspec.Struct, tag="BlockRemoved", array_like=array_like):
        block_hashes: list[BlockHash]
        medium: str | None = None
        group_idx: int | None = None

    class Cleared(msgspec.Struct, tag="AllBlocksCleared", array_like=array_like):
        pass

    return Stored | Removed | Cleared


class _Batch(msgspec.Struct, array_like=True):
    ts: float
    events: list[msgspec.Raw]  # decoded one by one: their layout depends on the vLLM release
    data_parallel_rank: int | None = None


_batch_decoder = msgspec.msgpack.Decoder(_Batch)
_map_decoder = msgspec.msgpack.Decoder(_event_types(array_like=False))
_array_decoder = msgspec.msgpack.Decoder(_event_types(array_like=True))
_ARRAY_HEADS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}  # msgpack fixarray, array16, array32


def _decode_events(payload: bytes) -> list[Any]:
    """The events of one published batch, whichever layout they use."""
    out = []
    for raw in _batch_decoder.decode(payload).events:
        decoder = _array_decoder if memoryview(raw)[0] in _ARRAY_HEADS else _map_decoder
        out.append(decoder.decode(raw))
    return out


class VllmEventTranslator:
    """One engine's event stream -> the router's KV events (see the module docstring)."""

    def __init__(self, page_size: int, medium: str = "GPU", group: int = 0, name: str = "") -> None:
        self.page_size = page_size
        self.medium = medium  # the engine's own pool; offloaded tiers are no prefix hit until reloaded
        self.group = group  # the KV cache group followed (models with one attention type have only 0)
        self.name = name  # for log lines
        self._pages: dict[BlockHash, list[int]] = {}  # vLLM block hash -> router hashes of its pages
        self._expected: int | None = None  # the next seq; None: start over
        self._odd_sizes: set[int] = set()  # block sizes the router's pages cannot tile (warned once)

    def reset(self) -> None:
        """Forget every block: the next batch starts the worker over."""
        self._pages.clear()
        self._expected = None

    def feed(self, seq: int, payload: bytes) -> list[KVEvent]:
        """The router events for batch `seq`; a start or a gap begins them with CacheCleared."""
        out: list[KVEvent] = []
        if self._expected is None or seq != self._expected:
            if self._expected is not None:
                log.warning("vLLM worker %s: KV event gap (got seq %d, expected %d); starting over",
                            self.name, seq, self._expected)
            self._pages.clear()
            out.append(CacheCleared())
        self._expected = seq + 1
        try:
            events = _decode_events(payload)
        except msgspec.DecodeError as err:
            log.warning("vLLM worker %s: unreadable KV event batch %d (%s); starting over", self.name, seq, err)
            self.reset()
            return out
        for ev in events:
            out.extend(self._translate(ev))
        return out

    def _translate(self, ev: Any) -> list[KVEvent]:
        kind = ev.__struct_config__.tag
        if kind == "AllBlocksCleared":
            self._pages.clear()
            return [CacheCleared()]
        if ev.medium not in (None, self.medium) or ev.group_idx not in (None, self.group):
            return []
        if kind == "BlockRemoved":
            gone = [h for b in ev.block_hashes for h in self._pages.pop(b, ())]
            return [PagesRemoved(gone)] if gone else []
        return self._stored(ev)

    def _stored(self, ev: Any) -> list[KVEvent]:
        if ev.lora_id is not None or ev.lora_name is not None:
            return []  # adapter KV: no prefix of a plain prompt
        n_blocks = len(ev.block_hashes)
        if ev.extra_keys:  # from the first block whose hash covers more than its tokens on, no plain prefix
            n_blocks = next((i for i, k in enumerate(ev.extra_keys) if k), n_blocks)
        if ev.parent_block_hash is None:
            parent = ROOT_HASH
        else:
            known = self._pages.get(ev.parent_block_hash)
            if known is None:
                log.debug("vLLM worker %s: dropped blocks stored under unknown block %r",
                          self.name, ev.parent_block_hash)
                return []
            parent = known[-1]
        bs = ev.block_size
        if bs <= 0 or len(ev.token_ids) < n_blocks * bs:
            return []  # malformed: fewer tokens than its blocks hold
        if bs % self.page_size and bs not in self._odd_sizes:
            self._odd_sizes.add(bs)
            log.warning("vLLM worker %s: block size %d is not a multiple of the router's page size %d; "
                        "its cache is tracked by routed prompts", self.name, bs, self.page_size)
        page = self.page_size if bs % self.page_size == 0 else bs
        first, hashes = parent, []
        for i, block in enumerate(ev.block_hashes[:n_blocks]):
            pages = chain_hashes(ev.token_ids[i * bs:(i + 1) * bs], page, parent)
            self._pages[block] = pages
            hashes.extend(pages)
            parent = pages[-1]
        if not hashes:
            return []
        return [PagesStored(first, hashes, ev.token_ids[:n_blocks * bs])]


async def follow_vllm_events(endpoint: str, translator: VllmEventTranslator,
                             on_event: Callable[[KVEvent], None]) -> None:
    """Subscribe to a vLLM KV event publisher and pass each translated event on, until cancelled.

    ZMQ reconnects by itself; batches lost meanwhile show as a seq gap, which the translator
    turns into a fresh start."""
    sock = zmq.asyncio.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    translator.reset()
    try:
        while True:
            frames = await sock.recv_multipart()
            if len(frames) != 3 or len(frames[1]) != 8:
                log.warning("vLLM worker %s: not a KV event batch (%d frames); starting over",
                            translator.name, len(frames))
                translator.reset()
                continue
            for event in translator.feed(int.from_bytes(frames[1], "big"), frames[2]):
                on_event(event)
            await asyncio.sleep(0)  # a busy publisher must not starve the router's requests
    finally:
        sock.close(linger=0)
