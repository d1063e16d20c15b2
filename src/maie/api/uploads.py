"""Streaming multipart upload: the file part goes straight to storage as it arrives.

The body is fed chunk by chunk to python-multipart's push parser; the framework never spools it. Each
uploaded byte is handed once to an upload sink (``maie.storage``): by default ``<dest_dir>/source.<ext>``
written with ``os.pwrite`` from a few shared writer threads, or whatever ``open_sink`` returns (an S3
multipart upload). The event loop only parses (received chunks are passed on in place, small ones
gathered to >= 64 KiB); reading pauses while the sink is busy, so memory stays flat whatever the size,
and the container is recognised from the first bytes, so a non-audio upload is refused (415) before
anything is stored.

Contract for callers (the ``/v1/process`` router):

* The endpoint must take the raw ``Request`` (no ``Form``/``File`` parameters, which make the framework
  read and spool the body first). Call ``check_content_length`` before ``receive_form``.
* ``before_file(fields)`` is awaited exactly once per successful parse. When text fields precede the
  file part it runs as soon as the file part's headers are complete, with the fields seen so far, so a
  bad option is refused before any file byte is read or stored. When the file part comes first (or there
  is none) it runs after the whole body, with all fields. When fields arrive after the file part too,
  it runs once more when the body ends, with the whole form: every field counts, in any order, and a
  refusal then removes the stored file like any other refusal.
* On any exception (refusal, malformed body, client disconnect, cancellation) the sink is aborted (the
  stored file and ``dest_dir``, if this call created it, are removed) before the exception propagates.
* A wrong request Content-Type is ``INVALID_MULTIPART`` (400), not 415: the contract keeps 415 for "the
  file is not audio", so a client can tell "fix your request" from "this file cannot be processed".
* Size refusals (413) carry ``Connection: close``: the server stops reading instead of draining an
  oversized body. Other refusals keep the connection, so the client reads a clean JSON error.
"""

from __future__ import annotations

import asyncio
import ctypes
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from maie.api.sniff import SNIFF_BYTES, head_bytes_wanted, sniff_container
from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.storage import StoredRef, UploadSink
from maie.storage.file import FileSink

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

WRITE_BYTES = 64 * 1024
"""Small reads are gathered into writes of at least this size; larger reads are written as they come."""
FIELD_SLACK_BYTES = 1024 * 1024
"""Body bytes allowed on top of the file limit for text fields and multipart framing."""
MAX_FIELD_BYTES = 64 * 1024
"""Largest text field value."""
MAX_FIELDS = 100
"""Most text fields in one form."""
MAX_PREAMBLE_BYTES = 64 * 1024
"""Most bytes tolerated before the first boundary line (RFC 2046 preamble)."""
MAX_NAME_CHARS = 255
"""Longest kept client file name or part content type."""

BeforeFile = Callable[[dict[str, list[str]]], Awaitable[None]]
OpenSink = Callable[[str], UploadSink]
"""Called with the sniffed container (the extension) once the file is known to be audio."""


@dataclass
class StoredFile:
    """The uploaded file as stored: ``ref`` for the task record; ``path`` when it is a local file."""

    ref: StoredRef
    path: Path | None
    size: int
    container: str
    filename: str | None
    """The client's file name, sanitized, as metadata only (never used as a path)."""
    content_type: str | None
    """The part's Content-Type as the client claimed it (not trusted: ``container`` is from the bytes)."""


@dataclass
class ParsedForm:
    fields: dict[str, list[str]]
    file: StoredFile | None


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):g} MiB"


def _too_large(message: str) -> MaieError:
    return MaieError(ErrorCode.UPLOAD_TOO_LARGE, message, headers={"Connection": "close"})


def check_content_length(request: Request, max_bytes: int) -> None:
    """Refuse (413) a declared Content-Length that cannot fit ``max_bytes`` of file plus field slack.

    Call before reading the body. A body without Content-Length (chunked) is limited while it streams.
    """
    raw = request.headers.get("content-length")
    if raw is None:
        return
    try:
        length = int(raw)
    except ValueError:
        raise MaieError(ErrorCode.INVALID_MULTIPART, "Content-Length is not a number") from None
    if length > max_bytes + FIELD_SLACK_BYTES:
        raise _too_large(f"the request body is {length} bytes; uploads are limited to {_mib(max_bytes)} of audio")


