"""The job queue (RQ): one job per task, the job id is the task id."""

from __future__ import annotations

import math
from typing import cast

import redis
import redis.asyncio as redis_async
from redis.client import Pipeline
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry

from maie.config import Settings
from maie.jobs.store import TaskStore, task_key

QUEUE_NAME = "maie"
PRIORITY_QUEUE_NAME = "maie-fast"
"""The fast lane: synchronous (OpenAI) requests and short files. Workers listen on it first, so such a
job waits at most for the job already running, never for the backlog in ``QUEUE_NAME``."""
JOB_FUNC = "maie.jobs.tasks.process_task"


SYNC_POOL_SIZE = 64
"""Connections of one process's blocking client (``connect``): the task store, RQ and maintenance all
share it. In the API every user is a thread: FastAPI's sync routes run on anyio's 40-thread limiter and
``asyncio.to_thread`` on the default executor (at most 32 threads), so 64 is never the reason a request
waits (at most 72 threads could ask at once, and each holds a connection only for one command). A
worker process uses one or two. It is a blocking pool: past the cap a caller waits up to
``POOL_WAIT_S`` instead of failing."""
ASYNC_POOL_SIZE = 8
"""Connections of the API's asyncio client (``connect_async``): only ``/health/ready`` pings with it
(SSE uses ``maie.api.events``' single subscription, never this pool), and a ping holds a connection for
well under a millisecond, so 8 serve any readiness probe rate; a burst past 8 waits, it does not fail."""
EVENTS_CONNECTIONS = 1
"""Redis connections SSE uses per API process, whatever the number of streams: ``maie.api.events``
holds one PSUBSCRIBE connection and fans events out in memory."""
POOL_WAIT_S = 5.0
"""How long a caller waits for a free pooled connection before it fails (then the API answers 503)."""


def connect(url: str, max_connections: int = SYNC_POOL_SIZE) -> redis.Redis:
    # Short timeouts: the API must answer 503 quickly while Redis is away, not hang.
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=30,
        retry_on_timeout=True,
    )
    return redis.Redis(connection_pool=pool)


def connect_async(url: str) -> redis_async.Redis:
    pool = redis_async.BlockingConnectionPool.from_url(
        url, max_connections=ASYNC_POOL_SIZE, timeout=POOL_WAIT_S, socket_connect_timeout=2
    )
    return redis_async.Redis(connection_pool=pool)


def get_queue(client: redis.Redis) -> Queue:
    return Queue(QUEUE_NAME, connection=client)


def worker_queues(client: redis.Redis) -> list[Queue]:
    """In the order RQ workers take jobs: the fast lane first."""
    return [Queue(PRIORITY_QUEUE_NAME, connection=client), get_queue(client)]


HARD_TIMEOUT_MARGIN_S = 60
"""How far past a job's budget RQ's own alarm is set. The worker enforces the budget itself (and
keeps the transcript when an optional stage runs out); RQ's alarm is only the safety net for a call
that never returns, so it must never fire first."""


def job_budget_s(settings: Settings, audio_seconds: float | None) -> float:
    """The one definition of a job's time budget: a fixed part plus a part per second of audio
    (the longest allowed audio when the duration is not known)."""
    seconds = audio_seconds if audio_seconds is not None else settings.max_audio_minutes * 60
    return settings.job_timeout_base_s + settings.job_timeout_per_audio_s * seconds


def hard_timeout_s(budget_s: float) -> int:
    """RQ's ``job_timeout`` for a job with this budget: rounded up, plus the margin."""
    return math.ceil(budget_s) + HARD_TIMEOUT_MARGIN_S


def enqueue(
    queue: Queue,
    task_id: str,
    *,
    budget_s: float,
    at_front: bool = False,
    priority: bool = False,
    pipeline: Pipeline | None = None,
) -> Job:
    """A fresh RQ job per attempt (its id is stored on the task), so a requeued task never collides with
    what RQ still remembers about a lost attempt. ``priority``: into the fast lane.

    With ``pipeline`` the job's writes are only queued on it, and the caller writes ``job.id`` into the
    task record in the same transaction (a new task: ``submission.submit``); without it the job is
    queued now and its id stored on the record, if the record still exists."""
    lane = Queue(PRIORITY_QUEUE_NAME, connection=queue.connection) if priority else queue
    job = lane.create_job(
        JOB_FUNC,
        args=(task_id,),
        timeout=hard_timeout_s(budget_s),
        result_ttl=3600,
        failure_ttl=24 * 3600,
    )
    if pipeline is not None:
        return lane.enqueue_job(job, pipeline=pipeline, at_front=at_front)
    lane.enqueue_job(job, at_front=at_front)
    # Only on an existing record: a task deleted meanwhile must not come back as a half record.
    TaskStore(queue.connection).set_job_id(task_id, job.id)
    return job


def depth(queue: Queue) -> int:
    """Jobs waiting plus jobs running (both lanes): what a new upload queues behind."""
    return sum(q.count + StartedJobRegistry(queue=q).count for q in worker_queues(queue.connection))


def job_id(queue: Queue, task_id: str) -> str | None:
    raw = cast("bytes | None", queue.connection.hget(task_key(task_id), "job_id"))
    return raw.decode() if raw else None


def cancel(queue: Queue, task_id: str) -> None:
    """Drop a queued job; a running one notices the CANCELLED status at its next progress report."""
    jid = job_id(queue, task_id)
    if jid is None:
        return
    try:
        job = Job.fetch(jid, connection=queue.connection)
    except Exception:
        return
    if job.get_status(refresh=False) in ("queued", "deferred", "scheduled"):
        job.cancel()
