"""Pieces both HTTP servers (worker and router) share: error handling, request limits, API keys,
and their latency histograms' buckets (so the two compare)."""

from __future__ import annotations

import hmac
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .openai_protocol import APIError

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)  # seconds: TTFT, request latency
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)  # seconds per output token


def install_error_handlers(app: FastAPI) -> None:
    """Answer every refusal in OpenAI's error shape: APIError as is, validation errors as 400,
    Starlette's own (unknown path, wrong method, unparsable body) with their status."""

    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException):
        type_ = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(err.status_code, str(err.detail), type_).body(), status_code=err.status_code,
                            headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, err: Exception):
        log.exception("unhandled error", exc_info=err)
        return JSONResponse(APIError(500, f"internal error: {type(err).__name__}", "server_error").body(),
                            status_code=500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return JSONResponse(APIError(400, f"{where}: {first.get('msg', 'invalid request')}",
                                     param=where or None).body(), status_code=400)


def check_model(name: str | None, served: str) -> None:
    if name is not None and name != served:
        raise APIError(404, f"model {name!r} not found; this server serves {served!r}",
                       "not_found_error", "model")


def max_tokens_for(prompt_len: int, asked: int | None, max_model_len: int, default: int) -> int:
    """The output budget of a request, or a 400 when prompt and budget overflow the window."""
    room = max_model_len - prompt_len
    if room < 1:
        raise APIError(400, f"prompt has {prompt_len} tokens; the context window is {max_model_len}",
                       param="prompt")
    if asked is None:
        return min(default, room)
    if asked > room:
        raise APIError(400, f"max_tokens={asked} plus {prompt_len} prompt tokens exceeds the context "
                            f"window of {max_model_len}", param="max_tokens")
    return asked


def _error_response(status: int, message: str, type_: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(APIError(status, message, type_).body(), status_code=status, headers=headers)


class Guard:
    """ASGI middleware in front of every endpoint: an optional API key (`Authorization: Bearer`,
    compared in constant time; `open_paths` need none) and a cap on request bodies, read from
    Content-Length before any of the body is (a chunked body, of unknown length, is refused)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int,
                 open_paths: frozenset[str] = frozenset({"/health"})) -> None:
        self.app, self.max_body_bytes, self.open_paths = app, max_body_bytes, open_paths
        self.expected = None if not api_key else f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)

    def _refusal(self, scope) -> JSONResponse | None:
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] not in self.open_paths and \
                not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            return _error_response(401, "missing or wrong API key (Authorization: Bearer <key>)",
                                   "authentication_error")
        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = headers.get(b"content-length")
            if length is None and b"transfer-encoding" not in headers:
                return None  # neither header: an empty body (RFC 9112 6.3), e.g. POST /flush_cache
            if length is None:
                return _error_response(411, "a request body needs a Content-Length", "invalid_request_error")
            if not length.isdigit() or int(length) > self.max_body_bytes:
                return _error_response(413, f"request body over {self.max_body_bytes} bytes",
                                       "invalid_request_error")
        return None


def overloaded(what: str, retry_after_s: int) -> APIError:
    """The answer to a request beyond admission limits: 429 with a hint when to try again."""
    return APIError(429, f"overloaded: {what}; retry in {retry_after_s} s", "rate_limit_error",
                    headers={"Retry-After": str(retry_after_s)})


class Admission:
    """Bounded admission: at most `max_requests` requests and `max_tokens` prompt tokens in
    flight; beyond either, `enter` refuses with a 429 (memory stays bounded under overload)."""

    def __init__(self, max_requests: int, max_tokens: int, retry_after_s: int) -> None:
        self.max_requests, self.max_tokens, self.retry_after_s = max_requests, max_tokens, retry_after_s
        self.requests = self.tokens = 0

    def enter(self, tokens: int) -> None:
        if self.requests >= self.max_requests:
            raise overloaded(f"{self.requests} requests in flight", self.retry_after_s)
        if self.requests and self.tokens + tokens > self.max_tokens:
            raise overloaded(f"{self.tokens} prompt tokens in flight", self.retry_after_s)
        self.requests += 1
        self.tokens += tokens

    def leave(self, tokens: int) -> None:
        self.requests -= 1
        self.tokens -= tokens