def sanitize_filename(raw: str | None) -> str | None:
    """Basename only, without control/format characters, leading/trailing dots or spaces; <= 255 chars."""
    if not raw:
        return None
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").rsplit("/", 1)[-1]
    # Category C: control, format (bidi overrides), surrogates, private use, unassigned.
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = name.strip(" .")[:MAX_NAME_CHARS].rstrip(" .")
    return name or None


def _sanitize_content_type(raw: bytes | None) -> str | None:
    if not raw:
        return None
    text = "".join(ch for ch in raw.decode("latin-1") if ch.isprintable()).strip()
    return text[:MAX_NAME_CHARS] or None


def _decode_header_text(raw: bytes) -> str:
    # Browsers send UTF-8 names inside quotes; anything else is taken as Latin-1.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


_allocator_tuned = False

# glibc mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator() -> bool:
    """Keep the server's body-chunk buffers on the malloc heap; True when glibc took the settings.

    uvicorn hands the body over in buffers of up to 256 KiB (asyncio reads 256 KiB at a time). With
    glibc's default thresholds such buffers are mmap-ed, or the heap top is trimmed after each free, so
    every chunk lands in fresh pages: ~2.5 page faults per 4 KiB received, and a third more CPU per
    uploaded byte than with the buffers reused. Buffers under 1 MiB stay on the heap and at most 8 MiB
    of free heap is kept, so resident memory stays flat. Called once by the first ``receive_form``.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    _allocator_tuned = True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, 1024 * 1024)) and bool(mallopt(_M_TRIM_THRESHOLD, 8 * 1024 * 1024))


def _multipart_boundary(request: Request) -> bytes:
    ctype, params = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data":
        shown = ctype.decode("latin-1") or "none"
        raise MaieError(
            ErrorCode.INVALID_MULTIPART, f"the request must be multipart/form-data (Content-Type was {shown})"
        )
    boundary = params.get(b"boundary", b"")
    if not 1 <= len(boundary) <= 200:
        raise MaieError(ErrorCode.INVALID_MULTIPART, "the multipart Content-Type has no valid boundary")
    return boundary


def _first_delimiter(buf: bytearray, delimiter: bytes, pos: int) -> tuple[bytes | None, int]:
    """The body from its first delimiter line on, normalised for the parser (None: need more bytes),
    and where to resume the search when more bytes arrive.

    Skips a preamble and the transport padding (spaces/tabs) RFC 2046 allows after a delimiter; the push
    parser handles padding after later delimiters itself but not after the first one.
    """
    while (i := buf.find(delimiter, pos)) >= 0:
        if i == 0 or buf[i - 1] == 0x0A:  # a delimiter starts a line
            end = i + len(delimiter)
            eol = buf.find(b"\n", end)
            if eol < 0:
                return None, i
            rest = bytes(buf[end:eol]).rstrip(b"\r")
            if not rest.strip(b" \t"):
                return delimiter + b"\r\n" + bytes(buf[eol + 1 :]), i
            if rest.startswith(b"--"):  # close delimiter first: an empty form
                return delimiter + b"--\r\n", i
        pos = i + 1
    return None, max(0, len(buf) - len(delimiter))


class _FormReader:
    """Parser callbacks and state for one request. Sync callbacks set ``pending`` for async work."""

    def __init__(self, boundary: bytes, open_sink: OpenSink, max_file_bytes: int, file_field: str) -> None:
        self.open_sink = open_sink
        self.max_file_bytes = max_file_bytes
        self.file_field = file_field
        self.fields: dict[str, list[str]] = {}
        self.field_count = 0
        self.fields_at_check = 0  # fields seen when before_file ran at the file headers
        self.ended = False
        self.pending = False
        # current part
        self.header_name = bytearray()
        self.header_value = bytearray()
        self.headers: dict[bytes, bytes] = {}
        self.field_name = ""
        self.field_value = bytearray()
        # the file part
        self.fields_before_file = False
        self.file_headers_done = False
        self.file_ended = False
        self.filename: str | None = None
        self.content_type: str | None = None
        self.head: bytearray | None = None  # gathered until the container is sniffed
        self.head_target = SNIFF_BYTES
        self.container: str | None = None
        self.writer: UploadSink | None = None
        self.ref: StoredRef | None = None
        self.buf = bytearray()
        self.file_bytes = 0
        self.closing = False  # the file part is complete; close once the writes are done

        self.parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_ignored_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    # -- headers ------------------------------------------------------------------------------------
    def _on_part_begin(self) -> None:
        self.headers = {}
        self.header_name.clear()
        self.header_value.clear()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def _on_header_end(self) -> None:
        self.headers[bytes(self.header_name).lower()] = bytes(self.header_value)
        self.header_name.clear()
        self.header_value.clear()

    def _on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self.headers.get(b"content-disposition"))
        name_raw = params.get(b"name")
        if disposition != b"form-data" or name_raw is None:
            raise MaieError(ErrorCode.INVALID_MULTIPART, 'every part needs "Content-Disposition: form-data; name=..."')
        name = _decode_header_text(name_raw)
        callbacks = cast("MultipartCallbacks", self.parser.callbacks)  # typed as any parser's callbacks
        if name == self.file_field or b"filename" in params:
            if name != self.file_field:
                raise MaieError(
                    ErrorCode.INVALID_MULTIPART,
                    f"unexpected file part {name!r}; send the audio as the {self.file_field!r} part",
                )
            if self.file_headers_done:
                raise MaieError(ErrorCode.INVALID_MULTIPART, "only one file part is accepted")
            self.filename = sanitize_filename(_decode_header_text(params.get(b"filename", b"")))
            self.content_type = _sanitize_content_type(self.headers.get(b"content-type"))
            self.head = bytearray()
            self.fields_before_file = bool(self.fields)
            self.file_headers_done = True
            self.pending = self.fields_before_file  # before_file runs now, before any file byte is kept
            callbacks["on_part_data"] = self._on_head_data
        else:
            if self.field_count >= MAX_FIELDS:
                raise MaieError(ErrorCode.INVALID_FIELD, f"too many form fields (at most {MAX_FIELDS})")
            self.field_count += 1
            self.field_name = name
            self.field_value.clear()
            callbacks["on_part_data"] = self._on_field_data

    # -- data ---------------------------------------------------------------------------------------
    def _on_ignored_data(self, data: bytes, start: int, end: int) -> None:
        pass

    def _on_field_data(self, data: bytes, start: int, end: int) -> None:
        self.field_value += data[start:end]
        if len(self.field_value) > MAX_FIELD_BYTES:
            raise MaieError(
                ErrorCode.INVALID_FIELD,
                f"form field {self.field_name!r} is longer than {MAX_FIELD_BYTES} bytes",
            )

    def _count_file_bytes(self, n: int) -> None:
        self.file_bytes += n
        if self.file_bytes > self.max_file_bytes:
            raise _too_large(f"the file is larger than the upload limit of {_mib(self.max_file_bytes)}")

    def _on_head_data(self, data: bytes, start: int, end: int) -> None:
        self._count_file_bytes(end - start)
        head = self.head
        assert head is not None
        head += memoryview(data)[start:end]
        if len(head) >= self.head_target:
            self.pending = True

    def _on_file_data(self, data: bytes, start: int, end: int) -> None:
        # The hot path: one call per received chunk while the file streams.
        n = end - start
        self.file_bytes += n
        if self.file_bytes > self.max_file_bytes:
            self._count_file_bytes(0)
        writer = self.writer
        assert writer is not None
        buf = self.buf
        if buf or n < WRITE_BYTES:
            buf += memoryview(data)[start:end]
            if len(buf) >= WRITE_BYTES:
                self.buf = bytearray()
                writer.submit(buf)
        elif type(data) is bytes:  # immutable: the writer thread can read it in place
            writer.submit(memoryview(data)[start:end])
        else:
            writer.submit(bytes(data[start:end]))
        if writer.busy:
            self.pending = True

    def _on_part_end(self) -> None:
        callbacks = cast("MultipartCallbacks", self.parser.callbacks)  # typed as any parser's callbacks
        if callbacks["on_part_data"] == self._on_field_data:
            try:
                value = self.field_value.decode("utf-8")
            except UnicodeDecodeError:
                raise MaieError(ErrorCode.INVALID_FIELD, f"form field {self.field_name!r} is not valid UTF-8") from None
            self.fields.setdefault(self.field_name, []).append(value)
        elif callbacks["on_part_data"] == self._on_head_data:
            self.file_ended = True
            self.pending = True  # sniff and store the (short) head
        elif callbacks["on_part_data"] == self._on_file_data:
            self.file_ended = True
            self.finish_file()
        callbacks["on_part_data"] = self._on_ignored_data

    def _on_end(self) -> None:
        self.ended = True

    # -- async steps (between chunks) -----------------------------------------------------------------
    def head_ready(self) -> bool:
        """True when the head holds enough bytes to sniff (more are wanted past a large ID3 tag)."""
        head = self.head
        if head is None or self.container is not None:
            return False
        if self.file_ended:
            return True
        self.head_target = head_bytes_wanted(head)
        return len(head) >= self.head_target

    def store_head(self) -> None:
        """Sniff the head, then open the sink and switch to direct writes."""
        head = self.head
        assert head is not None
        if self.file_ended and not head:  # an empty file part (a form sent with no file chosen)
            self.head = None
            return
        container = sniff_container(bytes(head))
        if container is None:
            raise MaieError(
                ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                "the uploaded file is not a recognised audio or video container",
            )
        self.container = container
        self.writer = self.open_sink(container)
        self.head = None
        if len(head) >= WRITE_BYTES:
            self.writer.submit(head)
        else:
            self.buf = head
        if self.file_ended:
            self.finish_file()
        else:
            cast("MultipartCallbacks", self.parser.callbacks)["on_part_data"] = self._on_file_data

    def finish_file(self) -> None:
        """The file part is complete: hand over the last bytes; ``close_file`` follows between chunks."""
        assert self.writer is not None
        if self.buf:
            self.writer.submit(self.buf)
            self.buf = bytearray()
        self.closing = True
        self.pending = True

    async def close_file(self) -> None:
        assert self.writer is not None
        self.ref = await self.writer.commit()
        self.closing = False

    def discard(self) -> None:
        """Remove whatever this request stored. Synchronous, so cancellation cannot interrupt it."""
        if self.writer is not None:
            self.writer.abort()


async def receive_form(
    request: Request,
    *,
    dest_dir: Path | None = None,
    max_file_bytes: int,
    before_file: BeforeFile | None = None,
    file_field: str = "file",
    require_file: bool = True,
    open_sink: OpenSink | None = None,
) -> ParsedForm:
    """Read a multipart/form-data body from ``request.stream()``, storing the file part as it arrives:
    into ``open_sink(container)``, or else ``<dest_dir>/source.<container>``.

    Raises ``MaieError``: INVALID_MULTIPART (wrong Content-Type, no boundary, malformed body, a second or
    unexpected file part), MISSING_FILE, INVALID_FIELD (a field over 64 KiB, over 100 fields, not
    UTF-8), UPLOAD_TOO_LARGE (file over ``max_file_bytes`` or body over that plus 1 MiB),
    UNSUPPORTED_MEDIA_TYPE (not audio, decided from the first bytes), INSUFFICIENT_STORAGE; and whatever
    ``before_file`` raises. ``starlette.requests.ClientDisconnect`` propagates as is. See the module
    docstring for when ``before_file`` runs.
    """
    boundary = _multipart_boundary(request)
    tune_allocator()
    delimiter = b"--" + boundary
    if open_sink is None:
        if dest_dir is None:
            raise TypeError("receive_form needs dest_dir or open_sink")
        open_sink = lambda ext: FileSink(dest_dir, ext)  # noqa: E731
    reader = _FormReader(boundary, open_sink, max_file_bytes, file_field)
    write = reader.parser.write
    body_limit = max_file_bytes + FIELD_SLACK_BYTES
    received = 0
    before_file_done = before_file is None
    try:
        try:
            async with aclosing(request.stream()) as stream:
                chunks = _idle_bounded(stream, _idle_timeout_s(request))
                preamble = bytearray()
                scan = 0
                async for chunk in chunks:
                    received += len(chunk)
                    preamble += chunk
                    start, scan = _first_delimiter(preamble, delimiter, scan)
                    if start is not None:
                        write(start)
                        break
                    if len(preamble) > MAX_PREAMBLE_BYTES:
                        raise MaieError(ErrorCode.INVALID_MULTIPART, "no multipart boundary at the body start")
                del preamble
                if reader.pending:
                    before_file_done = await _settle(reader, before_file, before_file_done)
                async for chunk in chunks:
                    received += len(chunk)
                    if received > body_limit:
                        raise _too_large(f"the request body is larger than {_mib(body_limit)}")
                    write(chunk)
                    if reader.pending:
                        before_file_done = await _settle(reader, before_file, before_file_done)
        except MultipartParseError as exc:
            raise MaieError(ErrorCode.INVALID_MULTIPART, f"malformed multipart body: {exc}") from None
        if not reader.ended:
            raise MaieError(ErrorCode.INVALID_MULTIPART, "the body ended before the closing multipart boundary")
        if reader.head is not None and reader.container is None:
            reader.store_head()
        if reader.closing:
            await reader.close_file()
        if reader.ref is None and require_file:
            raise MaieError(ErrorCode.MISSING_FILE, f"no {file_field!r} file part in the form")
        if before_file is not None and (not before_file_done or reader.field_count > reader.fields_at_check):
            # Not run yet, or fields came after the file: the complete form is checked now.
            await before_file(_copy_fields(reader.fields))
    except BaseException:
        reader.discard()
        raise
    stored = None
    if reader.ref is not None:
        assert reader.container is not None
        stored = StoredFile(
            ref=reader.ref,
            path=reader.writer.path if isinstance(reader.writer, FileSink) else None,
            size=reader.file_bytes,
            container=reader.container,
            filename=reader.filename,
            content_type=reader.content_type,
        )
    return ParsedForm(fields=reader.fields, file=stored)


def _idle_timeout_s(request: Request) -> float:
    """The app's MAIE_UPLOAD_IDLE_TIMEOUT_S; its default for an app without MAIE settings (bench/upload.py)."""
    settings = getattr(request.app.state, "settings", None)
    timeout = settings.upload_idle_timeout_s if settings else Settings.model_fields["upload_idle_timeout_s"].default
    return cast("float", timeout)


