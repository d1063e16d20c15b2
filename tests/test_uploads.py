"""The streaming upload parser over real HTTP: a tiny Starlette app calling ``receive_form`` runs under
uvicorn in a thread; requests are written byte for byte on a raw socket so the tests control framing,
chunking and disconnects. An ASGI middleware in the app counts the body bytes the app actually read and
can re-split each received chunk into n-byte pieces, so the parser sees 1- or 7-byte reads whatever TCP
coalesces."""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maie.api.uploads import (
    FIELD_SLACK_BYTES,
    MAX_FIELD_BYTES,
    MAX_FIELDS,
    check_content_length,
    receive_form,
    sanitize_filename,
)
from maie.errors import ErrorCode, MaieError

MiB = 1024 * 1024
BOUNDARY = "maieTestBoundary7MA4YWxkTrZu0gW"

# request id -> {"received": body bytes the app read, "status": response status, "done": bool}
STATS: dict[str, dict[str, Any]] = {}


class RecordingMiddleware:
    """Counts the body bytes the app reads; with ``x-rechunk: n`` hands them over n bytes at a time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        req_id = headers.get(b"x-req-id", b"-").decode()
        rechunk = int(headers.get(b"x-rechunk", b"0"))
        stats = STATS.setdefault(req_id, {"received": 0, "status": None, "done": False})
        pending: list[Message] = []

        async def counting_receive() -> Message:
            if not pending:
                message = await receive()
                body = message.get("body", b"")
                if message["type"] != "http.request" or not rechunk or len(body) <= rechunk:
                    pending.append(message)
                else:
                    more = message.get("more_body", False)
                    pieces = [body[i : i + rechunk] for i in range(0, len(body), rechunk)]
                    pending.extend(
                        {"type": "http.request", "body": p, "more_body": more or i < len(pieces) - 1}
                        for i, p in enumerate(pieces)
                    )
            message = pending.pop(0)
            stats["received"] += len(message.get("body", b""))
            return message

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                stats["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, counting_receive, recording_send)
        finally:
            stats["done"] = True


async def upload(request: Request) -> Response:
    dest = Path(request.headers["x-dest"])
    max_bytes = int(request.headers.get("x-max", str(32 * MiB)))
    check_content_length(request, max_bytes)
    calls: list[dict[str, Any]] = []

    async def before_file(fields: dict[str, list[str]]) -> None:
        calls.append({"fields": fields, "file_on_disk": dest.exists()})
        if fields.get("template_id") == ["missing"]:
            raise MaieError(ErrorCode.TEMPLATE_NOT_FOUND, "no such template")

    form = await receive_form(request, dest_dir=dest, max_file_bytes=max_bytes, before_file=before_file)
    stored = form.file
    assert stored is not None
    return JSONResponse(
        {
            "fields": form.fields,
            "before_file": calls,
            "file": {
                "path": str(stored.path),
                "size": stored.size,
                "container": stored.container,
                "filename": stored.filename,
                "content_type": stored.content_type,
            },
        }
    )


async def maie_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, MaieError)
    return JSONResponse(
        {"detail": exc.message, "code": exc.code.value}, status_code=exc.status_code, headers=exc.headers
    )


async def client_gone(_: Request, exc: Exception) -> Response:
    return Response(status_code=499)


def _app() -> ASGIApp:
    app = Starlette(
        routes=[Route("/upload", upload, methods=["POST"])],
        exception_handlers={MaieError: maie_error, ClientDisconnect: client_gone},
    )
    return RecordingMiddleware(app)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_app(), log_level="warning", lifespan="off", http="h11")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "task-1"  # not created: receive_form creates it when the file starts


# -- building bodies ------------------------------------------------------------------------------------


def field(name: str, value: str | bytes, boundary: str = BOUNDARY) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + raw + b"\r\n"


def file_head(filename: str | None = "audio.bin", name: str = "file", ctype: str = "application/octet-stream") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: {ctype}\r\n\r\n".encode()


def file_part(content: bytes, filename: str | None = "audio.bin", name: str = "file") -> bytes:
    return file_head(filename, name) + content + b"\r\n"


CLOSE = f"--{BOUNDARY}--\r\n".encode()


# -- raw HTTP client ------------------------------------------------------------------------------------


class Reply:
    def __init__(self, raw: bytes) -> None:
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines[0] else 0
        self.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def request_head(
    dest: Path,
    req_id: str,
    *,
    length: int | None,
    content_type: str | None = f"multipart/form-data; boundary={BOUNDARY}",
    extra: dict[str, str] | None = None,
) -> bytes:
    headers = {"Host": "test", "Connection": "close", "X-Dest": str(dest), "X-Req-Id": req_id}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if length is None:
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = str(length)
    headers.update(extra or {})
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST /upload HTTP/1.1\r\n{lines}\r\n".encode()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_reply(sock: socket.socket) -> Reply:
    chunks = []
    try:
        while data := sock.recv(65536):
            chunks.append(data)
    except ConnectionResetError:
        pass
    return Reply(b"".join(chunks))


def post(
    port: int,
    dest: Path,
    body: bytes,
    *,
    send_size: int | None = None,
    rechunk: int | None = None,
    max_bytes: int | None = None,
    content_type: str | None = f"multipart/form-data; boundary={BOUNDARY}",
) -> tuple[Reply, dict[str, Any]]:
    """Send ``body`` with a Content-Length, ``send_size`` bytes per send(); return the reply and STATS."""
    req_id = uuid.uuid4().hex
    extra = {}
    if rechunk:
        extra["X-Rechunk"] = str(rechunk)
    if max_bytes is not None:
        extra["X-Max"] = str(max_bytes)
    with connect(port) as sock:
        sock.sendall(request_head(dest, req_id, length=len(body), content_type=content_type, extra=extra))
        step = send_size or len(body) or 1
        view = memoryview(body)
        try:
            for i in range(0, len(body), step):
                sock.sendall(view[i : i + step])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed; its reply is still readable
        reply = read_reply(sock)
    return reply, wait_done(req_id)


def wait_done(req_id: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = STATS.get(req_id)
        if stats and stats["done"]:
            return stats
        time.sleep(0.01)
    raise AssertionError(f"the server did not finish request {req_id}")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_error(reply: Reply, status: int, code: ErrorCode) -> None:
    assert reply.status == status, reply.body
    assert reply.json()["code"] == code.value
    assert reply.json()["detail"]


# -- valid uploads -----------------------------------------------------------------------------------


def test_stores_real_audio_under_its_detected_container(port: int, dest: Path, shared_audio: Path) -> None:
    audio = (shared_audio / "jfk.flac").read_bytes()
    body = field("features", "raw_transcript") + field("features", "summary")
    body += file_part(audio, filename="recording.mp3") + CLOSE  # the extension lies; the bytes decide
    reply, stats = post(port, dest, body)
    assert reply.status == 200, reply.body
    data = reply.json()
    assert data["fields"] == {"features": ["raw_transcript", "summary"]}
    assert data["file"]["container"] == "flac"
    assert data["file"]["filename"] == "recording.mp3"
    assert data["file"]["content_type"] == "application/octet-stream"
    assert data["file"]["size"] == len(audio)
    assert Path(data["file"]["path"]) == dest / "source.flac"
    assert sha((dest / "source.flac").read_bytes()) == sha(audio)
    assert os.listdir(dest) == ["source.flac"]
    assert stats["received"] == len(body)


_B = BOUNDARY.encode()
EDGES = b"".join(
    [
        b"\r\n--" + _B[:-1] + b"X\r\n",  # a boundary prefix
        b"\r\n--" + _B + b"-X",  # boundary + one hyphen
        b"\r\n--" + _B + b"\rX",  # boundary + CR without LF
        b"\r\n--" + _B + b"X--\r\n",  # boundary + other text
        b"\r\n-\r\n--\r\r\n\r\n--" + b"\r" * 5 + b"--" + _B[:5],  # crowded near-misses
        b"\r\n--" + _B[:-2],  # cut short at the very end of the file
    ]
)


@pytest.mark.parametrize(
    ("name", "piece"), [("hotwords.mp3", 1), ("stereo_diarization.wav", 7)], ids=["1-byte", "7-byte"]
)
def test_tiny_reads_and_near_boundaries_keep_the_bytes_exact(
    port: int, dest: Path, shared_audio: Path, name: str, piece: int
) -> None:
    audio = (shared_audio / name).read_bytes()
    mid = len(audio) // 2
    content = audio[:mid] + EDGES + audio[mid:] + EDGES
    body = field("language", "en") + file_part(content, filename=name) + field("late", "after") + CLOSE
    reply, stats = post(port, dest, body, send_size=piece, rechunk=piece)
    assert reply.status == 200, reply.body
    data = reply.json()
    assert data["fields"] == {"language": ["en"], "late": ["after"]}
    stored = Path(data["file"]["path"])
    assert stored.name == f"source.{Path(name).suffix[1:]}"
    assert sha(stored.read_bytes()) == sha(content)
    assert stats["received"] == len(body)


def test_preamble_transport_padding_and_epilogue(port: int, dest: Path, shared_audio: Path) -> None:
    audio = (shared_audio / "stereo_diarization.wav").read_bytes()
    delimiter = f"--{BOUNDARY}".encode()
    body = b"This is a preamble; readers ignore it.\r\n"
    body += delimiter + b' \t \r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n'
    body += delimiter + b'\t\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    body += audio + b"\r\n" + delimiter + b"--\r\nAn epilogue, also ignored.\r\n"
    reply, _ = post(port, dest, body, send_size=5000, rechunk=3001)
    assert reply.status == 200, reply.body
    assert reply.json()["fields"] == {"language": ["en"]}
    assert sha((dest / "source.wav").read_bytes()) == sha(audio)


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\x.wav", "x.wav"),
        ("Bài giảng 日本語 🎤.flac", "Bài giảng 日本語 🎤.flac"),
        ("a\tb\u202ecod.exe.flac", "abcod.exe.flac"),
        ("..", None),
        ("x" * 300 + ".flac", "x" * 255),
    ],
)
def test_client_file_name_is_only_sanitized_metadata(
    port: int, dest: Path, shared_audio: Path, raw: str, kept: str | None
) -> None:
    audio = (shared_audio / "jfk.flac").read_bytes()[:50_000]
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{raw}"\r\n'
        "Content-Type: audio/flac\r\n\r\n"
    ).encode()
    reply, _ = post(port, dest, head + audio + b"\r\n" + CLOSE)
    assert reply.status == 200, reply.body
    data = reply.json()["file"]
    assert data["filename"] == kept
    assert data["content_type"] == "audio/flac"
    assert os.listdir(dest) == ["source.flac"]
    assert sanitize_filename(raw) == kept


def test_file_grows_on_disk_while_the_client_is_still_sending(port: int, dest: Path, shared_audio: Path) -> None:
    audio = (shared_audio / "two_speakers_sample.wav").read_bytes()
    first, rest = audio[:600_000], audio[600_000:] + b"\r\n" + CLOSE
    head = file_part(b"", filename="talk.wav")[:-2]
    req_id = uuid.uuid4().hex
    with connect(port) as sock:
        sock.sendall(request_head(dest, req_id, length=len(head) + len(audio) + 2 + len(CLOSE)))
        sock.sendall(head + first)
        stored = dest / "source.wav"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not stored.exists() or stored.stat().st_size < 500_000):
            time.sleep(0.01)
        size_mid_upload = stored.stat().st_size if stored.exists() else 0
        sock.sendall(rest)
        reply = read_reply(sock)
    assert 500_000 <= size_mid_upload <= 600_000  # all but at most one 64 KiB write buffer
    assert reply.status == 200, reply.body
    assert sha(stored.read_bytes()) == sha(audio)


def _rss_peak_reset() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := current RSS


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))


def _written_bytes() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("write_bytes:"))


def test_large_upload_keeps_memory_flat_and_writes_each_byte_once(port: int, dest: Path, shared_audio: Path) -> None:
    """96 MiB through the server (in this process): peak RSS grows < 32 MiB, disk writes ~= file size."""
    wav = (shared_audio / "two_speakers_sample.wav").read_bytes()
    block = os.urandom(MiB)
    size = len(wav) + 96 * MiB
    head = field("language", "en") + file_head("big.wav")
    req_id = uuid.uuid4().hex
    try:
        _rss_peak_reset()
    except OSError:
        pytest.skip("cannot reset the peak RSS counter here")
    rss_before = _status_kib("VmRSS") * 1024
    written_before = _written_bytes()
    with connect(port) as sock:
        sock.sendall(
            request_head(dest, req_id, length=len(head) + size + 2 + len(CLOSE), extra={"X-Max": str(128 * MiB)})
        )
        sock.sendall(head + wav)
        for _ in range(96):
            sock.sendall(block)
        sock.sendall(b"\r\n" + CLOSE)
        reply = read_reply(sock)
    assert reply.status == 200, reply.body
    growth = _status_kib("VmHWM") * 1024 - rss_before
    written = _written_bytes() - written_before
    assert (dest / "source.wav").stat().st_size == size
    assert growth < 32 * MiB, f"peak RSS grew {growth / MiB:.1f} MiB"
    if written:  # 0 on tmpfs, which has no backing device to count
        assert size <= written < size * 1.05, f"{written / size:.2f} bytes written per uploaded byte"


# -- before_file ---------------------------------------------------------------------------------------


def test_before_file_runs_before_any_file_byte_is_stored(port: int, dest: Path, shared_audio: Path) -> None:
    audio = (shared_audio / "jfk.flac").read_bytes()
    body = field("template_id", "generic") + file_part(audio) + CLOSE
    reply, _ = post(port, dest, body)
    assert reply.status == 200, reply.body
    assert reply.json()["before_file"] == [{"fields": {"template_id": ["generic"]}, "file_on_disk": False}]


def test_before_file_refusal_stops_the_upload(port: int, dest: Path, shared_audio: Path) -> None:
    audio = (shared_audio / "two_speakers_sample.wav").read_bytes() * 8  # ~7.7 MB
    body = field("template_id", "missing") + file_part(audio) + CLOSE
    reply, stats = post(port, dest, body)
    assert_error(reply, 404, ErrorCode.TEMPLATE_NOT_FOUND)
    assert not dest.exists()
    assert stats["received"] < 2 * MiB  # refused at the file headers, not after the body


def test_file_first_defers_before_file_to_the_end(port: int, dest: Path, shared_audio: Path) -> None:
    audio = (shared_audio / "jfk.flac").read_bytes()
    body = file_part(audio) + field("template_id", "generic") + CLOSE
    reply, _ = post(port, dest, body)
    assert reply.status == 200, reply.body
    assert reply.json()["before_file"] == [{"fields": {"template_id": ["generic"]}, "file_on_disk": True}]

    other = dest.parent / "task-2"
    body = file_part(audio) + field("template_id", "missing") + CLOSE
    reply, _ = post(port, other, body)
    assert_error(reply, 404, ErrorCode.TEMPLATE_NOT_FOUND)
    assert not other.exists()  # the stored file was removed again


# -- refusals ------------------------------------------------------------------------------------------


def test_not_audio_is_refused_from_its_first_bytes(port: int, dest: Path) -> None:
    text = b"Just some notes, definitely not a recording.\n" * 200_000  # ~9 MB
    reply, stats = post(port, dest, field("language", "en") + file_part(text, "notes.wav") + CLOSE)
    assert_error(reply, 415, ErrorCode.UNSUPPORTED_MEDIA_TYPE)
    assert not dest.exists()
    assert stats["received"] < 2 * MiB  # decided from the head, the rest never read by the app


def test_huge_text_field_is_refused(port: int, dest: Path, shared_audio: Path) -> None:
    audio = (shared_audio / "jfk.flac").read_bytes()
    body = field("initial_prompt", "x" * (MAX_FIELD_BYTES + 1)) + file_part(audio) + CLOSE
    reply, _ = post(port, dest, body)
    assert_error(reply, 422, ErrorCode.INVALID_FIELD)
    assert not dest.exists()

    body = field("initial_prompt", "x" * MAX_FIELD_BYTES) + file_part(audio) + CLOSE
    reply, _ = post(port, dest, body)
    assert reply.status == 200, reply.body


def test_too_many_fields_and_bad_utf8_are_refused(port: int, dest: Path, shared_audio: Path) -> None:
    audio = (shared_audio / "jfk.flac").read_bytes()[:20_000]
    body = b"".join(field("hotwords", str(i)) for i in range(MAX_FIELDS + 1)) + file_part(audio) + CLOSE
    reply, _ = post(port, dest, body)
    assert_error(reply, 422, ErrorCode.INVALID_FIELD)
    reply, _ = post(port, dest, field("language", b"\xff\xfe") + file_part(audio) + CLOSE)
    assert_error(reply, 422, ErrorCode.INVALID_FIELD)
    assert not dest.exists()


def test_missing_file_part(port: int, dest: Path) -> None:
    reply, _ = post(port, dest, field("language", "en") + CLOSE)
    assert_error(reply, 422, ErrorCode.MISSING_FILE)
    reply, _ = post(port, dest, file_part(b"", filename="") + CLOSE)  # a browser form with no file chosen
    assert_error(reply, 422, ErrorCode.MISSING_FILE)
    assert not dest.exists()


def test_several_file_parts_are_refused(port: int, dest: Path, shared_audio: Path) -> None:
    audio = (shared_audio / "jfk.flac").read_bytes()
    reply, _ = post(port, dest, file_part(audio) + file_part(audio) + CLOSE)
    assert_error(reply, 400, ErrorCode.INVALID_MULTIPART)
    assert not dest.exists()
    reply, _ = post(port, dest, file_part(audio, name="other") + CLOSE)  # a file under another name
    assert_error(reply, 400, ErrorCode.INVALID_MULTIPART)
    assert not dest.exists()


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "application/x-www-form-urlencoded", "multipart/form-data", "multipart/mixed"],
)
def test_not_multipart_or_no_boundary(port: int, dest: Path, content_type: str | None) -> None:
    reply, stats = post(port, dest, field("language", "en") + CLOSE, content_type=content_type)
    assert_error(reply, 400, ErrorCode.INVALID_MULTIPART)
    assert stats["received"] == 0  # refused from the headers alone


def test_malformed_multipart(port: int, dest: Path, shared_audio: Path) -> None:
    audio = (shared_audio / "jfk.flac").read_bytes()
    bad_header = f"--{BOUNDARY}\r\nContent-Disposition form-data\r\n\r\nx\r\n".encode() + CLOSE
    no_disposition = f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n".encode() + CLOSE
    for body in (b"garbage with no boundary at all\r\n", bad_header, no_disposition):
        reply, _ = post(port, dest, body)
        assert_error(reply, 400, ErrorCode.INVALID_MULTIPART)
    # the body ends (Content-Length reached) in the middle of the file: no closing boundary
    reply, _ = post(port, dest, field("language", "en") + file_head() + audio[:300_000])
    assert_error(reply, 400, ErrorCode.INVALID_MULTIPART)
    assert not dest.exists()


def test_declared_length_over_the_limit_is_refused_before_the_body(port: int, dest: Path, shared_audio: Path) -> None:
    audio = (shared_audio / "two_speakers_sample.wav").read_bytes()  # 960 KB
    limit = 256 * 1024
    body = file_part(audio * 2) + CLOSE  # body > limit + 1 MiB of field slack
    assert len(body) > limit + FIELD_SLACK_BYTES
    reply, stats = post(port, dest, body, max_bytes=limit)
    assert stats["status"] == 413
    assert stats["received"] == 0
    if reply.status:  # the server closes without reading the body, so the reply may be lost to a reset
        assert_error(reply, 413, ErrorCode.UPLOAD_TOO_LARGE)
    assert not dest.exists()

    # within the declared slack but a file over the limit: cut off while streaming
    reply, stats = post(port, dest, file_part(audio) + CLOSE, max_bytes=limit)
    assert stats["status"] == 413
    assert stats["received"] < len(audio)
    assert not dest.exists()


def _chunked(pieces: Iterable[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        yield b"%x\r\n" % len(piece) + piece + b"\r\n"


def test_oversized_chunked_body_is_cut_off(port: int, dest: Path, shared_audio: Path) -> None:
    limit = 4 * MiB
    audio = (shared_audio / "two_speakers_sample.wav").read_bytes()
    block = os.urandom(256 * 1024)
    req_id = uuid.uuid4().hex
    sent = 0
    reply = Reply(b"")

    def pieces() -> Iterator[bytes]:
        yield field("language", "en") + file_head("big.wav") + audio
        while True:
            yield block

    with connect(port) as sock:
        sock.sendall(request_head(dest, req_id, length=None, extra={"X-Max": str(limit)}))
        try:
            for wire in _chunked(pieces()):
                readable, _, _ = select.select([sock], [], [], 0)
                if readable or sent > limit + 64 * MiB:
                    break
                sock.sendall(wire)
                sent += len(wire)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_reply(sock)
    stats = wait_done(req_id)
    assert stats["status"] == 413
    past_limit = stats["received"] - limit
    assert past_limit < 16 * MiB, f"the server read {past_limit / MiB:.1f} MiB past the limit"
    assert sent < limit + 64 * MiB  # the client saw the refusal (or a closed socket) and stopped
    if reply.status:
        assert_error(reply, 413, ErrorCode.UPLOAD_TOO_LARGE)
    assert not dest.exists()


def test_client_disconnect_mid_file_leaves_nothing(port: int, dest: Path, shared_audio: Path) -> None:
    audio = (shared_audio / "two_speakers_sample.wav").read_bytes()
    head = field("language", "en") + file_head("talk.wav")
    req_id = uuid.uuid4().hex
    with connect(port) as sock:
        sock.sendall(request_head(dest, req_id, length=len(head) + len(audio) + 2 + len(CLOSE)))
        sock.sendall(head + audio[:400_000])
        deadline = time.monotonic() + 10
        while not (dest / "source.wav").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (dest / "source.wav").exists()  # the upload was really under way
    stats = wait_done(req_id)
    assert stats["status"] in (None, 499)
    assert not dest.exists()


def test_chunked_body_ending_mid_file_leaves_nothing(port: int, dest: Path, shared_audio: Path) -> None:
    audio = (shared_audio / "two_speakers_sample.wav").read_bytes()
    req_id = uuid.uuid4().hex
    with connect(port) as sock:
        sock.sendall(request_head(dest, req_id, length=None))
        for wire in _chunked([file_head("talk.wav"), audio[:500_000]]):
            sock.sendall(wire)
        sock.sendall(b"0\r\n\r\n")
        reply = read_reply(sock)
    assert_error(reply, 400, ErrorCode.INVALID_MULTIPART)
    assert not dest.exists()


def test_existing_dest_dir_is_kept_but_emptied(port: int, dest: Path, shared_audio: Path) -> None:
    dest.mkdir()
    (dest / "keep.txt").write_text("not ours")
    audio = (shared_audio / "jfk.flac").read_bytes()
    reply, _ = post(port, dest, file_part(audio) + file_part(audio) + CLOSE)
    assert_error(reply, 400, ErrorCode.INVALID_MULTIPART)
    assert sorted(os.listdir(dest)) == ["keep.txt"]


def test_writer_queue_is_bounded_across_uploads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many uploads at once against a slow disk: what waits for the writer threads stays near
    MAX_QUEUED_BYTES in total (not MAX_IN_FLIGHT_BYTES per upload), every byte lands, and a sink that
    is aborted mid-way gives its share back."""
    import asyncio

    from maie.storage import file as file_storage

    limit = 4 * 1024 * 1024
    monkeypatch.setattr(file_storage, "MAX_QUEUED_BYTES", limit)
    real_write = file_storage._pwrite_all

    def slow_write(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
        time.sleep(0.002)  # a disk slower than the socket: the queue builds up
        real_write(fd, data, offset)

    monkeypatch.setattr(file_storage, "_pwrite_all", slow_write)
    piece = 64 * 1024
    uploads, pieces = 40, 32  # 40 x 2 MiB: 80 MiB would wait without the shared bound
    peak = 0

    async def one(n: int) -> None:
        nonlocal peak
        sink = file_storage.FileSink(tmp_path / f"t{n}", "wav")
        for _ in range(pieces):
            sink.submit(bytes([n]) * piece)
            peak = max(peak, file_storage.QUEUED.bytes)
            if sink.busy:
                await sink.drain()
            await asyncio.sleep(0)
        if n % 10 == 0:
            sink.abort()
        else:
            await sink.commit()

    async def burst() -> None:
        await asyncio.gather(*(one(n) for n in range(uploads)))

    asyncio.run(burst())
    assert peak <= limit + uploads * piece, f"{peak / 2**20:.1f} MiB waited for the writers"
    assert peak > limit / 2  # the disk really was the bottleneck
    assert file_storage.QUEUED.bytes == 0
    for n in range(uploads):
        path = tmp_path / f"t{n}" / "source.wav"
        if n % 10 == 0:
            assert not path.exists()
        else:
            assert path.read_bytes() == bytes([n]) * (piece * pieces)
