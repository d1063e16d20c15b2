"""A corpus of bad requests: each gets its 4xx and stable code, never a 5xx, and leaves nothing behind."""

from __future__ import annotations

import io
import json
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service import API_KEY, Service, start_service, wait_terminal

MAX_UPLOAD_MB = 4


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(tmp_path_factory.mktemp("bad") / "data", env={"MAIE_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB)})
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


def wav(seconds: float = 1.0) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * int(16000 * seconds))
    return buf.getvalue()


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> tuple[bytes, dict[str, str]]:
    body = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        body += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def post_parts(parts: list[tuple[str, str | None, bytes]]) -> Callable[[httpx.Client], httpx.Response]:
    body, headers = multipart(parts)
    return lambda c: c.post("/v1/process", content=body, headers=headers)


def upload(fields: dict[str, str], data: bytes = b"", name: str = "a.wav") -> Callable[[httpx.Client], httpx.Response]:
    data = data or wav()
    return lambda c: c.post("/v1/process", data=fields, files={"file": (name, data)})


def chunked_oversize(c: httpx.Client) -> httpx.Response:
    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n\r\n' + wav(0.1)
        for _ in range(MAX_UPLOAD_MB * 8):
            yield b"\0" * (256 * 1024)
        yield b"\r\n--b--\r\n"

    try:
        return c.post("/v1/process", content=body(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    except httpx.HTTPError:  # the server may close the connection once it has answered 413
        return httpx.Response(413, json={"code": "UPLOAD_TOO_LARGE"})


def declared_oversize(c: httpx.Client) -> httpx.Response:
    """Headers only: the refusal must come before any body byte is sent."""
    import socket

    with socket.create_connection((c.base_url.host, c.base_url.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/process HTTP/1.1\r\nHost: x\r\nX-API-Key: "
            + API_KEY.encode()
            + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: "
            + str(50 * 1024**3).encode()
            + b"\r\n\r\n"
        )
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return httpx.Response(
        int(head.split()[1]), content=body, request=httpx.Request("POST", c.base_url.join("/v1/process"))
    )


EVIL_TEMPLATE = {
    "id": "evil",
    "prompt": "{{ ''.__class__.__mro__[1].__subclasses__() }} {{ transcript }}",
    "schema": {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["tags"],
    },
    "example": {"tags": ["x"]},
}

CASES: list[tuple[str, Callable[[httpx.Client], httpx.Response], int, str]] = [
    ("no key", lambda c: httpx.get(c.base_url.join("/v1/templates")), 401, "UNAUTHORIZED"),
    ("wrong key", lambda c: c.get("/v1/templates", headers={"X-API-Key": "nope"}), 401, "UNAUTHORIZED"),
    (
        "empty bearer",
        lambda c: httpx.get(c.base_url.join("/v1/templates"), headers={"Authorization": "Bearer"}),
        401,
        "UNAUTHORIZED",
    ),
    ("basic auth", lambda c: httpx.get(c.base_url.join("/v1/templates"), auth=("u", API_KEY)), 401, "UNAUTHORIZED"),
    ("unknown task", lambda c: c.get("/v1/status/00000000-0000-0000-0000-000000000000"), 404, "TASK_NOT_FOUND"),
    ("unknown task transcript", lambda c: c.get("/v1/tasks/nope/transcript"), 404, "TASK_NOT_FOUND"),
    ("unknown task delete", lambda c: c.delete("/v1/tasks/nope"), 404, "TASK_NOT_FOUND"),
    ("unknown task events", lambda c: c.get("/v1/tasks/nope/events"), 404, "TASK_NOT_FOUND"),
    ("unknown template", lambda c: c.get("/v1/templates/nope"), 404, "TEMPLATE_NOT_FOUND"),
    ("traversal template id", lambda c: c.get("/v1/templates/..%2F..%2Fetc"), 404, "NOT_FOUND"),
    ("dotted template id", lambda c: c.get("/v1/templates/..secret"), 404, "TEMPLATE_NOT_FOUND"),
    ("unknown route", lambda c: c.get("/v1/teleport"), 404, "NOT_FOUND"),
    ("wrong method", lambda c: c.patch("/v1/process"), 405, "METHOD_NOT_ALLOWED"),
    ("json instead of multipart", lambda c: c.post("/v1/process", json={"file": "x"}), 400, "INVALID_MULTIPART"),
    (
        "multipart without boundary",
        lambda c: c.post("/v1/process", content=b"abc", headers={"Content-Type": "multipart/form-data"}),
        400,
        "INVALID_MULTIPART",
    ),
    (
        "garbage body",
        lambda c: c.post(
            "/v1/process", content=b"\x00garbage" * 100, headers={"Content-Type": "multipart/form-data; boundary=XyZ"}
        ),
        400,
        "INVALID_MULTIPART",
    ),
    ("no file part", post_parts([("features", None, b"raw_transcript")]), 422, "MISSING_FILE"),
    ("two files", post_parts([("file", "a.wav", wav()), ("file", "b.wav", wav())]), 400, "INVALID_MULTIPART"),
    (
        "huge text field",
        post_parts([("initial_prompt", None, b"x" * 100_000), ("file", "a.wav", wav())]),
        422,
        "INVALID_FIELD",
    ),
    ("unknown feature", upload({"features": "telepathy"}), 422, "INVALID_FIELD"),
    ("empty features", upload({"features": ","}), 422, "INVALID_FIELD"),
    ("vad threshold not a number", upload({"vad_threshold": "abc"}), 422, "INVALID_FIELD"),
    ("vad threshold out of range", upload({"vad_threshold": "5"}), 422, "INVALID_FIELD"),
    ("min > max speakers", upload({"min_speakers": "4", "max_speakers": "2"}), 422, "INVALID_FIELD"),
    ("zero speakers", upload({"min_speakers": "0"}), 422, "INVALID_FIELD"),
    ("bool not a bool", upload({"word_timestamps": "maybe"}), 422, "INVALID_FIELD"),
    ("unknown backend", upload({"asr_backend": "kaldi"}), 422, "INVALID_FIELD"),
    ("bad language", upload({"language": "english!!"}), 422, "INVALID_FIELD"),
    ("unknown field", upload({"colour": "blue"}), 422, "INVALID_FIELD"),
    (
        "field given twice",
        post_parts([("language", None, b"en"), ("language", None, b"vi"), ("file", "a.wav", wav())]),
        422,
        "INVALID_FIELD",
    ),
    ("unknown template in upload", upload({"features": "summary", "template_id": "nope"}), 404, "TEMPLATE_NOT_FOUND"),
    ("callback not http", upload({"callback_url": "file:///etc/passwd"}), 422, "INVALID_FIELD"),
    ("callback to loopback", upload({"callback_url": "http://127.0.0.1/x"}), 422, "INVALID_FIELD"),
    ("text file as audio", upload({}, b"hello, this is plainly text\n" * 100, "a.wav"), 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("png as audio", upload({}, b"\x89PNG\r\n\x1a\n" + b"\0" * 4000, "a.mp3"), 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("empty file", post_parts([("file", "a.wav", b"")]), 422, "MISSING_FILE"),
    ("content-length over limit", declared_oversize, 413, "UPLOAD_TOO_LARGE"),
    ("chunked over limit", chunked_oversize, 413, "UPLOAD_TOO_LARGE"),
    ("process_text empty", lambda c: c.post("/v1/process_text", json={"text": ""}), 422, "VALIDATION_ERROR"),
    (
        "process_text not json",
        lambda c: c.post("/v1/process_text", content=b"{nope", headers={"Content-Type": "application/json"}),
        422,
        "VALIDATION_ERROR",
    ),
    (
        "process_text unknown template",
        lambda c: c.post("/v1/process_text", json={"text": "hi", "features": ["summary"], "template_id": "nope"}),
        404,
        "TEMPLATE_NOT_FOUND",
    ),
    ("process_text wrong type", lambda c: c.post("/v1/process_text", json={"text": 5}), 422, "VALIDATION_ERROR"),
    ("bad export format", lambda c: c.get("/v1/tasks/nope/transcript?format=doc"), 422, "VALIDATION_ERROR"),
    ("bad list limit", lambda c: c.get("/v1/tasks?limit=0"), 422, "VALIDATION_ERROR"),
    (
        "template with invalid schema",
        lambda c: c.post(
            "/v1/templates",
            json={**EVIL_TEMPLATE, "id": "badschema", "prompt": "{{ transcript }}", "schema": {"type": "nonsense"}},
        ),
        422,
        "TEMPLATE_INVALID",
    ),
    ("template escaping the sandbox", lambda c: c.post("/v1/templates", json=EVIL_TEMPLATE), 422, "TEMPLATE_INVALID"),
    (
        "template via globals",
        lambda c: c.post(
            "/v1/templates",
            json={**EVIL_TEMPLATE, "id": "evil2", "prompt": "{{ cycler.__init__.__globals__.os }} {{ transcript }}"},
        ),
        422,
        "TEMPLATE_INVALID",
    ),
    (
        "overwrite built-in template",
        lambda c: c.put("/v1/templates/generic_summary_en_v2", json={"prompt": "{{ transcript }}"}),
        403,
        "TEMPLATE_READ_ONLY",
    ),
    (
        "openai bad response_format",
        lambda c: c.post(
            "/v1/audio/transcriptions",
            data={"model": "whisper-1", "response_format": "xml"},
            files={"file": ("a.wav", wav())},
        ),
        422,
        "INVALID_FIELD",
    ),
    (
        "openai no file",
        lambda c: c.post("/v1/audio/transcriptions", files={"model": (None, "whisper-1")}),
        422,
        "MISSING_FILE",
    ),
]


@pytest.mark.parametrize(("name", "call", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(
    service: Service, name: str, call: Callable[[httpx.Client], httpx.Response], status: int, code: str
) -> None:
    audio_root = service.data_dir / "audio"
    before = sorted(audio_root.iterdir()) if audio_root.exists() else []
    with service.client() as client:
        r = call(client)
    assert r.status_code == status, (name, r.status_code, r.text)
    body = r.json()
    if str(r.request.url.path).startswith("/v1/audio/"):  # OpenAI's error shape there
        body = {"code": body["error"]["code"], "detail": body["error"]["message"]}
    assert body["code"] == code, (name, r.text)
    assert body["detail"]
    after = sorted(audio_root.iterdir()) if audio_root.exists() else []
    assert after == before, f"{name} left files behind"


def test_corpus_is_large() -> None:
    assert len(CASES) >= 30


def test_traversal_and_unicode_file_names_never_reach_a_path(service: Service) -> None:
    with service.client() as client:
        for name in ("../../../../etc/passwd.wav", "..\\..\\boot.ini", "tiếng việt 🎙.wav", "a\x00b.wav"):
            r = client.post("/v1/process", files={"file": (name, wav())})
            assert r.status_code == 202, r.text
            task_id = r.json()["task_id"]
            record = client.get(f"/v1/status/{task_id}").json()
            assert "/" not in (record["filename"] or "") and "\\" not in (record["filename"] or "")
            assert "\x00" not in (record["filename"] or "")
            assert [p.name for p in (service.data_dir / "audio" / task_id).iterdir()] == ["source.wav"]
            wait_terminal(client, task_id)
    assert not Path("/etc/passwd.wav").exists()


def test_truncated_audio_is_reported_not_silently_accepted(service: Service, shared_audio: Path) -> None:
    data = (shared_audio / "jfk.flac").read_bytes()
    with service.client() as client:
        r = client.post("/v1/process", files={"file": ("cut.flac", data[: len(data) * 4 // 10])})
        if r.status_code == 415:  # refused at the door is also an honest answer
            return
        assert r.status_code == 202, r.text
        record = wait_terminal(client, r.json()["task_id"])
    codes = {w["code"] for w in record.get("warnings") or []} | {(record.get("error") or {}).get("code")}
    assert "AUDIO_TRUNCATED" in codes, json.dumps(record)[:2000]
