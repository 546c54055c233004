"""Reading server-sent event streams in tests."""

from __future__ import annotations

import json

import httpx


def sse_events(resp: httpx.Response) -> list:
    """The payloads of a server-sent event stream, '[DONE]' included."""
    out = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out
