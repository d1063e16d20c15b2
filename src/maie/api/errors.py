"""Every error leaves the API as ``{"detail": ..., "code": ...}`` with a status from the catalogue."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from maie.config import Settings
from maie.errors import HTTP_STATUS, ErrorCode, MaieError
from maie.schemas.http import ErrorBody, OpenAIError, OpenAIErrorBody

log = logging.getLogger(__name__)

_HTTP_CODES = {
    401: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.UPLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    422: ErrorCode.VALIDATION_ERROR,
    429: ErrorCode.RATE_LIMITED,
}


def redact_paths(text: str, settings: Settings) -> str:
    """Server paths never reach a client: the data dir (and anything under it) is shown as ``<data>``."""
    root = settings.data_dir.resolve()
    for form in {str(root), str(settings.data_dir)}:
        if form not in (".", ""):
            text = text.replace(form, "<data>")
    return text


OPENAI_PREFIXES = ("/v1/audio/", "/v1/models/")
"""Routes whose clients are OpenAI SDKs: their errors use OpenAI's shape, so the SDKs show the message."""


def openai_error_body(code: ErrorCode, detail: str, status: int) -> dict[str, Any]:
    """``{"error": {message, type, param, code}}``; ``code`` is MAIE's stable code, ``param`` the field
    a field error names (MAIE's messages start with ``<field>: ``)."""
    if status == 429:
        kind = "rate_limit_error"
    elif status == 401:
        kind = "authentication_error"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    param = None
    if code in (ErrorCode.INVALID_FIELD, ErrorCode.VALIDATION_ERROR) and ": " in detail:
        head = detail.split(": ", 1)[0]
        if head.replace("_", "").replace("[]", "").replace(".", "").isalnum():
            param = head
    body = OpenAIErrorBody(error=OpenAIError(message=detail, type=kind, param=param, code=code))
    return body.model_dump(mode="json")


def task_failure_status(code: ErrorCode) -> int:
    """The HTTP status of a synchronous request (OpenAI routes) whose task failed with ``code``."""
    fallback = 504 if code == ErrorCode.TIMEOUT else 422 if code.name.startswith("AUDIO_") else 500
    return HTTP_STATUS.get(code, fallback)


def error_response(
    code: ErrorCode, detail: str, headers: dict[str, str] | None = None, request: Request | None = None
) -> JSONResponse:
    status = HTTP_STATUS.get(code, 500)
    if request is not None and request.url.path.startswith(OPENAI_PREFIXES):
        return JSONResponse(openai_error_body(code, detail, status), status_code=status, headers=headers)
    body = ErrorBody(detail=detail, code=code).model_dump(mode="json")
    return JSONResponse(body, status_code=status, headers=headers)


Responses = dict[int | str, dict[str, Any]]
"""A route's ``responses=`` (FastAPI's OpenAPI declaration of the answers besides the main one)."""

UNPARSABLE_JSON: tuple[int, ErrorCode] = (400, ErrorCode.INVALID_FIELD)
"""FastAPI's answer to a JSON body that does not parse (a 400 HTTPException: ``_http_error`` keeps the
status and gives it INVALID_FIELD). For ``error_responses`` of the routes that take a JSON body."""


def _error_responses(codes: Iterable[tuple[int, ErrorCode]], model: type[ErrorBody | OpenAIErrorBody]) -> Responses:
    by_status: dict[int, list[str]] = {}
    for status, code in (*codes, (500, ErrorCode.INTERNAL_ERROR)):  # any route can fail
        if code.value not in by_status.setdefault(status, []):
            by_status[status].append(code.value)
    return {
        status: {"model": model, "description": "Codes: " + ", ".join(f"`{c}`" for c in names)}
        for status, names in sorted(by_status.items())
    }


def _pair(code: ErrorCode | tuple[int, ErrorCode]) -> tuple[int, ErrorCode]:
    return code if isinstance(code, tuple) else (HTTP_STATUS.get(code, 500), code)


def error_responses(*codes: ErrorCode | tuple[int, ErrorCode]) -> Responses:
    """The errors a MAIE route answers, for its OpenAPI: per status, ``ErrorBody`` and the codes (a
    code answers with its catalogue status, or a ``(status, code)`` pair says otherwise). Declaring 422
    also replaces FastAPI's default 422 schema, which is not the shape MAIE answers."""
    return _error_responses(map(_pair, codes), ErrorBody)


def openai_error_responses(*codes: ErrorCode, failures: Iterable[ErrorCode] = ()) -> Responses:
    """``error_responses`` in OpenAI's shape (routes under ``OPENAI_PREFIXES``); ``failures``: task
    failure codes the route answers with (``task_failure_status``)."""
    pairs = [(HTTP_STATUS.get(c, 500), c) for c in codes] + [(task_failure_status(c), c) for c in failures]
    return _error_responses(pairs, OpenAIErrorBody)


async def _maie_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MaieError)
    return error_response(exc.code, redact_paths(exc.message, request.app.state.settings), exc.headers, request)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return error_response(ErrorCode.VALIDATION_ERROR, "; ".join(parts) or "invalid request", request=request)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    fallback = ErrorCode.INVALID_FIELD if exc.status_code < 500 else ErrorCode.INTERNAL_ERROR
    code = _HTTP_CODES.get(exc.status_code, fallback)
    response = error_response(code, str(exc.detail), getattr(exc, "headers", None), request)
    if request.url.path.startswith(OPENAI_PREFIXES):
        response = JSONResponse(
            openai_error_body(code, str(exc.detail), exc.status_code), headers=getattr(exc, "headers", None)
        )
    response.status_code = exc.status_code
    return response


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable: %s", exc)
    return error_response(
        ErrorCode.SERVICE_UNAVAILABLE, "the task store is unavailable; retry shortly", {"Retry-After": "5"}, request
    )


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    # The client hung up mid-request: nobody reads this answer, and it is not a server fault.
    log.info("client disconnected before the request was complete")
    return error_response(
        ErrorCode.INVALID_MULTIPART, "the client disconnected before the body was complete", request=request
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(ErrorCode.INTERNAL_ERROR, "internal error; the server log has the details", request=request)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MaieError, _maie_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(redis.ConnectionError, _redis_down)
    app.add_exception_handler(redis.TimeoutError, _redis_down)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
