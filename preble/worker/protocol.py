"""Messages between a worker's HTTP frontend and its engine process (msgspec, never pickle)."""

from __future__ import annotations

import msgspec

from ..core.messages import KVEventBatch, LoadReport
from ..core.sampling_params import SamplingParams


class Generate(msgspec.Struct, tag="generate", frozen=True):
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams


class Abort(msgspec.Struct, tag="abort", frozen=True):
    request_id: str


class DumpCache(msgspec.Struct, tag="dump", frozen=True):
    """Ask for the whole cache as a resync batch (for a new or lagging event subscriber)."""


class FlushCache(msgspec.Struct, tag="flush", frozen=True):
    """Drop the prefix cache and the windowed statistics (refused while requests run)."""


class Shutdown(msgspec.Struct, tag="shutdown", frozen=True):
    pass


ToEngine = Generate | Abort | DumpCache | FlushCache | Shutdown


class TokenDelta(msgspec.Struct, tag="delta", frozen=True):
    """New output of one request since the previous delta."""

    request_id: str
    token_ids: list[int]
    text: str
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    finish_reason: str | None = None  # set on the last delta: stop | length | abort | error
    error: str | None = None  # why the engine refused or failed the request


class Load(msgspec.Struct, tag="load", frozen=True):
    report: LoadReport


class Events(msgspec.Struct, tag="events", frozen=True):
    batch: KVEventBatch


class Flushed(msgspec.Struct, tag="flushed", frozen=True):
    """The answer to FlushCache: None, or why the cache was not flushed."""

    error: str | None = None


FromEngine = TokenDelta | Load | Events | Flushed

to_engine_encoder = msgspec.msgpack.Encoder()
to_engine_decoder = msgspec.msgpack.Decoder(ToEngine)
from_engine_encoder = msgspec.msgpack.Encoder()
from_engine_decoder = msgspec.msgpack.Decoder(FromEngine)
