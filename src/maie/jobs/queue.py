"""The job queue (RQ): one job per task, the job id is the task id."""

from __future__ import annotations

import redis
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry

from maie.config import Settings
from maie.jobs.store import task_key

QUEUE_NAME = "maie"
JOB_FUNC = "maie.jobs.tasks.process_task"


def connect(url: str) -> redis.Redis:
    # Short timeouts: the API must answer 503 quickly while Redis is away, not hang.
    return redis.Redis.from_url(
        url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=30, retry_on_timeout=True
    )


def get_queue(client: redis.Redis) -> Queue:
    return Queue(QUEUE_NAME, connection=client)


def job_timeout_s(settings: Settings, audio_seconds: float | None) -> int:
    """Time budget for one job: a fixed part plus a part per second of audio."""
    seconds = audio_seconds if audio_seconds is not None else settings.max_audio_minutes * 60
    return int(settings.job_timeout_base_s + settings.job_timeout_per_audio_s * seconds)


def enqueue(queue: Queue, task_id: str, *, timeout_s: int, at_front: bool = False) -> Job:
    """A fresh RQ job per attempt (its id is stored on the task), so a requeued task never collides with
    what RQ still remembers about a lost attempt."""
    job = queue.enqueue(
        JOB_FUNC,
        task_id,
        job_timeout=timeout_s,
        result_ttl=3600,
        failure_ttl=24 * 3600,
        at_front=at_front,
    )
    queue.connection.hset(task_key(task_id), "job_id", job.id)
    return job


def depth(queue: Queue) -> int:
    """Jobs waiting plus jobs running: what a new upload queues behind."""
    return queue.count + StartedJobRegistry(queue=queue).count


def job_id(queue: Queue, task_id: str) -> str | None:
    raw = queue.connection.hget(task_key(task_id), "job_id")
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
