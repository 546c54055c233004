"""Output text for streaming, built in the frontend from the engine's token ids.

Each step decodes a short window (from a few tokens before the last text boundary), not the whole
output, so a long answer costs the same per token as a short one. Text that can still change is
held back: an incomplete UTF-8 character, or a tail that could be the start of a stop string.
Once the request finishes, the text is what decoding all its tokens at once gives, cut before the
first stop string.
"""

from __future__ import annotations

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


class IncrementalText:
    """One request's text: `add` takes its new token ids and returns the text that is now final."""

    def __init__(self, tokenizer, stop: list[str], skip_special_tokens: bool) -> None:
        self._tokenizer, self._stop, self._skip = tokenizer, stop, skip_special_tokens
        self._ids: list[int] = []
        self._text = ""  # decoded so far, up to the last complete character, before any stop cut
        self._prefix = 0  # the window decoded next starts here (context for the tokens after it)
        self._read = 0  # tokens up to here are in _text
        self._sent = 0  # characters already returned

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def add(self, token_ids: list[int], finished: bool) -> str:
        self._ids.extend(token_ids)
        if self._read < len(self._ids):
            before = self._decode(self._ids[self._prefix:self._read])
            window = self._decode(self._ids[self._prefix:])
            if finished or (len(window) > len(before) and not window.endswith(REPLACEMENT_CHAR)):
                self._text += window[len(before):]
                self._prefix, self._read = self._read, len(self._ids)
        text = self._text
        if self._stop:
            text = text[:min((i for s in self._stop if (i := text.find(s)) >= 0), default=len(text))]
        if not finished:
            text = text[: len(text) - _stop_prefix_len(text, self._stop)]
        piece = text[self._sent:]
        self._sent = max(self._sent, len(text))
        return piece
