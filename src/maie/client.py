"""A small Python client for a MAIE server: ``MaieClient`` (sync) and ``AsyncMaieClient`` (asyncio), over httpx.

    from maie.client import MaieClient

    with MaieClient("http://127.0.0.1:8000", api_key="...") as client:
        task_id = client.submit("meeting.mp3", features=["raw_transcript", "summary"])
        record = client.wait(task_id, on_progress=lambda e: print(e["status"], e["progress"]))
        print(client.transcript(task_id, "srt"))

Progress comes from the server's Server-Sent Events stream; if that is unavailable or drops, ``wait`` falls
back to polling ``/v1/status``. Error responses raise :class:`MaieApiError` with the server's stable code.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from contextlib import aclosing, closing
from pathlib import Path
from typing import IO, Any, cast

import httpx

__all__ = ["TERMINAL_STATUSES", "AsyncMaieClient", "MaieApiError", "MaieClient", "ProgressCallback"]

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL_STATUSES = frozenset({"COMPLETE", "FAILED", "CANCELLED"})
TRANSCRIPT_FORMATS = ("txt", "srt", "vtt", "json", "md")
ProgressCallback = Callable[[dict[str, Any]], None]
FileInput = str | os.PathLike[str] | IO[bytes]

# The server pings every 15 s, so a read that waits much longer than that means the stream is dead.
_SSE_READ_TIMEOUT_S = 45.0


class MaieApiError(Exception):
    """An error answer from the server: HTTP status, stable ``code`` (e.g. ``TASK_NOT_FOUND``) and ``detail``."""

    def __init__(self, status_code: int, code: str, detail: str) -> None:
        super().__init__(f"{status_code} {code}: {detail}")
        self.status_code = status_code
        self.code = code
        self.detail = detail


def _api_error(response: httpx.Response) -> MaieApiError:
    code, detail = f"HTTP_{response.status_code}", response.reason_phrase or "request failed"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("code") or code)
        raw = body.get("detail", detail)
        detail = raw if isinstance(raw, str) else json.dumps(raw)
    elif response.text:
        detail = response.text[:500]
    return MaieApiError(response.status_code, code, detail)


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        raise _api_error(response)
    return response


def _form_fields(options: dict[str, Any]) -> dict[str, str]:
    """Keyword options -> multipart form fields: lists become comma lists, booleans ``true``/``false``."""
    fields: dict[str, str] = {}
    for name, value in options.items():
        if value is None:
            continue
        if isinstance(value, bool):
            fields[name] = "true" if value else "false"
        elif isinstance(value, (list, tuple, set, frozenset)):
            fields[name] = ",".join(str(v) for v in value)
        else:
            fields[name] = str(value)
    return fields


def _text_body(text: str, features: Iterable[str] | str | None, template_id: str | None,
               callback_url: str | None) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {"text": text}
    if features is not None:
        body["features"] = [f.strip() for f in features.split(",")] if isinstance(features, str) else list(features)
    if template_id is not None:
        body["template_id"] = template_id
    if callback_url is not None:
        body["callback_url"] = callback_url
    return body


def _open_file(file: FileInput, filename: str | None) -> tuple[str, IO[bytes], bool]:
    """``(filename, binary file, opened_here)``."""
    if isinstance(file, (str, os.PathLike)):
        path = Path(file)
        return filename or path.name, path.open("rb"), True
    name = filename or Path(str(getattr(file, "name", "") or "audio")).name
    return name, file, False


def _check_format(fmt: str) -> str:
    if fmt not in TRANSCRIPT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(TRANSCRIPT_FORMATS)}, not {fmt!r}")
    return fmt


def _snapshot(record: dict[str, Any]) -> dict[str, Any]:
    """The shape of an SSE ``status`` event, built from a task record (for polling)."""
    keys = ("task_id", "status", "stage", "progress", "error")
    return {k: record.get(k) for k in keys}


class SseParser:
    """Incremental Server-Sent Events parser: feed decoded lines, get ``(event, data)`` at each blank line."""

    def __init__(self) -> None:
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data:
                self._event = "message"
                return None
            out = (self._event, "\n".join(self._data))
            self._event, self._data = "message", []
            return out
        if line.startswith(":"):
            return None  # comment / keep-alive ping
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        return None


def _status_event(parsed: tuple[str, str] | None) -> dict[str, Any] | None:
    if parsed is None or parsed[0] != "status":
        return None
    return cast("dict[str, Any] | None", json.loads(parsed[1]))


def _env_key() -> str | None:
    return os.environ.get("MAIE_API_KEY") or None


def _base_url(base_url: str | None) -> str:
    return (base_url or os.environ.get("MAIE_URL") or DEFAULT_URL).rstrip("/")


def _headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else _env_key()
    return {"X-API-Key": key} if key else {}


class MaieClient:
    """Synchronous client. ``base_url`` defaults to ``$MAIE_URL`` or http://127.0.0.1:8000; ``api_key`` to
    ``$MAIE_API_KEY``. Use as a context manager, or call :meth:`close`."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 http_client: httpx.Client | None = None) -> None:  # fmt: skip
        self.base_url = _base_url(base_url)
        self._own = http_client is None
        self._http = http_client or httpx.Client(base_url=self.base_url, timeout=timeout)
        self._http.headers.update(_headers(api_key))

    def __enter__(self) -> MaieClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return _check(self._http.request(method, path, **kwargs))

    # -- submissions

    def submit(self, file: FileInput, *, filename: str | None = None, **options: Any) -> str:
        """Upload audio (a path or a binary file object) and start a task; returns its ``task_id``.

        ``options`` are the ``/v1/process`` fields: ``features`` (list or comma string), ``template_id``,
        ``asr_backend``, ``language``, ``initial_prompt``, ``hotwords``, ``word_timestamps``, ``enable_vad``,
        ``vad_threshold``, ``enable_diarization``, ``min_speakers``, ``max_speakers``, ``callback_url``.
        """
        name, handle, opened = _open_file(file, filename)
        try:
            # httpx writes data fields before files: the server validates options before reading audio.
            response = self._request("POST", "/v1/process", data=_form_fields(options), files={"file": (name, handle)})
        finally:
            if opened:
                handle.close()
        return cast("str", response.json()["task_id"])

    def process_text(self, text: str, *, features: Iterable[str] | str | None = None, template_id: str | None = None,
                     callback_url: str | None = None) -> str:  # fmt: skip
        """Run the LLM stages (clean transcript, summary) on text; returns a ``task_id``."""
        body = _text_body(text, features, template_id, callback_url)
        return cast("str", self._request("POST", "/v1/process_text", json=body).json()["task_id"])

    # -- task records

    def status(self, task_id: str) -> dict[str, Any]:
        """The full task record (status, stage, progress, results, metrics, error...)."""
        return cast("dict[str, Any]", self._request("GET", f"/v1/status/{task_id}").json())

    def tasks(self, limit: int = 20) -> list[dict[str, Any]]:
        """Recent tasks, newest first (summary fields only)."""
        return cast("list[dict[str, Any]]", self._request("GET", "/v1/tasks", params={"limit": limit}).json())

    def transcript(self, task_id: str, format: str = "txt") -> str:
        """The transcript of a COMPLETE task as txt, srt, vtt, json or md."""
        params = {"format": _check_format(format)}
        return self._request("GET", f"/v1/tasks/{task_id}/transcript", params=params).text

    def delete(self, task_id: str) -> dict[str, Any]:
        """Cancel the task if it is still running; delete its audio and results."""
        return cast("dict[str, Any]", self._request("DELETE", f"/v1/tasks/{task_id}").json())

    # -- discovery

    def templates(self) -> list[dict[str, Any]]:
        return cast("list[dict[str, Any]]", self._request("GET", "/v1/templates").json())

    def template_schema(self, template_id: str) -> dict[str, Any]:
        return cast("dict[str, Any]", self._request("GET", f"/v1/templates/{template_id}/schema").json())

    def models(self) -> dict[str, Any]:
        return cast("dict[str, Any]", self._request("GET", "/v1/models").json())

    def health(self) -> dict[str, Any]:
        """``/health/ready``: the readiness checks (returned, not raised, when the server is not ready)."""
        return cast("dict[str, Any]", self._http.get("/health/ready").json())

    # -- progress

    def events(self, task_id: str, *, read_timeout: float = _SSE_READ_TIMEOUT_S,
               deadline: float | None = None) -> Generator[dict[str, Any], None, None]:  # fmt: skip
        """Status events from ``/v1/tasks/{id}/events`` until a terminal state, the stream closing, or
        ``deadline`` (a ``time.monotonic()`` value) passing."""
        timeout = httpx.Timeout(self._http.timeout.connect or 10.0, read=read_timeout)
        headers = {"Accept": "text/event-stream"}
        with self._http.stream("GET", f"/v1/tasks/{task_id}/events", headers=headers, timeout=timeout) as response:
            if response.is_error:
                response.read()
                raise _api_error(response)
            parser = SseParser()
            for line in response.iter_lines():
                if deadline is not None and time.monotonic() > deadline:
                    return
                event = _status_event(parser.feed(line))
                if event is not None:
                    yield event
                    if event.get("status") in TERMINAL_STATUSES:
                        return

    def wait(self, task_id: str, on_progress: ProgressCallback | None = None, timeout: float = 600.0, *,
             poll_interval: float = 1.0) -> dict[str, Any]:  # fmt: skip
        """Block until the task is COMPLETE, FAILED or CANCELLED and return its full record.

        ``on_progress`` is called with ``{task_id, status, stage, progress, error}`` at each change.
        A failed task is returned, not raised: check ``record["status"]``. Raises ``TimeoutError``.
        """
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None

        def report(event: dict[str, Any]) -> None:
            nonlocal last
            if event != last and on_progress is not None:
                on_progress(event)
            last = event

        read_timeout = min(_SSE_READ_TIMEOUT_S, max(timeout, 1.0))
        try:
            with closing(self.events(task_id, read_timeout=read_timeout, deadline=deadline)) as stream:
                for event in stream:
                    report(event)
        except MaieApiError as exc:
            if exc.code == "TASK_NOT_FOUND":
                raise
        except httpx.HTTPError:
            pass  # stream unavailable or dropped: poll below
        while True:
            record = self.status(task_id)
            report(_snapshot(record))
            if record["status"] in TERMINAL_STATUSES:
                return record
            if time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id} still {record['status']} after {timeout:.0f}s")
            time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))


