"""Logging: text for people, JSON (one object per line) for log pipelines.

Every line carries the correlation id of the request that caused it, from the API through the
worker that runs the task (``X-Request-ID`` if the client sent one, else a fresh id).
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maie.config import Settings

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)
REQUEST_ID_HEADER = "X-Request-ID"


class CorrelationFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = correlation_id.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "correlation_id": getattr(record, "correlation_id", None),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CorrelationFilter())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s]: %(message)s"
        handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # uvicorn's own loggers go through the same handler (and format).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def new_correlation_id(supplied: str | None) -> str:
    """The client's id when it is a sane token, else a new one (never trust a header into logs blindly)."""
    if supplied and len(supplied) <= 64 and all(c.isalnum() or c in "-_." for c in supplied):
        return supplied
    return uuid.uuid4().hex


class CorrelationMiddleware:
    """Sets the correlation id for the request and echoes it in the response's X-Request-ID."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode())
        cid = new_correlation_id(supplied.decode("latin-1") if supplied else None)
        token = correlation_id.set(cid)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER.lower().encode(), cid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            correlation_id.reset(token)
