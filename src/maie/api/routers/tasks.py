"""Task records: status, list, cancel/delete, transcript exports and live progress over SSE."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Query, Request, Response
from sse_starlette.sse import EventSourceResponse

from maie.api.deps import ApiKeyDep, QueueDep, SettingsDep, StoreDep
from maie.errors import ErrorCode, MaieError
from maie.exports import render_results
from maie.jobs import queue as jobs
from maie.jobs.store import TaskStore, events_channel
from maie.jobs.tasks import remove_task_files
from maie.schemas import TaskRecord, TaskStatus
from maie.webhooks import notify_if_wanted

router = APIRouter(prefix="/v1", tags=["tasks"])
RESYNC_S = 5.0
"""Seconds without an event after which the SSE stream re-reads the task record."""


def get_record(store: TaskStore, task_id: str) -> TaskRecord:
    record = store.get(task_id)
    if record is None:
        raise MaieError(ErrorCode.TASK_NOT_FOUND, f"no task {task_id!r}")
    return record


@router.get("/status/{task_id}", response_model=TaskRecord, response_model_exclude_none=True)
def status(task_id: str, _: ApiKeyDep, store: StoreDep) -> TaskRecord:
    record = get_record(store, task_id)
    if record.options:
        record.options.pop("text", None)  # the submitted text is input, not status
    return record


@router.get("/tasks", summary="Recent tasks")
def list_tasks(_: ApiKeyDep, store: StoreDep, limit: int = Query(20, ge=1, le=200)) -> list[dict]:
    out = []
    for task_id in store.recent_ids(limit):
        record = store.get(task_id)
        if record is not None:
            out.append(
                record.model_dump(
                    include={"task_id", "status", "stage", "progress", "submitted_at", "completed_at", "filename"}
                )
            )
    return out


@router.delete("/tasks/{task_id}", summary="Cancel a task if running; delete its audio and results")
def delete_task(task_id: str, _: ApiKeyDep, store: StoreDep, queue: QueueDep, settings: SettingsDep) -> dict:
    record = get_record(store, task_id)
    if record.status.terminal:
        remove_task_files(settings, task_id)
        store.delete(task_id)
        return {"task_id": task_id, "status": "DELETED"}
    jobs.cancel(queue, task_id)
    store.finish(task_id, TaskStatus.CANCELLED, results=None, audio_path=None)
    remove_task_files(settings, task_id)
    notify_if_wanted(store, task_id)
    return {"task_id": task_id, "status": TaskStatus.CANCELLED.value}


@router.get("/tasks/{task_id}/transcript", summary="Transcript export")
def transcript(
    task_id: str,
    _: ApiKeyDep,
    store: StoreDep,
    format: Literal["txt", "srt", "vtt", "json", "md"] = "txt",
) -> Response:
    record = get_record(store, task_id)
    results = record.results or {}
    if record.status != TaskStatus.COMPLETE or ("segments" not in results and "raw_transcript" not in results):
        raise MaieError(ErrorCode.TASK_NOT_READY, f"task is {record.status.value}; no transcript yet")
    body, media_type = render_results(results, format, title=record.filename)
    stem = (record.filename or task_id).rsplit(".", 1)[0].replace('"', "")
    return Response(body, media_type=media_type, headers={"Content-Disposition": f'inline; filename="{stem}.{format}"'})


@router.get("/tasks/{task_id}/events", summary="Progress as Server-Sent Events; closes at a terminal state")
async def events(task_id: str, request: Request, _: ApiKeyDep, store: StoreDep) -> EventSourceResponse:
    await asyncio.to_thread(get_record, store, task_id)
    return EventSourceResponse(_event_stream(request, store, task_id), ping=15)


async def _event_stream(request: Request, store: TaskStore, task_id: str) -> AsyncIterator[dict]:
    redis_async = request.app.state.redis_async
    pubsub = redis_async.pubsub()
    await pubsub.subscribe(events_channel(task_id))
    try:
        # Subscribe first, then read the current state, so no change between the two is missed.
        record = await asyncio.to_thread(store.get, task_id)
        if record is None:
            return
        last = _snapshot(record)
        yield {"event": "status", "data": json.dumps(last)}
        if record.status.terminal:
            return
        quiet_since = time.monotonic()
        while not await request.is_disconnected():
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                event = json.loads(message["data"])
            elif time.monotonic() - quiet_since > RESYNC_S:
                # Pub/sub is fire-and-forget (a Redis restart drops it): re-read the record now and then.
                record = await asyncio.to_thread(store.get, task_id)
                if record is None:
                    return
                event = _snapshot(record)
            else:
                continue
            quiet_since = time.monotonic()
            if event == last:
                continue
            last = event
            yield {"event": "status", "data": json.dumps(event)}
            if TaskStatus(event["status"]).terminal:
                return
    finally:
        await pubsub.unsubscribe()
        await pubsub.aclose()


def _snapshot(record: TaskRecord) -> dict:
    return {
        "task_id": record.task_id,
        "status": record.status.value,
        "stage": record.stage,
        "progress": record.progress,
        "error": record.error.model_dump() if record.error else None,
    }
