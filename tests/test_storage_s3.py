"""S3 audio storage against a real S3-protocol server (moto's server mode, a subprocess on 127.0.0.1).

Through real ``maie serve`` processes: a multipart upload of a real recording ends COMPLETE with JFK's
words, the worker reads a private scratch copy it deletes afterwards, the audio route streams ranges
from the bucket, and DELETE and retention delete the object. Refused (413, 415) and broken (client
gone) uploads leave nothing in the bucket, and a 200 MiB upload grows the API's memory by far less
than its size. The storage layer itself is checked directly for scratch-file privacy and failures.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import stat
import threading
import time
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.pipeline.audio import decode_file
from maie.storage import storage_for
from maie.storage.s3 import PART_BYTES, S3Storage

from s3server import BUCKET, CREDENTIALS, S3Server, start_s3_server
from service import API_KEY, Service, start_service, wait_terminal

pytestmark = pytest.mark.slow
MiB = 1024 * 1024
OTHER_KEY = "other-key-9876543210"
BOUNDARY = "maieS3TestBoundary"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def service(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """API + embedded Redis + one worker; audio under s3://maie-test/svc; uploads up to 24 MiB."""
    env = {**s3.env("svc"), "MAIE_MAX_UPLOAD_MB": "24", "MAIE_API_KEYS": f"{API_KEY},other:{OTHER_KEY}"}
    svc = start_service(tmp_path_factory.mktemp("s3svc") / "data", env=env)
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def api_only(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """API without workers; audio under s3://maie-test/big; uploads up to 256 MiB."""
    env = {**s3.env("big"), "MAIE_MAX_UPLOAD_MB": "256"}
    svc = start_service(tmp_path_factory.mktemp("s3api") / "data", workers=0, env=env)
    try:
        svc.wait_ready(need_worker=False)
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def jfk_long(shared_audio: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JFK's words then silence, 48 kHz stereo WAV: ~16.5 MiB, so three parts of a multipart upload."""
    audio = decode_file(shared_audio / "jfk.flac")
    pcm = (np.clip(audio.samples, -1, 1) * 32767).astype("<i2")
    pcm = np.concatenate([np.repeat(pcm, 3), np.zeros(48000 * 80, dtype="<i2")])  # 16 -> 48 kHz
    path = tmp_path_factory.mktemp("audio") / "jfk-long.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(np.repeat(pcm, 2).tobytes())
    assert path.stat().st_size > 2 * PART_BYTES
    return path


def wav_header(data_bytes: int, rate: int = 16000) -> bytes:
    return (
        b"RIFF"
        + (36 + data_bytes).to_bytes(4, "little")
        + b"WAVEfmt "
        + (16).to_bytes(4, "little")
        + (1).to_bytes(2, "little")
        + (1).to_bytes(2, "little")
        + rate.to_bytes(4, "little")
        + (rate * 2).to_bytes(4, "little")
        + (2).to_bytes(2, "little")
        + (16).to_bytes(2, "little")
        + b"data"
        + data_bytes.to_bytes(4, "little")
    )


def submit(svc: Service, path: Path) -> str:
    with svc.client() as c, path.open("rb") as f:
        r = c.post("/v1/process", data={"features": "raw_transcript"}, files={"file": ("my secret name.wav", f)})
    assert r.status_code == 202, r.text
    return r.json()["task_id"]


def test_multipart_upload_processed_from_the_bucket(service: Service, s3: S3Server, jfk_long: Path) -> None:
    task_id = submit(service, jfk_long)
    keys = s3.keys("svc")
    assert keys == [f"svc/{task_id}/source.wav"]  # the task id only, never the client's file name
    head = s3.client().head_object(Bucket=BUCKET, Key=keys[0])
    assert head["ContentLength"] == jfk_long.stat().st_size
    assert head["ETag"].strip('"').endswith("-3")  # stored as a three-part multipart upload
    with service.client() as c:
        record = wait_terminal(c, task_id)
    assert record["status"] == "COMPLETE", record
    assert "ask not what your country" in record["results"]["raw_transcript"].lower()
    assert "audio_path" not in record and "svc/" not in str(record)
    # nothing was stored on the API's disk; the worker's scratch copy is gone with the job
    assert not (service.data_dir / "audio").exists()
    assert list((service.data_dir / "scratch").iterdir()) == []
    assert f"task {task_id} complete" in service.log()


def test_audio_route_streams_ranges_from_the_bucket(service: Service, s3: S3Server, jfk_long: Path) -> None:
    task_id = submit(service, jfk_long)
    body = jfk_long.read_bytes()
    with service.client() as c:
        whole = c.get(f"/v1/tasks/{task_id}/audio")
        assert whole.status_code == 200, whole.text
        assert hashlib.sha256(whole.content).digest() == hashlib.sha256(body).digest()
        assert whole.headers["accept-ranges"] == "bytes" and whole.headers["content-type"] == "audio/wav"
        part = c.get(f"/v1/tasks/{task_id}/audio", headers={"Range": f"bytes={PART_BYTES - 10}-{PART_BYTES + 9}"})
        assert part.status_code == 206
        assert part.content == body[PART_BYTES - 10 : PART_BYTES + 10]
        assert part.headers["content-range"] == f"bytes {PART_BYTES - 10}-{PART_BYTES + 9}/{len(body)}"
        tail = c.get(f"/v1/tasks/{task_id}/audio", headers={"Range": "bytes=-100"})
        assert tail.status_code == 206 and tail.content == body[-100:]
        bad = c.get(f"/v1/tasks/{task_id}/audio", headers={"Range": f"bytes={len(body)}-"})
        assert bad.status_code == 416 and bad.json()["code"] == ErrorCode.RANGE_NOT_SATISFIABLE
        assert bad.headers["content-range"] == f"bytes */{len(body)}"
        # another key: the task does not exist
        other = c.get(f"/v1/tasks/{task_id}/audio", headers={"X-API-Key": OTHER_KEY})
        assert other.status_code == 404 and other.json()["code"] == ErrorCode.TASK_NOT_FOUND
        assert c.delete(f"/v1/tasks/{task_id}", headers={"X-API-Key": OTHER_KEY}).status_code == 404
        assert s3.keys(f"svc/{task_id}")
        # DELETE (cancelling it if still running) deletes the object
        assert c.delete(f"/v1/tasks/{task_id}").status_code == 200
        assert s3.keys(f"svc/{task_id}") == []
        gone = c.get(f"/v1/tasks/{task_id}/audio")  # CANCELLED, or deleted if it had finished
        assert gone.json()["code"] in (ErrorCode.TASK_NOT_READY, ErrorCode.TASK_NOT_FOUND)


def test_delete_of_a_finished_task_deletes_its_object(service: Service, s3: S3Server, shared_audio: Path) -> None:
    task_id = submit(service, shared_audio / "jfk.flac")  # one part: a single PutObject
    assert s3.keys(f"svc/{task_id}") == [f"svc/{task_id}/source.flac"]
    with service.client() as c:
        assert wait_terminal(c, task_id)["status"] == "COMPLETE"
        assert c.delete(f"/v1/tasks/{task_id}").json()["status"] == "DELETED"
    assert s3.keys(f"svc/{task_id}") == []


def chunked_upload(svc: Service, pieces: Iterator[bytes]) -> tuple[int, dict]:
    """POST /v1/process with a chunked body (no Content-Length), so only the streaming limits apply."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="features"\r\n\r\nraw_transcript\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        yield from pieces
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    with svc.client() as c:
        r = c.post("/v1/process", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    return r.status_code, r.json()


def test_oversized_upload_aborts_its_multipart_upload(service: Service, s3: S3Server) -> None:
    block = os.urandom(MiB)

    def pieces() -> Iterator[bytes]:
        yield wav_header(40 * MiB)
        for _ in range(40):
            yield block

    before = s3.keys("svc")
    status, body = chunked_upload(service, pieces())
    assert status == 413 and body["code"] == ErrorCode.UPLOAD_TOO_LARGE
    s3.wait_settled("svc", keep=before)


def test_non_audio_is_refused_before_anything_reaches_the_bucket(service: Service, s3: S3Server) -> None:
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:  # any upload started in the bucket would show up here
        while not stop.is_set():
            seen.append(len(s3.multipart_uploads("svc")) + len(s3.keys("svc")))
            time.sleep(0.02)

    before = s3.keys("svc")
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        status, body = chunked_upload(service, iter([b"%PDF-1.7\n" + os.urandom(20 * MiB)]))
    finally:
        stop.set()
        watcher.join()
    assert status == 415 and body["code"] == ErrorCode.UNSUPPORTED_MEDIA_TYPE
    assert max(seen) == len(before)
    s3.wait_settled("svc", keep=before)


def test_unreadable_audio_found_by_the_probe_is_deleted(service: Service, s3: S3Server) -> None:
    # sniffs as WAV (so it is stored), but the probe finds no readable audio: 415 and the object is deleted
    before = s3.keys("svc")
    status, body = chunked_upload(service, iter([b"RIFF\xff\xff\xff\xffWAVEjunk" + os.urandom(64 * 1024)]))
    assert status == 415 and body["code"] == ErrorCode.UNSUPPORTED_MEDIA_TYPE, body
    assert "s3://" not in body["detail"] and BUCKET not in body["detail"]
    s3.wait_settled("svc", keep=before)


def test_client_disconnect_aborts_the_multipart_upload(api_only: Service, s3: S3Server) -> None:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode() + wav_header(100 * MiB)
    before = s3.keys("big")
    port = int(api_only.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            (
                "POST /v1/process HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"X-API-Key: {API_KEY}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                f"Content-Length: {len(head) + 100 * MiB + 64}\r\n\r\n"
            ).encode()
            + head
        )
        block = os.urandom(MiB)
        for _ in range(30):
            sock.sendall(block)
        deadline = time.monotonic() + 30
        while not s3.multipart_uploads("big"):  # parts are on their way to the bucket
            assert time.monotonic() < deadline
            time.sleep(0.05)
    s3.wait_settled("big", keep=before)


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.before = self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        self.before = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.before


def test_200_mib_upload_memory_is_bounded(api_only: Service, s3: S3Server) -> None:
    size = 200 * MiB
    block = os.urandom(MiB)

    def pieces() -> Iterator[bytes]:
        yield wav_header(size - 44)
        left = size - 44
        while left > 0:
            piece = block[: min(left, MiB)]
            left -= len(piece)
            yield piece

    status, warm = chunked_upload(api_only, iter([wav_header(16000) + b"\0" * 16000]))  # warms the S3 client
    assert status == 202, warm
    with PeakRss(api_only.proc.pid) as rss:
        status, body = chunked_upload(api_only, pieces())
    assert status == 202, body
    task_id = body["task_id"]
    head = s3.client().head_object(Bucket=BUCKET, Key=f"big/{task_id}/source.wav")
    assert head["ContentLength"] == size
    assert head["ETag"].strip('"').endswith(f"-{-(-size // PART_BYTES)}")
    print(f"API RSS growth for a 200 MiB upload to S3: {rss.growth / MiB:.1f} MiB")
    assert rss.growth < 64 * MiB, f"RSS grew {rss.growth / MiB:.1f} MiB"
    with api_only.client() as c:
        for task in (task_id, warm["task_id"]):
            assert c.delete(f"/v1/tasks/{task}").json()["status"] == "CANCELLED"
    assert s3.keys(f"big/{task_id}") == []


def test_retention_deletes_objects_and_abandoned_uploads(s3: S3Server, shared_audio: Path, tmp_path: Path) -> None:
    client = s3.client()
    # left by an API that died mid-upload, and an object whose task never existed
    stale = client.create_multipart_upload(Bucket=BUCKET, Key=f"ret/{uuid.uuid4()}/source.wav")
    client.put_object(Bucket=BUCKET, Key=f"ret/{uuid.uuid4()}/source.wav", Body=b"RIFF")
    # not ours: outside the prefix
    client.put_object(Bucket=BUCKET, Key="elsewhere/keep.wav", Body=b"RIFF")
    env = {**s3.env("ret"), "MAIE_RETENTION_HOURS": "0.002", "MAIE_WORKER_HEARTBEAT_S": "1"}  # 7.2 s
    svc = start_service(tmp_path / "data", env=env)
    try:
        svc.wait_ready()
        task_id = submit(svc, shared_audio / "jfk.flac")
        with svc.client() as c:
            assert wait_terminal(c, task_id)["status"] == "COMPLETE"
            assert s3.keys(f"ret/{task_id}")
            deadline = time.monotonic() + 60
            while c.get(f"/v1/status/{task_id}").status_code != 404 or s3.keys("ret") or s3.multipart_uploads("ret"):
                assert time.monotonic() < deadline, (s3.keys("ret"), s3.multipart_uploads("ret"))
                time.sleep(0.5)
    finally:
        svc.stop()
    assert stale["UploadId"] not in [u["UploadId"] for u in s3.multipart_uploads("ret")]
    assert client.head_object(Bucket=BUCKET, Key="elsewhere/keep.wav")["ContentLength"] == 4


# -- the storage layer directly -------------------------------------------------------------------------


def s3_settings(s3: S3Server, tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return Settings(
        data_dir=tmp_path / "worker-data",
        storage_url=f"s3://{BUCKET}/{prefix}",
        s3={"endpoint_url": s3.endpoint, "region": "us-east-1"},  # type: ignore[arg-type]
    )


def test_fetch_is_a_private_scratch_copy_removed_whatever_happens(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_audio: Path
) -> None:
    settings = s3_settings(s3, tmp_path, "fetch", monkeypatch)
    storage = storage_for(settings)
    assert isinstance(storage, S3Storage)
    data = (shared_audio / "jfk.flac").read_bytes()
    task_id = str(uuid.uuid4())
    s3.client().put_object(Bucket=BUCKET, Key=f"fetch/{task_id}/source.flac", Body=data)
    ref = f"s3://{BUCKET}/fetch/{task_id}/source.flac"
    # a copy left by a worker killed mid-job, older than any job can run: swept by the next fetch
    settings.scratch_dir.mkdir(mode=0o700, parents=True)
    stale = settings.scratch_dir / "0000-left-by-a-killed-worker.flac"
    stale.write_bytes(b"x")
    os.utime(stale, (time.time() - 30 * 86400, time.time() - 30 * 86400))
    with storage.fetch(ref) as path:
        assert not stale.exists()
        assert path is not None and path.read_bytes() == data
        assert path.parent == settings.scratch_dir and path.name.startswith(task_id)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(settings.scratch_dir.stat().st_mode) == 0o700
    assert not path.exists()
    with pytest.raises(RuntimeError), storage.fetch(ref) as path:
        raise RuntimeError("the job failed")
    assert not path.exists()
    assert list(settings.scratch_dir.iterdir()) == []
    # gone from the bucket: a clear task failure, and no scratch file left
    s3.client().delete_object(Bucket=BUCKET, Key=f"fetch/{task_id}/source.flac")
    with pytest.raises(MaieError) as err, storage.fetch(ref):
        pass
    assert err.value.code == ErrorCode.AUDIO_DECODE_ERROR
    assert list(settings.scratch_dir.iterdir()) == []
    # a ref outside the configured bucket/prefix is refused, not fetched
    with pytest.raises(MaieError), storage.fetch(f"s3://{BUCKET}/elsewhere/{task_id}/source.flac"):
        pass


def test_probe_reads_only_what_it_needs(s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from maie.api.submission import probe_stored

    settings = s3_settings(s3, tmp_path, "probe", monkeypatch)
    storage = storage_for(settings)
    task_id = str(uuid.uuid4())
    samples = 16000 * 600  # ten minutes of 16 kHz mono
    body = io.BytesIO()
    with wave.open(body, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * samples)
    s3.client().put_object(Bucket=BUCKET, Key=f"probe/{task_id}/source.wav", Body=body.getvalue())
    assert probe_stored(storage, f"s3://{BUCKET}/probe/{task_id}/source.wav") == pytest.approx(600.0)


def test_unreachable_storage_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    settings = Settings(
        data_dir=tmp_path,
        storage_url=f"s3://{BUCKET}/down",
        s3={"endpoint_url": f"http://127.0.0.1:{port}", "region": "us-east-1"},  # type: ignore[arg-type]
    )
    storage = storage_for(settings)
    with pytest.raises(MaieError) as err:
        storage.delete(str(uuid.uuid4()))
    assert err.value.code == ErrorCode.STORAGE_UNAVAILABLE and err.value.status_code == 503
    assert "127.0.0.1" not in err.value.message


def test_orphan_sweep_never_takes_a_live_upload_for_an_abandoned_one(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the sweep trusted the server's Initiated stamp alone, and moto's made a multipart
    # upload in progress look hours old: the retention pass aborted it mid-upload (a 503 for the client).
    settings = s3_settings(s3, tmp_path, "sweep", monkeypatch)
    storage = storage_for(settings)
    client = s3.client()
    live = client.create_multipart_upload(Bucket=BUCKET, Key=f"sweep/{uuid.uuid4()}/source.wav")
    client.put_object(Bucket=BUCKET, Key=f"sweep/{uuid.uuid4()}/source.wav", Body=b"RIFF")
    assert storage.purge_orphans(3600.0, lambda task_id: False) == 0
    assert [u["UploadId"] for u in s3.multipart_uploads("sweep")] == [live["UploadId"]]
    assert len(s3.keys("sweep")) == 1
    # listed again after max_age (a short one here): now abandoned for sure
    time.sleep(0.6)
    assert storage.purge_orphans(0.5, lambda task_id: False) == 2
    assert s3.multipart_uploads("sweep") == [] and s3.keys("sweep") == []


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("s3://maie-audio/prod/eu", True),
        ("s3://maie-audio", True),
        ("s3://maie-audio/", True),
        ("file://", True),
        ("file:///srv/audio", True),
        ("s3://Bad_Bucket/x", False),
        ("s3://maie-audio/../etc", False),
        ("s3://maie-audio/a b", False),
        ("file://relative", False),
        ("gs://bucket/x", False),
    ],
)
def test_storage_url_forms(url: str, ok: bool) -> None:
    if ok:
        settings = Settings(storage_url=url)
        assert settings.s3_prefix in ("", "prod/eu")
    else:
        with pytest.raises(ValueError, match="storage_url"):
            Settings(storage_url=url)
