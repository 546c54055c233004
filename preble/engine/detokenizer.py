"""Incremental text for streaming: emit only text that can no longer change."""

from __future__ import annotations

from ..core.request import Request

REPLACEMENT_CHAR = "\ufffd"  # what a decoder shows for an incomplete UTF-8 sequence


def _stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that begins some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class TextStreamer:
    """Tracks how much of each request's text has been sent.

    While a request runs, a tail that is an incomplete character or could be the start of a stop
    string is held back; it is released (or dropped) once the next tokens decide it.
    """

    def __init__(self, decode) -> None:
        self._decode = decode  # Request -> text cut before any stop string
        self._sent: dict[str, int] = {}

    def delta(self, req: Request) -> str:
        text = self._decode(req)
        if not req.is_finished:
            text = text.rstrip(REPLACEMENT_CHAR)
            text = text[: len(text) - _stop_prefix_len(text, req.sampling.stop)]
        sent = self._sent.get(req.request_id, 0)
        if req.is_finished:
            self._sent.pop(req.request_id, None)
        else:
            self._sent[req.request_id] = max(sent, len(text))
        return text[sent:]

    def forget(self, request_id: str) -> None:
        self._sent.pop(request_id, None)
