"""Task records: status, list, cancel/delete, transcript exports, audio and live progress over SSE.

Every route acts only for the task's owner or an admin key; to any other key the task does not exist
(404 TASK_NOT_FOUND, the same answer as for an unknown id), and each access is audited.
"""

from __future__ import annotations

import asyncio
import json
import unicodedata
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from maie.api.audit import Action, audit
from maie.api.deps import CallerDep, QueueDep, SettingsDep, StoreDep
from maie.api.errors import UNPARSABLE_JSON, error_responses, redact_paths
from maie.api.events import EventHub, EventStreamResponse, follow
from maie.api.stored_audio import audio_response
from maie.errors import ErrorCode, MaieError
from maie.exports import MEDIA_TYPES, render_results
from maie.jobs import queue as jobs
from maie.jobs.outbox import notify_if_wanted
from maie.jobs.store import TaskCorrupt, TaskStore
from maie.principals import Principal
from maie.schemas import TaskRecord, TaskStatus
from maie.schemas.http import TaskDeleted, TaskListItem
from maie.storage import storage_for

router = APIRouter(prefix="/v1", tags=["tasks"])

# The errors of a route that reads one task (TASK_CORRUPT: its stored record is unreadable).
ONE_TASK = (ErrorCode.UNAUTHORIZED, ErrorCode.TASK_NOT_FOUND, ErrorCode.TASK_CORRUPT, ErrorCode.SERVICE_UNAVAILABLE)


def owned_record(store: TaskStore, task_id: str, caller: Principal, request: Request, action: Action) -> TaskRecord:
    """The task if the caller may see it, else TASK_NOT_FOUND exactly as for a task that does not exist."""
    record = store.get(task_id)
    if record is None or not caller.can_see(record.owner):
        audit(request, caller, action, task_id, "not_found" if record is None else "denied")
        raise MaieError(ErrorCode.TASK_NOT_FOUND, f"no task {task_id!r}")
    audit(request, caller, action, task_id, "ok")
    return record


@router.get(
    "/status/{task_id}",
    response_model=TaskRecord,
    # Results, metrics and versions as written: null where null was written, absent where nothing was.
    response_model_exclude_unset=True,
    summary="The task record",
    responses=error_responses(*ONE_TASK, ErrorCode.VALIDATION_ERROR),
)
def status(task_id: str, request: Request, caller: CallerDep, store: StoreDep) -> TaskRecord:
    return public_record(owned_record(store, task_id, caller, request, "read"), request)


def public_record(record: TaskRecord, request: Request) -> TaskRecord:
    """The record as its owner sees it: no submitted text, no server paths in messages."""
    if record.options:
        record.options.pop("text", None)  # the submitted text is input, not status
        record.options.pop("template_scope", None)
    settings = request.app.state.settings
    for problem in [*([record.error] if record.error else []), *(record.warnings or [])]:
        problem.message = redact_paths(problem.message, settings)
    return record


PREVIEW_CHARS = 120
"""Characters of the transcript shown as a task's first words in the list."""


def list_item(record: TaskRecord) -> TaskListItem:
    """What the recent-task list shows: status, duration, features and the first words."""
    options = record.options or {}
    text = " ".join(str(record.results.raw_transcript or "").split()) if record.results else ""
    return TaskListItem(
        task_id=record.task_id,
        owner=record.owner,
        status=record.status,
        stage=record.stage,
        progress=record.progress,
        submitted_at=record.submitted_at,
        completed_at=record.completed_at,
        filename=record.filename,
        input_duration_s=record.metrics.input_duration_s if record.metrics else None,
        features=options.get("features") or [],
        enable_diarization=bool(options.get("enable_diarization")),
        preview=text[:PREVIEW_CHARS].rsplit(" ", 1)[0] + " …" if len(text) > PREVIEW_CHARS else text,
        warnings=[w.code for w in record.warnings or []],
    )


@router.get(
    "/tasks",
    summary="Recent tasks: the caller's own (every key's for an admin key)",
    responses=error_responses(ErrorCode.UNAUTHORIZED, ErrorCode.VALIDATION_ERROR, ErrorCode.SERVICE_UNAVAILABLE),
)
def list_tasks(
    request: Request, caller: CallerDep, store: StoreDep, limit: int = Query(20, ge=1, le=200)
) -> list[TaskListItem]:
    audit(request, caller, "list", None, "ok")
    out = []
    for task_id in store.recent_ids(limit, owner=None if caller.admin else caller.name):
        try:
            record = store.get(task_id)
        except TaskCorrupt:
            continue  # one unreadable record must not hide all the others (it answers TASK_CORRUPT itself)
        if record is not None and caller.can_see(record.owner):
            out.append(list_item(record))
    return out


