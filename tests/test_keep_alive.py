"""The router and the workers keep an idle client connection open past the moment a client's pool
would reuse it: with uvicorn's default (5 s, equal to httpx's pool expiry) a server closed
connections just as clients sent on them, and requests failed with httpx.ReadError under load."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlparse

import httpx
from fastapi import FastAPI

from .inproc import serve_app

REQUEST = b"GET /ping HTTP/1.1\r\nHost: test\r\n\r\n"


def _answer(sock: socket.socket) -> bytes:
    """One response's bytes (the test app's body ends it); b"" if the server closed the connection."""
    data = b""
    while b"pong" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_an_idle_connection_outlives_a_client_pools_expiry():
    app = FastAPI()

    @app.get("/ping")
    async def ping():
        return "pong"

    with serve_app(app) as url:
        where = urlparse(url)
        with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
            sock.sendall(REQUEST)
            assert _answer(sock).startswith(b"HTTP/1.1 200")
            time.sleep(httpx.Limits().keepalive_expiry + 1.0)  # a pool would still reuse it up to here
            sock.sendall(REQUEST)
            assert _answer(sock).startswith(b"HTTP/1.1 200")
