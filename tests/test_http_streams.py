"""EventStream against the ASGI protocol: every chunk in order then the end of the body; a client
that leaves stops the stream, closes its source and runs `on_close`, without an error; any other
cancellation goes through."""

from __future__ import annotations

import asyncio

import pytest

from preble.http.streams import EventStream


class Source:
    """An async iterator of `n` chunks, one per `tick` seconds, that records being closed."""

    def __init__(self, n: int, tick: float = 0.0) -> None:
        self.n, self.tick, self.closed, self.sent = n, tick, False, 0

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        if self.sent == self.n:
            raise StopAsyncIteration
        await asyncio.sleep(self.tick)
        self.sent += 1
        return b"data: %d\n\n" % self.sent

    async def aclose(self) -> None:
        self.closed = True


def serve(stream: EventStream, leave_after: float | None = None, cancel_after: float | None = None):
    """Run the response as a server would; the client leaves (http.disconnect) or the server
    cancels the request's task after the given seconds. Returns the messages sent."""
    sent: list[dict] = []
    gone = asyncio.Event()

    async def receive() -> dict:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    async def main() -> None:
        task = asyncio.create_task(stream({"type": "http"}, receive, send))
        if leave_after is not None:
            await asyncio.sleep(leave_after)
            gone.set()
        if cancel_after is not None:
            await asyncio.sleep(cancel_after)
            task.cancel()
        await task

    asyncio.run(main())
    return sent


def test_every_chunk_then_the_end_and_on_close_once():
    source, closed = Source(3), []

    async def on_close() -> None:
        closed.append(True)

    sent = serve(EventStream(source, headers={"x-preble-worker": "w0"}, on_close=on_close))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert dict(sent[0]["headers"])[b"content-type"].startswith(b"text/event-stream")
    assert (b"x-preble-worker", b"w0") in sent[0]["headers"]
    assert [m["body"] for m in sent[1:]] == [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n", b""]
    assert [m["more_body"] for m in sent[1:]] == [True, True, True, False]
    assert source.closed and closed == [True]


def test_a_client_that_leaves_stops_the_stream_and_closes_its_source():
    source, closed = Source(1000, tick=0.01), []

    async def on_close() -> None:
        closed.append(True)

    sent = serve(EventStream(source, on_close=on_close), leave_after=0.05)
    assert 0 < source.sent < 1000 and source.closed and closed == [True]
    assert all(m.get("more_body", True) for m in sent)  # no end of body: the client is gone


def test_a_cancellation_that_is_not_the_clients_goes_through():
    source = Source(1000, tick=0.01)
    with pytest.raises(asyncio.CancelledError):
        serve(EventStream(source), cancel_after=0.05)
    assert source.closed
