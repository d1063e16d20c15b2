"""Logging: text for people, JSON (one object per line) for log pipelines.

Every line carries the correlation id of the request that caused it, from the API through the
worker that runs the task (``X-Request-ID`` if the client sent one, else a fresh id). No line carries a
password from a URL (``redis://user:secret@host`` is logged as ``redis://user:***@host``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maie.config import Settings

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)
REQUEST_ID_HEADER = "X-Request-ID"


# ``scheme://[user]:password@`` and ``?password=...``. The password runs to the LAST @ before a space or
# quote, so an unescaped @ inside it cannot leave a tail behind (over-redacting a host is harmless).
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@\"']*:)[^\s\"']+(?=@)")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)[^&\s]+", re.IGNORECASE)
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with URL passwords replaced by ``***`` (Redis URLs, LLM base URLs, anything with userinfo)."""
    if "://" not in text and "password=" not in text.lower():
        return text
    text = _URL_PASSWORD.sub(lambda m: m["head"] + REDACTED, text)
    return _QUERY_PASSWORD.sub(lambda m: m["head"] + REDACTED, text)


class RedactFilter(logging.Filter):
    """Redacts URL passwords in the message and traceback of every record that reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


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
        audit = getattr(record, "audit", None)
        if audit is not None:
            data["audit"] = audit
        if record.exc_text:
            data["exc"] = record.exc_text
        elif record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CorrelationFilter())
    handler.addFilter(RedactFilter())
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


class _TqdmHandler(logging.Handler):
    """Writes through ``tqdm.write``: a log line goes above the progress bars, which are redrawn below."""

    def __init__(self, like: logging.Handler) -> None:
        super().__init__(like.level)
        self.setFormatter(like.formatter)
        for f in like.filters:  # the correlation id filter: the format needs its field
            self.addFilter(f)

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


@contextmanager
def tqdm_logging() -> Iterator[None]:
    """While progress bars are drawn, route the root logger's stream handlers through ``tqdm.write``
    (``tqdm.contrib.logging`` does the same but drops handler filters, which our format needs)."""
    root = logging.getLogger()
    saved = list(root.handlers)
    replaced = [_TqdmHandler(h) if isinstance(h, logging.StreamHandler) else h for h in saved]
    if not saved:
        replaced = [_TqdmHandler(logging.lastResort or logging.StreamHandler(sys.stderr))]
    root.handlers[:] = replaced
    try:
        yield
    finally:
        root.handlers[:] = saved
