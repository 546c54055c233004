"""Pieces both HTTP servers (worker and router) share: error handling and request limits."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .openai_protocol import APIError


def install_error_handlers(app: FastAPI) -> None:
    """Answer every refusal in OpenAI's error shape: APIError as is, validation errors as 400."""

    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError):
        return JSONResponse(err.body(), status_code=err.status)

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
