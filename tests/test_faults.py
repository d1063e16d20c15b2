"""Fault injection over real processes: every accepted task still ends in a terminal state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from maie.jobs.redis_server import redis_server_binary
from maie.pipeline.audio import decode_file

from service import Service, free_port, start_service, wait_terminal

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory: pytest.TempPathFactory, shared_audio: Path) -> Path:
    """About two minutes of real speech (jfk.flac repeated): long enough to kill a job mid-way."""
    audio = decode_file(shared_audio / "jfk.flac")
    samples = np.tile(audio.samples, 12)
    path = tmp_path_factory.mktemp("audio") / "long.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def submit(client: httpx.Client, path: Path, **fields: str) -> str:
    with path.open("rb") as f:
        r = client.post("/v1/process", data=fields, files={"file": (path.name, f)})
    assert r.status_code == 202, r.text
    return r.json()["task_id"]


def wait_for_stage(client: httpx.Client, task_id: str, stage: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = client.get(f"/v1/status/{task_id}").json()
        if record["status"] == stage:
            return record
        assert record["status"] not in ("COMPLETE", "FAILED", "CANCELLED"), record
        time.sleep(0.05)
    raise TimeoutError(stage)


def worker_pids(svc: Service) -> list[int]:
    return [c.pid for c in svc.children() if "worker" in c.cmdline() and c.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def fast_recovery_service(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Service]:
    env = {"MAIE_WORKER_HEARTBEAT_S": "1", **getattr(request, "param", {})}
    svc = start_service(tmp_path / "data", env=env)
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


@pytest.mark.parametrize("fast_recovery_service", [{"MAIE_JOB_MAX_ATTEMPTS": "2"}], indirect=True)
def test_sigkill_worker_mid_job_is_requeued_and_completes(fast_recovery_service: Service, long_wav: Path) -> None:
    svc = fast_recovery_service
    with svc.client() as client:
        task_id = submit(client, long_wav)
        wait_for_stage(client, task_id, "PROCESSING_ASR")
        [pid] = worker_pids(svc)
        os.kill(pid, signal.SIGKILL)
        record = wait_terminal(client, task_id, timeout_s=300)
    assert record["status"] == "COMPLETE", record
    assert record["attempts"] == 2
    assert "ask not what your country" in record["results"]["raw_transcript"].lower()
    new_pids = worker_pids(svc)
    assert new_pids and pid not in new_pids  # serve restarted the worker


@pytest.mark.parametrize("fast_recovery_service", [{"MAIE_JOB_MAX_ATTEMPTS": "1"}], indirect=True)
def test_worker_lost_after_max_attempts_fails_with_code(fast_recovery_service: Service, long_wav: Path) -> None:
    svc = fast_recovery_service
    with svc.client() as client:
        task_id = submit(client, long_wav)
        wait_for_stage(client, task_id, "PROCESSING_ASR")
        [pid] = worker_pids(svc)
        os.kill(pid, signal.SIGKILL)
        record = wait_terminal(client, task_id, timeout_s=120)
    assert record["status"] == "FAILED"
    assert record["error"]["code"] == "WORKER_LOST"
    assert record["error"]["stage"] == "PROCESSING_ASR"


@pytest.mark.parametrize(
    "fast_recovery_service",
    [{"MAIE_JOB_TIMEOUT_BASE_S": "1", "MAIE_JOB_TIMEOUT_PER_AUDIO_S": "0.001"}],
    indirect=True,
)
def test_job_over_budget_fails_with_timeout_and_frees_worker(
    fast_recovery_service: Service, long_wav: Path, shared_audio: Path
) -> None:
    with fast_recovery_service.client() as client:
        slow = wait_terminal(client, submit(client, long_wav))
        assert slow["status"] == "FAILED" and slow["error"]["code"] == "TIMEOUT", slow
    assert fast_recovery_service.proc.poll() is None
    assert worker_pids(fast_recovery_service)


def test_cancel_mid_job_stops_it_and_removes_data(
    fast_recovery_service: Service, long_wav: Path, shared_audio: Path
) -> None:
    svc = fast_recovery_service
    with svc.client() as client:
        task_id = submit(client, long_wav)
        wait_for_stage(client, task_id, "PROCESSING_ASR")
        cancelled_at = time.monotonic()
        r = client.delete(f"/v1/tasks/{task_id}")
        assert r.status_code == 200 and r.json()["status"] == "CANCELLED"
        assert not (svc.data_dir / "audio" / task_id).exists()
        # The worker notices at its next progress report and takes the next job.
        nxt = wait_terminal(client, submit(client, shared_audio / "jfk.flac"))
        assert nxt["status"] == "COMPLETE"
        assert time.monotonic() - cancelled_at < 30
        record = client.get(f"/v1/status/{task_id}").json()
    assert record["status"] == "CANCELLED"
    assert "results" not in record


RETENTION_S = 7.2


@pytest.mark.parametrize("fast_recovery_service", [{"MAIE_RETENTION_HOURS": str(RETENTION_S / 3600)}], indirect=True)
def test_retention_deletes_audio_and_results(fast_recovery_service: Service, long_wav: Path) -> None:
    """Retention counts from when a task finished: a job that ran longer than the retention period is
    still readable when it completes (it used to be purged at the first pass after it finished, so a
    client polling for it saw 404), and goes once the period has passed since it ended."""
    svc = fast_recovery_service
    with svc.client() as client:
        task_id = submit(client, long_wav)
        record = wait_terminal(client, task_id)
        assert record["status"] == "COMPLETE"
        submitted, completed = (iso_epoch(record[k]) for k in ("submitted_at", "completed_at"))
        assert completed - submitted > RETENTION_S  # by submission time, it would be gone already
        deadline = time.monotonic() + 60
        while client.get(f"/v1/status/{task_id}").status_code != 404:
            assert time.monotonic() < deadline, "retention never ran"
            time.sleep(0.5)
        assert time.time() >= completed + RETENTION_S
    assert not (svc.data_dir / "audio" / task_id).exists()


def iso_epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_queue_full_disk_floor_and_rate_limit(tmp_path: Path, shared_audio: Path) -> None:
    svc = start_service(tmp_path / "q", workers=0, env={"MAIE_MAX_QUEUE_DEPTH": "1", "MAIE_RATE_LIMIT": "2/minute"})
    try:
        svc.wait_ready(need_worker=False)
        with svc.client() as client:
            submit(client, shared_audio / "jfk.flac")
            r = client.post("/v1/process", files={"file": ("jfk.flac", (shared_audio / "jfk.flac").read_bytes())})
            assert r.status_code == 429 and r.json()["code"] == "QUEUE_FULL"
            assert int(r.headers["Retry-After"]) > 0
            r = client.post("/v1/process", files={"file": ("a.flac", b"x")})
            assert r.status_code == 429 and r.json()["code"] == "RATE_LIMITED"
            assert r.headers["RateLimit-Limit"] == "2" and r.headers["RateLimit-Remaining"] == "0"
            assert int(r.headers["Retry-After"]) > 0
    finally:
        svc.stop()
    svc = start_service(tmp_path / "d", workers=0, env={"MAIE_DISK_FLOOR_MB": str(10**9)})
    try:
        svc.wait_ready(need_worker=False)
        with svc.client() as client:
            r = client.post("/v1/process", files={"file": ("jfk.flac", (shared_audio / "jfk.flac").read_bytes())})
        assert r.status_code == 507 and r.json()["code"] == "INSUFFICIENT_STORAGE"
        assert not list((svc.data_dir / "audio").glob("*")) if (svc.data_dir / "audio").exists() else True
    finally:
        svc.stop()


def test_redis_restart_loses_no_task_and_api_recovers(tmp_path: Path, shared_audio: Path) -> None:
    port = free_port()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()

    def start_redis() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(port), "--dir", str(redis_dir), "--appendonly", "yes", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        import redis

        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=port).ping():
                    return proc
            except redis.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError("redis")

    redis_proc = start_redis()
    svc = start_service(tmp_path / "data", workers=0, env={"MAIE_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    try:
        svc.wait_ready(need_worker=False)
        with svc.client() as client:
            task_id = submit(client, shared_audio / "jfk.flac")
            redis_proc.send_signal(signal.SIGTERM)
            redis_proc.wait(10)
            r = client.get(f"/v1/status/{task_id}")
            assert r.status_code == 503 and r.json()["code"] == "SERVICE_UNAVAILABLE"
            r = client.post("/v1/process", files={"file": ("jfk.flac", (shared_audio / "jfk.flac").read_bytes())})
            assert r.status_code == 503
            assert httpx.get(svc.base_url + "/health/ready").status_code == 503
            redis_proc = start_redis()
            deadline = time.monotonic() + 30
            while (r := client.get(f"/v1/status/{task_id}")).status_code != 200:
                assert time.monotonic() < deadline, r.text
                time.sleep(0.3)
            assert r.json()["status"] == "PENDING"
        # A worker started now picks the surviving task up and completes it.
        env = {**os.environ, "MAIE_REDIS_URL": f"redis://127.0.0.1:{port}/0", "MAIE_DATA_DIR": str(svc.data_dir)}
        worker = subprocess.Popen([sys.executable, "-m", "maie", "worker", "--burst"], env=env)
        try:
            assert worker.wait(timeout=120) == 0
        finally:
            worker.kill()
        with svc.client() as client:
            assert wait_terminal(client, task_id)["status"] == "COMPLETE"
    finally:
        svc.stop()
        redis_proc.terminate()
        redis_proc.wait(10)


def test_embedded_redis_killed_is_restarted_with_its_data(tmp_path: Path, shared_audio: Path) -> None:
    svc = start_service(tmp_path / "data", workers=0)
    try:
        svc.wait_ready(need_worker=False)
        with svc.client() as client:
            task_id = submit(client, shared_audio / "jfk.flac")
            time.sleep(1.5)  # appendfsync everysec: let the AOF reach the disk
            [redis_proc] = [c for c in svc.children() if "redis-server" in " ".join(c.cmdline())]
            redis_proc.kill()
            deadline = time.monotonic() + 30
            while (r := client.get(f"/v1/status/{task_id}")).status_code != 200:
                assert r.status_code == 503 and r.json()["code"] == "SERVICE_UNAVAILABLE", r.text
                assert time.monotonic() < deadline, "embedded redis did not come back"
                time.sleep(0.2)
            assert r.json()["status"] == "PENDING"
        assert [c for c in svc.children() if "redis-server" in " ".join(c.cmdline())]
    finally:
        svc.stop()


def test_llm_server_down_keeps_the_transcript(tmp_path: Path, shared_audio: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    env = {"MAIE_LLM__BASE_URL": dead, "MAIE_LLM__MAX_RETRIES": "1", "MAIE_LLM__TIMEOUT_S": "5"}
    svc = start_service(tmp_path / "data", env=env)
    try:
        svc.wait_ready(need_worker=False)
        with svc.client() as client:
            task_id = submit(client, shared_audio / "jfk.flac", features="raw_transcript,clean_transcript,summary")
            record = wait_terminal(client, task_id)
    finally:
        svc.stop()
    assert record["status"] == "COMPLETE", record
    assert "ask not what your country" in record["results"]["raw_transcript"].lower()
    assert "summary" not in record["results"] and "clean_transcript" not in record["results"]
    codes = [w["code"] for w in record["warnings"]]
    assert codes == ["ENHANCE_FAILED", "SUMMARY_FAILED"]
    assert record["error"]["code"] == "ENHANCE_FAILED" and record["error"]["stage"] == "PROCESSING_LLM"


def test_worker_stops_its_command_thread_within_a_poll(tmp_path: Path) -> None:
    """A worker stopped just after rq's command channel was unsubscribed (a SIGTERM as a job ended) must
    not wait out rq's 60 s read: in CI such a worker was still running 30 s after SIGTERM."""
    import redis

    from maie.jobs.queue import worker_queues
    from maie.jobs.worker import COMMAND_POLL_S, MaieWorker

    port = free_port()
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        worker = MaieWorker(worker_queues(client), connection=client)
        worker.subscribe()
        time.sleep(0.3)
        worker.pubsub.unsubscribe()
        time.sleep(0.5)  # the thread reads the reply and starts its next read: the slow case
        started = time.monotonic()
        worker.unsubscribe()
        took = time.monotonic() - started
        assert took < COMMAND_POLL_S + 2, f"stopping the command thread took {took:.1f} s"
        assert worker.pubsub_thread is not None and not worker.pubsub_thread.is_alive()
    finally:
        proc.terminate()
        proc.wait()
