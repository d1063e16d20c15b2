"""Periodic upkeep, run by every API process (one at a time, under a Redis lock):

- recovery: a running task whose worker lease expired is requeued, or ends FAILED ``WORKER_LOST``
  after ``job_max_attempts``; a PENDING task whose job vanished is queued again;
- retention: audio and results of tasks that finished more than ``retention_hours`` ago are
  deleted (counted from the end, so a long job's result is never deleted the moment it is ready),
  and so are upload folders that never became a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from maie.config import Settings
from maie.errors import ErrorCode
from maie.jobs import queue as jobs
from maie.jobs.outbox import notify_if_wanted
from maie.jobs.store import ACTIVE_SET, PREFIX, TaskCorrupt, TaskStore, lease_key, task_key
from maie.schemas import TaskError, TaskStatus
from maie.storage import storage_for

log = logging.getLogger(__name__)

LOCK_KEY = f"{PREFIX}:maintenance-lock"
ORPHAN_UPLOAD_AGE_S = 3600.0
"""An audio folder with no task record is an upload that died mid-way once it is this old."""


@dataclass
class Report:
    requeued: int = 0
    lost: int = 0
    purged: int = 0
    orphans: int = 0


def _job_alive(queue: Queue, task_id: str) -> bool:
    jid = jobs.job_id(queue, task_id)
    if jid is None:
        return False
    try:
        status = Job.fetch(jid, connection=queue.connection).get_status(refresh=False)
    except NoSuchJobError:
        return False
    return status in ("queued", "started", "deferred", "scheduled")


SCAN_BATCH = 500
"""Active tasks read per pipelined round trip by ``waiting_as_they_should``."""
_LIVE_JOB = {b"queued", b"started", b"deferred", b"scheduled"}


def waiting_as_they_should(store: TaskStore, ids: list[str], grace_s: float) -> set[str]:
    """The PENDING tasks recovery would leave alone (leased, written within ``grace_s``, or with a live
    job), found with two pipelined reads per SCAN_BATCH tasks. A backlog of queued tasks then costs a
    pass a few round trips, not four or five round trips and a full record decode per task, every
    ``maintenance_interval_s``."""
    fine: set[str] = set()
    now = time.time()
    for i in range(0, len(ids), SCAN_BATCH):
        chunk = ids[i : i + SCAN_BATCH]
        pipe = store.redis.pipeline(transaction=False)
        for task_id in chunk:
            pipe.hmget(task_key(task_id), ["status", "updated_at", "job_id"])
            pipe.exists(lease_key(task_id))
        replies = pipe.execute()
        to_check: list[tuple[str, bytes]] = []
        for n, task_id in enumerate(chunk):
            (status, updated, job), leased = replies[2 * n], replies[2 * n + 1]
            if status != TaskStatus.PENDING.value.encode():
                continue  # running, finished, gone or unreadable: judged one by one
            try:
                fresh = now - float(updated or 0) < grace_s
            except ValueError:
                continue
            if leased or fresh:
                fine.add(task_id)
            elif job:
                to_check.append((task_id, job))
        pipe = store.redis.pipeline(transaction=False)
        for _, job in to_check:
            pipe.hget(Job.key_for(job.decode()), "status")
        for (task_id, _), job_status in zip(to_check, pipe.execute(), strict=True):
            if job_status in _LIVE_JOB:
                fine.add(task_id)
    return fine


def recover(store: TaskStore, queue: Queue, settings: Settings, report: Report) -> None:
    grace_s = settings.worker_heartbeat_s * 3
    active = store.active_ids()
    fine = waiting_as_they_should(store, active, grace_s)
    for task_id in active:
        if task_id in fine:
            continue
        try:
            record = store.get(task_id)
        except TaskCorrupt:
            # Unreadable: nothing can run it. Out of the active set; retention removes it later.
            log.error("task %s has an unreadable record; not recovered", task_id)
            store.redis.srem(ACTIVE_SET, task_id)
            continue
        if record is None or record.status.terminal:
            store.redis.srem(ACTIVE_SET, task_id)
            continue
        # A task just written (submitted, requeued, between stages) gets time before it is judged.
        if store.has_lease(task_id) or time.time() - store.last_update(task_id) < grace_s:
            continue
        if record.status == TaskStatus.PENDING and _job_alive(queue, task_id):
            continue
        if record.status == TaskStatus.PENDING and record.attempts == 0:
            # Accepted but its job is gone (e.g. Redis lost the queue entry): queue it again.
            jobs.enqueue(queue, task_id, budget_s=jobs.job_budget_s(settings, None))
            report.requeued += 1
            continue
        if record.attempts >= settings.job_max_attempts:
            message = f"the worker running this task stopped responding ({record.attempts} attempts)"
            store.fail(task_id, TaskError(code=ErrorCode.WORKER_LOST.value, message=message, stage=record.stage))
            notify_if_wanted(store, task_id)
            report.lost += 1
            log.warning("task %s failed: worker lost %d times", task_id, record.attempts)
        else:
            store.update(task_id, status=TaskStatus.PENDING.value, stage=TaskStatus.PENDING.value, progress=0.0)
            duration = record.metrics.declared_duration_s if record.metrics else None
            jobs.enqueue(queue, task_id, budget_s=jobs.job_budget_s(settings, duration), at_front=True)
            report.requeued += 1
            log.warning("task %s requeued: its worker was lost in %s", task_id, record.stage)


def purge(store: TaskStore, settings: Settings, report: Report) -> None:
    cutoff = time.time() - settings.retention_hours * 3600
    for task_id in store.ids_older_than(cutoff):
        try:
            status = store.status(task_id)
        except TaskCorrupt:
            status = None  # an unreadable record cannot be running: it goes like a finished one
        if status is not None and not status.terminal:
            continue
        completed = store.completed_epoch(task_id) if status is not None else None
        if completed is not None and completed > cutoff:
            continue
        storage_for(settings).delete(task_id)
        store.delete(task_id)
        report.purged += 1
    max_age_s = min(ORPHAN_UPLOAD_AGE_S, settings.retention_hours * 3600)
    # Whether a record exists, readable or not (store.status would raise on a corrupt one).
    report.orphans += storage_for(settings).purge_orphans(
        max_age_s, lambda task_id: bool(store.redis.exists(task_key(task_id)))
    )


def run_once(store: TaskStore, queue: Queue, settings: Settings) -> Report | None:
    """One pass, if no other process holds the lock. Returns None when skipped."""
    interval = maintenance_interval_s(settings)
    if not store.redis.set(LOCK_KEY, "1", nx=True, ex=max(1, int(interval))):
        return None
    report = Report()
    recover(store, queue, settings, report)
    purge(store, settings, report)
    if report.requeued or report.lost or report.purged or report.orphans:
        log.info("maintenance: %s", report)
    return report


def maintenance_interval_s(settings: Settings) -> float:
    return min(settings.worker_heartbeat_s, 30.0)


async def run_forever(store: TaskStore, queue: Queue, settings: Settings, stop: asyncio.Event) -> None:
    interval = maintenance_interval_s(settings)
    while not stop.is_set():
        try:
            await asyncio.to_thread(run_once, store, queue, settings)
        except Exception as exc:
            log.warning("maintenance pass failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
