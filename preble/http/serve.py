"""The uvicorn settings the router and the workers share."""

from __future__ import annotations

import uvicorn

from .limits import KEEP_ALIVE_S


def server_config(app, host: str, port: int, drain_timeout_s: float, keep_alive_s: float = KEEP_ALIVE_S) -> uvicorn.Config:
    """On SIGTERM uvicorn stops accepting, lets in-flight requests finish for `drain_timeout_s`
    and cancels what is left; idle client connections stay open `keep_alive_s`."""
    return uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=drain_timeout_s,
                          timeout_keep_alive=keep_alive_s)
