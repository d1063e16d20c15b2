"""Waiting on an OpenAI-style transcription for its caller: the whole result, or OpenAI's SSE stream.

The stream is what the official SDKs parse (openai-python's ``TranscriptionTextDeltaEvent`` and
``TranscriptionTextDoneEvent``, openai-node's ``TranscriptionStreamEvent``): unnamed events whose data
is ``{"type": "transcript.text.delta", "delta": …}`` for each segment as the worker decides it (the
first without, every later one with a leading space), then ``{"type": "transcript.text.done", "text":
…}`` with the whole text, which equals the deltas joined and the non-streaming ``json`` text. A failure
after the stream has started is one last event ``{"type": "error", "error": {message, type, param,
code}}``, the shape both SDKs raise ``APIError`` for; then the stream ends (no ``[DONE]``: OpenAI sends
none for transcriptions).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import redis
from rq import Queue

from maie.api.errors import openai_error_body, task_failure_status
from maie.api.events import EventHub, follow
from maie.config import Settings
from maie.errors import HTTP_STATUS, ErrorCode, MaieError
from maie.jobs import queue as jobs
from maie.jobs.store import TaskStore
from maie.schemas import TaskRecord, TaskResults, TaskStatus

log = logging.getLogger(__name__)

POLL_S = 0.2
"""How often the synchronous wait re-reads the record."""


def wait_deadline(settings: Settings, duration_s: float | None) -> float:
    """``time.monotonic()`` past which the caller stops waiting: the job's own hard limit and a margin
    for the queue (the worker fails the task at its budget long before)."""
    return time.monotonic() + jobs.hard_timeout_s(jobs.job_budget_s(settings, duration_s)) + 600


def failure(record: TaskRecord | None) -> tuple[ErrorCode, int, str]:
    """A task that did not complete as (code, HTTP status, message): what the caller is told."""
    if record is None or record.status == TaskStatus.CANCELLED:
        return ErrorCode.CANCELLED, HTTP_STATUS.get(ErrorCode.CANCELLED, 500), "the transcription was cancelled"
    error = record.error
    code = ErrorCode(error.code) if error and error.code in ErrorCode.__members__ else ErrorCode.ASR_FAILED
    return code, task_failure_status(code), error.message if error else "failed"


async def abandon(queue: Queue, store: TaskStore, task_id: str) -> None:
    """The caller went away: nobody will read this result, so free the worker."""
    with contextlib.suppress(redis.RedisError):  # Redis away: the job's budget still ends it
        await asyncio.to_thread(jobs.cancel, queue, task_id)
        await asyncio.to_thread(store.finish, task_id, TaskStatus.CANCELLED)


async def wait_for(queue: Queue, store: TaskStore, task_id: str, deadline: float) -> TaskRecord:
    """The task's record once it is terminal; raises CANCELLED when it was cancelled or deleted, TIMEOUT
    past ``deadline``. A caller that goes away meanwhile cancels the task."""
    try:
        while True:
            record = await asyncio.to_thread(store.get, task_id)
            if record is None or record.status == TaskStatus.CANCELLED:
                raise MaieError(ErrorCode.CANCELLED, "the transcription was cancelled")
            if record.status.terminal:
                return record
            if time.monotonic() > deadline:
                raise MaieError(ErrorCode.TIMEOUT, "the transcription did not finish in time")
            await asyncio.sleep(POLL_S)
    except asyncio.CancelledError:
        await abandon(queue, store, task_id)
        raise


def _event(body: dict[str, object]) -> dict[str, str]:
    return {"data": json.dumps(body)}


def _delta(text: str, index: int) -> dict[str, str]:
    return _event({"type": "transcript.text.delta", "delta": text if index == 0 else " " + text})


def _error(code: ErrorCode, status: int, message: str) -> dict[str, str]:
    return _event({"type": "error", **openai_error_body(code, message, status)})


async def delta_events(
    hub: EventHub, queue: Queue, store: TaskStore, task_id: str, deadline: float
) -> AsyncIterator[dict[str, str]]:
    """The SSE items (``EventStreamResponse``) of one transcription, from the task's own channel only.

    Deltas are relayed as the worker publishes segments; at the end, any segment the stream has not
    seen (it can only lag, never skip: see ``follow``) comes from the record, then ``done``. A caller
    that disconnects before the end cancels the task, and the subscription ends with the stream.
    """
    sent = 0
    ended = False
    try:
        try:
            # The deadline is on time.monotonic(); the loop's clock may be another (uvloop's).
            until = asyncio.get_running_loop().time() + deadline - time.monotonic()
            async with asyncio.timeout_at(until), aclosing(follow(hub, store, task_id)) as updates:
                async for kind, data in updates:
                    if kind == "ping":
                        yield {"comment": "ping"}
                    elif kind == "segment":
                        yield _delta(data["text"], sent)
                        sent += 1
            record = await asyncio.to_thread(store.get, task_id)
        except TimeoutError:
            ended = True
            yield _error(ErrorCode.TIMEOUT, 504, "the transcription did not finish in time")
            return
        except (redis.RedisError, MaieError) as exc:
            ended = True
            log.warning("transcription stream of task %s broke off: %s", task_id, exc)
            code = exc.code if isinstance(exc, MaieError) else ErrorCode.SERVICE_UNAVAILABLE
            message = exc.message if isinstance(exc, MaieError) else "the task store is unavailable; retry shortly"
            yield _error(code, HTTP_STATUS.get(code, 500), message)
            return
        ended = True
        if record is None or record.status != TaskStatus.COMPLETE:
            yield _error(*failure(record))
            return
        results = record.results or TaskResults()
        for segment in (results.segments or [])[sent:]:
            yield _delta(segment.text, sent)
            sent += 1
        yield _event({"type": "transcript.text.done", "text": results.raw_transcript or ""})
    finally:
        if not ended:  # the caller left (or the server is stopping) mid-stream
            await abandon(queue, store, task_id)
