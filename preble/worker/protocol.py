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


class TokenDelta(msgspec.Struct, array_like=True, omit_defaults=True, frozen=True):
    """New output tokens of one request since its previous delta. The frontend turns ids into
    text, off the engine's loop; the first delta also says when the engine admitted the request
    and sent its first token (wall-clock seconds), for per-hop timing."""

    request_id: str
    token_ids: list[int]
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    finish_reason: str | None = None  # set on the last delta: stop | length | abort | error
    error: str | None = None  # why the engine refused or failed the request
    admitted_at: float | None = None
    first_token_at: float | None = None

    def then(self, later: TokenDelta) -> TokenDelta:
        """This delta followed by `later`, as one (a reader that fell behind takes both at once)."""
        return TokenDelta(self.request_id, self.token_ids + later.token_ids, later.prompt_tokens,
                          later.cached_tokens, later.output_tokens, later.finish_reason, later.error,
                          self.admitted_at or later.admitted_at, self.first_token_at or later.first_token_at)


class StepOutputs(msgspec.Struct, tag="outputs", frozen=True):
    """Every request's delta from one engine step, in one message."""

    deltas: list[TokenDelta]


class Load(msgspec.Struct, tag="load", frozen=True):
    report: LoadReport


class Events(msgspec.Struct, tag="events", frozen=True):
    batch: KVEventBatch


class Flushed(msgspec.Struct, tag="flushed", frozen=True):
    """The answer to FlushCache: None, or why the cache was not flushed."""

    error: str | None = None


FromEngine = StepOutputs | Load | Events | Flushed

to_engine_encoder = msgspec.msgpack.Encoder()
to_engine_decoder = msgspec.msgpack.Decoder(ToEngine)
from_engine_encoder = msgspec.msgpack.Encoder()
from_engine_decoder = msgspec.msgpack.Decoder(FromEngine)
