"""Admission costs what it says: an accepted upload is two Redis round trips (the admission script,
then one MULTI with the record, the job and the slot), a refusal one; the rate limit is a moving window
that holds under concurrency. The app runs in-process against the embedded Redis, so every round trip
it makes is counted here."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from redis.connection import AbstractConnection
from rq import Queue

from maie.api.app import create_app
from maie.api.submission import RESERVATIONS_KEY, load_key
from maie.config import Settings
from maie.jobs.queue import PRIORITY_QUEUE_NAME, QUEUE_NAME
from maie.jobs.redis_server import EmbeddedRedis
from maie.jobs.store import TaskStore
from maie.schemas import TaskStatus

KEY = "tester-key-0123456789"


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with EmbeddedRedis(tmp_path / "r") as server:
        yield server.url


class RoundTrips:
    """Counts commands and pipelines sent on any redis-py connection of this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self._lock = threading.Lock()
        original = AbstractConnection.send_packed_command

        def counted(conn: AbstractConnection, command: object, check_health: bool = True) -> None:
            with self._lock:
                self.count += 1
            original(conn, command, check_health)  # type: ignore[arg-type]

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)

    def during(self, call: Callable[[], object]) -> int:
        before = self.count
        call()
        return self.count - before


def make_client(tmp_path: Path, redis_url: str, **settings: object) -> TestClient:
    app = create_app(
        Settings(
            data_dir=tmp_path / "data", redis_url=redis_url, api_keys=[f"tester:{KEY}"], disk_floor_mb=0, **settings
        )  # type: ignore[arg-type]
    )
    return TestClient(app, headers={"X-API-Key": KEY})


def upload(client: TestClient, audio: bytes) -> httpx.Response:
    return client.post("/v1/process", files={"file": ("jfk.flac", audio)}, data={"features": "raw_transcript"})


def test_an_accepted_upload_is_two_round_trips_and_a_refusal_one(
    tmp_path: Path, redis_url: str, shared_audio: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(tmp_path, redis_url, max_queue_depth=3, max_queue_depth_per_key=3)
    audio = (shared_audio / "jfk.flac").read_bytes()
    trips = RoundTrips(monkeypatch)
    first = upload(client, audio)  # loads the scripts (EVALSHA, then SCRIPT LOAD and EVALSHA once)
    assert first.status_code == 202, first.text

    answers: list[httpx.Response] = []
    assert trips.during(lambda: answers.append(upload(client, audio))) == 2
    accepted = answers[-1]
    assert accepted.status_code == 202
    assert accepted.headers["RateLimit-Limit"] == "120"
    assert accepted.headers["RateLimit-Remaining"] == "118"
    assert trips.during(lambda: answers.append(client.post("/v1/process_text", json={"text": "Hello."}))) == 2
    assert answers[-1].status_code == 202

    # The queue (3) is full now: one round trip, and no byte of the file is stored.
    assert trips.during(lambda: answers.append(upload(client, audio))) == 1
    refused = answers[-1]
    assert refused.status_code == 429 and refused.json()["code"] == "QUEUE_FULL"
    assert refused.headers["RateLimit-Remaining"] == "116"

    # What the one transaction wrote: the record with its job and declared duration, the queued job,
    # the key's held slot; no reservation is left.
    r = redis.Redis.from_url(redis_url)
    task_id = accepted.json()["task_id"]
    record = TaskStore(r).get(task_id)
    assert record is not None and record.status == TaskStatus.PENDING and record.owner == "tester"
    assert record.metrics is not None and record.metrics.declared_duration_s == pytest.approx(11.0)
    job_id = r.hget(f"maie:task:{task_id}", "job_id")
    assert job_id is not None
    fast = Queue(PRIORITY_QUEUE_NAME, connection=r)  # an 11 s file is under the fast-lane length
    assert job_id.decode() in fast.job_ids + Queue(QUEUE_NAME, connection=r).job_ids
    assert r.zscore(load_key("tester"), task_id) < 0  # type: ignore[operator]
    assert r.zcard(RESERVATIONS_KEY) == 0
    assert len(list((tmp_path / "data" / "audio").iterdir())) == 2  # the two accepted uploads only


def test_rate_limit_is_one_round_trip_and_a_moving_window(
    tmp_path: Path, redis_url: str, shared_audio: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(tmp_path, redis_url, rate_limit="3/2 seconds", max_queue_depth=100)
    trips = RoundTrips(monkeypatch)
    for _ in range(3):
        assert client.post("/v1/process_text", json={"text": "Hello."}).status_code == 202
    answers: list[httpx.Response] = []
    assert trips.during(lambda: answers.append(client.post("/v1/process_text", json={"text": "Hello."}))) == 1
    limited = answers[-1]
    assert limited.status_code == 429 and limited.json()["code"] == "RATE_LIMITED"
    assert limited.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(limited.headers["Retry-After"]) <= 2
    time.sleep(2.1)  # the window moved past all three hits
    assert client.post("/v1/process_text", json={"text": "Hello."}).status_code == 202


def test_the_rate_limit_holds_under_concurrent_submissions(tmp_path: Path, redis_url: str) -> None:
    client = make_client(tmp_path, redis_url, rate_limit="5/minute", max_queue_depth=100)
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _: client.post("/v1/process_text", json={"text": "Hi."}).status_code, range(30)))
    assert codes.count(202) == 5 and codes.count(429) == 25


def test_a_bad_rate_limit_setting_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="count per period"):
        Settings(data_dir=tmp_path, rate_limit="lots")


def test_recovery_reads_a_backlog_in_a_few_round_trips(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maie.jobs import queue as jobs
    from maie.jobs.maintenance import Report, recover

    settings = Settings(data_dir=tmp_path / "data", redis_url=redis_url)
    r = jobs.connect(redis_url)
    store, queue = TaskStore(r), jobs.get_queue(r)
    ids = [f"queued-{n}" for n in range(1200)]
    for task_id in ids:
        pipe = r.pipeline()
        job = jobs.enqueue(queue, task_id, budget_s=60, pipeline=pipe)
        store.create(task_id, owner="tester", options={}, job_id=job.id, pipeline=pipe)
        pipe.hset(f"maie:task:{task_id}", "updated_at", time.time() - 3600)  # long past the grace
        pipe.execute()
    trips = RoundTrips(monkeypatch)
    report = Report()
    # 1 for the active set, then per 500 tasks: 1 for records and leases, 1 for their jobs
    assert trips.during(lambda: recover(store, queue, settings, report)) <= 1 + 2 * 3
    assert report.requeued == 0 and report.lost == 0

    lost_job = r.hget("maie:task:queued-7", "job_id")
    assert lost_job is not None
    r.delete(f"rq:job:{lost_job.decode()}")  # Redis lost this one's job: it is queued again
    report = Report()
    recover(store, queue, settings, report)
    assert report.requeued == 1
    assert r.hget("maie:task:queued-7", "job_id") != lost_job
