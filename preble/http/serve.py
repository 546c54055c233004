"""The uvicorn settings the router and the workers share. Imports nothing heavy at load: the
command line reads the defaults from here before any server starts."""

from __future__ import annotations

# How long the router and the workers keep an idle client connection open. Longer than the idle
# expiry of common clients' pools (httpx's and so the OpenAI SDK's: 5 s; the router's own pool to
# its workers), so a server never closes a connection just as its client reuses it: uvicorn's
# default, 5 s, equals httpx's, and under load that race cut requests (httpx.ReadError).
KEEP_ALIVE_S = 75.0
DRAIN_TIMEOUT_S = 30.0  # on SIGTERM: in-flight requests get this long to finish


def server_config(app, host: str, port: int, drain_timeout_s: float, keep_alive_s: float = KEEP_ALIVE_S):
    """On SIGTERM uvicorn stops accepting, lets in-flight requests finish for `drain_timeout_s`
    and cancels what is left; idle client connections stay open `keep_alive_s`."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=drain_timeout_s,
                          timeout_keep_alive=keep_alive_s)