class AsyncMaieClient:
    """The asyncio twin of :class:`MaieClient` (same methods, awaitable)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 http_client: httpx.AsyncClient | None = None) -> None:  # fmt: skip
        self.base_url = _base_url(base_url)
        self._own = http_client is None
        self._http = http_client or httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self._http.headers.update(_headers(api_key))

    async def __aenter__(self) -> AsyncMaieClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return _check(await self._http.request(method, path, **kwargs))

    async def submit(self, file: FileInput, *, filename: str | None = None, **options: Any) -> str:
        """See :meth:`MaieClient.submit`."""
        name, handle, opened = _open_file(file, filename)
        try:
            response = await self._request(
                "POST", "/v1/process", data=_form_fields(options), files={"file": (name, handle)}
            )
        finally:
            if opened:
                handle.close()
        return cast("str", response.json()["task_id"])

    async def process_text(self, text: str, *, features: Iterable[str] | str | None = None,
                           template_id: str | None = None, callback_url: str | None = None) -> str:  # fmt: skip
        body = _text_body(text, features, template_id, callback_url)
        return cast("str", (await self._request("POST", "/v1/process_text", json=body)).json()["task_id"])

    async def status(self, task_id: str) -> dict[str, Any]:
        return cast("dict[str, Any]", (await self._request("GET", f"/v1/status/{task_id}")).json())

    async def tasks(self, limit: int = 20) -> list[dict[str, Any]]:
        return cast("list[dict[str, Any]]", (await self._request("GET", "/v1/tasks", params={"limit": limit})).json())

    async def transcript(self, task_id: str, format: str = "txt") -> str:
        params = {"format": _check_format(format)}
        return (await self._request("GET", f"/v1/tasks/{task_id}/transcript", params=params)).text

    async def delete(self, task_id: str) -> dict[str, Any]:
        return cast("dict[str, Any]", (await self._request("DELETE", f"/v1/tasks/{task_id}")).json())

    async def templates(self) -> list[dict[str, Any]]:
        return cast("list[dict[str, Any]]", (await self._request("GET", "/v1/templates")).json())

    async def template_schema(self, template_id: str) -> dict[str, Any]:
        return cast("dict[str, Any]", (await self._request("GET", f"/v1/templates/{template_id}/schema")).json())

    async def models(self) -> dict[str, Any]:
        return cast("dict[str, Any]", (await self._request("GET", "/v1/models")).json())

    async def health(self) -> dict[str, Any]:
        return cast("dict[str, Any]", (await self._http.get("/health/ready")).json())

    async def events(self, task_id: str, *, read_timeout: float = _SSE_READ_TIMEOUT_S,
                     deadline: float | None = None) -> AsyncGenerator[dict[str, Any], None]:  # fmt: skip
        """See :meth:`MaieClient.events`."""
        timeout = httpx.Timeout(self._http.timeout.connect or 10.0, read=read_timeout)
        headers = {"Accept": "text/event-stream"}
        async with self._http.stream(
            "GET", f"/v1/tasks/{task_id}/events", headers=headers, timeout=timeout
        ) as response:
            if response.is_error:
                await response.aread()
                raise _api_error(response)
            parser = SseParser()
            async for line in response.aiter_lines():
                if deadline is not None and time.monotonic() > deadline:
                    return
                event = _status_event(parser.feed(line))
                if event is not None:
                    yield event
                    if event.get("status") in TERMINAL_STATUSES:
                        return

    async def wait(self, task_id: str, on_progress: ProgressCallback | None = None, timeout: float = 600.0, *,
                   poll_interval: float = 1.0) -> dict[str, Any]:  # fmt: skip
        """See :meth:`MaieClient.wait`."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None

        def report(event: dict[str, Any]) -> None:
            nonlocal last
            if event != last and on_progress is not None:
                on_progress(event)
            last = event

        read_timeout = min(_SSE_READ_TIMEOUT_S, max(timeout, 1.0))
        try:
            async with aclosing(self.events(task_id, read_timeout=read_timeout, deadline=deadline)) as stream:
                async for event in stream:
                    report(event)
        except MaieApiError as exc:
            if exc.code == "TASK_NOT_FOUND":
                raise
        except httpx.HTTPError:
            pass
        while True:
            record = await self.status(task_id)
            report(_snapshot(record))
            if record["status"] in TERMINAL_STATUSES:
                return record
            if time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id} still {record['status']} after {timeout:.0f}s")
            await asyncio.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))
