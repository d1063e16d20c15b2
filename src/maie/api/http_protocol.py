"""The HTTP/1.1 protocol ``maie serve`` runs: uvicorn's httptools protocol, bounded before authentication.

Why a subclass and not a uvicorn setting: httptools (llhttp) has no header size limit, and uvicorn's
httptools protocol gathers the request URL with ``self.url += chunk`` (quadratic), so one unauthenticated
160 MB request line kept the event loop busy for 12 s and every client waited. uvicorn's only header
limit, ``h11_max_incomplete_event_size``, exists for the pure-Python h11 protocol, which parses bodies
several times slower (uploads are the hot path here; see ``bench/upload.py``). This class keeps httptools
and adds, per connection:

* a head limit: the request line plus headers may be at most ``http_max_header_bytes``. Bytes are fed to
  the parser in slices that never pass the limit while a head is open, so the check is exact, happens as
  the bytes arrive (no buffering first) and a body in the same packet is never miscounted as head. Over
  the limit: ``431 HEADERS_TOO_LARGE`` and the connection is closed.
* a head timeout: a connection must deliver a complete head within ``http_header_timeout_s`` of
  connecting (or of its first byte after a response), else ``408 REQUEST_TIMEOUT`` and close. uvicorn
  itself never times out a connection that sends nothing, or a head that trickles a byte a second.
* a connection cap: beyond ``http_max_connections`` open connections, a new one is closed on accept.

So what an unauthenticated client can make one API process hold is fixed: per connection at most about
2 x ``http_max_header_bytes`` (llhttp's partial header plus uvicorn's partial URL) + the protocol object
(~4 KiB), for at most ``http_header_timeout_s``; in total at most ``http_max_connections`` times that.
Once a head is complete the request is the application's (authentication, then bounded uploads).
"""

from __future__ import annotations

import asyncio
import json
from asyncio.events import TimerHandle
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from maie.config import Settings
from maie.errors import HTTP_STATUS, ErrorCode


def _refusal(code: ErrorCode, detail: str) -> bytes:
    body = json.dumps({"detail": detail, "code": code.value}).encode()
    status = HTTP_STATUS[code]
    reason = {431: "Request Header Fields Too Large", 408: "Request Timeout"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring. Use ``bounded_protocol(settings)`` to get the class with its limits."""

    max_head_bytes: int = 16384
    head_timeout_s: float = 15.0
    max_connections: int = 4096

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._head_open = True
        self._head_seen = 0
        self._head_timer: TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.logger.warning("connection refused: %d open connections", len(self.connections))
            transport.abort()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._head_open:
            super().data_received(data)
            return
        view = memoryview(data)
        while view:
            if self._head_open:
                if self._head_timer is None:
                    self._arm_head_timer()
                room = self.max_head_bytes - self._head_seen
                if room <= 0:
                    self._refuse(
                        ErrorCode.HEADERS_TOO_LARGE, f"request line and headers over {self.max_head_bytes} bytes"
                    )
                    return
                piece, view = view[:room], view[room:]
                self._head_seen += len(piece)
            else:
                piece, view = view, view[:0]
            super().data_received(bytes(piece))
            if self.transport.is_closing() or self.parser is None:
                return

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The next request's head starts here; its timer starts with its first byte (an SSE response
        # may stream for hours after its request message completed).
        self._head_open = True
        self._head_seen = 0

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_open and not self.transport.is_closing():
            self._refuse(ErrorCode.REQUEST_TIMEOUT, f"no complete request head within {self.head_timeout_s:g} s")

    def _refuse(self, code: ErrorCode, detail: str) -> None:
        self._disarm_head_timer()
        if self.cycle is None or self.cycle.response_complete:
            # Only between responses: never splice a refusal into a response still being sent.
            self.transport.write(_refusal(code, detail))
        self.logger.warning("request refused before authentication: %s", detail)
        self.transport.close()


def bounded_protocol(settings: Settings) -> type[BoundedHttpToolsProtocol]:
    """The protocol class with ``settings``' limits (uvicorn instantiates it once per connection)."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "max_head_bytes": settings.http_max_header_bytes,
            "head_timeout_s": settings.http_header_timeout_s,
            "max_connections": settings.http_max_connections,
        },
    )
