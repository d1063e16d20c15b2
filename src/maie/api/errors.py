"""Every error leaves the API as ``{"detail": ..., "code": ...}`` with a status from the catalogue."""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from maie.errors import HTTP_STATUS, ErrorCode, MaieError

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


def error_response(code: ErrorCode, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code.value}, status_code=HTTP_STATUS.get(code, 500), headers=headers)


async def _maie_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MaieError)
    return error_response(exc.code, exc.message, exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return error_response(ErrorCode.VALIDATION_ERROR, "; ".join(parts) or "invalid request")


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    fallback = ErrorCode.INVALID_FIELD if exc.status_code < 500 else ErrorCode.INTERNAL_ERROR
    code = _HTTP_CODES.get(exc.status_code, fallback)
    response = error_response(code, str(exc.detail), getattr(exc, "headers", None))
    response.status_code = exc.status_code
    return response


async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable: %s", exc)
    return error_response(
        ErrorCode.SERVICE_UNAVAILABLE, "the task store is unavailable; retry shortly", {"Retry-After": "5"}
    )


async def _client_gone(_: Request, exc: Exception) -> JSONResponse:
    # The client hung up mid-request: nobody reads this answer, and it is not a server fault.
    log.info("client disconnected before the request was complete")
    return error_response(ErrorCode.INVALID_MULTIPART, "the client disconnected before the body was complete")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(ErrorCode.INTERNAL_ERROR, "internal error; the server log has the details")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MaieError, _maie_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(redis.ConnectionError, _redis_down)
    app.add_exception_handler(redis.TimeoutError, _redis_down)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