async def _idle_bounded(stream: AsyncIterator[bytes], idle_s: float) -> AsyncIterator[bytes]:
    """``stream``'s chunks, or ``UPLOAD_TIMEOUT`` when none arrives for ``idle_s`` seconds: a client that
    stops sending mid-upload is dropped (and, by ``receive_form``'s contract, its file removed)."""
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return
        except TimeoutError:
            message = f"no upload data for {idle_s:g} s; the upload was dropped"
            raise MaieError(ErrorCode.UPLOAD_TIMEOUT, message, headers={"Connection": "close"}) from None
        yield chunk


def _copy_fields(fields: dict[str, list[str]]) -> dict[str, list[str]]:
    return {name: list(values) for name, values in fields.items()}


async def _settle(reader: _FormReader, before_file: BeforeFile | None, before_file_done: bool) -> bool:
    """Run the async steps the callbacks asked for; return whether ``before_file`` has run."""
    reader.pending = False
    if not before_file_done and reader.file_headers_done and reader.fields_before_file:
        assert before_file is not None
        reader.fields_at_check = reader.field_count
        await before_file(_copy_fields(reader.fields))
        before_file_done = True
    if reader.head_ready():
        reader.store_head()
    if reader.closing:
        await reader.close_file()
    elif reader.writer is not None and reader.writer.busy:
        await reader.writer.drain()
    return before_file_done
