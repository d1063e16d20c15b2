"""Fair queues and the fast lane, over a real ``maie serve`` (embedded Redis, no worker so nothing drains)."""

from __future__ import annotations

import io
import json
import socket
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service import Service, start_service

ALICE = "key-alice-0123456789"
BOB = "key-bob-0123456789"


def _redis(svc: Service) -> redis.Redis:
    """The embedded Redis: a unix socket and a password file under ``<data_dir>/redis``."""
    rdir = svc.data_dir / "redis"
    return redis.Redis(unix_socket_path=str(rdir / "redis.sock"), password=(rdir / "password").read_text().strip())


def _silence_wav(seconds: float) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * int(16000 * seconds))
    return buf.getvalue()


def _open_slow_upload(base_url: str, key: str) -> socket.socket:
    """Headers and the start of a multipart body, then nothing: an upload held open by a slow client."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    boundary = "slowboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.flac"\r\n'
        "Content-Type: audio/flac\r\n\r\n"
    ).encode()
    sock.sendall(
        (
            "POST /v1/process HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\nX-API-Key: {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(head) + 1_000_000}\r\n\r\n"
        ).encode()
        + head
        + b"fLaC"
    )
    return sock


@pytest.fixture
def two_keys(tmp_path: Path) -> Iterator[Service]:
    svc = start_service(
        tmp_path / "data",
        workers=0,
        env={
            "MAIE_API_KEYS": f"alice:{ALICE},bob:{BOB}",
            "MAIE_MAX_QUEUE_DEPTH": "120",
            "MAIE_MAX_QUEUE_DEPTH_PER_KEY": "100",
            "MAIE_RATE_LIMIT": "1000/minute",
        },
    )
    svc.wait_ready(need_worker=False)
    yield svc
    svc.stop()


def test_one_keys_slow_uploads_do_not_lock_another_key_out(two_keys: Service, shared_audio: Path) -> None:
    jfk = (shared_audio / "jfk.flac").read_bytes()
    socks = [_open_slow_upload(two_keys.base_url, ALICE) for _ in range(100)]
    try:
        # Until every held upload has its reservation, alice's next one may still pass: wait for the share.
        deadline = time.monotonic() + 60
        while True:
            r = httpx.post(
                two_keys.base_url + "/v1/process", headers={"X-API-Key": ALICE}, files={"file": ("a.flac", jfk)}
            )
            if r.status_code == 429:
                break
            assert r.status_code == 202, r.text
            assert time.monotonic() < deadline, "alice's share never filled"
            time.sleep(0.2)
        body = r.json()
        assert body["code"] == "QUEUE_FULL" and "this key" in body["detail"]
        assert int(r.headers["Retry-After"]) > 0
        # Bob is not locked out by alice's 100 uploads in flight (before fair queues: 429 for everyone).
        r = httpx.post(two_keys.base_url + "/v1/process", headers={"X-API-Key": BOB}, files={"file": ("a.flac", jfk)})
        assert r.status_code == 202, r.text
    finally:
        for s in socks:
            s.close()
    # Dropped uploads release their share: alice can submit again.
    deadline = time.monotonic() + 60
    while True:
        r = httpx.post(two_keys.base_url + "/v1/process", headers={"X-API-Key": ALICE}, files={"file": ("a.flac", jfk)})
        if r.status_code == 202:
            break
        assert r.status_code == 429, r.text
        assert time.monotonic() < deadline, "alice's reservations were never released"
        time.sleep(0.5)


def test_service_wide_limit_still_holds(two_keys: Service, shared_audio: Path) -> None:
    """Queued tasks count against both the key's share and the service's depth."""
    jfk = (shared_audio / "jfk.flac").read_bytes()
    with httpx.Client(base_url=two_keys.base_url, timeout=60) as client:
        codes = []
        for key in [ALICE] * 100 + [BOB] * 21:
            r = client.post("/v1/process", headers={"X-API-Key": key}, files={"file": ("a.flac", jfk)})
            codes.append((key, r.status_code, r.json().get("detail", "")))
    assert all(c == 202 for _, c, _ in codes[:120]), codes[:120]
    key, code, detail = codes[120]
    assert code == 429 and "queue is full" in detail


def test_features_as_json_array_string(two_keys: Service, shared_audio: Path) -> None:
    jfk = (shared_audio / "jfk.flac").read_bytes()
    with httpx.Client(base_url=two_keys.base_url, headers={"X-API-Key": ALICE}, timeout=60) as client:
        r = client.post(
            "/v1/process",
            data={"features": json.dumps(["raw_transcript", "clean_transcript"])},
            files={"file": ("a.flac", jfk)},
        )
        assert r.status_code == 202, r.text
        record = client.get(f"/v1/status/{r.json()['task_id']}").json()
        assert record["options"]["features"] == ["raw_transcript", "clean_transcript"]
        for bad in ['["telepathy"]', '["raw_transcript"', "[1, 2]"]:
            r = client.post("/v1/process", data={"features": bad}, files={"file": ("a.flac", jfk)})
            assert r.status_code == 422, (bad, r.text)


def test_fast_lane_for_openai_requests_and_short_files(two_keys: Service, shared_audio: Path) -> None:
    """jfk (11 s, below MAIE_FAST_LANE_MAX_AUDIO_S=60) and every OpenAI request go to the fast lane,
    which workers list first; a long file stays in the normal queue."""
    from maie.jobs.queue import PRIORITY_QUEUE_NAME as FAST_QUEUE_NAME
    from maie.jobs.queue import QUEUE_NAME, worker_queues

    r = _redis(two_keys)
    assert [q.name for q in worker_queues(r)] == [FAST_QUEUE_NAME, QUEUE_NAME]
    jfk = (shared_audio / "jfk.flac").read_bytes()
    with httpx.Client(base_url=two_keys.base_url, headers={"X-API-Key": ALICE}, timeout=60) as client:
        short = client.post("/v1/process", files={"file": ("jfk.flac", jfk)}).json()["task_id"]
        long = client.post("/v1/process", files={"file": ("long.wav", _silence_wav(70.0))}).json()["task_id"]
        # The OpenAI route waits for its job; with no worker it times out client-side, the job stays queued.
        with pytest.raises(httpx.ReadTimeout):
            client.post(
                "/v1/audio/transcriptions", data={"model": "whisper-1"}, files={"file": ("jfk.flac", jfk)}, timeout=3
            )
    fast_jobs = {j.decode() for j in r.lrange(f"rq:queue:{FAST_QUEUE_NAME}", 0, -1)}
    normal_jobs = {j.decode() for j in r.lrange(f"rq:queue:{QUEUE_NAME}", 0, -1)}
    assert r.hget(f"maie:task:{short}", "job_id").decode() in fast_jobs
    assert r.hget(f"maie:task:{long}", "job_id").decode() in normal_jobs
    assert r.llen(f"rq:queue:{FAST_QUEUE_NAME}") >= 2  # jfk and the OpenAI request