MAX_SPEAKER_NAME = 80


class TaskPatch(BaseModel):
    """Owner edits of a finished task."""

    model_config = ConfigDict(extra="forbid")
    speakers: dict[str, str | None] = Field(
        description='Speaker id to display name, e.g. {"S1": "Diane"}; null or "" restores the id.'
    )


def _speaker_name(speaker: str, name: str | None) -> str | None:
    if name is None or not name.strip():
        return None
    name = " ".join(name.split())
    if len(name) > MAX_SPEAKER_NAME:
        raise MaieError(ErrorCode.INVALID_FIELD, f"speakers.{speaker}: longer than {MAX_SPEAKER_NAME} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in name):
        raise MaieError(ErrorCode.INVALID_FIELD, f"speakers.{speaker}: control or invisible characters")
    return name


@router.patch(
    "/tasks/{task_id}",
    response_model=TaskRecord,
    response_model_exclude_unset=True,  # as GET /v1/status
    summary="Owner edits: rename speakers (applied to exports and later LLM runs)",
    responses=error_responses(
        *ONE_TASK, ErrorCode.TASK_NOT_READY, ErrorCode.INVALID_FIELD, ErrorCode.VALIDATION_ERROR, UNPARSABLE_JSON
    ),
)
def patch_task(task_id: str, body: TaskPatch, request: Request, caller: CallerDep, store: StoreDep) -> TaskRecord:
    record = owned_record(store, task_id, caller, request, "edit")
    if record.status != TaskStatus.COMPLETE:
        raise MaieError(
            ErrorCode.TASK_NOT_READY, f"task is {record.status.value}; speakers are known once it is COMPLETE"
        )
    results = record.results
    known = {s.id for s in (results.speakers if results else None) or []}
    known |= {s.speaker for s in (results.segments if results else None) or [] if s.speaker}
    names = dict(record.speaker_names or {})
    for speaker, name in body.speakers.items():
        if speaker not in known:
            choices = ", ".join(sorted(known)) or "none: this task has no speakers"
            raise MaieError(ErrorCode.INVALID_FIELD, f"speakers.{speaker[:40]}: unknown speaker (known: {choices})")
        cleaned = _speaker_name(speaker, name)
        if cleaned is None:
            names.pop(speaker, None)
        else:
            names[speaker] = cleaned
    options = {**(record.options or {}), "speaker_names": names or None}
    updated = store.get(task_id) if store.edit(task_id, speaker_names=names or None, options=options) else None
    if updated is None:  # deleted meanwhile
        raise MaieError(ErrorCode.TASK_NOT_FOUND, f"no task {task_id!r}")
    return public_record(updated, request)


@router.delete(
    "/tasks/{task_id}",
    summary="Cancel a task if running; delete its audio and results",
    responses=error_responses(*ONE_TASK, ErrorCode.STORAGE_UNAVAILABLE, ErrorCode.VALIDATION_ERROR),
)
def delete_task(
    task_id: str, request: Request, caller: CallerDep, store: StoreDep, queue: QueueDep, settings: SettingsDep
) -> TaskDeleted:
    record = owned_record(store, task_id, caller, request, "delete")
    if record.status.terminal:
        storage_for(settings).delete(task_id)
        store.delete(task_id)
        return TaskDeleted(task_id=task_id, status="DELETED")
    audit(request, caller, "cancel", task_id, "ok")
    jobs.cancel(queue, task_id)
    if not store.finish(task_id, TaskStatus.CANCELLED, results=None, audio_path=None):
        # The task reached its end first: the store's answer stands (its audio, results and webhook
        # are the finished task's), and the caller is told what it is instead.
        final = store.status(task_id)
        return TaskDeleted(task_id=task_id, status=final.value if final else "DELETED", cancelled=False)
    storage_for(settings).delete(task_id)
    notify_if_wanted(store, task_id)
    return TaskDeleted(task_id=task_id, status=TaskStatus.CANCELLED.value, cancelled=True)


def _exports() -> dict[str, Any]:
    """The transcript route's 200 answer: one media type per format."""
    content = {
        media.split(";")[0]: {"schema": {"type": "object"} if fmt == "json" else {"type": "string"}}
        for fmt, media in MEDIA_TYPES.items()
    }
    return {"description": "The transcript in the asked-for format", "content": content}


@router.get(
    "/tasks/{task_id}/transcript",
    summary="Transcript export",
    response_class=Response,
    responses={
        200: _exports(),
        **error_responses(*ONE_TASK, ErrorCode.TASK_NOT_READY, ErrorCode.INVALID_FIELD, ErrorCode.VALIDATION_ERROR),
    },
)
def transcript(
    task_id: str,
    request: Request,
    caller: CallerDep,
    store: StoreDep,
    format: Literal["txt", "srt", "vtt", "json", "md"] = "txt",
) -> Response:
    record = owned_record(store, task_id, caller, request, "export")
    results = record.results.model_dump(exclude_unset=True) if record.results else {}
    if record.status != TaskStatus.COMPLETE or ("segments" not in results and "raw_transcript" not in results):
        raise MaieError(ErrorCode.TASK_NOT_READY, f"task is {record.status.value}; no transcript yet")
    body, media_type = render_results(results, format, title=record.filename, speaker_names=record.speaker_names)
    stem = (record.filename or task_id).rsplit(".", 1)[0].replace('"', "")
    return Response(body, media_type=media_type, headers={"Content-Disposition": f'inline; filename="{stem}.{format}"'})


AUDIO_BODY = {"content": {"audio/*": {"schema": {"type": "string", "format": "binary"}}}}


@router.get(
    "/tasks/{task_id}/audio",
    summary="The task's audio, while retained (HTTP Range supported)",
    response_class=Response,
    responses={
        200: {"description": "The audio", **AUDIO_BODY},
        206: {"description": "The asked-for byte range", **AUDIO_BODY},
        **error_responses(
            *ONE_TASK,
            ErrorCode.TASK_NOT_READY,
            ErrorCode.RANGE_NOT_SATISFIABLE,
            ErrorCode.STORAGE_UNAVAILABLE,
            ErrorCode.VALIDATION_ERROR,
        ),
    },
)
def audio(task_id: str, request: Request, caller: CallerDep, store: StoreDep, settings: SettingsDep) -> Response:
    record = owned_record(store, task_id, caller, request, "audio")
    path = store.audio_path(task_id)
    storage = storage_for(settings)
    if record.status == TaskStatus.CANCELLED or not path or not storage.exists(path):
        raise MaieError(ErrorCode.TASK_NOT_READY, "this task has no audio (text task, cancelled or deleted)")
    stem = (record.filename or task_id).rsplit(".", 1)[0].replace('"', "")
    suffix = Path(path).suffix
    return audio_response(
        storage,
        path,
        request,
        media_type=AUDIO_TYPES.get(suffix.lstrip("."), "application/octet-stream"),
        headers={"Content-Disposition": f'inline; filename="{stem}{suffix}"', "Cache-Control": "private"},
    )


AUDIO_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "opus": "audio/ogg",
    "webm": "audio/webm",
    "m4a": "audio/mp4",
    "mp4": "audio/mp4",
    "aac": "audio/aac",
}


SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"enum": ["status", "segment"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "``status``: ``{task_id, status, stage, progress, error}``; ``segment``: "
            "``{id, start, end, text}`` as ASR decides each segment",
        },
    },
    "required": ["event", "data"],
}
"""One event of the stream (OpenAPI describes a ``text/event-stream`` body event by event)."""


@router.get(
    "/tasks/{task_id}/events",
    summary="Progress as Server-Sent Events (status changes, and segments as ASR decides them); closes at a "
    "terminal state",
    response_class=Response,
    responses={
        200: {
            "description": "A ``status`` event per change and a ``segment`` event per decoded segment, until a "
            "terminal state",
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
        },
        **error_responses(*ONE_TASK, ErrorCode.VALIDATION_ERROR),
    },
)
async def events(task_id: str, request: Request, caller: CallerDep, store: StoreDep) -> Response:
    await asyncio.to_thread(owned_record, store, task_id, caller, request, "events")
    return EventStreamResponse(_event_stream(request.app.state.events, store, task_id))


async def _event_stream(hub: EventHub, store: TaskStore, task_id: str) -> AsyncIterator[dict[str, str]]:
    """``event: status`` for each change, ``event: segment`` (``{id, start, end, text}``) for each
    segment of the transcript as ASR decides it (before diarization: no speakers yet)."""
    async with aclosing(follow(hub, store, task_id)) as updates:
        async for kind, data in updates:
            yield {"comment": "ping"} if kind == "ping" else {"event": kind, "data": json.dumps(data)}
