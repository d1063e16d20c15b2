"""The service over real HTTP: embedded Redis, a real worker with the real tiny.en model, real audio."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from service import API_KEY, Service, start_service, wait_terminal

MAX_UPLOAD_MB = 8


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(
        tmp_path_factory.mktemp("svc") / "data",
        env={"MAIE_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB), "MAIE_JOB_MAX_ATTEMPTS": "1"},
    )
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


def wav_bytes(seconds: float, *, rate: int = 16000, tone: bool = False) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) if tone else np.zeros_like(t)) * 32767
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


def audio_dirs(svc: Service) -> list[Path]:
    root = svc.data_dir / "audio"
    return sorted(root.iterdir()) if root.exists() else []


def submit(client: httpx.Client, path: Path, **fields: str | list[str]) -> str:
    with path.open("rb") as f:
        r = client.post("/v1/process", data=fields, files={"file": (path.name, f)})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "PENDING" and body["status_url"] == f"/v1/status/{body['task_id']}"
    return body["task_id"]


def test_lifecycle_to_complete_with_real_transcript(service: Service, shared_audio: Path) -> None:
    with service.client() as client:
        task_id = submit(client, shared_audio / "jfk.flac", features="raw_transcript")
        record = wait_terminal(client, task_id)
    assert record["status"] == "COMPLETE", record
    text = record["results"]["raw_transcript"].lower()
    assert "ask not what your country can do for you" in text
    assert record["results"]["language"] == "en"
    assert record["progress"] == 1.0
    for key in ("submitted_at", "started_at", "completed_at"):
        assert record[key], key
    m = record["metrics"]
    assert 10.5 < m["input_duration_s"] < 11.5
    assert m["asr_rtf"] > 0 and m["rtf"] >= m["asr_rtf"]
    assert record["versions"]["asr"]["model"] == "tiny.en"
    assert record["filename"] == "jfk.flac"
    stored = service.data_dir / "audio" / task_id
    assert [p.name for p in stored.iterdir()] == ["source.flac"]


def test_second_job_uses_warm_model(service: Service, shared_audio: Path) -> None:
    with service.client() as client:
        records = [wait_terminal(client, submit(client, shared_audio / "jfk.flac")) for _ in range(2)]
    assert all(r["status"] == "COMPLETE" for r in records)
    assert records[1]["metrics"]["asr_load_time_s"] == 0.0


def test_failing_job_ends_failed_with_code_and_stage_and_worker_goes_on(
    service: Service, tmp_path: Path, shared_audio: Path
) -> None:
    short = tmp_path / "short.wav"
    short.write_bytes(wav_bytes(0.02))
    with service.client() as client:
        failed = wait_terminal(client, submit(client, short))
        after = wait_terminal(client, submit(client, shared_audio / "jfk.flac"))
    assert failed["status"] == "FAILED"
    assert failed["error"]["code"] == "AUDIO_TOO_SHORT"
    assert failed["error"]["stage"] == "PREPROCESSING"
    assert after["status"] == "COMPLETE"


def test_content_length_over_limit_refused_before_body(service: Service) -> None:
    before = audio_dirs(service)
    host, port = service.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/process HTTP/1.1\r\nHost: x\r\nX-API-Key: "
            + API_KEY.encode()
            + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: "
            + str(10 * 1024**3).encode()
            + b"\r\n\r\n"
        )
        received = b""
        while chunk := s.recv(65536):  # the server closes after refusing
            received += chunk
        reply = received.decode()
    assert reply.startswith("HTTP/1.1 413"), reply
    assert '"code":"UPLOAD_TOO_LARGE"' in reply
    assert audio_dirs(service) == before


def test_chunked_upload_cut_off_when_limit_crossed(service: Service) -> None:
    before = audio_dirs(service)
    header = wav_bytes(0.5)
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n' + header
        chunk = b"\0" * (256 * 1024)
        for _ in range(4 * MAX_UPLOAD_MB * 4):  # 4x the limit
            sent += len(chunk)
            yield chunk
        yield b"\r\n--b--\r\n"

    with service.client() as client:
        try:
            r = client.post("/v1/process", content=body(), headers={"Content-Type": "multipart/form-data; boundary=b"})
            status, payload = r.status_code, r.json()
        except httpx.HTTPError:
            status, payload = 413, {"code": "UPLOAD_TOO_LARGE"}  # server closed on us after refusing
    assert status == 413 and payload["code"] == "UPLOAD_TOO_LARGE"
    assert sent < (MAX_UPLOAD_MB + 16) * 1024 * 1024 + 4 * 1024 * 1024
    assert audio_dirs(service) == before


def test_non_audio_refused_with_415_and_nothing_left(service: Service) -> None:
    before = audio_dirs(service)
    with service.client() as client:
        r = client.post("/v1/process", files={"file": ("notes.wav", b"just some text, not audio\n" * 200)})
    assert r.status_code == 415
    assert r.json()["code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert audio_dirs(service) == before


def test_auth(service: Service) -> None:
    r = httpx.get(service.base_url + "/v1/status/x")
    assert r.status_code == 401 and r.json()["code"] == "UNAUTHORIZED"
    r = httpx.get(service.base_url + "/v1/status/x", headers={"X-API-Key": "wrong"})
    assert r.status_code == 401 and r.json()["code"] == "UNAUTHORIZED"
    r = httpx.get(service.base_url + "/v1/status/x", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 404 and r.json()["code"] == "TASK_NOT_FOUND"
    r = httpx.post(service.base_url + "/v1/process", files={"file": ("a.wav", wav_bytes(1))})
    assert r.status_code == 401
    assert httpx.get(service.base_url + "/health").status_code == 200


def test_not_found_and_bad_fields_are_clear_4xx(service: Service) -> None:
    with service.client() as client:
        assert client.get("/v1/status/nope").json()["code"] == "TASK_NOT_FOUND"
        assert client.delete("/v1/tasks/nope").status_code == 404
        r = client.post(
            "/v1/process",
            data={"features": "summary", "template_id": "no_such_template"},
            files={"file": ("a.wav", wav_bytes(1))},
        )
        assert r.status_code == 404 and r.json()["code"] == "TEMPLATE_NOT_FOUND"
        for fields in (
            {"vad_threshold": "2"},
            {"features": "telepathy"},
            {"word_timestamps": "maybe"},
            {"asr_backend": "nope"},
            {"mystery": "1"},
        ):
            r = client.post("/v1/process", data=fields, files={"file": ("a.wav", wav_bytes(1))})
            assert r.status_code == 422, (fields, r.text)
            assert r.json()["code"] == "INVALID_FIELD"
            assert next(iter(fields)) in r.json()["detail"]
        r = client.post("/v1/process", data={"features": "raw_transcript"})
        assert r.status_code in (400, 422) and r.json()["code"] in ("MISSING_FILE", "INVALID_MULTIPART")
        r = client.get("/v1/nowhere")
        assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"


def test_upload_is_streamed_to_disk_not_spooled(service: Service) -> None:
    """Bytes reach data/audio/<task_id>/source.wav while the client is still sending."""
    before = set(audio_dirs(service))
    seen_while_streaming: list[int] = []

    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="slow.wav"\r\n\r\n'
        yield wav_bytes(2.0, tone=True)[:44]
        for _ in range(12):
            yield b"\1\0" * 128 * 1024  # 256 KiB
            time.sleep(0.15)
            new = set(audio_dirs(service)) - before
            for d in new:
                f = d / "source.wav"
                if f.exists():
                    seen_while_streaming.append(f.stat().st_size)
        yield b"\r\n--b--\r\n"

    with service.client() as client:
        r = client.post("/v1/process", content=body(), headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert r.status_code == 202, r.text
        client.delete(f"/v1/tasks/{r.json()['task_id']}")
    assert len(seen_while_streaming) >= 5
    assert seen_while_streaming[-1] > seen_while_streaming[0] > 0


def test_delete_removes_audio_and_record(service: Service, shared_audio: Path) -> None:
    with service.client() as client:
        task_id = submit(client, shared_audio / "jfk.flac")
        wait_terminal(client, task_id)
        r = client.delete(f"/v1/tasks/{task_id}")
        assert r.status_code == 200 and r.json()["status"] == "DELETED"
        assert client.get(f"/v1/status/{task_id}").status_code == 404
    assert not (service.data_dir / "audio" / task_id).exists()


def test_transcript_export_formats(service: Service, shared_audio: Path) -> None:
    import srt
    import webvtt

    with service.client() as client:
        task_id = submit(client, shared_audio / "jfk.flac")
        wait_terminal(client, task_id)
        txt = client.get(f"/v1/tasks/{task_id}/transcript", params={"format": "txt"}).text
        srt_body = client.get(f"/v1/tasks/{task_id}/transcript", params={"format": "srt"}).text
        vtt_body = client.get(f"/v1/tasks/{task_id}/transcript", params={"format": "vtt"}).text
        js = client.get(f"/v1/tasks/{task_id}/transcript", params={"format": "json"}).json()
        bad = client.get(f"/v1/tasks/{task_id}/transcript", params={"format": "doc"})
    assert "ask not what your country" in txt.lower()
    assert len(list(srt.parse(srt_body))) >= 1
    assert len(webvtt.from_buffer(io.StringIO(vtt_body)).captions) >= 1
    assert js
    assert bad.status_code == 422


def test_bad_setting_stops_startup_naming_the_variable(tmp_path: Path) -> None:
    env = {"MAIE_DATA_DIR": str(tmp_path), "MAIE_ASR__WHISPER_CPU_THREADS": "lots", "MAIE_MAX_UPLOAD_MB": ""}
    import os

    proc = subprocess.run(
        [sys.executable, "-m", "maie", "serve", "--workers", "0"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "MAIE_ASR__WHISPER_CPU_THREADS" in proc.stderr and "integer" in proc.stderr
    assert "MAIE_MAX_UPLOAD_MB" not in proc.stderr  # empty string means unset


def test_embedded_mode_generates_key_persists_tasks_and_leaves_no_orphans(tmp_path: Path, shared_audio: Path) -> None:
    data = tmp_path / "data"
    svc = start_service(data, workers=0, env={"MAIE_API_KEYS": ""})
    try:
        svc.wait_ready(need_worker=False)
        key_file = data / "api_key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_text().strip()
        assert key in svc.log()
        children = svc.children()
        assert any("redis-server" in " ".join(c.cmdline()) for c in children)
        with httpx.Client(base_url=svc.base_url, headers={"X-API-Key": key}) as client:
            with (shared_audio / "jfk.flac").open("rb") as f:
                r = client.post("/v1/process", files={"file": ("jfk.flac", f)})
            assert r.status_code == 202
            task_id = r.json()["task_id"]
    finally:
        svc.stop()
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    # Restart on the same data dir: the accepted task survived in the AOF and is still queued.
    svc = start_service(data, workers=0, env={"MAIE_API_KEYS": ""})
    try:
        svc.wait_ready(need_worker=False)
        with httpx.Client(base_url=svc.base_url, headers={"X-API-Key": key}) as client:
            record = client.get(f"/v1/status/{task_id}").json()
        assert record["status"] == "PENDING"
    finally:
        svc.stop()


def test_diarization_over_http_labels_segments_and_lists_speakers(service: Service, shared_audio: Path) -> None:
    with service.client() as client:
        task_id = submit(
            client, shared_audio / "two_speakers_sample.wav", enable_diarization="true", word_timestamps="true"
        )
        record = wait_terminal(client, task_id)
        srt_body = client.get(f"/v1/tasks/{task_id}/transcript", params={"format": "srt"}).text
    assert record["status"] == "COMPLETE", record
    assert not record.get("error"), record["error"]
    speakers = record["results"]["speakers"]
    assert [s["id"] for s in speakers] == ["S1", "S2"]
    assert all(s["talk_time_s"] > 3 for s in speakers)
    segments = record["results"]["segments"]
    assert {s["speaker"] for s in segments} == {"S1", "S2"}
    assert all(w["speaker"] == s["speaker"] for s in segments for w in s["words"])
    assert "S1:" not in record["results"]["raw_transcript"]  # the raw transcript stays plain
    assert "[S1]" in srt_body and "[S2]" in srt_body
    assert record["versions"]["diarization"]["method"]
